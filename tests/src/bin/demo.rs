//! `cargo xtask demo`: redirector at work. For dsr and nat mode, builds a
//! client, an edge and three home servers (redirector's own registrar) in
//! network namespaces and drives real SIPp registrations through the edge:
//! clients redirected to their home server, registrations arriving through
//! an upstream proxy and proxied, and re-registrations taking the XDP fast
//! path; then a SIPp watcher subscribes to one client, the client's home
//! server is drained, and the watcher is told (NOTIFY) and subscribes again
//! at the new home. Shows what happened per home server, tears everything
//! down, and exits non-zero if any SIPp call failed.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use redirector::ops::api::{Reply, Request};
use redirector_ebpf::Counter;
use redirector_tests::{
    privileged,
    sip_pool::{BackgroundSipp, InProcessEdge, Registrar, sipp, sipp_clients, start_registrars},
    topology::{Attach, Topology, home_address},
};

const HOMES: usize = 3;

/// (scenario, calls, first local port, one client per call, what it shows)
const STEPS: &[(&str, u16, u16, bool, &str)] = &[
    (
        "register_follow_redirect.xml",
        30,
        6000,
        true,
        "clients REGISTER at the service address, follow the 302, 200 from home",
    ),
    (
        "register_via_upstream_proxy.xml",
        10,
        7000,
        false,
        "REGISTERs forwarded by an upstream proxy: proxied, 200 relayed",
    ),
    ("reregister_fast_path.xml", 10, 8000, true, "first contact 302, then the re-REGISTER goes through XDP"),
];

fn run_mode(mode: &'static str) -> bool {
    println!("\n=== {mode} mode: SIPp client -> edge (redirector, native XDP) -> {HOMES} home registrars ===");
    let mut topology = Topology::new(mode, Attach::Native, HOMES);
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let mut ok = true;
    for &(scenario, calls, port, per_client, what) in STEPS {
        let passed = if per_client {
            sipp_clients(&topology, scenario, calls, port, "user")
        } else {
            sipp(&topology, scenario, calls.into(), port).status.success()
        };
        ok &= passed;
        println!("  {:<4} {calls:>3} calls  {what}", if passed { "ok" } else { "FAIL" });
    }
    ok &= watch_through_a_drain(&topology, &edge);
    show(&edge);
    ok
}

/// A watcher of user1 (registered through the upstream proxy step) is told
/// when draining user1's home server moves it, and subscribes again there.
fn watch_through_a_drain(topology: &Topology, edge: &InProcessEdge) -> bool {
    let relayed = edge.first_contact("relayed");
    let watcher = BackgroundSipp::spawn(topology, "watch_until_moved.xml", 9000);
    let waiting = Instant::now();
    while edge.first_contact("relayed") == relayed {
        if waiting.elapsed() > Duration::from_secs(10) {
            println!("  FAIL   1 watch  the watcher's SUBSCRIBE was never answered");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let routes = edge.routes();
    let home = routes.iter().find(|r| r.aor == "sip:user1@example.net").map(|r| r.server.clone()).unwrap_or_default();
    let drained = match edge.daemon.control(Request::Drain { server: home.clone() }) {
        Reply::Moves(moves) => Ok(moves.len()),
        other => Err(other),
    };
    let told = watcher.wait();
    let undrained = edge.daemon.control(Request::Undrain { server: home.clone() });
    let passed = drained.is_ok() && told.is_ok() && matches!(undrained, Reply::Server(_));
    let homes = told.as_deref().unwrap_or_default().lines().find_map(|l| l.split_once("homes ")).map(|(_, h)| h);
    println!(
        "  {:<4}   1 watch  a watcher of user1 gets a NOTIFY when `drain {home}` moves its {} clients, and \
         subscribes again at the new home ({})",
        if passed { "ok" } else { "FAIL" },
        drained.unwrap_or_default(),
        homes.unwrap_or("?").replace(' ', " -> ")
    );
    passed
}

fn show(edge: &InProcessEdge) {
    let counter = |name| edge.first_contact(name);
    println!(
        "\n  edge daemon: {} first contacts: {} redirected, {} proxied ({} responses relayed), {} put on the fast path",
        counter("requests"),
        counter("redirected"),
        counter("proxied"),
        counter("relayed"),
        counter("installed")
    );
    println!(
        "  XDP: {} packets forwarded in the kernel, {} passed up as first contact",
        edge.kernel(Counter::Forwarded),
        edge.kernel(Counter::PassMiss)
    );
    let mut per_home: BTreeMap<String, usize> = BTreeMap::new();
    for route in edge.routes() {
        *per_home.entry(route.server).or_default() += 1;
    }
    println!("\n  {:<8} {:<12} {:>12} {:>22}", "home", "address", "assignments", "XDP packets to it");
    let servers = edge.servers();
    for i in 0..HOMES {
        let name = format!("home{i}");
        let packets = servers.iter().find(|s| s.name == name).map_or(0, |s| s.packets);
        let assigned = per_home.get(&name).copied().unwrap_or(0);
        println!("  {name:<8} {:<12} {assigned:>12} {packets:>22}", home_address(i).to_string());
    }
}

fn main() -> ExitCode {
    if !privileged() {
        return ExitCode::FAILURE;
    }
    let results: Vec<bool> = ["dsr", "nat"].into_iter().map(run_mode).collect();
    println!("\nnamespaces removed");
    if results.iter().all(|&ok| ok) {
        println!("demo: every SIPp call succeeded");
        ExitCode::SUCCESS
    } else {
        println!("demo: some SIPp calls failed (see above)");
        ExitCode::FAILURE
    }
}
