//! A `redirector run` killed with SIGKILL in the middle of a burst of new
//! assignments loses none that it answered: every 302 a client received
//! names the server the database holds for that AOR after the crash.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use redirector::{
    sip::{Aor, HeaderKind, Message, NameAddr},
    store::{AssignmentStore, RedbStore},
};
use redirector_tests::{
    privileged,
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

#[test]
fn sigkill_mid_burst_loses_no_answered_assignment() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.start(&[]);
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
    let store = RedbStore::open(&topology.scratch("assignments.redb")).expect("database after the crash");
    for (aor, home) in &answers {
        let stored = store.get(aor).unwrap().unwrap_or_else(|| panic!("{aor} was answered but is not in the database"));
        assert_eq!(stored.server, format!("home{home}"), "{aor}");
    }
    eprintln!("{} answered before and after SIGKILL, all durable", answers.len());
}
