//! The fast path outlives its daemon. A client streams REGISTERs every 7 ms
//! through XDP to a stock Kamailio registrar; `redirector run` is killed
//! with SIGKILL and started again 2.5 s later. The pinned link kept the
//! program forwarding, so no REGISTER goes unanswered; the restarted daemon
//! adopted the pinned maps (the client never met first contact again, and
//! its home did not change) and swapped its own program into the link. A
//! move made after the restart reaches the adopted entry, and `redirector
//! detach` then removes everything. A watcher whose SUBSCRIBE went through
//! the edge before a kill gets its NOTIFY when its client moves after the
//! restart: the dialogs are kept in the store. So is a client's own
//! ua-profile subscription: the document its home's move changes after the
//! restart is NOTIFYed in the same dialog. So are the health checks'
//! verdicts: a home down before the kill is down after the restart.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use redirector::{
    ops::api::{Entry, ServerStatus},
    sip::{HeaderKind, Message, StartLine},
};
use redirector_tests::{
    operator::{cli_json, routes, wait_until},
    privileged,
    sip_pool::{BackgroundSipp, Registrar, serve_documents, sipp, start_registrars},
    topology::{Attach, CLIENT, Topology, home_address, socket_in, xdp_program},
};

const AOR: &str = "sip:alice@example.test";
const INTERVAL: Duration = Duration::from_millis(7);
const PORT: u16 = 5070;

/// A client re-registering alice from one socket, and what was answered.
struct Stream {
    socket: UdpSocket,
    sent: u32,
    answered: BTreeSet<u32>,
}

impl Stream {
    fn new(topology: &Topology) -> Self {
        let socket = socket_in(&topology.client, &format!("{CLIENT}:{PORT}"));
        socket.set_nonblocking(true).expect("a non-blocking socket");
        Self { socket, sent: 0, answered: BTreeSet::new() }
    }

