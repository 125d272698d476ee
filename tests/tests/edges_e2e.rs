//! Several edges, one truth (issue #11): two edges in front of one service
//! address, reached over ECMP, share their store through a three-member
//! etcd cluster, in front of stock Kamailio registrars. Assignments agree
//! whichever edge a client came through; a drain on one edge repoints the
//! other's kernel entries; a killed etcd member changes nothing; a killed
//! edge's clients go on through the other with the same homes; a killed
//! leader is replaced and a dead home is still failed over; an edge cut
//! off from etcd serves its known clients, refuses new ones with 503 and
//! moves with an error naming etcd, starts from its local replica if
//! restarted meanwhile, and catches up once it is back. A watcher's dialog
//! and a client's ua-profile subscription held by one edge get their
//! NOTIFY when the other edge moves the client.

use std::collections::BTreeMap;

use redirector::ops::api::{Entry, Stats};
use redirector_tests::{
    operator::{cli_json, routes, wait_until},
    privileged,
    sip_pool::{BackgroundSipp, Registrar, serve_documents, sipp, start_registrars},
    topology::{home_address, home_index},
    two_edges::TwoEdges,
};

/// Health checks fast enough for a failover within the test's bounds.
const HEALTH: &str = "[health]\ninterval = 0.2\ndown_after = 3\nup_after = 3\n";

/// Both edges running on the shared store, every home registering.
fn start(mode: &'static str) -> TwoEdges {
    start_with(mode, Registrar::Kamailio)
}

fn start_with(mode: &'static str, registrar: Registrar) -> TwoEdges {
    let mut two = TwoEdges::new(mode);
    two.pool.extra_config = HEALTH.into();
    start_registrars(&mut two.pool, registrar);
    for edge in 0..2 {
        let store = two.etcd_store(edge);
        two.start_edge(edge, &store);
    }
    two
}

/// Edge `edge`'s assignments: AOR → home.
fn homes(two: &TwoEdges, edge: usize) -> BTreeMap<String, String> {
    routes(two.edge(edge)).into_iter().map(|route| (route.aor, route.server)).collect()
}

/// Waits until both edges hold the same `count` assignments; returns them.
fn agreed(two: &TwoEdges, count: usize) -> BTreeMap<String, String> {
    let agree = || {
        let a = homes(two, 0);
        a.len() == count && a == homes(two, 1)
    };
    wait_until(agree, &format!("both edges hold the same {count} assignments"));
    homes(two, 0)
}

fn stats(two: &TwoEdges, edge: usize) -> Stats {
    cli_json(two.edge(edge), &["stats", "--json"])
}

fn leads(two: &TwoEdges, edge: usize) -> bool {
    stats(two, edge).store.get("leading") == Some(&1)
}

fn entries(two: &TwoEdges, edge: usize, aor: &str) -> Vec<Entry> {
    cli_json(two.edge(edge), &["entries", aor, "--json"])
}

