//! Client-driven home selection end to end, in namespaces: three dsr homes,
//! a client that probes them all at once with `redirector probe`, and its
//! REGISTER through the edge presenting the earliest answer's cookie.
//!
//! This kernel has no netem, so the difference in speed is made in the
//! responders themselves: the fast home answers in XDP (`redirector decap
//! --probe-port`), the two slow ones from user space (`redirector
//! probe-responder`) holding each answer 60 ms, as a far-away or loaded
//! server would. Which home is fast is picked so that it is not the one
//! the edge's hashing would give the client: only the cookie can put it
//! there.
//!
//! A home the edge holds draining or down stops answering: the edge tells
//! each home its state (state messages to its probe port), which `decap`
//! and `probe-responder` follow.

use std::{net::SocketAddr, time::Instant};

use redirector::{
    config::Config,
    edge::pool::Pool,
    probe::{Keys, select::Report},
    sip::Aor,
    store::unix_seconds,
};
use redirector_tests::{
    operator::cli_ok,
    privileged,
    sip_pool::{Registrar, start_registrars},
    topology::{Attach, CLIENT, SERVICE, Topology, home_address, receive, redirector_binary, socket_in},
};

const PROBE_PORT: u16 = 5099;
const SECRET: &str = "00112233445566778899aabbccddeeff";

#[test]
fn the_fastest_home_is_chosen_and_the_cookie_makes_it_the_new_clients_home() {
    if !privileged() {
        return;
    }
    let (mut topology, secret, probe_args) = probe_topology("");
    let (alice, fast) = aor_not_hashed_to(&topology, "alice", None);
    let (bob, _) = aor_not_hashed_to(&topology, "bob", Some(fast));
    topology.decap_args = (0..3).map(|i| if i == fast { probe_args.clone() } else { Vec::new() }).collect();
    topology.start(&[]);
    for slow in (0..3).filter(|&i| i != fast) {
        let listen = probe_address(slow).to_string();
        let args = ["probe-responder", "--listen", &listen, "--secret", &secret, "--delay-ms", "60"].map(String::from);
        let responder = topology.spawn_in_home(slow, &args);
        topology.adopt(responder);
    }
    let homes: Vec<SocketAddr> = (0..3).map(probe_address).collect();
    for &home in &homes {
        wait_until_answering(&topology, home);
    }

    let report = probe(&topology, &homes);
    assert_eq!(report.chosen, Some(homes[fast]), "the XDP home answers first: {report:?}");
    for (index, server) in report.servers.iter().enumerate() {
        assert!(server.answered_ms.is_some(), "every home answered: {report:?}");
        assert_eq!(server.chosen, index == fast, "a late answer is reported, never chosen: {report:?}");
    }
    let cookie = report.cookie.expect("the chosen answer's cookie");

    let contact = register(&topology, &alice, &cookie);
    assert_eq!(contact, format!("{}:5060", home_address(fast)), "alice's REGISTER went to her cookie's home");
    let mut tampered = cookie.into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let contact = register(&topology, &bob, &String::from_utf8(tampered).unwrap());
    assert_ne!(contact, format!("{}:5060", home_address(fast)), "a tampered cookie is ignored");
    let stats = topology.stats_when(|stats| stats.first_contact.get("cookies_ignored") == Some(&1));
    assert_eq!(stats.first_contact.get("cookies_honoured"), Some(&1), "{stats:?}");

    // The edge answers probes for the pool, naming the service address.
    assert_edge_answers_for_the_pool(&topology);
}

#[test]
fn a_draining_or_down_home_stops_answering_and_answers_again_once_active() {
    if !privileged() {
        return;
    }
    let extra = "state_every = 0.5\n[health]\ninterval = 0.2\ndown_after = 3\nup_after = 2\n";
    let (mut topology, secret, probe_args) = probe_topology(extra);
    // Homes 0 and 1 answer in XDP (decap), home 2 from user space.
    topology.decap_args = vec![probe_args.clone(), probe_args];
    start_registrars(&mut topology, Registrar::Own);
    topology.start(&[]);
    let listen = probe_address(2).to_string();
    let responder =
        topology.spawn_in_home(2, &["probe-responder", "--listen", &listen, "--secret", &secret].map(String::from));
    topology.adopt(responder);
    let homes: Vec<SocketAddr> = (0..3).map(probe_address).collect();
    for &home in &homes {
        wait_until_answering(&topology, home);
    }

    for (drained, responder) in [(0, "XDP"), (2, "user space")] {
        cli_ok(&topology, &["drain", &format!("home{drained}")]);
        wait_until_silent(&topology, homes[drained]);
        let report = probe(&topology, &homes);
        for (index, server) in report.servers.iter().enumerate() {
            assert_eq!(
                server.answered_ms.is_none(),
                index == drained,
                "only the drained {responder} home is silent: {report:?}"
            );
        }
        assert_edge_answers_for_the_pool(&topology);
        cli_ok(&topology, &["undrain", &format!("home{drained}")]);
        wait_until_answering(&topology, homes[drained]);
    }

    // Home 1's registrar dies: the health checks mark it down, and it goes silent.
    topology.stop_registrar(1);
    wait_until_silent(&topology, homes[1]);
    let report = probe(&topology, &homes);
    let answered: Vec<bool> = report.servers.iter().map(|s| s.answered_ms.is_some()).collect();
    assert_eq!(answered, [true, false, true], "only the down home is silent: {report:?}");
    assert_edge_answers_for_the_pool(&topology);

    // No home takes new clients: the edge stops answering for the pool too.
    cli_ok(&topology, &["drain", "home0"]);
    cli_ok(&topology, &["drain", "home2"]);
    let service = service_probe_address();
    wait_until_silent(&topology, service);
    cli_ok(&topology, &["undrain", "home2"]);
    wait_until_answering(&topology, service);
    assert_edge_answers_for_the_pool(&topology);
}