    fn register(cseq: u32) -> String {
        format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{PORT};branch=z9hG4bKrestart{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{AOR}>;tag=restart\r\nTo: <{AOR}>\r\nCall-ID: restart-stream@client\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:alice@{CLIENT}:{PORT}>\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// Sends one REGISTER every `INTERVAL` for `length`, reading answers.
    fn run_for(&mut self, length: Duration) {
        let service: SocketAddr = redirector_tests::topology::SERVICE.parse().unwrap();
        let end = Instant::now() + length;
        while Instant::now() < end {
            self.sent += 1;
            self.socket.send_to(Self::register(self.sent).as_bytes(), service).expect("sending a REGISTER");
            self.read_answers();
            std::thread::sleep(INTERVAL);
        }
    }

    /// Reads answers until all are in or two seconds pass.
    fn settle(&mut self) {
        let end = Instant::now() + Duration::from_secs(2);
        while self.answered.len() < self.sent as usize && Instant::now() < end {
            self.read_answers();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn read_answers(&mut self) {
        let mut buffer = [0u8; 4096];
        while let Ok(length) = self.socket.recv(&mut buffer) {
            let Ok(message) = Message::parse(&buffer[..length]) else { continue };
            let StartLine::Response { code: 200, .. } = message.start else { continue };
            let cseq: Option<u32> =
                message.value(HeaderKind::CSeq).and_then(|v| v.split_whitespace().next()?.parse().ok());
            self.answered.extend(cseq);
        }
    }

    fn unanswered(&self) -> Vec<u32> {
        (1..=self.sent).filter(|cseq| !self.answered.contains(cseq)).collect()
    }
}

fn home_of(topology: &Topology, aor: &str) -> String {
    routes(topology).into_iter().find(|r| r.aor == aor).expect("the AOR is assigned").server
}

fn entries(topology: &Topology) -> Vec<Entry> {
    cli_json(topology, &["entries", AOR, "--json"])
}

fn first_contacts(topology: &Topology) -> u64 {
    let stats: redirector::ops::api::Stats = cli_json(topology, &["stats", "--json"]);
    stats.first_contact.get("requests").copied().unwrap_or_default()
}

fn fast_path_packets(topology: &Topology, server: &str) -> u64 {
    let servers: Vec<ServerStatus> = cli_json(topology, &["servers", "--json"]);
    servers.into_iter().find(|s| s.name == server).expect("a configured server").packets
}

#[test]
fn a_client_streaming_through_the_fast_path_loses_nothing_across_a_kill_and_restart() {
    if privileged() {
        streams_across_a_restart(None);
    }
}

/// The same across an upgrade: the restarted daemon loads a rebuilt
/// program (the `variant` build, which differs by a no-op) into the link.
#[test]
fn a_client_streaming_through_the_fast_path_loses_nothing_across_an_upgrade() {
    if privileged() {
        let variant =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ebpf-variant/bpfel-unknown-none/release/redirector");
        assert!(std::path::Path::new(variant).exists(), "{variant} (built by redirector-user's build script)");
        streams_across_a_restart(Some(variant));
    }
}

/// Streams through a kill and a restart (loading `object`, if given,
/// instead of the embedded program), then a move, then a detach.
fn streams_across_a_restart(object: Option<&str>) {
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.first_contact = None;
    topology.extra_config = "[health]\ninterval = 3600\n[stats]\ninterval = 0.1\n".into();
    start_registrars(&mut topology, Registrar::Kamailio);
    topology.start(&[]);
    let mut stream = Stream::new(&topology);
    stream.run_for(Duration::from_secs(1));
    let home = home_of(&topology, AOR);
    let before = entries(&topology);
    assert_eq!(before.len(), 1, "alice's socket is on the fast path: {before:?}");
    let (program, tag) = xdp_program(&topology.edge, "e0").expect("the program is attached");

    topology.kill_edge();
    topology.edge_env.extend(object.map(|path| ("REDIRECTOR_XDP_OBJECT", path.to_owned())));
    stream.run_for(Duration::from_millis(2500));
    topology.run_edge();
    let restarted_first_contacts = first_contacts(&topology);
    stream.run_for(Duration::from_secs(1));
    stream.settle();

    assert_eq!(stream.unanswered(), Vec::<u32>::new(), "of {} REGISTERs", stream.sent);
    assert_eq!(home_of(&topology, AOR), home, "alice's home did not change");
    let after = entries(&topology);
    assert_eq!(after.iter().map(|e| (e.client, e.server)).collect::<Vec<_>>(), [(before[0].client, before[0].server)]);
    assert!(after[0].packets > before[0].packets, "the adopted entry kept counting: {after:?}");
    assert_eq!(first_contacts(&topology), restarted_first_contacts, "the restarted daemon never saw alice");
    let (replaced, new_tag) = xdp_program(&topology.edge, "e0").expect("a program is attached");
    assert_ne!(replaced, program, "the restarted daemon's program runs");
    assert_eq!(new_tag != tag, object.is_some(), "a rebuilt program's instructions differ ({tag} -> {new_tag})");

    // A move made now reaches the adopted entry: alice's REGISTERs go to
    // her new home through the fast path, still all answered.
    let other = if home == "home0" { "home1" } else { "home0" };
    let moved = fast_path_packets(&topology, other);
    assert!(topology.cli(&["assign", AOR, other]).status.success());
    stream.run_for(Duration::from_millis(500));
    stream.settle();
    assert_eq!(stream.unanswered(), Vec::<u32>::new(), "of {} REGISTERs, with the move", stream.sent);
    assert_ne!(entries(&topology)[0].server, before[0].server, "the kernel entry follows the move");
    let delivered = topology.stats_when(|_| true);
    let now = delivered.servers.iter().find(|s| s.name == other).map_or(0, |s| s.packets);
    assert!(now > moved, "{other} gets alice's REGISTERs through XDP ({moved} -> {now})");

    let (stopped, attached) = topology.stop_edge();
    assert!(stopped && attached);
    let (detached, gone) = topology.detach_edge();
    assert!(detached && gone, "redirector detach leaves nothing attached or pinned");
}

#[test]
fn a_watcher_recorded_before_a_kill_is_told_when_its_client_moves_after_the_restart() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.extra_config = "[health]\ninterval = 3600\n[stats]\ninterval = 0.1\n".into();
    start_registrars(&mut topology, Registrar::Own);
    topology.start(&[]);
    let registered = sipp(&topology, "reregister_fast_path.xml", 1, 5070);
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stdout));
    let user1 = "sip:user1@example.net";
    let home = home_of(&topology, user1);
    let watcher = BackgroundSipp::spawn(&topology, "watch_until_moved.xml", 5080);
    // The SUBSCRIBE, then the home's 200 confirming it, written to the store.
    topology.stats_when(|stats| stats.watchers.get("dialogs_saved").copied().unwrap_or_default() >= 2);

    topology.kill_edge();
    topology.run_edge();
    let other = if home == "home0" { "home1" } else { "home0" };
    assert!(topology.cli(&["assign", user1, other]).status.success());

    let logged = watcher.wait().unwrap_or_else(|e| panic!("the watcher's scenario failed: {e}"));
    let index = |name: &str| name.trim_start_matches("home").parse::<usize>().unwrap();
    let homes = format!("homes {} {}", home_address(index(&home)), home_address(index(other)));
    assert!(logged.contains(&homes), "expected \"{homes}\" in the watcher's log: {logged}");
    let stats = topology.stats_when(|stats| stats.watchers.get("notifies_answered").copied() == Some(1));
    assert_eq!(stats.watchers.get("notifies_sent").copied(), Some(1), "{:?}", stats.watchers);
}

#[test]
fn a_profile_subscription_made_before_a_kill_gets_its_notify_after_the_restart() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    serve_documents(&mut topology, "[health]\ninterval = 3600\n[stats]\ninterval = 0.1\n");
    start_registrars(&mut topology, Registrar::Own);
    topology.start(&[]);
    let aor = "sip:follow1@example.net";
    // Subscribed and refreshed (both NOTIFYs answered); the subscription
    // is in the store before the refresh's 200 leaves.
    let subscriber = BackgroundSipp::spawn_as(&topology, "profile_subscribe.xml", 5073, "follow");
    topology.stats_when(|stats| {
        let profiles = |name: &str| stats.profiles.get(name).copied().unwrap_or_default();
        profiles("refreshed") == 1 && profiles("notifies_answered") >= 2
    });
    let home = home_of(&topology, aor);

