//! The pool changed while the edge runs (issue #10): `servers add` while
//! clients stream through the fast path, `servers remove` moving a server's
//! clients, a SIGHUP reload with a changed weight, bad input refused, and
//! every change kept across a restart of the daemon.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redirector::ops::api::{Route, ServerStatus};
use redirector_tests::{
    operator::{assert_kernel_entries_point_at, cli_ok, cli_refused, routes, wait_until},
    privileged,
    sip_pool::{InProcessEdge, Registrar, sipp_clients, start_registrars},
    topology::{Attach, CLIENT, SERVICE, Topology, home_address, socket_in},
};

/// Name → (state, weight) of every server, as `servers --json` has them.
fn pool(topology: &Topology) -> BTreeMap<String, (String, f64)> {
    let servers: Vec<ServerStatus> = serde_json::from_str(&cli_ok(topology, &["servers", "--json"])).expect("json");
    let state = |s: &ServerStatus| serde_json::to_value(s.state).unwrap().as_str().unwrap().to_owned();
    servers.iter().map(|s| (s.name.clone(), (state(s), s.weight))).collect()
}

fn register(topology: &Topology, prefix: &str, clients: u16, first_port: u16) {
    assert!(
        sipp_clients(topology, "register_follow_redirect.xml", clients, first_port, prefix),
        "sipp clients {prefix}"
    );
}

/// The client port of an AOR registered by `register(…, prefix, …, first_port)`.
fn port_of(aor: &str, prefix: &str, first_port: u16) -> u16 {
    let index = aor.trim_start_matches("sip:").trim_start_matches(prefix).split('-').next().unwrap();
    first_port + index.parse::<u16>().unwrap()
}

fn packets_to(edge: &InProcessEdge, server: &str) -> u64 {
    edge.servers().into_iter().find(|s| s.name == server).map_or(0, |s| s.packets)
}

/// Datagrams to the service from each of `ports`, every 10 ms, until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
}

impl Stream {
    fn start(topology: &Topology, ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let senders = ports
            .iter()
            .map(|&port| {
                let socket = socket_in(&topology.client, &format!("{CLIENT}:{port}"));
                let (stop, limit) = (stop.clone(), Instant::now() + Duration::from_secs(120));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                        let _ = socket.send_to(b"stream", SERVICE);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Self { stop, senders }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.senders.into_iter().for_each(|s| s.join().unwrap());
    }
}

#[test]
fn servers_added_take_new_clients_and_servers_removed_hand_theirs_over_while_clients_stream() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 3);
    topology.unlisted_homes = 1;
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    register(&topology, "early", 12, 6000);
    let early = routes(&topology);
    let ports: Vec<u16> = early.iter().map(|r| port_of(&r.aor, "early", 6000)).collect();
    let stream = Stream::start(&topology, &ports);
    let sent_before: Vec<u64> = (0..2).map(|i| packets_to(&edge, &format!("home{i}"))).collect();
    wait_until(
        || (0..2).all(|i| packets_to(&edge, &format!("home{i}")) > sent_before[i]),
        "the early clients stream through XDP",
    );

    let added =
        cli_ok(&topology, &["servers", "add", "home2", "--ipv4", &home_address(2).to_string(), "--weight", "3"]);
    assert!(added.starts_with("home2: active, weight 3"), "{added}");
    register(&topology, "late", 20, 7000);
    let after_add = routes(&topology);
    for route in &early {
        assert!(after_add.contains(route), "{} stayed where it was: {after_add:?}", route.aor);
        assert_kernel_entries_point_at(&edge, &route.aor, &route.server);
    }
    let on_home2: Vec<&Route> = after_add.iter().filter(|r| r.server == "home2").collect();
    assert!(!on_home2.is_empty() && on_home2.iter().all(|r| r.aor.contains("late")), "{after_add:?}");
    for route in &on_home2 {
        assert_kernel_entries_point_at(&edge, &route.aor, "home2");
    }
    let late_ports: Vec<u16> = on_home2.iter().map(|r| port_of(&r.aor, "late", 7000)).collect();
    let late_stream = Stream::start(&topology, &late_ports);
    wait_until(|| packets_to(&edge, "home2") > 0, "a new client of home2 reaches it through XDP");
    late_stream.stop();

