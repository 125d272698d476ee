//! Section 1: per-packet cost of the XDP program through BPF_PROG_TEST_RUN,
//! as ratios to a minimal XDP_PASS program measured the same way in the
//! same run.
//!
//! The kernel does not restore a frame's bytes between repetitions, so a
//! path that rewrites the frame would be a hit only once. Two methods:
//! * `repeat`: one call, 1,000,000 repetitions timed by the kernel. NAT hits
//!   are made fixed points: the rewritten datagram (edge → home) is itself
//!   a pinned client of a service, so every repetition rewrites it to the
//!   same bytes through the full hit path.
//! * `single`: dsr, and nat adding `;rport`, grow the frame, so they have
//!   no fixed point; 1,000,000
//!   calls of one repetition each, every one on a fresh copy, timed by the
//!   kernel per call (which adds the kernel timer's own cost to every case,
//!   the baseline included). A probe's answer has no fixed point either.
//!
//! Every case asserts that all repetitions were counted on its path and
//! that the last ended with its verdict.
//!
//! The hits and nat replies run with next hops kept as the daemon's hop
//! keeper keeps them (resolved from the fixture's tables by the same
//! `Keeper`: home servers' and, in nat mode, replies' to the on-link
//! client); the `FIB fallback` rows run the same packets on fixtures
//! without kept hops, where every packet asks `bpf_fib_lookup` (a missing
//! or stale hop).
//!
//! Two references per method, in the same run: a bare `XDP_PASS` program
//! (what the kernel's test harness costs) and the floor (`redirector_floor`:
//! parse Eth/IPv4/UDP, one hash lookup by source, write the MACs, `XDP_TX`;
//! the least any forwarder does). The program's cases are ratios to the
//! floor; the goals are a hit within 1.5× of it and a miss within
//! 1.2×. Katran's published per-packet cost is shown beside the hits,
//! as a figure from another machine.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use redirector::kernel::{fast_path::monotonic_ns, loader::endpoint};
use redirector_ebpf::{
    CLIENT_CHECKS_REGISTER, CLIENT_SHARED, ClientEntry, Counter, FLOOR_PROGRAM, FloorHop, PASS_PROGRAM,
    REDIRECTOR_PROGRAM, Throttle, aor::aor_hash, source_prefix,
};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture, HOME1_MAC},
    packets::{Datagram, ethernet},
};

use crate::report::{Row, Section, median_by};

const RUNS: u32 = 1_000_000;
const PROBE_PORT: u16 = 5099;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// Katran's own perf mode, 101–119 ns a packet (katran issue #235): on
/// another machine, so a rough scale, not a ratio measured here.
const KATRAN_NS: (f64, f64) = (101.0, 119.0);
/// The goals, as ratios to the floor.
const HIT_GOAL: f64 = 1.5;
const MISS_GOAL: f64 = 1.2;

/// Which fixture a case runs on: a mode, with next hops kept as the
/// daemon keeps them, or with none (every hit asks the FIB, the fallback);
/// or dsr with a prefix throttled and an upstream proxy known, where every
/// miss looks up `THROTTLED` and `PROXIES` (elsewhere nothing is throttled
/// and no proxy known, so a miss skips both).
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Dsr,
    Nat,
    DsrFib,
    NatFib,
    DsrThrottlingWithProxy,
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Repeat,
    Single,
}

struct Case {
    name: &'static str,
    method: Method,
    setup: Setup,
    program: &'static str,
    frame: Vec<u8>,
    counter: Option<Counter>,
    /// The verdict every run must end with.
    action: u32,
}

impl Case {
    fn label(&self) -> String {
        let method = if self.method == Method::Repeat { "repeat" } else { "single" };
        format!("{} ({method})", self.name)
    }

    fn is_reference(&self) -> bool {
        self.program != REDIRECTOR_PROGRAM
    }

    /// The goal for this case, as a ratio to the floor.
    fn goal(&self) -> Option<f64> {
        if self.name.starts_with("hit,") {
            Some(HIT_GOAL)
        } else if self.counter == Some(Counter::PassMiss) {
            Some(MISS_GOAL)
        } else {
            None
        }
    }
}

fn frame(src: &str, dst: &str) -> Vec<u8> {
    let datagram = Datagram::new(src, dst);
    ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet())
}

