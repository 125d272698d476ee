//! A real softphone through the pool: Debian's baresip, pointed at the
//! service address with the edge's default configuration, in front of stock
//! Kamailio registrars, registers on its first try (baresip reports a 302 to
//! REGISTER as a failed registration), and its next registration from the
//! same socket takes the fast path: dsr and nat, IPv4 and IPv6. SIPVicious'
//! scanners against the service leave behind no more than the flood limits
//! allow, and the phone stays served.

use std::{os::unix::process::CommandExt, process::Stdio};

use redirector_ebpf::Counter;
use redirector_tests::{
    privileged,
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    softphone::Phone,
    topology::{Attach, Family, Topology},
};

/// Runs alice's baresip for a few seconds: it registers, and unregisters
/// when it quits. What it printed.
fn baresip(topology: &Topology, alice: &Phone) -> String {
    String::from_utf8_lossy(&alice.run(topology, 3, &[]).stdout).into_owned()
}

/// Runs SIPVicious' `tool` (svmap, svwar) against the service from the
/// client namespace, bound in time; whether it ran to its end.
fn scan(topology: &Topology, tool: &str, args: &[&str]) -> bool {
    let service = Family::V4.service();
    let (host, port) = (service.ip().to_string(), service.port().to_string());
    let client = Family::V4.client().to_string();
    let mut command = vec!["-s", "KILL", "60", tool, "-p", &port, "-b", &client, "-x", &client];
    command.extend(args);
    command.push(&host);
    let output = topology
        .client
        .command("timeout", &command)
        .process_group(0)
        .stdin(Stdio::null())
        .output()
        .expect("running SIPVicious (apt-get install sipvicious)");
    output.status.success()
}

fn registers_on_the_first_try(mode: &'static str, family: Family) {
    let mut topology = Topology::new(mode, Attach::Skb, 2);
    topology.families = if family == Family::V4 { &[Family::V4] } else { &[Family::V6] };
    topology.first_contact = None;
    topology.extra_config = "[health]\ninterval = 3600\n".into();
    start_registrars(&mut topology, Registrar::Kamailio);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let alice = Phone::new(&topology, "alice", family, 5062);
    let registered = alice.registered();
    let mode = format!("{mode} {family:?}");

    let log = baresip(&topology, &alice);
    assert!(log.contains(&registered), "{mode}: not registered on the first try:\n{log}");
    assert!(!log.contains("302"), "{mode}: {log}");
    assert_eq!(edge.first_contact("proxied"), 1, "{mode}: the REGISTER was proxied to the home server");
    assert_eq!(edge.first_contact("redirected"), 0, "{mode}");
    assert_eq!(edge.first_contact("installed"), 1, "{mode}: and the phone put on the fast path");
    let routes = edge.routes();
    assert_eq!(routes.iter().map(|r| r.aor.as_str()).collect::<Vec<_>>(), [alice.aor()], "{mode}");

    let requests = edge.first_contact("requests");
    let forwarded = edge.kernel(Counter::Forwarded);
    let log = baresip(&topology, &alice);
    assert!(log.contains(&registered), "{mode}: the next registration:\n{log}");
    assert_eq!(edge.first_contact("requests"), requests, "{mode}: it never reached the daemon");
    assert!(edge.kernel(Counter::Forwarded) > forwarded, "{mode}: it went through XDP");
}

#[test]
fn baresip_registers_on_the_first_try_in_dsr_mode() {
    if !privileged() {
        return;
    }
    registers_on_the_first_try("dsr", Family::V4);
}

#[test]
fn baresip_registers_on_the_first_try_in_nat_mode() {
    if !privileged() {
        return;
    }
    registers_on_the_first_try("nat", Family::V4);
}

#[test]
fn ipv6_baresip_registers_on_the_first_try_in_dsr_mode() {
    if privileged() {
        registers_on_the_first_try("dsr", Family::V6);
    }
}

#[test]
fn ipv6_baresip_registers_on_the_first_try_in_nat_mode() {
    if privileged() {
        registers_on_the_first_try("nat", Family::V6);
    }
}

/// svmap and svwar (300 extensions, REGISTER) against the service, as an
/// attacker on the Internet would run them, while baresip is registered:
/// every scan request is answered or refused by the daemon or, once their
/// /24 is throttled, dropped in XDP past the throttle's allowance; what the
/// scans leave behind is bounded by the flood limits (a burst, then a rate
/// per source prefix), and the phone of that /24 registers again through
/// the fast path.
#[test]
fn scanners_leave_no_more_than_the_flood_limits_and_the_phone_stays_served() {
    if !privileged() {
        return;
    }
    const BURST: u64 = 30;
    const PER_SECOND: u64 = 5;
    const THROTTLED: u64 = 20;
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.first_contact = None;
    topology.extra_config = format!(
        "[limits]\nnew_clients_per_prefix = {PER_SECOND}\nnew_clients_burst = {BURST}\nthrottled_datagrams = {THROTTLED}\n"
    );
    start_registrars(&mut topology, Registrar::Kamailio);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let alice = Phone::new(&topology, "alice", Family::V4, 5062);
    let registered = alice.registered();
    assert!(baresip(&topology, &alice).contains(&registered));

    let (requests, started) = (edge.first_contact("requests"), std::time::Instant::now());
    assert!(scan(&topology, "svmap", &[]), "svmap ran to its end");
    assert!(scan(&topology, "svwar", &["-e100-399", "-m", "REGISTER"]), "svwar ran to its end");
    let elapsed = started.elapsed().as_secs() + 1;
    let scanned = edge.first_contact("requests") - requests;
    let dropped = edge.kernel(Counter::DropThrottled);
    assert!(scanned + dropped >= 300, "every extension reached the daemon or the throttle: {scanned} + {dropped}");
    assert_eq!(edge.first_contact("prefixes_throttled"), 1, "the scanners' /24 was throttled in the kernel");
    assert!(dropped > 0, "which dropped what they sent past {THROTTLED} a second: {scanned} in {elapsed} s");
    let left = edge.routes().len() as u64 - 1;
    let bound = BURST + PER_SECOND * elapsed;
    assert!(left <= bound, "{left} assignments left by the scans, more than the limits allow ({bound})");
    assert!(edge.first_contact("rate_limited") > 0, "the rest were refused");
    eprintln!(
        "scans: {scanned} requests in {elapsed} s, {left} assignments left, {} refused, {dropped} dropped in XDP",
        edge.first_contact("rate_limited")
    );

    let forwarded = edge.kernel(Counter::Forwarded);
    let again = baresip(&topology, &alice);
    assert!(again.contains(&registered), "the phone registers again after the scans:\n{again}");
    assert!(edge.kernel(Counter::Forwarded) > forwarded, "through the fast path, though its /24 is throttled");
}
