//! Assignments expire end to end: with a short `[store] expire_after`, a
//! client that stops sending loses its assignment (routes), its kernel
//! entries (entries, and its next REGISTER meets first contact again) and
//! its place in the counts (servers), while a client that keeps sending on
//! the fast path (the kernel's `last_seen` advancing, no first contact) is
//! kept; and when each was last seen outlives a daemon restart.

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redirector::ops::api::{Client, Route};
use redirector_tests::{
    privileged,
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    topology::{Attach, CLIENT, SERVICE, Topology, receive, socket_in},
};

const LEAVER: &str = "sip:leaver@example.net";
const KEEPER: &str = "sip:keeper@example.net";

fn topology(expire_after: u64) -> Topology {
    let mut topology = Topology::new("nat", Attach::Skb, 2);
    topology.extra_config = format!("[store]\nexpire_after = {expire_after}\n");
    start_registrars(&mut topology, Registrar::Own);
    topology
}

/// A REGISTER for `user` from `port`.
fn register(user: &str, port: u16, seq: u32) -> String {
    format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{port};branch=z9hG4bKexp{user}{seq};rport\r\n\
         To: <sip:{user}@example.net>\r\nFrom: <sip:{user}@example.net>;tag=exp\r\nCall-ID: exp-{user}@c\r\n\
         CSeq: {seq} REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Sends `user`'s REGISTER from `socket` and returns the first answer's
/// status line.
fn answer_to_register(socket: &UdpSocket, user: &str, port: u16, seq: u32) -> String {
    socket.send_to(register(user, port, seq).as_bytes(), SERVICE).unwrap();
    let answers = receive(socket, 1, Duration::from_secs(10));
    let (_, answer) = answers.first().unwrap_or_else(|| panic!("no answer to {user}'s REGISTER"));
    String::from_utf8_lossy(answer).lines().next().unwrap_or_default().to_owned()
}

/// `user`'s first contact from `port`: the edge answers 302 and puts the
/// socket on the fast path.
fn first_contact(topology: &Topology, user: &str, port: u16) -> UdpSocket {
    let socket = socket_in(&topology.client, &format!("{CLIENT}:{port}"));
    let status = answer_to_register(&socket, user, port, 1);
    assert!(status.starts_with("SIP/2.0 302"), "{user}'s first contact: {status}");
    socket
}

/// Re-REGISTERs every 0.2 s from `socket` (through the fast path) until
/// stopped, or for two minutes at most.
struct KeepSending {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<()>,
}

impl KeepSending {
    fn start(socket: UdpSocket, user: &'static str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let limit = Instant::now() + Duration::from_secs(120);
        let sender = std::thread::spawn(move || {
            let mut seq = 2;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < limit {
                let _ = socket.send_to(register(user, port, seq).as_bytes(), SERVICE);
                let mut buf = [0u8; 2048];
                // Drain the home server's 200s.
                while socket.recv(&mut buf).is_ok() {}
                seq += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self { stop, sender }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.sender.join().unwrap();
    }
}

fn has(routes: &[Route], aor: &str) -> bool {
    routes.iter().any(|route| route.aor == aor)
}

/// Polls the routes (every 0.1 s, for 30 s at most) until `aor` is gone.
fn routes_without(edge: &InProcessEdge, aor: &str) -> Vec<Route> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let routes = edge.routes();
        if !has(&routes, aor) {
            return routes;
        }
        assert!(Instant::now() < deadline, "{aor} never expired; the routes: {routes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assigned_clients(edge: &InProcessEdge) -> u64 {
    edge.servers().iter().map(|server| server.clients).sum()
}

/// `redirector clients --server NAME --json` for every server.
fn clients(topology: &Topology, servers: usize) -> Vec<Client> {
    (0..servers)
        .flat_map(|i| {
            let output = topology.cli(&["clients", "--server", &format!("home{i}"), "--json"]);
            assert!(output.status.success(), "clients: {}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice::<Vec<Client>>(&output.stdout).expect("clients --json")
        })
        .collect()
}

fn unix_now() -> u64 {
    redirector::store::unix_seconds()
}

/// Watches `aor` for `window` (polling every 0.1 s): it stays assigned.
fn stays_assigned(edge: &InProcessEdge, aor: &str, window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert!(has(&edge.routes(), aor), "{aor} expired while it was sending");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_silent_client_expires_and_one_on_the_fast_path_stays() {
    if !privileged() {
        return;
    }
    const EXPIRE_AFTER: u64 = 4;
    let mut topology = topology(EXPIRE_AFTER);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let registered_at = unix_now();
    let leaver = first_contact(&topology, "leaver", 5071);
    let keeper = first_contact(&topology, "keeper", 5072);
    let routes = edge.routes();
    assert!(has(&routes, LEAVER) && has(&routes, KEEPER), "{routes:?}");
    assert_eq!(assigned_clients(&edge), 2);
    assert_eq!((edge.entries(LEAVER).len(), edge.entries(KEEPER).len()), (1, 1), "both on the fast path");
    let listed = clients(&topology, 2);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|c| (registered_at..=unix_now()).contains(&c.last_seen)), "{listed:?}");

    let requests = edge.first_contact("requests");
    let sending = KeepSending::start(keeper, "keeper", 5072);
    let routes = routes_without(&edge, LEAVER);
    assert!(has(&routes, KEEPER), "the client sending on the fast path stays: {routes:?}");
    assert!(edge.entries(LEAVER).is_empty(), "the expired client's kernel entries are gone");
    assert_eq!(assigned_clients(&edge), 1, "and it left the counts");
    // Twice expire_after more on the fast path alone: still kept.
    stays_assigned(&edge, KEEPER, Duration::from_secs(2 * EXPIRE_AFTER));
    assert_eq!(edge.first_contact("requests"), requests, "the keeper was seen only by the kernel");
    let keeper_seen = clients(&topology, 2).into_iter().find(|c| c.aor == KEEPER).expect("keeper listed");
    assert!(keeper_seen.last_seen + 3 >= unix_now(), "clients shows the kernel's sighting: {keeper_seen:?}");
    sending.stop();
    assert_eq!(edge.entries(KEEPER).len(), 1);

    // The expired client's kernel entry is gone: its next REGISTER meets
    // first contact and makes a new assignment.
    let status = answer_to_register(&leaver, "leaver", 5071, 2);
    assert!(status.starts_with("SIP/2.0 302"), "{status}");
    let renewed = edge.routes().into_iter().find(|r| r.aor == LEAVER).expect("assigned again");
    assert_eq!(renewed.generation, 1, "a new assignment: {renewed:?}");
}

#[test]
fn last_seen_survives_a_restart() {
    if !privileged() {
        return;
    }
    const EXPIRE_AFTER: u64 = 10;
    let mut topology = topology(EXPIRE_AFTER);
    {
        let edge = InProcessEdge::start(&mut topology, &[]);
        let registered_at = unix_now();
        first_contact(&topology, "leaver", 5071);
        let keeper = first_contact(&topology, "keeper", 5072);
        let sending = KeepSending::start(keeper, "keeper", 5072);
        // Until the keeper has been seen for half of expire_after (expiry's
        // walks, a second apart, persist it on the way).
        let deadline = Instant::now() + Duration::from_secs(30);
        while clients(&topology, 2).iter().all(|c| c.aor != KEEPER || c.last_seen < registered_at + 5) {
            assert!(Instant::now() < deadline, "the keeper's sighting never advanced");
            std::thread::sleep(Duration::from_millis(100));
        }
        sending.stop();
        let routes = edge.routes();
        assert!(has(&routes, LEAVER) && has(&routes, KEEPER), "neither expired before the restart: {routes:?}");
    }
    let edge = InProcessEdge::start(&mut topology, &[]);
    let routes = routes_without(&edge, LEAVER);
    assert!(has(&routes, KEEPER), "the client seen just before the restart stays after it: {routes:?}");
    assert_eq!(assigned_clients(&edge), 1);
}
