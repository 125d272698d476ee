//! The demo's real call: two Debian baresip softphones, alice and bob,
//! register through a dsr edge with its default configuration (the first
//! REGISTER proxied, the rest on the fast path) in front of two stock
//! Kamailio homes that route calls as the README asks of a home. They land
//! on different homes, and alice calls bob: her home has no binding for
//! him and sends the INVITE to the edge, which proxies it to bob's home by
//! its Request-URI. What a newcomer should see: both registered on the
//! first try, each one's home in `redirector routes`, the call
//! established, RTP counted by both phones, and the hangup.

use redirector_tests::{
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    softphone::{CALL_SECONDS, Call, Homes, Phone, on_different_homes},
    topology::{Attach, Family, Topology, home_index},
};

/// Runs the call; whether every step succeeded.
pub fn run() -> bool {
    println!(
        "\n=== a real call: two baresip softphones (IPv4) -> edge (default configuration, dsr, native XDP) -> 2 Kamailio homes ==="
    );
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    // The daemon's default first contact: real phones do not follow a 302
    // to REGISTER, so the first one is proxied.
    topology.first_contact = None;
    start_registrars(&mut topology, Registrar::KamailioCalls);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let alice = Phone::new(&topology, "alice", Family::V4, 5062);
    let bob = Phone::new(&topology, "bob", Family::V4, 5064);
    register(&topology, &edge, &alice, &bob).is_some_and(|homes| call(&topology, &edge, [&alice, &bob], &homes))
}

/// Both phones register on their first try, on different homes; shows
/// `redirector routes`. Their homes, unless a step failed.
fn register(topology: &Topology, edge: &InProcessEdge, alice: &Phone, bob: &Phone) -> Option<Homes> {
    let homes = printed("registration", on_different_homes(topology, edge, alice, bob))?;
    // A 200 within baresip's one short run, its REGISTER proxied: no 302
    // that baresip would have reported as a failure.
    let first_try = edge.first_contact("redirected") == 0 && edge.first_contact("proxied") >= 2;
    for phone in [alice, bob] {
        println!(
            "  {:<4} {} registered on the first try (its REGISTER proxied to its home, no 302): baresip printed \"{}\"",
            status(first_try),
            phone.aor(),
            phone.registered()
        );
    }
    if homes.moved {
        println!("  ok   both hashed to {}: `redirector assign {} {}` moved bob", homes.first, bob.aor(), homes.second);
    }
    let routes = topology.cli(&["routes"]);
    println!("\n  $ redirector routes");
    for line in String::from_utf8_lossy(&routes.stdout).lines() {
        println!("    {line}");
    }
    println!();
    (first_try && routes.status.success()).then_some(homes)
}

/// bob's phone answers; alice calls him for `CALL_SECONDS` and hangs up.
fn call(topology: &Topology, edge: &InProcessEdge, [alice, bob]: [&Phone; 2], homes: &Homes) -> bool {
    let Some(mut bob_running) = printed("bob's phone", bob.answering(topology)) else {
        return false;
    };
    let proxied = edge.first_contact("proxied_for_homes");
    println!("  ..   alice dials {} and talks for {CALL_SECONDS} s", bob.aor());
    let Some(call) = printed("the call", alice.call(topology, bob, &mut bob_running)) else {
        return false;
    };
    let proxied = edge.first_contact("proxied_for_homes") - proxied;
    println!(
        "  {:<4} call established on both phones: INVITE alice -> {} -> edge ({proxied} proxied by Request-URI) \
         -> {} -> bob, 180 and 200 back",
        status(proxied > 0),
        homes.first,
        homes.second
    );
    let ((alice_sent, alice_got), (bob_sent, bob_got)) = (call.caller_rtp, call.callee_rtp);
    println!(
        "  ok   RTP, phone to phone: alice sent {alice_sent} packets and received {alice_got}, bob sent {bob_sent} \
         and received {bob_got}"
    );
    let (vias, home_to_home) = bye_path(&call, &homes.first);
    println!(
        "  {:<4} alice hung up: her BYE went alice -> {} -> {} -> bob along the dialog's route set, not through \
         the edge's daemon (its Vias at bob, last hop first: {vias}; a dsr home sends from the service address)",
        status(home_to_home),
        homes.first,
        homes.second
    );
    proxied > 0 && home_to_home
}

/// The hosts of the Vias in the BYE bob received, and whether it came
/// from alice's home (`alice_home`) without the edge's daemon in its path
/// (no Via of its own): in the dialog, the route set goes home to home.
fn bye_path(call: &Call, alice_home: &str) -> (String, bool) {
    let bye = call.received("BYE").unwrap_or_default();
    let hosts: Vec<&str> =
        bye.lines().filter_map(|l| l.strip_prefix("Via: SIP/2.0/UDP ")).filter_map(|v| v.split(';').next()).collect();
    let alice_home = Family::V4.home(home_index(alice_home)).to_string();
    (hosts.join(" <- "), hosts.contains(&alice_home.as_str()) && !bye.contains("z9hG4bK-rdr-"))
}

fn status(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAIL" }
}

/// A step's outcome, with what went wrong printed if it failed.
fn printed<T>(step: &str, outcome: Result<T, String>) -> Option<T> {
    outcome.map_err(|error| println!("  FAIL {step}: {error}")).ok()
}
