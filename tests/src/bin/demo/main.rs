//! `cargo xtask demo`: redirector at work. For dsr and nat mode, builds a
//! client, an edge and three home servers (redirector's own registrar) in
//! network namespaces and drives real SIPp registrations through the edge:
//! clients redirected to their home server, registrations arriving through
//! an upstream proxy and proxied, and re-registrations taking the XDP fast
//! path; one IPv6 client does the same at the IPv6 service address (the
//! edge serves both families); then a SIPp watcher subscribes to one client, the client's home
//! server is drained, and the watcher is told (NOTIFY) and subscribes again
//! at the new home. Shows what happened per home server. Then two real
//! softphones call each other across homes (`call.rs`), and two edges share
//! their store through etcd (`edges.rs`). Tears everything
//! down, and exits non-zero if any SIPp call or any step of the softphone
//! call failed.

mod call;
mod edges;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use redirector::ops::api::{Reply, Request};
use redirector_ebpf::Counter;
use redirector_tests::{
    privileged,
    sip_pool::{BackgroundSipp, InProcessEdge, Registrar, sipp, sipp_clients, sipp_over, start_registrars},
    topology::{Attach, Family, Topology, home_address, home_address_v6},
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
    println!(
        "\n=== {mode} mode: SIPp clients (IPv4, one IPv6) -> edge (redirector, native XDP) -> {HOMES} home registrars ==="
    );
    let mut topology = Topology::new(mode, Attach::Native, HOMES);
    topology.families = &[Family::V4, Family::V6];
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
    ok &= ipv6_client(&topology, &edge, mode);
    ok &= watch_through_a_drain(&topology, &edge);
    show(&edge);
    ok
}

/// One client at the IPv6 service address: 302, then its re-REGISTER goes
/// through XDP to its home server's IPv6 address; shows its fast-path entry.
fn ipv6_client(topology: &Topology, edge: &InProcessEdge, mode: &str) -> bool {
    let client = Family::V6.client();
    let service = Family::V6.service();
    let passed = sipp_over(topology, Family::V6, "reregister_fast_path.xml", 1, 8100, "v6-").status.success();
    let entries = edge.entries("sip:v6-1@example.net");
    let on_fast_path = entries.iter().map(|e| format!("{}, {} forwarded", e.client, e.packets)).collect::<Vec<_>>();
    let how = if mode == "dsr" { "IPv6-in-IPv6" } else { "rewritten" };
    println!(
        "  {:<4}   1 call   an IPv6 client {client} at {service}: 302, then its re-REGISTER goes through XDP \
         ({how}); on the fast path: {}",
        if passed { "ok" } else { "FAIL" },
        if on_fast_path.is_empty() { "nothing".to_owned() } else { on_fast_path.join(", ") }
    );
    passed && !entries.is_empty()
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
    println!("\n  {:<8} {:<12} {:<12} {:>12} {:>18}", "home", "IPv4", "IPv6", "assignments", "XDP packets to it");
    let servers = edge.servers();
    for i in 0..HOMES {
        let name = format!("home{i}");
        let packets = servers.iter().find(|s| s.name == name).map_or(0, |s| s.packets);
        let assigned = per_home.get(&name).copied().unwrap_or(0);
        let (v4, v6) = (home_address(i).to_string(), home_address_v6(i).to_string());
        println!("  {name:<8} {v4:<12} {v6:<12} {assigned:>12} {packets:>18}");
    }
}

fn main() -> ExitCode {
    if !privileged() {
        return ExitCode::FAILURE;
    }
    let mut results: Vec<bool> = ["dsr", "nat"].into_iter().map(run_mode).collect();
    results.push(call::run());
    results.push(edges::run());
    println!("\nnamespaces removed");
    if results.iter().all(|&ok| ok) {
        println!("demo: every SIPp call and the softphone call succeeded");
        ExitCode::SUCCESS
    } else {
        println!("demo: some calls failed (see above)");
        ExitCode::FAILURE
    }
}
