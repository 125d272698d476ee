//! What an operator does to a running edge, for the end-to-end tests: the
//! `redirector` CLI against its control socket, and waits on what it shows.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use redirector::ops::api::Route;

use crate::{
    sip_pool::InProcessEdge,
    topology::{EdgeHost, Topology},
};

/// An edge the `redirector` CLI can be run against (its control socket).
pub trait Control {
    fn cli(&self, args: &[&str]) -> Output;
}

impl Control for Topology {
    fn cli(&self, args: &[&str]) -> Output {
        Topology::cli(self, args)
    }
}

impl Control for EdgeHost {
    fn cli(&self, args: &[&str]) -> Output {
        EdgeHost::cli(self, args)
    }
}

/// `redirector ARGS`, which must succeed; its stdout.
pub fn cli_ok(topology: &impl Control, args: &[&str]) -> String {
    let output = topology.cli(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "redirector {args:?}: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// `redirector ARGS`, which must fail with `message` on stderr.
pub fn cli_refused(topology: &impl Control, args: &[&str], message: &str) {
    let output = topology.cli(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "redirector {args:?} succeeded");
    assert!(stderr.contains(message), "redirector {args:?}: expected {message:?} in: {stderr}");
}

/// `redirector ARGS` (a `--json` one), which must succeed; its answer.
pub fn cli_json<T: serde::de::DeserializeOwned>(topology: &impl Control, args: &[&str]) -> T {
    serde_json::from_str(&cli_ok(topology, args)).unwrap_or_else(|e| panic!("redirector {args:?}: {e}"))
}

/// The assignment table, as `redirector routes --json` gives it.
pub fn routes(topology: &impl Control) -> Vec<Route> {
    cli_json(topology, &["routes", "--json"])
}

/// Waits (bounded, generously: 30 s) until `condition` holds.
pub fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every kernel entry of `aor` (there must be one: its client came straight
/// to us) points at `server`'s SERVERS slot, as the fast path's CLIENTS map
/// holds it. Server `homeN` is in slot N (the config's order, then
/// `servers add`'s, as the tests name them).
pub fn assert_kernel_entries_point_at(edge: &InProcessEdge, aor: &str, server: &str) {
    let slot: u32 = server.trim_start_matches("home").parse().unwrap();
    let entries = edge.entries(aor);
    assert!(!entries.is_empty(), "{aor} has no kernel entry");
    for entry in entries {
        assert_eq!(entry.server, slot, "{aor}'s kernel entry points at {server}");
    }
}
