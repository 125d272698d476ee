//! Random and mutated frames through the real program (BPF_PROG_TEST_RUN):
//! never `XDP_ABORTED`, always exactly one counter, passed frames untouched,
//! and only well-formed datagrams ever forwarded.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture, HOME1_MAC},
    packets::{Datagram, ethernet},
    privileged,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Frames the program would forward, as starting points for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let v4 = Datagram::new("10.0.0.2:5060", "192.0.2.10:5060");
    let v6 = Datagram::new("[fd00::2]:5060", "[2001:db8::10]:5060");
    let reply = Datagram::new("10.0.0.11:5060", "10.0.0.1:20000");
    vec![
        ethernet(CLIENT_MAC, EDGE_MAC, None, v4.ethertype(), &v4.ip_packet()),
        ethernet(CLIENT_MAC, EDGE_MAC, Some(9), v4.ethertype(), &v4.ip_packet()),
        ethernet(CLIENT_MAC, EDGE_MAC, None, v6.ethertype(), &v6.ip_packet()),
        ethernet(HOME1_MAC, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Set { at: usize, value: u8 },
    Truncate(usize),
    Extend(Vec<u8>),
}

fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let mutation = prop_oneof![
        4 => (0usize..120, any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => (14usize..120).prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Extend),
    ];
    (0..seeds().len(), prop::collection::vec(mutation, 1..6)).prop_map(|(seed, mutations)| {
        let mut frame = seeds()[seed].clone();
        for mutation in mutations {
            match mutation {
                Mutation::Set { at, value } => {
                    let at = at % frame.len();
                    frame[at] = value;
                }
                Mutation::Truncate(len) => frame.truncate(len.max(14)),
                Mutation::Extend(bytes) => frame.extend(bytes),
            }
        }
        frame
    })
}

fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 14..200)
}

/// A forwarded input must have been a consistent IP/UDP datagram.
fn well_formed(frame: &[u8]) -> bool {
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    let ip_ok = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => !ip.header().is_fragmenting_payload(),
        Some(NetSlice::Ipv6(_)) => true,
        _ => false,
    };
    ip_ok && matches!(packet.transport, Some(TransportSlice::Udp(_)))
}

fn check_frame(fx: &mut Fixture, frame: &[u8]) -> Result<(), TestCaseError> {
    let before: u64 = fx.counters().iter().map(|(_, n)| n).sum();
    let outcome = fx.run(frame);
    let after: u64 = fx.counters().iter().map(|(_, n)| n).sum();
    prop_assert!(outcome.action != 0, "XDP_ABORTED for {:02x?}", frame);
    prop_assert_eq!(after - before, 1, "exactly one counter per packet");
    match outcome.action {
        XDP_PASS => prop_assert_eq!(&outcome.frame, frame, "passed frames are untouched"),
        XDP_TX | XDP_REDIRECT => prop_assert!(well_formed(frame), "forwarded a malformed frame {:02x?}", frame),
        _ => {}
    }
    Ok(())
}

fn run_property(mode: &str, strategy: impl Strategy<Value = Vec<u8>>, cases: u32) {
    let fx = std::cell::RefCell::new(Fixture::new(mode));
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner.run(&strategy, |frame| check_frame(&mut fx.borrow_mut(), &frame)).unwrap();
}

#[test]
fn mutated_frames_in_dsr_mode_are_always_counted_and_never_aborted() {
    if !privileged() {
        return;
    }
    run_property("dsr", mutated_frame(), 1500);
}

#[test]
fn mutated_frames_in_nat_mode_are_always_counted_and_never_aborted() {
    if !privileged() {
        return;
    }
    run_property("nat", mutated_frame(), 1500);
}

#[test]
fn random_bytes_are_always_counted_and_never_aborted() {
    if !privileged() {
        return;
    }
    run_property("nat", random_frame(), 1000);
}
