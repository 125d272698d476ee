//! Health checks end to end: a home server whose process dies is marked
//! down, its clients are reassigned, and their
//! next packets reach the new home server through XDP; a SIPp watcher
//! subscribed to a moved client gets the NOTIFY ending its subscription,
//! re-subscribes and gets 200 from the new home server; when the dead
//! server comes back nothing moves back, however many checks it answers.
//! How fast a death is detected is measured by `cargo xtask bench`, not here.

use redirector::ops::api::{Route, ServerStatus};
use redirector_ebpf::Counter;
use redirector_tests::{
    operator::{cli_json, wait_until},
    privileged,
    sip_pool::{BackgroundSipp, InProcessEdge, Registrar, sipp, start_registrar, start_registrars},
    topology::{Attach, Topology, home_address},
};

const INTERVAL: f64 = 0.2;
const DOWN_AFTER: u32 = 3;
const UP_AFTER: u32 = 2;

/// `servers --json`'s view of `server`'s health.
fn healthy(topology: &Topology, server: &str) -> bool {
    let servers: Vec<ServerStatus> = cli_json(topology, &["servers", "--json"]);
    servers.iter().find(|s| s.name == server).expect("server listed").healthy
}

/// Waits (bounded, generously) until the daemon holds `server`'s health to
/// be `wanted`, then checks that the CLI reports the same.
fn wait_health(topology: &Topology, edge: &InProcessEdge, server: &str, wanted: bool) {
    let daemon_says = || edge.servers().into_iter().find(|s| s.name == server).expect("a configured server").healthy;
    wait_until(|| daemon_says() == wanted, &format!("{server} is healthy={wanted}"));
    assert_eq!(healthy(topology, server), wanted, "servers --json agrees that {server} is healthy={wanted}");
}

/// Waits until the health checks have had `rounds` more answers from every server.
fn wait_health_rounds(edge: &InProcessEdge, servers: u64, rounds: u64) {
    let answered = edge.first_contact("pings_answered");
    wait_until(
        || edge.first_contact("pings_answered") >= answered + servers * rounds,
        &format!("{rounds} more health rounds were answered"),
    );
}

fn assert_sipp_ok(topology: &Topology, scenario: &str, port: u16) {
    let output = sipp(topology, scenario, 1, port);
    assert!(output.status.success(), "sipp {scenario}: {}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn a_dead_home_servers_clients_move_and_keep_the_fast_path() {
    if !privileged() {
        return;
    }
    for mode in ["dsr", "nat"] {
        let mut topology = Topology::new(mode, Attach::Native, 2);
        topology.extra_config =
            format!("[health]\ninterval = {INTERVAL}\ndown_after = {DOWN_AFTER}\nup_after = {UP_AFTER}\n");
        start_registrars(&mut topology, Registrar::Own);
        let edge = InProcessEdge::start(&mut topology, &[]);
        assert_sipp_ok(&topology, "reregister_fast_path.xml", 5070);
        let route: Route = cli_json::<Vec<Route>>(&topology, &["routes", "--json"]).pop().unwrap();
        let dead: usize = route.server.trim_start_matches("home").parse().unwrap();
        let survivor = 1 - dead;
        let watcher = BackgroundSipp::spawn(&topology, "watch_until_moved.xml", 5080);
        wait_until(|| edge.first_contact("relayed") >= 1, "the watcher's SUBSCRIBE was answered");

        topology.stop_registrar(dead);
        wait_health(&topology, &edge, &route.server, false);
        let moved: Route = cli_json::<Vec<Route>>(&topology, &["routes", "--json"]).pop().unwrap();
        assert_eq!((moved.server.as_str(), moved.generation), (format!("home{survivor}").as_str(), 2), "{mode}");

        let first_contacts = edge.first_contact("requests");
        let forwarded = edge.kernel(Counter::Forwarded);
        assert_sipp_ok(&topology, "register_expect_200.xml", 5070);
        assert_eq!(edge.first_contact("requests"), first_contacts, "{mode}: the next REGISTER did not need the daemon");
        assert!(edge.kernel(Counter::Forwarded) > forwarded, "{mode}: it went through XDP");
        let sent = edge.servers().into_iter().find(|s| s.name == format!("home{survivor}")).unwrap();
        assert!(sent.packets >= 1, "{mode}: to the surviving home server");

        let logged = watcher.wait().unwrap_or_else(|e| panic!("{mode}: the watcher's scenario failed: {e}"));
        let homes = format!("homes {} {}", home_address(dead), home_address(survivor));
        assert!(logged.contains(&homes), "{mode}: expected \"{homes}\" in the watcher's log: {logged}");
        let watchers = edge.stats().watchers;
        let count = |name: &str| watchers[name];
        assert_eq!((count("notifies_sent"), count("notifies_answered")), (1, 1), "{mode}: {watchers:?}");
        assert!(edge.kernel(Counter::PassSubscribe) >= 2, "{mode}: both SUBSCRIBEs reached the daemon");

        start_registrar(&mut topology, dead, Registrar::Own);
        wait_health(&topology, &edge, &route.server, true);
        // Long enough for anything the return set off: more rounds than it took to come up.
        wait_health_rounds(&edge, 2, u64::from(UP_AFTER) * 3);
        let after: Route = cli_json::<Vec<Route>>(&topology, &["routes", "--json"]).pop().unwrap();
        assert_eq!(after.server, moved.server, "{mode}: nothing moves back when the server returns");
    }
}
