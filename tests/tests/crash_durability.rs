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
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = Instant::now();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(1) {
        let mut got_any = false;
        for socket in &sockets {
            if let Ok(len) = socket.recv(&mut buf) {
                answers.push(answered(&buf[..len]));
                got_any = true;
            }
        }
        if got_any {
            quiet_since = Instant::now();
        }
        if !killed && answers.len() >= KILL_AFTER {
            topology.kill_edge();
            killed = true;
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(killed, "the daemon answered {} of {BURST} within 30 s", answers.len());
    assert!(answers.len() < BURST, "the kill landed mid-burst ({} answered)", answers.len());
    let store = RedbStore::open(&topology.scratch("assignments.redb")).expect("database after the crash");
    for (aor, home) in &answers {
        let stored = store.get(aor).unwrap().unwrap_or_else(|| panic!("{aor} was answered but is not in the database"));
        assert_eq!(stored.server, format!("home{home}"), "{aor}");
    }
    eprintln!("{} answered before and after SIGKILL, all durable", answers.len());
}
