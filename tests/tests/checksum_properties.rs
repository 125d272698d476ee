//! The shared checksum arithmetic on the host against from-scratch
//! computation, and the nat rewrite's composition of it (as
//! `redirector-ebpf/src/xdp/nat.rs` does it) against the checksums
//! etherparse computes for the rewritten packet.
//!
//! On the host, `diff` is the project's model of `bpf_csum_diff`; the
//! kernel's own helper is checked where it runs: `malformed_properties.rs`
//! and `fixtures.rs` recompute the IP and UDP checksums of every frame the
//! real program forwards.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader};
use proptest::prelude::*;
use redirector_ebpf::checksum::{apply_diff, apply_udp_diff, compute, diff};

/// RFC 1071 from scratch, written independently of the code under test.
fn reference(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One's-complement addition of a diff to a complemented checksum, folded
/// one carry at a time (written independently of `checksum::fold`).
fn reference_apply(check: u16, diff: u32) -> u16 {
    let mut sum = u64::from(!check) + u64::from(diff);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Diffs of any size, often ones whose sum with a checksum carries past 32 bits.
fn any_diff() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0xffff_0000u32..=u32::MAX]
}

proptest! {
    #[test]
    fn compute_matches_rfc1071(header in any::<[u8; 20]>()) {
        prop_assert_eq!(compute(&header), reference(&header));
    }

    /// An odd length pads the last byte with a zero (RFC 1071).
    #[test]
    fn compute_matches_rfc1071_over_odd_lengths(short in any::<[u8; 7]>(), long in any::<[u8; 41]>()) {
        prop_assert_eq!(compute(&short), reference(&short));
        prop_assert_eq!(compute(&long), reference(&long));
    }

    #[test]
    fn apply_diff_is_ones_complement_addition(check in any::<u16>(), diff in any_diff()) {
        prop_assert_eq!(apply_diff(check, diff), reference_apply(check, diff));
    }

    /// Changing any 4-byte-aligned field and applying the diff to the old
    /// checksum gives the checksum of the new bytes.
    #[test]
    fn applied_diff_equals_recomputation(
        mut header in any::<[u8; 40]>(),
        field in 0usize..9,
        width in prop::sample::select(vec![4usize, 8, 16, 32]),
        new in any::<[u8; 32]>(),
    ) {
        let start = (field * 4).min(40 - width);
        let check_at = 38;
        header[check_at] = 0;
        header[check_at + 1] = 0;
        let check = reference(&header);
        let covered = if start + width > check_at { check_at - start } else { width } / 4 * 4;
        prop_assume!(covered > 0);
        let old = header[start..start + covered].to_vec();
        header[start..start + covered].copy_from_slice(&new[..covered]);
        let d = diff(&old, &header[start..start + covered], 0);
        let updated = u16::from_ne_bytes(apply_diff(u16::from_ne_bytes(check.to_be_bytes()), d).to_ne_bytes());
        prop_assert_eq!(u16::from_be_bytes(updated.to_ne_bytes()), reference(&header));
    }

    #[test]
    fn udp_zero_checksum_means_none_and_a_computed_zero_is_sent_as_ffff(check in any::<u16>(), d in any::<u32>()) {
        prop_assert_eq!(apply_udp_diff(0, d), 0);
        let updated = apply_udp_diff(check.max(1), d);
        prop_assert_ne!(updated, 0);
        let plain = apply_diff(check.max(1), d);
        prop_assert_eq!(updated, if plain == 0 { 0xffff } else { plain });
    }

    #[test]
    fn seeded_diff_chains(a in any::<[u8; 8]>(), b in any::<[u8; 8]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>()) {
        let chained = diff(&c, &d, diff(&a, &b, 0));
        let whole = diff(&[a.as_slice(), &c].concat(), &[b.as_slice(), &d].concat(), 0);
        prop_assert_eq!(apply_diff(0x1234, chained), apply_diff(0x1234, whole));
    }
}