/// The edge answers a probe to the service address while a home takes
/// new clients, and its answer names the service address, never a home.
fn assert_edge_answers_for_the_pool(topology: &Topology) {
    let service = service_probe_address();
    let report = probe(topology, &[service]);
    assert_eq!(report.chosen, Some(service), "{report:?}");
    let cookie = report.cookie.expect("the edge's cookie");
    let keys = Keys::from_hex(SECRET, 300).unwrap();
    let named = keys.verify(&cookie, CLIENT.into(), unix_seconds()).expect("a valid cookie");
    assert_eq!(named, service.ip(), "the edge's answer names the service address");
}

/// Three dsr homes behind an edge with probes on (`extra` ends its
/// `[probe]` section, or adds sections): the topology, the secret file's
/// path, and the arguments that make a home's `decap` answer probes.
fn probe_topology(extra: &str) -> (Topology, String, Vec<String>) {
    let mut topology = Topology::new("dsr", Attach::Skb, 3);
    let secret = topology.scratch("probe.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret = secret.to_str().unwrap().to_owned();
    topology.extra_config = format!("[probe]\nport = {PROBE_PORT}\nsecret_file = \"{secret}\"\n{extra}");
    let probe_args = ["--probe-port", &PROBE_PORT.to_string(), "--probe-secret", &secret].map(String::from).to_vec();
    (topology, secret, probe_args)
}

fn service_probe_address() -> SocketAddr {
    SocketAddr::new(SERVICE.parse::<SocketAddr>().unwrap().ip(), PROBE_PORT)
}

fn probe_address(home: usize) -> SocketAddr {
    SocketAddr::new(home_address(home).into(), PROBE_PORT)
}

/// An AOR `user…@example.net` that the edge's hashing does not give to
/// the home the cookie will name, and that home: the one after its own
/// (or `fast`, when given).
fn aor_not_hashed_to(topology: &Topology, user: &str, fast: Option<usize>) -> (String, usize) {
    let config = Config::parse(&topology.config(&[])).expect("the edge config");
    let pool = Pool::new(config.home_servers());
    (0..100)
        .map(|n| format!("sip:{user}{n}@example.net"))
        .find_map(|aor| {
            let parsed = Aor::from_uri(&aor, "To").unwrap();
            let normal = pool.choose(&parsed, None).expect("a home").index as usize;
            let fast = fast.unwrap_or((normal + 1) % 3);
            (normal != fast).then_some((aor, fast))
        })
        .expect("some AOR hashes elsewhere")
}

/// `redirector probe --json` run in the client's namespace.
fn probe(topology: &Topology, servers: &[SocketAddr]) -> Report {
    let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let binary = redirector_binary();
    let args = ["probe", "--servers", &list.join(","), "--timeout", "1000", "--json"];
    let output = topology.client.command(binary.to_str().unwrap(), &args).output().expect("redirector probe");
    assert!(output.status.success(), "redirector probe: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("probe --json")
}

/// Probes `home` alone until it answers (its responder has started, or
/// the edge told it it is active again).
fn wait_until_answering(topology: &Topology, home: SocketAddr) {
    wait_for_answers(topology, home, true);
}

/// Probes `home` alone until it no longer answers.
fn wait_until_silent(topology: &Topology, home: SocketAddr) {
    wait_for_answers(topology, home, false);
}

/// Probes `home` alone (bounded) until whether it answers is `wanted`.
fn wait_for_answers(topology: &Topology, home: SocketAddr, wanted: bool) {
    let binary = redirector_binary();
    let start = Instant::now();
    let args = ["probe", "--servers", &home.to_string(), "--timeout", "200"];
    while topology.client.command(binary.to_str().unwrap(), &args).output().unwrap().status.success() != wanted {
        assert!(start.elapsed().as_secs() < 20, "{home} never got to answering={wanted}");
    }
}

/// A REGISTER for `aor` from the client with `cookie`; the Contact of the
/// edge's 302 (the home it assigned).
fn register(topology: &Topology, aor: &str, cookie: &str) -> String {
    let socket = socket_in(&topology.client, &format!("{CLIENT}:0"));
    let port = socket.local_addr().unwrap().port();
    let request = format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{port};branch=z9hG4bK{port};rport\r\n\
         Max-Forwards: 70\r\nTo: <{aor}>\r\nFrom: <{aor}>;tag=p1\r\nCall-ID: probe-{port}@client\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:u@{CLIENT}:{port}>\r\nRedirector-Cookie: {cookie}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    socket.send_to(request.as_bytes(), SERVICE).unwrap();
    let answers = receive(&socket, 1, std::time::Duration::from_secs(10));
    let (_, answer) = answers.first().expect("an answer to the REGISTER");
    let answer = String::from_utf8_lossy(answer);
    assert!(answer.starts_with("SIP/2.0 302"), "{answer}");
    let contact = answer.lines().find_map(|l| l.strip_prefix("Contact: <sip:")).expect("a Contact");
    contact.trim_end_matches('>').to_owned()
}
