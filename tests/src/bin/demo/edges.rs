//! Two edges, one etcd cluster of three members: SIPp clients register
//! through one service address that the client reaches over both edges
//! (ECMP); both edges hold the same assignments; a drain on edge-a moves
//! edge-b's clients too; edge-a is killed and its clients go on through
//! edge-b with the same homes.

use std::collections::BTreeMap;

use redirector::ops::api::Stats;
use redirector_tests::{
    operator::{cli_json, routes},
    sip_pool::{Registrar, start_registrars},
    two_edges::{EDGE_NAMES, TwoEdges},
};

const CLIENTS: u16 = 16;
const PORT: u16 = 6500;

fn homes(two: &TwoEdges, edge: usize) -> BTreeMap<String, String> {
    routes(two.edge(edge)).into_iter().map(|route| (route.aor, route.server)).collect()
}

fn line(passed: bool, what: String) -> bool {
    println!("  {:<4} {what}", if passed { "ok" } else { "FAIL" });
    passed
}

/// Waits up to 5 s for both edges to hold the same assignments.
fn agree(two: &TwoEdges) -> bool {
    (0..50).any(|_| {
        let same = homes(two, 0) == homes(two, 1);
        if !same {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        same
    })
}

pub fn run() -> bool {
    println!("\n=== two edges (nat) sharing their store through etcd (3 members), one service address over ECMP ===");
    let mut two = TwoEdges::new("nat");
    start_registrars(&mut two.pool, Registrar::Kamailio);
    for edge in 0..2 {
        let store = two.etcd_store(edge);
        two.start_edge(edge, &store);
    }
    let mut ok = line(
        two.register("multi", CLIENTS, PORT),
        format!("{CLIENTS} SIPp clients register through the service address"),
    );
    let met = [0, 1].map(|edge| two.first_contact(edge, "requests"));
    ok &= line(
        met.iter().all(|&n| n > 0),
        format!("ECMP spread them: first contacts {} {}, {} {}", EDGE_NAMES[0], met[0], EDGE_NAMES[1], met[1]),
    );
    ok &= line(agree(&two), format!("both edges hold the same {} assignments", homes(&two, 0).len()));
    let drained = homes(&two, 0).into_values().next().unwrap_or_default();
    let drain = two.cli(0, &["drain", &drained]);
    let moved = agree(&two) && homes(&two, 1).values().all(|home| *home != drained);
    ok &= line(
        drain.status.success() && moved,
        format!("`drain {drained}` on {}: {} follows", EDGE_NAMES[0], EDGE_NAMES[1]),
    );
    let before = homes(&two, 1);
    two.kill_edge(0);
    let again = two.register("multi", CLIENTS, PORT);
    ok &= line(
        again && homes(&two, 1) == before,
        format!("{} killed: every client registers again through {}, same homes", EDGE_NAMES[0], EDGE_NAMES[1]),
    );
    let stats: Stats = cli_json(two.edge(1), &["stats", "--json"]);
    println!("  {} shared store: {:?}", EDGE_NAMES[1], stats.store);
    ok
}
