//! Every XDP behaviour pinned by BPF_PROG_TEST_RUN: input frame → verdict,
//! exact output bytes, and the one counter it was accounted to.

use redirector::kernel::loader::decode_event;
use redirector_ebpf::{Counter, DECAP_PROGRAM, Event, EventKind, FAMILY_V4};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture, HOME1_MAC, HOME2_MAC, HOME5_MAC, OTHER_EDGE_MAC},
    packets::{Datagram, Mac, ethernet, ipip, ipv4_fragment},
    privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP4: &str = "192.0.2.10:5060";
const VIP6: &str = "[2001:db8::10]:5060";

fn from_client(datagram: &Datagram) -> Vec<u8> {
    ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet())
}

/// Runs `frame` and checks the verdict, the output, and that exactly
/// `counter` moved, by one.
fn check(fx: &mut Fixture, frame: &[u8], action: u32, expected: &[u8], counter: Counter) {
    let before = fx.counters();
    let outcome = fx.run(frame);
    assert_eq!(outcome.action, action, "verdict for {frame:02x?}");
    assert_eq!(outcome.frame, expected, "output bytes");
    let after = fx.counters();
    for ((name, was), (_, now)) in before.iter().zip(&after) {
        let expected_delta = u64::from(*name == counter);
        assert_eq!(now - was, expected_delta, "counter {} (expected only {} to count)", name.label(), counter.label());
    }
}

/// `datagram` as the edge sends it in dsr mode: tunnelled from `edge` to `home`.
fn tunnelled(datagram: &Datagram, src: Mac, dst: Mac, vlan: Option<u16>, edge: &str, home: &str) -> Vec<u8> {
    let outer = ipip(edge.parse().unwrap(), home.parse().unwrap(), &datagram.ip_packet());
    ethernet(src, dst, vlan, datagram.ethertype(), &outer)
}

fn check_passed_untouched(fx: &mut Fixture, frame: &[u8], counter: Counter) {
    check(fx, frame, XDP_PASS, frame, counter);
}

#[test]
fn unknown_client_is_passed_to_user_space_untouched() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    check_passed_untouched(&mut fx, &from_client(&Datagram::new("10.0.0.2:7777", VIP4)), Counter::PassMiss);
    check_passed_untouched(&mut fx, &from_client(&Datagram::new("[fd00::2]:7777", VIP6)), Counter::PassMiss);
}

#[test]
fn subscribe_is_passed_to_user_space_even_from_a_known_client() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let subscribe =
        |src| Datagram::new(src, VIP4).with(|d| d.payload = b"SUBSCRIBE sip:bob@example.net SIP/2.0\r\n\r\n".to_vec());
    check_passed_untouched(&mut fx, &from_client(&subscribe("10.0.0.2:5060")), Counter::PassSubscribe);
    check_passed_untouched(&mut fx, &from_client(&subscribe("10.0.0.2:7777")), Counter::PassSubscribe);
    let v6 = Datagram::new("[fd00::2]:5060", VIP6).with(|d| d.payload = b"SUBSCRIBE sip:b@x SIP/2.0\r\n".to_vec());
    check_passed_untouched(&mut fx, &from_client(&v6), Counter::PassSubscribe);
    // Only the exact method: anything else from a known client stays on the fast path.
    for payload in [&b"SUBSCRIB"[..], b"subscribe sip:b@x SIP/2.0\r\n", b"NOTIFY sip:b@x SIP/2.0\r\n"] {
        let datagram = Datagram::new("10.0.0.2:5060", VIP4).with(|d| d.payload = payload.to_vec());
        let expected = tunnelled(&datagram, EDGE_MAC, HOME1_MAC, None, "10.0.0.1", "10.0.0.11");
        check(&mut fx, &from_client(&datagram), XDP_TX, &expected, Counter::Forwarded);
    }
}

