//! The operator's surface end to end: the `redirector` CLI against a running
//! edge's control socket, with real traffic through namespaces.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redirector::ops::api::{Client, Route};
use redirector_tests::{
    operator::{assert_kernel_entries_point_at, cli_ok, routes},
    privileged,
    sip_pool::{InProcessEdge, Registrar, sipp_clients, start_registrars},
    topology::{Attach, CLIENT, Family, SERVICE, Topology, echo, home_listen_address, receive, socket_in},
};

fn register(topology: &Topology, prefix: &str, clients: u16, first_port: u16) {
    assert!(
        sipp_clients(topology, "register_follow_redirect.xml", clients, first_port, prefix),
        "sipp clients {prefix}"
    );
}

/// Every metric the Grafana dashboard (grafana/redirector.json) queries is
/// in a real scrape.
fn assert_dashboard_metrics_are_scraped(metrics: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/redirector.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let queried: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .flat_map(|target| {
            let expr = target["expr"].as_str().unwrap().to_owned();
            let words: Vec<String> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("redirector_"))
                .map(str::to_owned)
                .collect();
            words
        })
        .collect();
    assert!(!queried.is_empty());
    for metric in queried {
        let series = format!("{metric}{{");
        let scraped = metrics.lines().any(|l| l.starts_with(&series) || l.split(' ').next() == Some(metric.as_str()));
        assert!(scraped, "the dashboard queries {metric}, which the scrape lacks:\n{metrics}");
    }
}

const PROMETHEUS: &str = "127.0.0.1:9464";

/// `GET /metrics` from inside the edge's namespace.
fn scrape(topology: &Topology) -> String {
    use std::io::{Read, Write};
    let _inside = topology.edge.enter();
    let mut stream = std::net::TcpStream::connect(PROMETHEUS).expect("the Prometheus endpoint listens");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    response
}

#[test]
fn stats_json_counts_what_the_fast_path_forwarded() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    topology.extra_config = format!("[stats]\ninterval = 0.2\nprometheus = \"{PROMETHEUS}\"\n");
    let client_address: SocketAddr = format!("{CLIENT}:5060").parse().unwrap();
    let home = socket_in(&topology.homes[0], &home_listen_address("dsr", Family::V4));
    let client = socket_in(&topology.client, &client_address.to_string());
    topology.start(&[(client_address, 0)]);
    const SENT: usize = 100;
    let echoes = echo(home, SENT, Duration::from_secs(15));
    let payload = [b'x'; 50];
    for _ in 0..SENT {
        client.send_to(&payload, SERVICE).unwrap();
    }
    assert_eq!(echoes.join().unwrap(), SENT);
    assert_eq!(receive(&client, SENT, Duration::from_secs(15)).len(), SENT);
    let stats = topology.stats_when(|stats| stats.verdicts["forwarded"] == SENT as u64 && stats.interval > 0.0);
    let home0 = stats.servers.iter().find(|s| s.name == "home0").unwrap();
    let frame = 14 + 20 + 8 + payload.len() as u64;
    assert_eq!((home0.packets, home0.bytes), (SENT as u64, SENT as u64 * frame));
    assert_eq!(stats.servers.iter().find(|s| s.name == "home1").unwrap().packets, 0);
    let quiet = topology.stats_when(|stats| stats.servers[0].packets_per_second == Some(0.0));
    assert_eq!(quiet.servers[0].packets, SENT as u64, "no traffic since: a rate of zero");
    let metrics = scrape(&topology);
    for line in [
        format!("redirector_verdicts_total{{verdict=\"forwarded\"}} {SENT}"),
        format!("redirector_server_packets_total{{server=\"home0\"}} {SENT}"),
        format!("redirector_server_bytes_total{{server=\"home0\"}} {}", SENT as u64 * frame),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
    }
    assert_dashboard_metrics_are_scraped(&metrics);
    let table = cli_ok(&topology, &["stats", "--watch", "0.2", "--count", "2"]);
    assert!(table.contains("home0") && table.contains("forwarded 100"), "{table}");
    let absent = std::process::Command::new(redirector_tests::topology::redirector_binary())
        .args(["stats", "--socket", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    assert!(!absent.status.success());
    assert!(String::from_utf8_lossy(&absent.stderr).contains("/nonexistent/control.sock"));
}

#[test]
fn drain_moves_every_client_and_undrain_takes_new_ones_again() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 3);
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    register(&topology, "early", 30, 6000);
    let before = routes(&topology);
    let on_home0: Vec<&Route> = before.iter().filter(|r| r.server == "home0").collect();
    assert!(!on_home0.is_empty(), "rendezvous hashing gave home0 some of 30 AORs");

    let drained = cli_ok(&topology, &["drain", "home0"]);
    assert!(drained.contains(&format!("{} client(s) moved", on_home0.len())), "{drained}");
    let after = routes(&topology);
    let aors = |routes: &[Route]| routes.iter().map(|r| r.aor.clone()).collect::<BTreeSet<_>>();
    assert_eq!(aors(&after), aors(&before), "no client lost or duplicated");
    assert_eq!(after.len(), before.len());
    assert!(after.iter().all(|r| r.server != "home0"), "home0 has no client left");
    for route in after.iter().filter(|r| on_home0.iter().any(|m| m.aor == r.aor)) {
        assert_eq!(route.generation, 2, "{} moved once", route.aor);
        assert_kernel_entries_point_at(&edge, &route.aor, &route.server);
    }
    let servers = cli_ok(&topology, &["servers"]);
    assert!(servers.lines().any(|l| l.starts_with("home0") && l.contains("draining")), "{servers}");

    register(&topology, "late", 20, 7000);
    assert!(routes(&topology).iter().all(|r| r.server != "home0"), "a draining server takes no new client");

    cli_ok(&topology, &["undrain", "home0"]);
    register(&topology, "again", 30, 8000);
    assert!(
        routes(&topology).iter().any(|r| r.server == "home0" && r.aor.contains("again")),
        "home0 takes new clients"
    );
}