fn cases() -> Vec<Case> {
    let hit4 = frame("10.0.0.2:5060", "192.0.2.10:5060");
    let hit6 = frame("[fd00::2]:5060", "[2001:db8::10]:5060");
    // A client that asked for rport (`make_nat_hits_fixed_points`).
    let fixed_point4 = frame("10.0.0.1:20000", "10.0.0.11:5060");
    // The same, from a socket shared by several lines: the program reads
    // the From of each request (`make_nat_hits_fixed_points`).
    let shared4 =
        Datagram::new(&format!("10.0.0.1:{SHARED_PORT}"), "10.0.0.11:5060").with(|d| d.payload = line_invite());
    let shared4 = ethernet(CLIENT_MAC, EDGE_MAC, None, shared4.ethertype(), &shared4.ip_packet());
    // The nat fixture's static client has the kernel add rport (it is not
    // known to ask for it), and this request's Via lacks it: the frame
    // grows, so it is timed single.
    let no_rport = Datagram::new("10.0.0.2:5060", "192.0.2.10:5060").with(|d| {
        d.payload =
            b"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n\r\n".to_vec()
    });
    let no_rport = ethernet(CLIENT_MAC, EDGE_MAC, None, no_rport.ethertype(), &no_rport.ip_packet());
    let probe4 = Datagram::new("10.0.0.2:40000", &format!("192.0.2.10:{PROBE_PORT}"))
        .with(|d| d.payload = redirector_ebpf::probe::probe(7).to_vec());
    let probe4 = ethernet(CLIENT_MAC, EDGE_MAC, None, probe4.ethertype(), &probe4.ip_packet());
    // Home1's answer to the nat fixture's static client, by its edge port.
    let reply4 = Datagram::new("10.0.0.11:5060", "10.0.0.1:20000");
    let reply4 = ethernet(HOME1_MAC, EDGE_MAC, None, reply4.ethertype(), &reply4.ip_packet());
    let mut malformed = hit4.clone();
    malformed.truncate(30);
    let case = |name, method, setup, program, frame: &Vec<u8>, counter: Option<Counter>| Case {
        name,
        method,
        setup,
        program,
        frame: frame.clone(),
        counter,
        action: match counter {
            Some(Counter::Forwarded | Counter::ProbeAnswered | Counter::NatReply) => XDP_TX,
            Some(_) => XDP_PASS,
            None if program == FLOOR_PROGRAM => XDP_TX,
            None => XDP_PASS,
        },
    };
    use Method::{Repeat, Single};
    use Setup::{Dsr, DsrFib, DsrThrottlingWithProxy, Nat, NatFib};
    let client_miss = frame("10.0.0.2:7777", "192.0.2.10:5060");
    vec![
        case("baseline: XDP_PASS program", Repeat, Dsr, PASS_PROGRAM, &hit4, None),
        case(FLOOR, Repeat, Dsr, FLOOR_PROGRAM, &hit4, None),
        case("hit, nat, IPv4", Repeat, Nat, REDIRECTOR_PROGRAM, &hit4, Some(Counter::Forwarded)),
        case("hit, nat, IPv6", Repeat, Nat, REDIRECTOR_PROGRAM, &hit6, Some(Counter::Forwarded)),
        case("hit, nat, IPv4, shared socket", Repeat, Nat, REDIRECTOR_PROGRAM, &shared4, Some(Counter::Forwarded)),
        case("miss (first contact)", Repeat, Dsr, REDIRECTOR_PROGRAM, &client_miss, Some(Counter::PassMiss)),
        case(
            "miss (first contact), a prefix throttled, a proxy known",
            Repeat,
            DsrThrottlingWithProxy,
            REDIRECTOR_PROGRAM,
            &client_miss,
            Some(Counter::PassMiss),
        ),
        case(
            "miss from an upstream proxy, one Via (read)",
            Repeat,
            DsrThrottlingWithProxy,
            REDIRECTOR_PROGRAM,
            &frame(&format!("{UPSTREAM_PROXY}:7777"), "192.0.2.10:5060"),
            Some(Counter::PassMiss),
        ),
        case("malformed", Repeat, Dsr, REDIRECTOR_PROGRAM, &malformed, Some(Counter::Malformed)),
        case(
            "not for the service",
            Repeat,
            Dsr,
            REDIRECTOR_PROGRAM,
            &frame("10.0.0.2:5060", "192.0.2.99:5060"),
            Some(Counter::NotService),
        ),
        case("baseline: XDP_PASS program", Single, Dsr, PASS_PROGRAM, &hit4, None),
        case(FLOOR, Single, Dsr, FLOOR_PROGRAM, &hit4, None),
        case("hit, dsr, IPv4", Single, Dsr, REDIRECTOR_PROGRAM, &hit4, Some(Counter::Forwarded)),
        case("hit, dsr, IPv6", Single, Dsr, REDIRECTOR_PROGRAM, &hit6, Some(Counter::Forwarded)),
        case("hit, nat, IPv4", Single, Nat, REDIRECTOR_PROGRAM, &fixed_point4, Some(Counter::Forwarded)),
        case("hit, nat, IPv4, ;rport added", Single, Nat, REDIRECTOR_PROGRAM, &no_rport, Some(Counter::Forwarded)),
        case("FIB fallback: hit, dsr, IPv4", Single, DsrFib, REDIRECTOR_PROGRAM, &hit4, Some(Counter::Forwarded)),
        case("FIB fallback: hit, nat, IPv4", Repeat, NatFib, REDIRECTOR_PROGRAM, &hit4, Some(Counter::Forwarded)),
        case("nat reply, IPv4", Single, Nat, REDIRECTOR_PROGRAM, &reply4, Some(Counter::NatReply)),
        case("FIB fallback: nat reply, IPv4", Single, NatFib, REDIRECTOR_PROGRAM, &reply4, Some(Counter::NatReply)),
        case("probe answered (edge), IPv4", Single, Dsr, REDIRECTOR_PROGRAM, &probe4, Some(Counter::ProbeAnswered)),
    ]
}