    let leaving: Vec<&Route> = after_add.iter().filter(|r| r.server == "home0").collect();
    assert!(!leaving.is_empty(), "rendezvous hashing gave home0 some AORs");
    let removed = cli_ok(&topology, &["servers", "remove", "home0"]);
    assert!(removed.contains(&format!("{} client(s) moved", leaving.len())), "{removed}");
    assert!(removed.ends_with("home0 removed\n"), "{removed}");
    let after_remove = routes(&topology);
    assert_eq!(after_remove.len(), after_add.len(), "no client lost or duplicated");
    let moved: Vec<&Route> = after_remove.iter().filter(|r| leaving.iter().any(|l| l.aor == r.aor)).collect();
    let mut streaming_to: BTreeMap<String, u64> = BTreeMap::new();
    for route in &moved {
        assert!(route.server != "home0" && route.generation == 2, "{route:?} moved once");
        assert_kernel_entries_point_at(&edge, &route.aor, &route.server);
        if route.aor.contains("early") {
            streaming_to.insert(route.server.clone(), packets_to(&edge, &route.server));
        }
    }
    wait_until(
        || streaming_to.iter().all(|(server, before)| packets_to(&edge, server) > *before),
        "the moved clients' streams reach their new homes through XDP",
    );
    stream.stop();
    assert!(!pool(&topology).contains_key("home0"), "home0 left the pool");
    cli_refused(&topology, &["servers", "remove", "home0"], "no home server named \"home0\"");
}

#[test]
fn bad_input_changes_nothing_and_changes_survive_sighup_and_restarts() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("nat", Attach::Skb, 3);
    topology.unlisted_homes = 1;
    topology.start(&[]);
    let home = |i: usize| home_address(i).to_string();
    let unused = "10.77.0.99";
    let initial = pool(&topology);
    for (args, message) in [
        (vec!["servers", "add", "home0", "--ipv4", unused], "a home server named \"home0\" exists already"),
        (vec!["servers", "add", "home9", "--ipv4", &home(1)], "is already the address of home server \"home1\""),
        (vec!["servers", "add", "home9", "--ipv4", unused, "--weight", "0"], "weight 0 is not a positive number"),
        (vec!["servers", "set", "home0", "--weight", "-1"], "weight -1 is not a positive number"),
        (vec!["servers", "set", "home9", "--weight", "2"], "no home server named \"home9\""),
        (vec!["servers", "remove", "home9"], "no home server named \"home9\""),
    ] {
        cli_refused(&topology, &args, message);
    }
    cli_ok(&topology, &["servers", "set", "home1", "--state", "draining"]);
    cli_refused(&topology, &["servers", "remove", "home0"], "\"home0\" is the last active home server");
    cli_refused(&topology, &["servers", "set", "home0", "--state", "draining"], "last active home server");
    cli_ok(&topology, &["servers", "set", "home1", "--state", "active"]);
    assert_eq!(pool(&topology), initial, "nothing changed");

    cli_ok(&topology, &["servers", "add", "home2", "--ipv4", &home(2), "--weight", "2"]);
    cli_ok(&topology, &["servers", "add", "spare", "--ipv4", unused]);
    cli_ok(&topology, &["servers", "remove", "spare"]);
    cli_ok(&topology, &["servers", "set", "home0", "--weight", "3"]);

    // The config reweights home1; SIGHUP applies that, and only that.
    let config = std::fs::read_to_string(topology.config_path()).unwrap();
    let reweighted = config.replace("name = \"home1\"\n", "name = \"home1\"\nweight = 4\n");
    assert_ne!(reweighted, config);
    std::fs::write(topology.config_path(), reweighted).unwrap();
    topology.signal_edge(libc::SIGHUP);
    wait_until(|| pool(&topology)["home1"].1 == 4.0, "SIGHUP applied home1's new weight");
    let expected: BTreeMap<String, (String, f64)> = [("home0", 3.0), ("home1", 4.0), ("home2", 2.0)]
        .into_iter()
        .map(|(name, weight)| (name.to_owned(), ("active".to_owned(), weight)))
        .collect();
    assert_eq!(pool(&topology), expected, "the CLI's changes stand beside the config's");

    let (stopped, _) = topology.stop_edge();
    assert!(stopped, "the daemon stopped cleanly");
    topology.run_edge();
    wait_until(|| topology.cli(&["servers", "--json"]).status.success(), "the restarted daemon answers");
    assert_eq!(pool(&topology), expected, "every change outlived the restart, the removal of spare too");
}