    topology.kill_edge();
    topology.run_edge();
    let other = if home == "home0" { "home1" } else { "home0" };
    assert!(topology.cli(&["assign", aor, other]).status.success());

    let logged = subscriber.wait().unwrap_or_else(|e| panic!("the subscriber's scenario failed: {e}"));
    let index = |name: &str| name.trim_start_matches("home").parse::<usize>().unwrap();
    let registrars =
        format!("registrars sip:{}:5060 sip:{}:5060", home_address(index(&home)), home_address(index(other)));
    assert!(logged.contains(&registrars), "expected \"{registrars}\" in the subscriber's log: {logged}");
    let stats = topology.stats_when(|stats| stats.profiles.get("unsubscribed").copied() == Some(1));
    assert_eq!(stats.profiles.get("changes_notified").copied(), Some(1), "{:?}", stats.profiles);
}

/// A home server down when the daemon is killed is still down when it
/// restarts, before any health check could tell: the verdict is kept.
#[test]
fn a_home_server_down_before_a_kill_is_down_after_the_restart() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.extra_config = "[health]\ninterval = 0.1\ndown_after = 2\nup_after = 1\n".into();
    start_registrars(&mut topology, Registrar::Own);
    topology.start(&[]);
    topology.stop_registrar(1);
    let healthy = |topology: &Topology| -> Vec<(String, bool)> {
        let servers: Vec<ServerStatus> = cli_json(topology, &["servers", "--json"]);
        servers.into_iter().map(|s| (s.name, s.healthy)).collect()
    };
    let expected = [("home0".to_owned(), true), ("home1".to_owned(), false)];
    wait_until(|| healthy(&topology) == expected, "home1 is marked down");

    topology.kill_edge();
    // Health checks an hour apart from now on: only the store can say.
    topology.extra_config = "[health]\ninterval = 3600\n".into();
    std::fs::write(topology.config_path(), topology.config(&[])).expect("rewriting the edge config");
    topology.run_edge();
    assert_eq!(healthy(&topology), expected);
}