#[test]
fn dsr_v4_hit_is_ipip_encapsulated_to_the_home_server() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let datagram = Datagram::new("10.0.0.2:5060", VIP4);
    let expected = tunnelled(&datagram, EDGE_MAC, HOME1_MAC, None, "10.0.0.1", "10.0.0.11");
    check(&mut fx, &from_client(&datagram), XDP_TX, &expected, Counter::Forwarded);
    let stats = fx.dataplane().server_stats(0).unwrap();
    assert_eq!((stats.packets, stats.bytes), (1, from_client(&datagram).len() as u64));
    let dont_fragment = Datagram::new("10.0.0.2:5060", VIP4).with(|d| d.dont_fragment = true);
    let expected = tunnelled(&dont_fragment, EDGE_MAC, HOME1_MAC, None, "10.0.0.1", "10.0.0.11");
    assert_eq!(expected[14 + 6] & 0x40, 0x40, "the outer header copies DF (RFC 2003)");
    check(&mut fx, &from_client(&dont_fragment), XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn dsr_v6_hit_is_ipv6_in_ipv6_encapsulated() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let datagram = Datagram::new("[fd00::2]:5060", VIP6);
    let expected = tunnelled(&datagram, EDGE_MAC, HOME1_MAC, None, "fd00::1", "fd00::11");
    check(&mut fx, &from_client(&datagram), XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn dsr_keeps_the_vlan_tag_and_ipv4_options() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let datagram = Datagram::new("10.0.0.2:5060", VIP4)
        .with(|d| d.ipv4_options = vec![0x01, 0x01, 0x01, 0x00, 0x94, 0x04, 0x00, 0x00]);
    let frame = ethernet(CLIENT_MAC, EDGE_MAC, Some(42), datagram.ethertype(), &datagram.ip_packet());
    let expected = tunnelled(&datagram, EDGE_MAC, HOME1_MAC, Some(42), "10.0.0.1", "10.0.0.11");
    check(&mut fx, &frame, XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn nat_v4_hit_rewrites_both_endpoints_with_valid_checksums() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let datagram = Datagram::new("10.0.0.2:5060", VIP4);
    let rewritten = Datagram::new("10.0.0.1:20000", "10.0.0.11:5060");
    let expected = ethernet(EDGE_MAC, HOME1_MAC, None, rewritten.ethertype(), &rewritten.ip_packet());
    check(&mut fx, &from_client(&datagram), XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn nat_v4_with_options_vlan_and_zero_udp_checksum() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let options = vec![0x94, 0x04, 0x00, 0x00];
    let datagram = Datagram::new("10.0.0.2:5060", VIP4).with(|d| {
        d.ipv4_options = options.clone();
        d.zero_udp_checksum = true;
    });
    let rewritten = Datagram::new("10.0.0.1:20000", "10.0.0.11:5060").with(|d| {
        d.ipv4_options = options.clone();
        d.zero_udp_checksum = true;
    });
    let frame = ethernet(CLIENT_MAC, EDGE_MAC, Some(7), datagram.ethertype(), &datagram.ip_packet());
    let expected = ethernet(EDGE_MAC, HOME1_MAC, Some(7), rewritten.ethertype(), &rewritten.ip_packet());
    check(&mut fx, &frame, XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn nat_v6_hit_rewrites_both_endpoints_with_valid_checksum() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let datagram = Datagram::new("[fd00::2]:5060", VIP6);
    // Static clients get nat ports in config order: fd00::2 is the second.
    let rewritten = Datagram::new("[fd00::1]:20001", "[fd00::11]:5060");
    let expected = ethernet(EDGE_MAC, HOME1_MAC, None, rewritten.ethertype(), &rewritten.ip_packet());
    check(&mut fx, &from_client(&datagram), XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn nat_reply_from_the_home_server_is_rewritten_back_to_the_client() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let reply =
        Datagram::new("10.0.0.11:5060", "10.0.0.1:20000").with(|d| d.payload = b"SIP/2.0 200 OK\r\n\r\n".to_vec());
    let frame = ethernet(HOME1_MAC, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet());
    let back = Datagram::new(VIP4, "10.0.0.2:5060").with(|d| d.payload = reply.payload.clone());
    let expected = ethernet(EDGE_MAC, CLIENT_MAC, None, back.ethertype(), &back.ip_packet());
    check(&mut fx, &frame, XDP_TX, &expected, Counter::NatReply);

    let reply6 = Datagram::new("[fd00::11]:5060", "[fd00::1]:20001");
    let back6 = Datagram::new(VIP6, "[fd00::2]:5060");
    let expected6 = ethernet(EDGE_MAC, CLIENT_MAC, None, back6.ethertype(), &back6.ip_packet());
    check(
        &mut fx,
        &ethernet(HOME1_MAC, EDGE_MAC, None, reply6.ethertype(), &reply6.ip_packet()),
        XDP_TX,
        &expected6,
        Counter::NatReply,
    );
}

#[test]
fn nat_reply_from_anyone_but_the_home_server_is_not_rewritten() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    for spoofed in [
        Datagram::new("10.0.0.12:5060", "10.0.0.1:20000"),
        Datagram::new("10.0.0.11:5061", "10.0.0.1:20000"),
        Datagram::new("10.0.0.11:5060", "10.0.0.1:29999"),
    ] {
        let frame = ethernet(HOME2_MAC, EDGE_MAC, None, spoofed.ethertype(), &spoofed.ip_packet());
        check_passed_untouched(&mut fx, &frame, Counter::NotService);
    }
}

#[test]
fn draining_server_keeps_its_clients_and_down_server_passes_them_up() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let draining = Datagram::new("10.0.0.2:5062", VIP4);
    let expected = tunnelled(&draining, EDGE_MAC, HOME2_MAC, None, "10.0.0.1", "10.0.0.12");
    check(&mut fx, &from_client(&draining), XDP_TX, &expected, Counter::Forwarded);
    check_passed_untouched(&mut fx, &from_client(&Datagram::new("10.0.0.2:5063", VIP4)), Counter::PassServerDown);
}

#[test]
fn server_without_a_resolved_neighbour_is_a_fib_miss_passed_untouched() {
    if !privileged() {
        return;
    }
    for mode in ["dsr", "nat"] {
        let mut fx = Fixture::new(mode);
        let mut events = fx.dataplane().take_events().unwrap();
        check_passed_untouched(&mut fx, &from_client(&Datagram::new("10.0.0.2:5064", VIP4)), Counter::FibMiss);
        let reported = events.next().map(|item| decode_event(&item));
        let home4 = Event { kind: EventKind::FibMiss as u32, server: 3, family: FAMILY_V4, _pad: [0; 3] };
        assert_eq!(reported, Some(Some(home4)), "{mode}: the miss is reported with its server");
        assert!(events.next().is_none(), "{mode}: once");
        check_passed_untouched(&mut fx, &from_client(&Datagram::new("10.0.0.2:7777", VIP4)), Counter::PassMiss);
        assert!(events.next().is_none(), "{mode}: an unknown client is no event");
    }
}

#[test]
fn server_behind_another_interface_is_reached_by_redirect() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let datagram = Datagram::new("10.0.0.2:5065", VIP4);
    let expected = tunnelled(&datagram, OTHER_EDGE_MAC, HOME5_MAC, None, "10.0.0.1", "10.1.0.5");
    check(&mut fx, &from_client(&datagram), XDP_REDIRECT, &expected, Counter::Forwarded);
}

#[test]
fn server_without_an_address_of_the_clients_family_passes() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    // home5 has no IPv6 address; pin an IPv6 client to it.
    let client = redirector::kernel::loader::endpoint("fd00::2".parse().unwrap(), 5070);
    fx.dataplane().install_client(client, redirector_ebpf::ClientEntry { server: 4, ..Default::default() }).unwrap();
    check_passed_untouched(&mut fx, &from_client(&Datagram::new("[fd00::2]:5070", VIP6)), Counter::NoAddressForFamily);
}

#[test]
fn fragments_are_passed_to_the_kernel() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let datagram = Datagram::new("10.0.0.2:5060", VIP4);
    for (more, offset) in [(true, 0), (false, 185), (true, 185)] {
        let frame = ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &ipv4_fragment(&datagram, more, offset));
        check_passed_untouched(&mut fx, &frame, Counter::Fragment);
    }
    // IPv6: a fragment header (44) after the fixed header.
    let mut packet = Datagram::new("[fd00::2]:5060", VIP6).ip_packet();
    packet[6] = 44;
    check_passed_untouched(
        &mut fx,
        &ethernet(CLIENT_MAC, EDGE_MAC, None, etherparse::EtherType::IPV6, &packet),
        Counter::Fragment,
    );
}