#[test]
fn assign_moves_one_client_and_errors_name_what_failed() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("nat", Attach::Skb, 2);
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    register(&topology, "solo", 1, 6000);
    let route = routes(&topology).pop().unwrap();
    assert_kernel_entries_point_at(&edge, &route.aor, &route.server);
    let other = if route.server == "home0" { "home1" } else { "home0" };
    let moved = cli_ok(&topology, &["assign", &route.aor, other]);
    assert!(moved.contains(&format!("{}: {} -> {other} (generation 2)", route.aor, route.server)), "{moved}");
    assert_kernel_entries_point_at(&edge, &route.aor, other);
    let clients: Vec<Client> =
        serde_json::from_str(&cli_ok(&topology, &["clients", "--server", other, "--json"])).expect("clients --json");
    let aors: Vec<&str> = clients.iter().map(|c| c.aor.as_str()).collect();
    assert_eq!(aors, [route.aor.as_str()]);
    let table = cli_ok(&topology, &["clients", "--server", other]);
    assert!(table.lines().nth(1).is_some_and(|row| row.starts_with(&route.aor)), "{table}");
    for (args, message) in [
        (vec!["assign", &route.aor, "home9"], "no home server named \"home9\""),
        (vec!["assign", "sip:nobody@example.net", "home0"], "no assignment for sip:nobody@example.net"),
        (vec!["drain", "home7"], "no home server named \"home7\""),
    ] {
        let output = topology.cli(&args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Datagrams to the service from several client ports at fixed rates, until
/// stopped (or two minutes at most: longer than every wait under load).
struct Load {
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(topology: &Topology, ports_and_rates: &[(u16, u32)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let senders = ports_and_rates.iter().map(|&(port, rate)| blast(topology, port, rate, stop.clone())).collect();
        Self { stop, senders }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.senders.into_iter().for_each(|s| s.join().unwrap());
    }
}

/// Sends to the service from `port` at `rate` datagrams per second until `stop`.
fn blast(topology: &Topology, port: u16, rate: u32, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let socket = socket_in(&topology.client, &format!("{CLIENT}:{port}"));
    let limit = Instant::now() + Duration::from_secs(120);
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
            for _ in 0..rate / 100 {
                let _ = socket.send_to(b"load", SERVICE);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

fn moves_so_far(routes: &[Route]) -> u64 {
    routes.iter().map(|r| r.generation - 1).sum()
}

/// Polls `routes --json` (bounded, generously) until `wanted` holds.
fn routes_when(topology: &Topology, wanted: impl Fn(&[Route]) -> bool, what: &str) -> Vec<Route> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = routes(topology);
        if wanted(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}; the routes: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `rebalance --dry-run` (bounded) until its plan on the latest rates is empty.
fn dry_run_balanced(topology: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dry = cli_ok(topology, &["rebalance", "--dry-run"]);
        if dry.starts_with("balanced") {
            return;
        }
        assert!(Instant::now() < deadline, "under the same load, the plan never became empty: {dry}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Watches the routes for `window` (while the load goes on): they never change.
fn routes_stay(topology: &Topology, expected: &[Route], window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert_eq!(routes(topology), expected, "no flapping while the load goes on");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn skewed_load_moves_a_bounded_set_and_then_stays_put() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 3);
    topology.extra_config =
        "[stats]\ninterval = 0.1\n[rebalance]\ninterval = 0.3\ntrigger = 1.5\nsettle = 1.1\nsustain = 2\ncooldown = 3\nmin_rate = 10\n".into();
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    register(&topology, "load", 9, 6000);
    let before = routes(&topology);
    let port_of =
        |aor: &str| 6000 + aor.trim_start_matches("sip:load").split('-').next().unwrap().parse::<u16>().unwrap();
    let crowded = (0..3)
        .map(|i| format!("home{i}"))
        .find(|home| before.iter().filter(|r| &r.server == home).count() >= 2)
        .expect("9 AORs on 3 homes put two on one");
    let hot: Vec<&Route> = before.iter().filter(|r| r.server == crowded).take(2).collect();

    let load = Load::start(&topology, &[(port_of(&hot[0].aor), 600), (port_of(&hot[1].aor), 300)]);
    let moved_at =
        routes_when(&topology, |r| moves_so_far(r) > 0, &format!("the skew on {crowded} was never rebalanced"));
    // Under the same load: the plan is empty, and over several rebalance
    // rounds (0.3 s each, cooldown 3) nothing else moves.
    dry_run_balanced(&topology);
    routes_stay(&topology, &moved_at, Duration::from_secs(3));
    load.stop();
    assert_eq!(moves_so_far(&moved_at), 1, "one move restores the balance");
    let moved = moved_at.iter().find(|r| r.generation == 2).unwrap();
    assert!(hot.iter().any(|h| h.aor == moved.aor), "a hot client moved: {moved:?}");
    assert_ne!(moved.server, crowded);
    let sent = edge.servers().into_iter().find(|s| s.name == moved.server).unwrap();
    assert!(sent.packets > 0, "its traffic reached the new home server through XDP");
}
