//! Calls between softphones of different homes (issue #16): two Debian
//! baresip phones, alice and bob, in the client namespace, registered
//! through a dsr edge with the default configuration to stock Kamailio
//! homes that route calls (`Registrar::KamailioCalls`). alice calls bob:
//! her home has no binding for bob and sends the INVITE to the edge, which
//! proxies it to bob's home by its Request-URI; bob answers by himself,
//! RTP flows between the phones for a few seconds, alice hangs up. Then
//! bob moves to another home, re-registers, and the next call reaches him
//! there.

use std::time::{Duration, Instant};

use redirector_tests::{
    privileged,
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    softphone::{Phone, Running},
    topology::{Attach, Family, Topology, home_address},
};

const ALICE_PORT: u16 = 5062;
const BOB_PORT: u16 = 5064;
const CAROL_PORT: u16 = 5066;
/// How long alice's phone runs when she calls: the call lasts about as
/// long, then her phone hangs up as it quits.
const CALL_SECONDS: u32 = 6;

/// A dsr edge with its default configuration in front of `homes` Kamailio
/// homes that route calls.
fn pool(homes: usize) -> (Topology, InProcessEdge) {
    let mut topology = Topology::new("dsr", Attach::Skb, homes);
    topology.first_contact = None;
    start_registrars(&mut topology, Registrar::KamailioCalls);
    let edge = InProcessEdge::start(&mut topology, &[]);
    (topology, edge)
}

/// The pool of `pool(homes)`, and alice's and bob's phones.
fn alice_and_bob(homes: usize) -> (Topology, InProcessEdge, Phone, Phone) {
    let (topology, edge) = pool(homes);
    let alice = Phone::new(&topology, "alice", Family::V4, ALICE_PORT);
    let bob = Phone::new(&topology, "bob", Family::V4, BOB_PORT);
    (topology, edge, alice, bob)
}

