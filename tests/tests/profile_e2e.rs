//! Configuration documents over SIP end to end (RFC 6080 `ua-profile`,
//! `edge::profiles`): SIPp clients in a dsr pool with `[documents]
//! template` set register (a 302 puts their socket on the fast path), then
//! fetch their document once, subscribe to it and get a NOTIFY with the
//! new one when their home is drained, and are refused another client's
//! profile (403) and a malformed SUBSCRIBE (400), both counted. The
//! restart test (a subscription outliving `kill -9`) is in `restart_e2e`.

use redirector_tests::{
    operator::routes,
    privileged,
    sip_pool::{BackgroundSipp, Registrar, serve_documents, sipp_over, start_registrars},
    topology::{Attach, Family, Topology, home_address, home_index},
};

/// A dsr pool of two homes whose edge serves documents.
fn pool() -> Topology {
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    serve_documents(&mut topology, "[health]\ninterval = 3600\n[stats]\ninterval = 0.1\n");
    start_registrars(&mut topology, Registrar::Own);
    topology.start(&[]);
    topology
}

/// `aor`'s home and the registrar URI its document names.
fn registrar_of(topology: &Topology, aor: &str) -> (String, String) {
    let home = routes(topology).into_iter().find(|r| r.aor == aor).expect("the AOR is assigned").server;
    let registrar = format!("sip:{}:5060", home_address(home_index(&home)));
    (home, registrar)
}

fn counter(stats: &redirector::ops::api::Stats, name: &str) -> u64 {
    stats.profiles.get(name).copied().unwrap_or_default()
}

#[test]
fn clients_fetch_and_follow_their_own_profile_and_nothing_else() {
    if !privileged() {
        return;
    }
    let topology = pool();

    // A one-time fetch: 200, then one NOTIFY with the document, ending it.
    let fetched = BackgroundSipp::spawn_as(&topology, "profile_fetch.xml", 5071, "fetch").wait();
    let logged = fetched.unwrap_or_else(|e| panic!("the fetch failed: {e}"));
    let (_, registrar) = registrar_of(&topology, "sip:fetch1@example.net");
    assert!(logged.contains(&format!("fetched {registrar}")), "the document names {registrar}: {logged}");
    let stats = topology.stats_when(|stats| counter(stats, "notifies_answered") >= 1);
    assert_eq!((counter(&stats, "fetched"), counter(&stats, "subscriptions_kept")), (1, 0), "{:?}", stats.profiles);

    // Another client's profile, and a SUBSCRIBE without a From tag.
    let refused = sipp_over(&topology, Family::V4, "profile_refused.xml", 1, 5072, "refused");
    assert!(refused.status.success(), "403 then 400: {}", String::from_utf8_lossy(&refused.stdout));
    let stats = topology.stats_when(|stats| counter(stats, "malformed") >= 1);
    assert_eq!((counter(&stats, "forbidden"), counter(&stats, "malformed")), (1, 1), "{:?}", stats.profiles);

    // A subscription: its document, a refresh, then the move's NOTIFY.
    let aor = "sip:follow1@example.net";
    let subscriber = BackgroundSipp::spawn_as(&topology, "profile_subscribe.xml", 5073, "follow");
    topology.stats_when(|stats| counter(stats, "refreshed") == 1 && counter(stats, "notifies_answered") >= 3);
    let (home, first) = registrar_of(&topology, aor);
    assert!(topology.cli(&["drain", &home]).status.success(), "draining {home}");
    let (moved_to, second) = registrar_of(&topology, aor);
    assert_ne!(moved_to, home);
    let logged = subscriber.wait().unwrap_or_else(|e| panic!("the subscriber's scenario failed: {e}"));
    let expected = format!("registrars {first} {second}");
    assert!(logged.contains(&expected), "expected \"{expected}\" in the subscriber's log: {logged}");
    let stats = topology.stats_when(|stats| counter(stats, "unsubscribed") == 1);
    assert_eq!(counter(&stats, "changes_notified"), 1, "one NOTIFY for the move: {:?}", stats.profiles);
    assert_eq!(counter(&stats, "subscriptions_kept"), 0);
}
