//! `cargo xtask bench [--quick]`: redirector against the peers a user would
//! pick instead, on this machine, in this run. Every figure is a ratio to
//! something measured in the same invocation, with the raw numbers beside
//! it; a table on stdout and target/bench/bench.json. BENCHMARKS.md
//! describes the method and the peers' configurations.
//!
//! `--quick` scales every section down (one round, no million clients) so
//! that it finishes in under two minutes and CI can run it.

mod cpu;
mod edges;
mod failover;
mod first_contact;
mod flood;
mod kernel_cost;
mod memory;
mod mmsg;
mod peers;
mod population;
mod probes;
mod rebalance;
mod report;
mod restart;
mod server_add;
mod sipp_load;
mod throughput;

use std::time::{Instant, SystemTime};

/// Runs a section (or a few that share their set-up) in quick mode or not.
type Runner = fn(bool) -> Vec<report::Section>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only NAME`: one section (and its companions), when working on it.
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1));
    if !redirector_tests::privileged() {
        return;
    }
    let started = Instant::now();
    let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Each prints as it finishes: the full run takes a while.
    let runners: [(&str, Runner); 9] = [
        ("kernel_cost", |quick| vec![kernel_cost::run(quick)]),
        ("throughput", |quick| vec![throughput::run(quick)]),
        ("first_contact", |quick| vec![first_contact::run(quick)]),
        ("flood", |quick| vec![flood::run(quick)]),
        ("failover", |quick| vec![failover::run(quick)]),
        ("restart", |quick| vec![restart::run(quick)]),
        // Rebalancing and memory share one population of clients.
        ("rebalance", rebalance::run),
        ("edges", edges::run),
        ("probes", |quick| vec![probes::run(quick)]),
    ];
    let mut done = Vec::new();
    for (_, runner) in runners.into_iter().filter(|(name, _)| only.is_none_or(|only| only == name)) {
        for section in runner(quick) {
            section.print();
            done.push(section);
        }
    }
    let path = report::write_json(&done, quick, started_unix).expect("writing target/bench/bench.json");
    println!("\nwrote {} ({:.0} s)", path.display(), started.elapsed().as_secs_f64());
}