fn stdout(output: std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Registers `phone` (baresip quits and unregisters after a few seconds):
/// it is assigned a home and put on the fast path.
fn register(topology: &Topology, phone: &Phone) {
    let log = stdout(phone.run(topology, 2, &[]));
    assert!(log.contains(&phone.registered()), "{} not registered:\n{log}", phone.user);
}

/// The home server `aor` is assigned to.
fn home_of(edge: &InProcessEdge, aor: &str) -> String {
    let routes = edge.routes();
    let route = routes.iter().find(|r| r.aor == aor).unwrap_or_else(|| panic!("{aor} has no assignment: {routes:?}"));
    route.server.clone()
}

/// `redirector assign AOR SERVER`, as an operator moves a client.
fn assign(topology: &Topology, aor: &str, server: &str) {
    let output = topology.cli(&["assign", aor, server]);
    assert!(output.status.success(), "assign {aor} {server}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The address of home `name` (`homeN`).
fn address_of(name: &str) -> String {
    home_address(name.trim_start_matches("home").parse().expect("a home's index")).to_string()
}

/// bob's phone, running with a SIP trace, once registered.
fn bob_answering(topology: &Topology, bob: &Phone) -> Running {
    let mut running = bob.spawn(topology, 60, &["-s"]);
    running.wait_for(&bob.registered());
    running
}

/// The (sent, received) RTP packet counts baresip prints when a call ends.
fn rtp_packets(log: &str) -> (u64, u64) {
    let line = log.lines().find(|l| l.starts_with("packets:")).unwrap_or_else(|| panic!("no RTP summary:\n{log}"));
    let counts: Vec<u64> = line.split_whitespace().skip(1).map(|n| n.parse().expect("a packet count")).collect();
    (counts[0], counts[1])
}

/// The last `method` request bob's phone received, as its SIP trace
/// printed it (start line and headers, up to the empty line).
fn received(log: &str, method: &str) -> String {
    let start = log.rfind(&format!("\n{method} sip:")).unwrap_or_else(|| panic!("bob got no {method}:\n{log}"));
    let lines = log[start + 1..].lines().map(|line| line.trim_end_matches('\r'));
    lines.take_while(|line| !line.is_empty()).collect::<Vec<_>>().join("\n")
}

/// alice calls bob for `CALL_SECONDS` and hangs up; both phones saw the
/// call established, bob saw it end by alice's BYE while still running,
/// and RTP flowed both ways. What bob's phone printed.
fn alice_calls_bob(topology: &Topology, alice: &Phone, bob: &Phone, bob_running: &mut Running) -> String {
    let dial = format!("/dial {}", bob.aor());
    let caller = stdout(alice.run(topology, CALL_SECONDS, &["-e", &dial]));
    assert!(caller.contains(&format!("Call established: {}", bob.aor())), "alice's call:\n{caller}");
    let callee = bob_running.wait_for("terminated");
    assert!(callee.contains(&format!("Call established: {}", alice.aor())), "bob's call:\n{callee}");
    // One second of G.711 is 50 packets.
    for (who, log) in [("alice", &caller), ("bob", &callee)] {
        let (sent, received) = rtp_packets(log);
        assert!(sent >= 50 && received >= 50, "{who}'s RTP: {sent} sent, {received} received");
    }
    callee
}

/// alice registers, and bob on another home than hers (moved there if
/// rendezvous hashing put him on hers): their homes.
fn on_different_homes(topology: &Topology, edge: &InProcessEdge, alice: &Phone, bob: &Phone) -> (String, String) {
    register(topology, alice);
    register(topology, bob);
    let alice_home = home_of(edge, &alice.aor());
    let bob_home = if alice_home == "home0" { "home1" } else { "home0" };
    if home_of(edge, &bob.aor()) != bob_home {
        assign(topology, &bob.aor(), bob_home);
    }
    (alice_home, bob_home.to_owned())
}

/// The INVITE bob received (`callee`, his phone's trace) went alice's
/// home → the edge → bob's home: each home record-routed it, and the edge's
/// Via is in it. The ACK and BYE followed the route set from home to home,
/// past the edge's daemon.
fn assert_path(callee: &str, alice_home: &str, bob_home: &str) {
    let invite = received(callee, "INVITE");
    assert!(invite.contains(";branch=z9hG4bK-rdr-"), "the edge proxied it:\n{invite}");
    for home in [alice_home, bob_home] {
        assert!(invite.contains(&format!("Record-Route: <sip:{};", address_of(home))), "through {home}:\n{invite}");
    }
    for method in ["ACK", "BYE"] {
        let request = received(callee, method);
        assert!(!request.contains("z9hG4bK-rdr-"), "not through the edge's daemon:\n{request}");
        let alice_home_via = format!("Via: SIP/2.0/UDP {};", address_of(alice_home));
        assert!(request.contains(&alice_home_via), "from alice's home to bob's:\n{request}");
    }
}

#[test]
fn alice_calls_bob_on_another_home_through_the_edge() {
    if !privileged() {
        return;
    }
    let (topology, edge, alice, bob) = alice_and_bob(2);
    let (alice_home, bob_home) = on_different_homes(&topology, &edge, &alice, &bob);
    let mut bob_running = bob_answering(&topology, &bob);
    let (proxied, relayed) = (edge.first_contact("proxied_for_homes"), edge.first_contact("relayed"));

    let callee = alice_calls_bob(&topology, &alice, &bob, &mut bob_running);
    assert_path(&callee, &alice_home, &bob_home);
    assert!(edge.first_contact("proxied_for_homes") > proxied, "alice's home's INVITE, proxied by the edge");
    assert!(edge.first_contact("relayed") >= relayed + 2, "bob's home's 180 and 200, relayed back");
    assert_eq!(edge.first_contact("unroutable_for_homes"), 0);
    assert_eq!(edge.first_contact("redirected"), 0, "nothing was redirected");
    assert_eq!(home_of(&edge, &alice.aor()), alice_home, "the call assigned nobody anew");
    assert_eq!(home_of(&edge, &bob.aor()), bob_home);
}

/// What the edge did for watchers, by counter.
fn watchers(edge: &InProcessEdge, name: &str) -> u64 {
    edge.stats().watchers[name]
}

/// Polls (bounded) until the edge has recorded a watcher's subscription.
fn wait_for_subscription(edge: &InProcessEdge) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while watchers(edge, "subscriptions_recorded") == 0 {
        assert!(Instant::now() < deadline, "no subscription recorded in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// carol watches bob through the edge; alice calls bob at his home; bob
/// is moved to a third home: carol is told (NOTIFY, deactivated), bob's
/// phone restarts and re-registers from the same socket (the fast path now
/// takes it to his new home), and alice's next call reaches him there,
/// never at his old home, which still holds his stale binding.
#[test]
fn after_bob_moves_his_watcher_is_told_and_the_next_call_reaches_his_new_home() {
    if !privileged() {
        return;
    }
    let (topology, edge, alice, bob) = alice_and_bob(3);
    let carol = Phone::new(&topology, "carol", Family::V4, CAROL_PORT);
    carol.watch(&bob);
    let (alice_home, old_home) = on_different_homes(&topology, &edge, &alice, &bob);
    let mut bob_running = bob_answering(&topology, &bob);
    let mut carol_running = carol.spawn(&topology, 90, &["-s"]);
    carol_running.wait_for("Subscription-State: active");
    wait_for_subscription(&edge);
    assert_path(&alice_calls_bob(&topology, &alice, &bob, &mut bob_running), &alice_home, &old_home);

    let new_home = ["home0", "home1", "home2"].into_iter().find(|h| *h != alice_home && *h != old_home).unwrap();
    assign(&topology, &bob.aor(), new_home);
    let told = carol_running.wait_for("Subscription-State: terminated;reason=deactivated");
    assert!(told.contains(&format!("From: <{}>", bob.aor())), "in carol's dialog with bob:\n{told}");
    drop(bob_running);
    let mut bob_running = bob_answering(&topology, &bob);
    let index: u32 = new_home.trim_start_matches("home").parse().unwrap();
    assert!(edge.entries(&bob.aor()).iter().all(|e| e.server == index), "bob's socket goes to {new_home}");

    let callee = alice_calls_bob(&topology, &alice, &bob, &mut bob_running);
    assert_path(&callee, &alice_home, new_home);
    let invite = received(&callee, "INVITE");
    assert!(!invite.contains(&format!("sip:{};", address_of(&old_home))), "not through {old_home}:\n{invite}");
    assert_eq!((watchers(&edge, "notifies_sent"), watchers(&edge, "notifies_answered")), (1, 1));
}