#[test]
fn every_truncation_of_the_headers_is_passed_untouched_and_counted_malformed() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let v4 = Datagram::new("10.0.0.2:5060", VIP4);
    let v6 = Datagram::new("[fd00::2]:5060", VIP6);
    let tagged = ethernet(CLIENT_MAC, EDGE_MAC, Some(5), v4.ethertype(), &v4.ip_packet());
    for full in [from_client(&v4), from_client(&v6), tagged] {
        // BPF_PROG_TEST_RUN refuses frames below an Ethernet header (EINVAL),
        // so cuts start there; every shorter-than-whole frame is still
        // shorter than the IP length it claims.
        for len in 14..full.len() {
            check_passed_untouched(&mut fx, &full[..len], Counter::Malformed);
        }
    }
}

#[test]
fn inconsistent_ip_headers_are_passed_untouched_and_counted_malformed() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let good = from_client(&Datagram::new("10.0.0.2:5060", VIP4));
    type Edit = (&'static str, fn(&mut Vec<u8>));
    let edits: [Edit; 4] = [
        ("IHL below 5", |f| f[14] = 0x44),
        ("version 6 in an IPv4 ethertype", |f| f[14] = 0x65),
        ("total length beyond the frame", |f| f[17] = f[17].wrapping_add(1)),
        ("total length below the header", |f| {
            f[16] = 0;
            f[17] = 19
        }),
    ];
    for (what, edit) in edits {
        let mut frame = good.clone();
        edit(&mut frame);
        let outcome = fx.run(&frame);
        assert_eq!((outcome.action, &outcome.frame), (XDP_PASS, &frame), "{what}");
    }
    assert_eq!(fx.counter(Counter::Malformed), 4);
}