/// A checksum field as the program updates it: read in native order from
/// its wire bytes, `diff` applied, written back the same way.
fn updated(wire: u16, update: impl Fn(u16) -> u16) -> u16 {
    u16::from_be_bytes(update(u16::from_ne_bytes(wire.to_be_bytes())).to_ne_bytes())
}

fn ports(src: u16, dst: u16) -> [u8; 4] {
    let mut bytes = [0u8; 4];
    bytes[..2].copy_from_slice(&src.to_be_bytes());
    bytes[2..].copy_from_slice(&dst.to_be_bytes());
    bytes
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8], ttl: u8) -> Ipv4Header {
    let mut ip = Ipv4Header::new((8 + payload.len()) as u16, ttl, IpNumber::UDP, src.octets(), dst.octets()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    ip
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8], flow: u32) -> Ipv6Header {
    Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::try_new(flow & 0xfffff).unwrap(),
        payload_length: (8 + payload.len()) as u16,
        next_header: IpNumber::UDP,
        hop_limit: 64,
        source: src.octets(),
        destination: dst.octets(),
    }
}

type Endpoints = ((u16, u16), (u16, u16));

proptest! {
    /// nat over IPv4: the address diff updates the header checksum and
    /// seeds the ports' diff, which updates the UDP checksum.
    #[test]
    fn nat_rewrite_over_ipv4_gives_the_checksums_of_the_rewritten_packet(
        old in any::<(u32, u32)>(),
        new in any::<(u32, u32)>(),
        ((sport, dport), (new_sport, new_dport)) in any::<Endpoints>(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        ttl in any::<u8>(),
    ) {
        let (src, dst) = (Ipv4Addr::from(old.0), Ipv4Addr::from(old.1));
        let (new_src, new_dst) = (Ipv4Addr::from(new.0), Ipv4Addr::from(new.1));
        let before = ipv4_header(src, dst, &payload, ttl);
        let udp = UdpHeader::with_ipv4_checksum(sport, dport, &before, &payload).unwrap();
        let after = ipv4_header(new_src, new_dst, &payload, ttl);
        let expected = UdpHeader::with_ipv4_checksum(new_sport, new_dport, &after, &payload).unwrap();

        let addresses = diff(&[src.octets(), dst.octets()].concat(), &[new_src.octets(), new_dst.octets()].concat(), 0);
        let header = updated(before.header_checksum, |check| apply_diff(check, addresses));
        prop_assert_eq!(header, after.header_checksum);
        let all = diff(&ports(sport, dport), &ports(new_sport, new_dport), addresses);
        prop_assert_eq!(updated(udp.checksum, |check| apply_udp_diff(check, all)), expected.checksum);
    }

    /// nat over IPv6: no header checksum; the addresses' diff seeds the ports'.
    #[test]
    fn nat_rewrite_over_ipv6_gives_the_udp_checksum_of_the_rewritten_packet(
        old in any::<(u128, u128)>(),
        new in any::<(u128, u128)>(),
        ((sport, dport), (new_sport, new_dport)) in any::<Endpoints>(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        flow in any::<u32>(),
    ) {
        let (src, dst) = (Ipv6Addr::from(old.0), Ipv6Addr::from(old.1));
        let (new_src, new_dst) = (Ipv6Addr::from(new.0), Ipv6Addr::from(new.1));
        let udp = UdpHeader::with_ipv6_checksum(sport, dport, &ipv6_header(src, dst, &payload, flow), &payload).unwrap();
        let after = ipv6_header(new_src, new_dst, &payload, flow);
        let expected = UdpHeader::with_ipv6_checksum(new_sport, new_dport, &after, &payload).unwrap();

        let addresses = diff(&[src.octets(), dst.octets()].concat(), &[new_src.octets(), new_dst.octets()].concat(), 0);
        let all = diff(&ports(sport, dport), &ports(new_sport, new_dport), addresses);
        prop_assert_eq!(updated(udp.checksum, |check| apply_udp_diff(check, all)), expected.checksum);
    }
}
