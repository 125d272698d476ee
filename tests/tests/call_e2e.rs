//! Calls between softphones of different homes (issue #16): two Debian
//! baresip phones, alice and bob, in the client namespace, registered
//! through a dsr edge with the default configuration to stock Kamailio
//! homes that route calls (`Registrar::KamailioCalls`). alice calls bob:
//! her home has no binding for bob and sends the INVITE to the edge, which
//! proxies it to bob's home by its Request-URI; bob answers by himself,
//! RTP flows between the phones for a few seconds, alice hangs up. Then
//! bob moves to another home, re-registers, and the next call reaches him
//! there. The cross-home call runs over IPv4 and over IPv6 (an edge and
//! homes configured for IPv6 alone).

use std::time::{Duration, Instant};

use redirector_tests::{
    privileged,
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    softphone::{Call, Phone, Running, on_different_homes},
    topology::{Attach, Family, Topology, home_index},
};

const ALICE_PORT: u16 = 5062;
const BOB_PORT: u16 = 5064;
const CAROL_PORT: u16 = 5066;

/// A dsr edge with its default configuration, for `family` alone, in
/// front of `homes` Kamailio homes that route calls.
fn pool(homes: usize, family: Family) -> (Topology, InProcessEdge) {
    let mut topology = Topology::new("dsr", Attach::Skb, homes);
    topology.families = family.only();
    topology.first_contact = None;
    start_registrars(&mut topology, Registrar::KamailioCalls);
    let edge = InProcessEdge::start(&mut topology, &[]);
    (topology, edge)
}

/// The pool of `pool(homes, family)`, and alice's and bob's phones.
fn alice_and_bob(homes: usize, family: Family) -> (Topology, InProcessEdge, Phone, Phone) {
    let (topology, edge) = pool(homes, family);
    let alice = Phone::new(&topology, "alice", family, ALICE_PORT);
    let bob = Phone::new(&topology, "bob", family, BOB_PORT);
    (topology, edge, alice, bob)
}

/// The test's view of a softphone step: what went wrong is a failure.
fn ok<T>(step: Result<T, String>) -> T {
    step.unwrap_or_else(|error| panic!("{error}"))
}

/// The home server `aor` is assigned to.
fn home_of(edge: &InProcessEdge, aor: &str) -> String {
    edge.home_of(aor).unwrap_or_else(|| panic!("{aor} has no assignment: {:?}", edge.routes()))
}

/// Home `name`'s (`homeN`) address of `family` as SIP writes it in a Via
/// or a Record-Route (an IPv6 one in brackets).
fn address_of(family: Family, name: &str) -> String {
    let address = family.home(home_index(name));
    if address.is_ipv6() { format!("[{address}]") } else { address.to_string() }
}

/// The last `method` request bob's phone received in `call`.
fn received(call: &Call, method: &str) -> String {
    call.received(method).unwrap_or_else(|| panic!("bob got no {method}:\n{}", call.callee))
}

/// alice registers, and bob on another home than hers: their homes.
fn homes_apart(topology: &Topology, edge: &InProcessEdge, alice: &Phone, bob: &Phone) -> (String, String) {
    let homes = ok(on_different_homes(topology, edge, alice, bob));
    (homes.first, homes.second)
}

/// alice calls bob, who is `answering`: the call as both phones saw it.
fn alice_calls_bob(topology: &Topology, alice: &Phone, bob: &Phone, bob_running: &mut Running) -> Call {
    ok(alice.call(topology, bob, bob_running))
}