#[test]
fn udp_length_lies_to_a_service_are_dropped_and_short_lengths_are_legal() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let datagram = Datagram::new("10.0.0.2:5060", VIP4);
    let good = from_client(&datagram);
    let udp_len_at = 14 + 20 + 4;
    for lie in [7u16, 0, (datagram.payload.len() + 9) as u16] {
        let mut frame = good.clone();
        frame[udp_len_at..udp_len_at + 2].copy_from_slice(&lie.to_be_bytes());
        check(&mut fx, &frame, XDP_DROP, &frame, Counter::Malformed);
    }
    // UDP length below the IP payload: the rest is padding, forwarded as is.
    let mut short = good.clone();
    short[udp_len_at..udp_len_at + 2].copy_from_slice(&8u16.to_be_bytes());
    let outcome = fx.run(&short);
    assert_eq!(outcome.action, XDP_TX);
    assert_eq!(&outcome.frame[14 + 20..], &short[14..], "inner packet carried unchanged");
}

#[test]
fn ethernet_padding_after_the_ip_packet_is_carried_along() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let datagram = Datagram::new("10.0.0.2:5060", VIP4).with(|d| d.payload = b"x".to_vec());
    let mut frame = from_client(&datagram);
    frame.resize(60, 0);
    let rewritten = Datagram::new("10.0.0.1:20000", "10.0.0.11:5060").with(|d| d.payload = b"x".to_vec());
    let mut expected = ethernet(EDGE_MAC, HOME1_MAC, None, rewritten.ethertype(), &rewritten.ip_packet());
    expected.resize(60, 0);
    check(&mut fx, &frame, XDP_TX, &expected, Counter::Forwarded);
}

#[test]
fn traffic_that_is_not_ours_is_passed_untouched() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let other_port = from_client(&Datagram::new("10.0.0.2:5060", "192.0.2.10:5061"));
    let other_address = from_client(&Datagram::new("10.0.0.2:5060", "192.0.2.11:5060"));
    let mut tcp = Datagram::new("10.0.0.2:5060", VIP4).ip_packet();
    tcp[9] = 6;
    let tcp = ethernet(CLIENT_MAC, EDGE_MAC, None, etherparse::EtherType::IPV4, &tcp);
    let arp = ethernet(CLIENT_MAC, [0xff; 6], None, etherparse::EtherType::ARP, &[0u8; 28]);
    let to_edge_not_nat = from_client(&Datagram::new("10.0.0.2:5060", "10.0.0.1:22"));
    for frame in [other_port, other_address, tcp, arp, to_edge_not_nat] {
        check_passed_untouched(&mut fx, &frame, Counter::NotService);
    }
}

