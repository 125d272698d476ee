//! A `redirector run` killed with SIGKILL in the middle of a burst of new
//! assignments loses none that it answered: every 302 a client received
//! names the server the database holds for that AOR after the crash. The
//! same while a home server is down: clients it had are given new homes at
//! their first contact, and none of those answers is lost or contradicted.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use redirector::{
    ops::api::ServerStatus,
    sip::{Aor, HeaderKind, Message, NameAddr},
    store::{Assignment, AssignmentStore, RedbStore},
};
use redirector_tests::{
    privileged,
    sip_pool::{Registrar, start_registrar},
    topology::{Attach, CLIENT, SERVICE, Topology, home_address, socket_in},
};

const BURST: usize = 1000;
/// Kill as soon as this many answers are in: well inside the burst.
const KILL_AFTER: usize = 20;

fn register(i: usize, port: u16) -> String {
    format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{port};branch=z9hG4bKburst{i};rport\r\n\
         To: <sip:burst{i}@example.net>\r\nFrom: <sip:burst{i}@example.net>;tag=b{i}\r\nCall-ID: burst{i}@c\r\n\
         CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
}

/// (AOR, home index) from a 302.
fn answered(datagram: &[u8]) -> (Aor, usize) {
    let message = Message::parse(datagram).expect("a SIP answer");
    let to = message.value(HeaderKind::To).unwrap();
    let aor = Aor::from_uri(NameAddr::parse(&to, "To").unwrap().uri, "To").unwrap();
    let contact = message.value(HeaderKind::Contact).expect("302 has a Contact");
    let home = (0..2).find(|&i| contact.contains(&format!("{}:5060", home_address(i)))).expect("Contact names a home");
    (aor, home)
}

/// Every answer waiting on the sockets now.
fn collect(sockets: &[UdpSocket]) -> Vec<(Aor, usize)> {
    let mut buf = [0u8; 4096];
    sockets.iter().filter_map(|socket| socket.recv(&mut buf).ok().map(|len| answered(&buf[..len]))).collect()
}

/// After the kill: answers still on their way, until two passes 100 ms
/// apart find nothing (the veth delivers within that; at most 50 passes).
fn in_flight(sockets: &[UdpSocket]) -> Vec<(Aor, usize)> {
    let mut answers = Vec::new();
    let mut empty_passes = 0;
    for _ in 0..50 {
        let got = collect(sockets);
        empty_passes = if got.is_empty() { empty_passes + 1 } else { 0 };
        answers.extend(got);
        if empty_passes == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    answers
}

/// Sends the burst, one REGISTER per socket, and SIGKILLs the edge once
/// `KILL_AFTER` answers are in; returns every answer that made it out.
fn burst_until_killed(topology: &mut Topology) -> Vec<(Aor, usize)> {
    // One socket per AOR: an answered client's address is on the fast path.
    let sockets: Vec<UdpSocket> = (0..BURST).map(|_| socket_in(&topology.client, &format!("{CLIENT}:0"))).collect();
    for (i, socket) in sockets.iter().enumerate() {
        socket.set_nonblocking(true).unwrap();
        let port = socket.local_addr().unwrap().port();
        socket.send_to(register(i, port).as_bytes(), SERVICE).unwrap();
    }
    let mut answers = Vec::new();
    // However slowly the daemon answers on a loaded machine: wait for the
    // answers to reach KILL_AFTER (bounded), kill, then collect what it had
    // sent before dying.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "only {} of {BURST} answered in 60 s: never killed", answers.len());
        answers.extend(collect(&sockets));
        std::thread::sleep(Duration::from_millis(2));
    }
    topology.kill_edge();
    answers.extend(in_flight(&sockets));
    assert!(answers.len() < BURST, "the kill landed mid-burst ({} answered)", answers.len());
    answers
}

/// Every answered AOR is in the database, on the home its 302 named.
fn assert_durable(topology: &Topology, answers: &[(Aor, usize)]) -> RedbStore {
    let store = RedbStore::open(&topology.scratch("assignments.redb")).expect("database after the crash");
    for (aor, home) in answers {
        let stored = store.get(aor).unwrap().unwrap_or_else(|| panic!("{aor} was answered but is not in the database"));
        assert_eq!(stored.server, format!("home{home}"), "{aor}");
    }
    store
}

#[test]
fn sigkill_mid_burst_loses_no_answered_assignment() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.start(&[]);
    let answers = burst_until_killed(&mut topology);
    assert_durable(&topology, &answers);
    eprintln!("{} answered before and after SIGKILL, all durable", answers.len());
}

#[test]
fn sigkill_mid_burst_while_a_home_is_down_loses_and_contradicts_nothing() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    // Only home0 answers health checks: home1 is down within a few rounds.
    topology.extra_config = "[health]\ninterval = 0.1\ndown_after = 2\nup_after = 1\n".into();
    start_registrar(&mut topology, 0, Registrar::Own);
    // Every other AOR of the burst was on home1 before the edge started.
    let seeded: Vec<Aor> = (0..BURST).step_by(2).map(burst_aor).collect();
    {
        let store = RedbStore::open(&topology.scratch("assignments.redb")).expect("the edge's database");
        let refs: Vec<&Aor> = seeded.iter().collect();
        store.update_many(&refs, None, &mut |aor, _| Some(Assignment::new(aor.clone(), "home1".into()))).unwrap();
    }
    topology.start(&[]);
    let down = Instant::now() + Duration::from_secs(30);
    while !home1_is_down(&topology) {
        assert!(Instant::now() < down, "home1 was never marked down");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answers = burst_until_killed(&mut topology);
    assert!(answers.iter().all(|(_, home)| *home == 0), "every answer names the live home: {answers:?}");
    let store = assert_durable(&topology, &answers);
    let moved = answers.iter().filter(|(aor, _)| seeded.contains(aor)).count();
    assert!(moved > 0, "some answered clients were home1's");
    for (aor, _) in answers.iter().filter(|(aor, _)| seeded.contains(aor)) {
        assert_eq!(store.get(aor).unwrap().unwrap().generation, 2, "{aor} moved once, off home1");
    }
    eprintln!("{} answered with home1 down ({moved} of them moved off it), all durable", answers.len());
}

fn burst_aor(i: usize) -> Aor {
    Aor::from_canonical(format!("sip:burst{i}@example.net"))
}

fn home1_is_down(topology: &Topology) -> bool {
    let out = topology.cli(&["servers", "--json"]);
    let servers: Vec<ServerStatus> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    servers.iter().any(|s| s.name == "home1" && !s.healthy)
}