#[test]
fn two_edges_share_assignments_drains_and_failover_through_etcd() {
    if !privileged() {
        return;
    }
    let mut two = start("nat");
    wait_until(|| leads(&two, 0) != leads(&two, 1), "exactly one edge leads");

    // 16 ports: ECMP sends clients through both edges.
    assert!(two.register("shared", 16, 7000), "every REGISTER is answered");
    let assigned = agreed(&two, 16);
    let through = |edge: usize| two.first_contact(edge, "requests");
    assert!(through(0) > 0 && through(1) > 0, "clients came through both edges");

    // A killed etcd member changes nothing: 8 more clients, all answered.
    two.etcd.kill_member(2);
    assert!(two.register("quorum", 8, 7100), "every REGISTER is answered with two of three members");
    let assigned_more = agreed(&two, 24);
    assert!(assigned.iter().all(|(aor, home)| assigned_more.get(aor) == Some(home)), "nobody moved");

    // A drain on edge 0 repoints edge 1's kernel entries.
    let drained = assigned_more.values().next().expect("a home with clients").clone();
    let output = two.cli(0, &["drain", &drained]);
    assert!(output.status.success(), "drain: {}", String::from_utf8_lossy(&output.stderr));
    let after_drain = agreed(&two, 24);
    assert!(after_drain.values().all(|home| *home != drained), "no client left on {drained}");
    let on_edge_1: Vec<(&String, &String)> =
        after_drain.iter().filter(|(aor, _)| !entries(&two, 1, aor).is_empty()).collect();
    assert!(!on_edge_1.is_empty(), "edge 1 holds kernel entries");
    for (aor, home) in &on_edge_1 {
        let slots: Vec<u32> = entries(&two, 1, aor).iter().map(|e| e.server).collect();
        assert!(
            slots.iter().all(|&slot| slot as usize == home_index(home)),
            "{aor}'s entries on edge 1 point at {home}: {slots:?}"
        );
    }
    // A new client another edge gave the drained home before it learned
    // of the drain (written into etcd as that edge would): the leader moves it.
    let straggler = "sip:straggler@example.net";
    let record =
        format!(r#"{{"server":"{drained}","assigned_at":{},"generation":1}}"#, redirector::store::unix_seconds());
    let key = format!("/redirector/test/assignments/{straggler}");
    assert!(two.etcd.etcdctl(two.ns(0), &["put", &key, &record]).status.success(), "writing the straggler");
    let moved_off = || (0..2).all(|edge| homes(&two, edge).get(straggler).is_some_and(|home| *home != drained));
    wait_until(moved_off, &format!("the leader moved the straggler off the drained {drained}"));
    let after_drain = agreed(&two, 25);
    assert!(two.register("shared", 16, 7000), "the drained clients register at their new homes");
    assert!(two.register("quorum", 8, 7100));
    let undrained = two.cli(0, &["undrain", &drained]);
    assert!(undrained.status.success());

    // The leader dies: the other edge leads, keeps every client's home,
    // and fails over a dead home.
    let leader = if leads(&two, 0) { 0 } else { 1 };
    let survivor = 1 - leader;
    two.kill_edge(leader);
    wait_until(|| leads(&two, survivor), "the surviving edge leads");
    assert!(two.register("shared", 16, 7000), "the dead edge's clients go on through the other");
    assert!(two.register("quorum", 8, 7100));
    assert_eq!(homes(&two, survivor), after_drain, "every client kept its home");
    let dead = after_drain.values().next().expect("a home with clients").clone();
    two.pool.stop_registrar(home_index(&dead));
    let failed_over = || homes(&two, survivor).values().all(|home| *home != dead);
    wait_until(failed_over, &format!("the new leader moved every client off the dead {dead}"));
    assert_eq!(homes(&two, survivor).len(), 25, "no assignment lost");
}

#[test]
fn an_edge_cut_off_from_etcd_serves_known_clients_refuses_new_ones_and_catches_up() {
    if !privileged() {
        return;
    }
    let mut two = start("nat");
    assert!(two.register("known", 16, 7200), "every REGISTER is answered");
    let known = agreed(&two, 16);

    two.cut_store(1);
    assert!(two.register("known", 16, 7200), "known clients are answered through both edges");
    let refused_before = two.first_contact(1, "store_unavailable");
    // Some of 16 new clients meet edge 1, which cannot commit them.
    assert!(!two.register("new", 16, 7300), "new clients through the cut-off edge are refused");
    assert!(two.first_contact(1, "store_unavailable") > refused_before, "counted as store_unavailable");
    let figures = stats(&two, 1).store;
    assert!(figures["failures"] > 0, "edge 1 counts its failed etcd requests: {figures:?}");
    let drain = two.cli(1, &["drain", known.values().next().unwrap()]);
    let said = String::from_utf8_lossy(&drain.stderr).to_string() + &String::from_utf8_lossy(&drain.stdout);
    assert!(!drain.status.success() && said.contains("etcd at"), "a move is refused naming etcd: {said}");
    // Edge 0 went on: the new clients it answered are assigned.
    let on_edge_0 = homes(&two, 0).len();
    assert!(on_edge_0 > 16, "edge 0 assigned new clients meanwhile ({on_edge_0})");

    // Restarted while still cut off, edge 1 starts from its local replica:
    // the known clients, from new sockets (so a first contact on either
    // edge), are answered; new ones still are not.
    two.kill_edge(1);
    two.run_edge(1);
    assert_eq!(stats(&two, 1).store["resumes"], 1, "edge 1 resumed from its replica");
    assert!(two.register("known", 16, 7400), "known clients are answered through the restarted edge");
    assert!(!two.register("newer", 16, 7500), "new clients through the cut-off edge are still refused");

    two.restore_store(1);
    wait_until(|| two.register("new", 16, 7300), "after etcd is back, every new client is answered");
    wait_until(|| two.register("newer", 16, 7500), "and the newer ones");
    let caught_up = agreed(&two, 48);
    assert!(known.iter().all(|(aor, home)| caught_up.get(aor) == Some(home)), "no known client moved");
    assert_eq!(stats(&two, 1).store["reloads"], 0, "edge 1 caught up from its replica's revision, reading no more");
}

/// A watcher's dialog is held by the edge its SUBSCRIBE came through; the
/// client it watches is moved on the other edge; the holder tells it.
/// (`redirector home` as registrar: stock Kamailio has no presence module
/// to answer the SUBSCRIBE.)
#[test]
fn a_watcher_is_told_by_the_edge_holding_its_dialog_when_the_other_edge_moves_its_client() {
    if !privileged() {
        return;
    }
    let two = start_with("nat", Registrar::Own);
    let registered = sipp(&two.pool, "register_expect_200.xml", 1, 5070);
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stdout));
    let user1 = "sip:user1@example.net";
    let home = agreed(&two, 1)[user1].clone();
    let watcher = BackgroundSipp::spawn(&two.pool, "watch_until_moved.xml", 5080);
    let saved = |edge| stats(&two, edge).watchers.get("dialogs_saved").copied().unwrap_or_default();
    // The SUBSCRIBE, then the home's 200 confirming it.
    wait_until(|| saved(0) + saved(1) >= 2, "the watcher's dialog is kept by the edge it came through");
    let holder = if saved(0) >= 2 { 0 } else { 1 };
    let mover = 1 - holder;

    let other = if home == "home0" { "home1" } else { "home0" };
    let output = two.cli(mover, &["assign", user1, other]);
    assert!(output.status.success(), "assign on edge {mover}: {}", String::from_utf8_lossy(&output.stderr));
    let logged = watcher.wait().unwrap_or_else(|e| panic!("the watcher's scenario failed: {e}"));
    let homes = format!("homes {} {}", home_address(home_index(&home)), home_address(home_index(other)));
    assert!(logged.contains(&homes), "told, it subscribed again at the new home: expected \"{homes}\" in {logged}");
    let counted = |edge, name| stats(&two, edge).watchers.get(name).copied().unwrap_or_default();
    wait_until(|| counted(holder, "notifies_answered") == 1, "the holder counts the NOTIFY answered");
    let sent = |edge| counted(edge, "notifies_sent");
    assert_eq!((sent(holder), sent(mover)), (1, 0), "the edge holding the dialog sent the NOTIFY, the mover none");
}