#[test]
fn decapsulator_strips_tunnels_from_its_edges_to_its_addresses_only() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    for (edge, home) in [("10.0.0.1", "10.0.0.11"), ("fd00::1", "fd00::11")] {
        fx.dataplane().add_decap_address(home.parse().unwrap()).unwrap();
        fx.dataplane().add_decap_source(edge.parse().unwrap()).unwrap();
    }
    for (client, vip, edge, home) in
        [("10.0.0.2:5060", VIP4, "10.0.0.1", "10.0.0.11"), ("[fd00::2]:5060", VIP6, "fd00::1", "fd00::11")]
    {
        let inner = Datagram::new(client, vip);
        let outcome = fx.run_program(DECAP_PROGRAM, &tunnelled(&inner, EDGE_MAC, HOME1_MAC, Some(3), edge, home));
        assert_eq!(outcome.action, XDP_PASS);
        assert_eq!(outcome.frame, ethernet(EDGE_MAC, HOME1_MAC, Some(3), inner.ethertype(), &inner.ip_packet()));
    }
    assert_eq!(fx.counter(Counter::Decapsulated), 2);
    let elsewhere =
        tunnelled(&Datagram::new("10.0.0.2:5060", VIP4), EDGE_MAC, HOME2_MAC, None, "10.0.0.1", "10.0.0.12");
    let outcome = fx.run_program(DECAP_PROGRAM, &elsewhere);
    assert_eq!((outcome.action, outcome.frame), (XDP_PASS, elsewhere));
    let stranger =
        tunnelled(&Datagram::new("10.0.0.2:5060", VIP4), EDGE_MAC, HOME1_MAC, None, "10.0.0.66", "10.0.0.11");
    let outcome = fx.run_program(DECAP_PROGRAM, &stranger);
    assert_eq!((outcome.action, outcome.frame), (XDP_PASS, stranger), "not from an edge: untouched");
    assert_eq!(fx.counter(Counter::Decapsulated), 2);
}

#[test]
fn an_ip_length_that_cuts_into_the_udp_header_is_malformed() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let v4 = from_client(&Datagram::new("10.0.0.2:5060", VIP4));
    for udp_bytes in 0..8u16 {
        // The frame keeps every byte; only the IP header's length shrinks.
        let mut frame = v4.clone();
        frame[16..18].copy_from_slice(&(20 + udp_bytes).to_be_bytes());
        let check = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..34]).unwrap().to_header().calc_header_checksum();
        frame[24..26].copy_from_slice(&check.to_be_bytes());
        check_passed_untouched(&mut fx, &frame, Counter::Malformed);
    }
    let v6 = from_client(&Datagram::new("[fd00::2]:5060", VIP6));
    for udp_bytes in 0..8u16 {
        let mut frame = v6.clone();
        frame[18..20].copy_from_slice(&udp_bytes.to_be_bytes());
        check_passed_untouched(&mut fx, &frame, Counter::Malformed);
    }
}

#[test]
fn udp_length_lies_and_zero_checksums_over_ipv6_and_on_the_nat_reply_path_are_dropped() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let mut v6 = from_client(&Datagram::new("[fd00::2]:5060", VIP6));
    let udp_len_at = 14 + 40 + 4;
    v6[udp_len_at..udp_len_at + 2].copy_from_slice(&4u16.to_be_bytes());
    check(&mut fx, &v6, XDP_DROP, &v6, Counter::Malformed);
    let mut unchecked = from_client(&Datagram::new("[fd00::2]:5060", VIP6));
    let checksum_at = 14 + 40 + 6;
    unchecked[checksum_at..checksum_at + 2].copy_from_slice(&[0, 0]);
    check(&mut fx, &unchecked, XDP_DROP, &unchecked, Counter::Malformed);
    let reply = Datagram::new("10.0.0.11:5060", "10.0.0.1:20000");
    let mut frame = ethernet(HOME1_MAC, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet());
    let udp_len_at = 14 + 20 + 4;
    frame[udp_len_at..udp_len_at + 2].copy_from_slice(&9000u16.to_be_bytes());
    check(&mut fx, &frame, XDP_DROP, &frame, Counter::Malformed);
}