/// The INVITE bob received in `call` went alice's home → the edge → bob's
/// home over `family`: each home record-routed it, and the edge's Via is
/// in it. The ACK and BYE followed the route set from home to home, past
/// the edge's daemon.
fn assert_path(call: &Call, family: Family, alice_home: &str, bob_home: &str) {
    let invite = received(call, "INVITE");
    assert!(invite.contains(";branch=z9hG4bK-rdr-"), "the edge proxied it:\n{invite}");
    for home in [alice_home, bob_home] {
        let record_route = format!("Record-Route: <sip:{};", address_of(family, home));
        assert!(invite.contains(&record_route), "through {home}:\n{invite}");
    }
    for method in ["ACK", "BYE"] {
        let request = received(call, method);
        assert!(!request.contains("z9hG4bK-rdr-"), "not through the edge's daemon:\n{request}");
        let alice_home_via = format!("Via: SIP/2.0/UDP {};", address_of(family, alice_home));
        assert!(request.contains(&alice_home_via), "from alice's home to bob's:\n{request}");
    }
}

/// alice calls bob on another home, over `family`: the call is set up
/// through the edge's proxy, which relays bob's home's answers, and
/// nobody is assigned anew.
fn calls_across_homes(family: Family) {
    let (topology, edge, alice, bob) = alice_and_bob(2, family);
    let (alice_home, bob_home) = homes_apart(&topology, &edge, &alice, &bob);
    let mut bob_running = ok(bob.answering(&topology));
    let (proxied, relayed) = (edge.first_contact("proxied_for_homes"), edge.first_contact("relayed"));

    let call = alice_calls_bob(&topology, &alice, &bob, &mut bob_running);
    assert_path(&call, family, &alice_home, &bob_home);
    assert!(edge.first_contact("proxied_for_homes") > proxied, "alice's home's INVITE, proxied by the edge");
    assert!(edge.first_contact("relayed") >= relayed + 2, "bob's home's 180 and 200, relayed back");
    assert_eq!(edge.first_contact("unroutable_for_homes"), 0);
    assert_eq!(edge.first_contact("redirected"), 0, "nothing was redirected");
    assert_eq!(home_of(&edge, &alice.aor()), alice_home, "the call assigned nobody anew");
    assert_eq!(home_of(&edge, &bob.aor()), bob_home);
}

#[test]
fn alice_calls_bob_on_another_home_through_the_edge() {
    if privileged() {
        calls_across_homes(Family::V4);
    }
}

#[test]
fn over_ipv6_alice_calls_bob_on_another_home_through_the_edge() {
    if privileged() {
        calls_across_homes(Family::V6);
    }
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
    let (topology, edge, alice, bob) = alice_and_bob(3, Family::V4);
    let carol = Phone::new(&topology, "carol", Family::V4, CAROL_PORT);
    carol.watch(&bob);
    let (alice_home, old_home) = homes_apart(&topology, &edge, &alice, &bob);
    let mut bob_running = ok(bob.answering(&topology));
    let mut carol_running = carol.spawn(&topology, 90, &["-s"]);
    carol_running.wait_for("Subscription-State: active");
    wait_for_subscription(&edge);
    assert_path(&alice_calls_bob(&topology, &alice, &bob, &mut bob_running), Family::V4, &alice_home, &old_home);

    let new_home = ["home0", "home1", "home2"].into_iter().find(|h| *h != alice_home && *h != old_home).unwrap();
    ok(topology.assign(&bob.aor(), new_home));
    let told = carol_running.wait_for("Subscription-State: terminated;reason=deactivated");
    assert!(told.contains(&format!("From: <{}>", bob.aor())), "in carol's dialog with bob:\n{told}");
    drop(bob_running);
    let mut bob_running = ok(bob.answering(&topology));
    let index = home_index(new_home) as u32;
    assert!(edge.entries(&bob.aor()).iter().all(|e| e.server == index), "bob's socket goes to {new_home}");

    let call = alice_calls_bob(&topology, &alice, &bob, &mut bob_running);
    assert_path(&call, Family::V4, &alice_home, new_home);
    let invite = received(&call, "INVITE");
    let old_address = address_of(Family::V4, &old_home);
    assert!(!invite.contains(&format!("sip:{old_address};")), "not through {old_home}:\n{invite}");
    assert_eq!((watchers(&edge, "notifies_sent"), watchers(&edge, "notifies_answered")), (1, 1));
}