/// An address in `PROXIES`: its misses are read for their Vias (dsr).
const UPSTREAM_PROXY: &str = "10.0.0.9";

/// A prefix throttled for the whole run, not the clients' or the proxy's.
const THROTTLED_HOST: &str = "10.0.99.1";

/// Makes every miss of `fx` look up both maps a miss may need: a prefix
/// throttled (not the miss's: it goes up) and an upstream proxy known.
fn throttle_and_know_a_proxy(fx: &mut Fixture) {
    fx.dataplane().add_proxy(UPSTREAM_PROXY.parse().unwrap()).expect("recording a proxy");
    let prefix = source_prefix(&endpoint(THROTTLED_HOST.parse().unwrap(), 0));
    let until = monotonic_ns() + 2 * KEPT_FOR.as_nanos() as u64;
    fx.dataplane().throttle(&[prefix], Throttle::new(until, 0)).expect("throttling a prefix");
}

/// How long the kept hops are vouched for: longer than any run.
const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

const FLOOR: &str = "floor: parse, one lookup, MACs, XDP_TX";

/// The floor forwards the hit frames' client (10.0.0.2:5060) to home1, as
/// the program's IPv4 hit does: its output is its input, a fixed point.
fn load_floor(fx: &mut Fixture) {
    let hop = FloorHop { dst_mac: HOME1_MAC, src_mac: EDGE_MAC };
    fx.dataplane().load_floor(endpoint("10.0.0.2".parse().unwrap(), 5060), hop).expect("loading the floor");
}

/// The edge answers probes to the service at `PROBE_PORT` (an answer is
/// no fixed point: it is timed single).
fn answer_probes(fx: &mut Fixture) {
    let service = endpoint("192.0.2.10".parse().unwrap(), PROBE_PORT);
    fx.dataplane().add_service(service, redirector_ebpf::SERVICE_PROBE).unwrap();
    let keys = redirector::probe::Keys::new(*b"kernel-cost-key!", 300);
    fx.dataplane().set_probe(keys.config_at(1_780_000_000, PROBE_PORT, true)).unwrap();
}

/// The nat port of the shared socket's fixed point.
const SHARED_PORT: u16 = 20002;

/// An INVITE from line1 of a phone, as such phones write one.
fn line_invite() -> Vec<u8> {
    b"INVITE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:20002;branch=z9hG4bK1;rport\r\n\
      Max-Forwards: 70\r\nFrom: \"Line 1\" <sip:line1@example.net>;tag=1\r\nTo: <sip:bob@example.net>\r\n\
      Call-ID: c1@x\r\nCSeq: 1 INVITE\r\nContact: <sip:line1@10.0.0.1:20002>\r\nContent-Length: 0\r\n\r\n"
        .to_vec()
}

/// Makes the nat rewrite a fixed point (see the module docs): the edge's
/// nat endpoint, talking to home1's address as a service, is pinned to home1
/// with the same nat port, as a client that asked for rport (its Via is
/// not scanned); on `SHARED_PORT`, as line1's socket shared with other lines.
fn make_nat_hits_fixed_points(fx: &mut Fixture) {
    let shared = CLIENT_CHECKS_REGISTER | CLIENT_SHARED;
    let line1 = aor_hash(b"sip:line1@example.net");
    for (edge, home, nat_port, flags, aor_hash) in [
        ("10.0.0.1", "10.0.0.11", 20000, 0, 0),
        ("fd00::1", "fd00::11", 20001, 0, 0),
        ("10.0.0.1", "10.0.0.11", SHARED_PORT, shared, line1),
    ] {
        fx.dataplane().add_service(endpoint(home.parse().unwrap(), 5060), redirector_ebpf::SERVICE_SIP).unwrap();
        let entry = ClientEntry { server: 0, nat_port_be: u16::to_be(nat_port), flags, aor_hash, ..Default::default() };
        fx.dataplane().install_client(endpoint(edge.parse().unwrap(), nat_port), entry).unwrap();
    }
}