/// A subscription to one's own profile lives on the edge the client's
/// socket hashes to; a move made through the other edge reaches it through
/// etcd (the follower), which NOTIFYs the new document.
#[test]
fn a_profile_subscription_follows_a_move_made_on_the_other_edge() {
    if !privileged() {
        return;
    }
    let mut two = TwoEdges::new("dsr");
    // The scenario's REGISTER expects the edge's 302 (its socket then is on
    // that edge's fast path).
    two.pool.first_contact = Some("by-via");
    serve_documents(&mut two.pool, "[health]\ninterval = 3600\n");
    start_registrars(&mut two.pool, Registrar::Own);
    for edge in 0..2 {
        let store = two.etcd_store(edge);
        two.start_edge(edge, &store);
    }
    let aor = "sip:follow1@example.net";
    let subscriber = BackgroundSipp::spawn_as(&two.pool, "profile_subscribe.xml", 5073, "follow");
    let profiles = |edge: usize, name: &str| stats(&two, edge).profiles.get(name).copied().unwrap_or_default();
    let subscribed = |edge: usize| profiles(edge, "refreshed") == 1 && profiles(edge, "notifies_answered") >= 2;
    wait_until(|| subscribed(0) || subscribed(1), "the client subscribed and refreshed through one edge");
    let holder = if subscribed(0) { 0 } else { 1 };
    let other = 1 - holder;
    wait_until(|| homes(&two, other).contains_key(aor), "the other edge knows the client's home");
    let home = homes(&two, other)[aor].clone();
    let to = if home == "home0" { "home1" } else { "home0" };
    let moved = two.cli(other, &["assign", aor, to]);
    assert!(moved.status.success(), "assign on edge {other}: {}", String::from_utf8_lossy(&moved.stderr));

    let logged = subscriber.wait().unwrap_or_else(|e| panic!("the subscriber's scenario failed: {e}"));
    let registrar = |name: &str| format!("sip:{}:5060", home_address(home_index(name)));
    let expected = format!("registrars {} {}", registrar(&home), registrar(to));
    assert!(logged.contains(&expected), "expected \"{expected}\" in the subscriber's log: {logged}");
    // The counters are published every 0.1 s.
    wait_until(|| profiles(holder, "changes_notified") == 1, &format!("edge {holder} counts its subscriber told"));
    assert_eq!(profiles(other, "subscriptions_kept"), 0, "edge {other} never held it");
}