/// Average nanoseconds per run, as the kernel timed them.
fn measure(fx: &mut Fixture, case: &Case) -> f64 {
    let before = case.counter.map(|c| fx.counter(c));
    let ctx_bytes = fx.xdp_md(&case.frame);
    let (calls, repeat) = match case.method {
        Method::Repeat => (1, RUNS),
        Method::Single => (RUNS, 1),
    };
    let mut total_ns = 0u128;
    let mut action = None;
    {
        let _inside = fx.ns.enter();
        let program = fx.dataplane().program(case.program).expect("program");
        for _ in 0..calls {
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(&case.frame),
                    ctx_in: Some(&ctx_bytes),
                    repeat,
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            total_ns += result.duration.as_nanos();
            action = Some(result.return_value);
        }
    }
    assert_eq!(action, Some(case.action), "{}: the verdict", case.name);
    if let (Some(counter), Some(before)) = (case.counter, before) {
        let moved = fx.counter(counter) - before;
        assert_eq!(moved, u64::from(RUNS), "{}: every run must be counted as {}", case.name, counter.label());
    }
    total_ns as f64 / f64::from(calls)
}

pub fn run(quick: bool) -> Section {
    let rounds = if quick { 1 } else { 5 };
    let mut fixtures =
        [Fixture::new("dsr"), Fixture::new("nat"), Fixture::new("dsr"), Fixture::new("nat"), Fixture::new("dsr")];
    answer_probes(&mut fixtures[0]);
    load_floor(&mut fixtures[0]);
    throttle_and_know_a_proxy(&mut fixtures[Setup::DsrThrottlingWithProxy as usize]);
    for nat in [1, 3] {
        make_nat_hits_fixed_points(&mut fixtures[nat]);
    }
    // Vouched for the whole run: no daemon renews the lease here.
    let _keepers = [fixtures[0].keep_hops(KEPT_FOR), fixtures[1].keep_hops(KEPT_FOR)];
    let cases = cases();
    // Rounds interleave the cases so drift on a shared 2-core machine hits all alike.
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (case, out) in cases.iter().zip(&mut samples) {
            out.push(measure(&mut fixtures[case.setup as usize], case));
        }
    }
    let mut section = Section::new(
        "kernel_cost",
        format!("1. XDP per-packet cost, BPF_PROG_TEST_RUN, {RUNS} runs per case, median of {rounds} round(s)"),
    );
    let medians: Vec<f64> = samples.into_iter().map(|s| median_by(s, |ns| *ns).expect("one round at least")).collect();
    let reference = |case: &Case, program| {
        let found = cases.iter().zip(&medians).find(|(c, _)| c.method == case.method && c.program == program);
        let (reference, &ns) = found.expect("each method has a baseline and a floor");
        (reference.label(), ns)
    };
    for (case, &ns) in cases.iter().zip(&medians) {
        let (pass_label, pass_ns) = reference(case, PASS_PROGRAM);
        let (floor_label, floor_ns) = reference(case, FLOOR_PROGRAM);
        let row = Row::new(case.label(), ns, "ns/packet");
        let mut row = if case.is_reference() {
            row.against(pass_label, pass_ns)
        } else {
            row.against(floor_label, floor_ns).raw("x_xdp_pass", ns / pass_ns)
        };
        if let Some(goal) = case.goal() {
            row = row.raw("goal_x_floor", goal);
        }
        if case.name.starts_with("hit,") {
            row = row.raw("x_katran_published", ns / ((KATRAN_NS.0 + KATRAN_NS.1) / 2.0));
        }
        section.rows.push(row);
    }
    section.notes.push(format!(
        "ratio: the program's cases over the floor of their method (goals: hit <= {HIT_GOAL}x, miss <= \
         {MISS_GOAL}x); the two references over XDP_PASS"
    ));
    section.notes.push(format!(
        "x_katran_published: over Katran's own perf-mode figure, {}-{} ns a packet (katran issue #235), \
         measured on another machine: a scale, not a same-run ratio",
        KATRAN_NS.0, KATRAN_NS.1
    ));
    section
}
