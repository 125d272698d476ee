//! Random and mutated frames through the real program (BPF_PROG_TEST_RUN).
//! Every frame gives a verdict other than `XDP_ABORTED` and moves exactly
//! one counter, the one that agrees with the verdict:
//! * `XDP_PASS`: a pass counter; the frame is untouched.
//! * `XDP_DROP`: `malformed`; the frame is UDP addressed to us (a service,
//!   or the edge on a nat port) whose UDP length or IPv6 checksum is
//!   garbage (rule 4 in `redirector-ebpf/src/xdp/mod.rs`).
//! * `XDP_TX` / `XDP_REDIRECT`: `forwarded` or `nat_reply`; the input was a
//!   well-formed datagram and the output, parsed here independently of the
//!   program, is what the rule says: MACs, VLAN tag, addresses and ports;
//!   IP and UDP checksums (computed here) valid exactly when the input's
//!   were; every other header field and the payload byte-identical, but for
//!   the `;rport` nat adds to a request's top Via (lengths grown with it).
//!
//! The generators aim at the code: seeds for every rule (client hits in
//! both families, VLAN, IPv4 options, SUBSCRIBE, a draining, a down and a
//! FIB-missing home, a home behind another interface, nat replies in both
//! families, fragments, unknown clients), mutations mostly of header bytes,
//! random frames with a valid ethertype and IP version most of the time, and
//! checksums repaired half of the time, so that mutated datagrams are
//! forwarded with valid checksums and the program's rewrites are checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{EtherType, Ipv4Header, Ipv6Header, NetSlice, SlicedPacket, TransportSlice, UdpHeader};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use redirector_ebpf::{
    Counter,
    via::{RPORT, TopVia, VIA_SCAN, top_via},
};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture, HOME1_MAC, HOME2_MAC, HOME5_MAC, OTHER_EDGE_MAC},
    packets::{Datagram, Mac, ethernet, ipv4_fragment},
    privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// The fixture's service and edge addresses (tests/src/fixture.rs).
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const EDGE4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const EDGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const SERVICE_PORT: u16 = 5060;
/// Home servers listen on the SIP port.
const HOME_PORT: u16 = 5060;

/// A client the fixture pins to a home server that forwards: its address,
/// the home's, the next hop's MAC, the nat port the edge gives it (config
/// order, from 20000), and whether the home is behind the other interface.
struct Pinned {
    client: &'static str,
    home: &'static str,
    home_mac: Mac,
    nat_port: u16,
    other_interface: bool,
}

const PINNED: &[Pinned] = &[
    Pinned { client: "10.0.0.2:5060", home: "10.0.0.11", home_mac: HOME1_MAC, nat_port: 20000, other_interface: false },
    Pinned { client: "[fd00::2]:5060", home: "fd00::11", home_mac: HOME1_MAC, nat_port: 20001, other_interface: false },
    Pinned { client: "10.0.0.2:5062", home: "10.0.0.12", home_mac: HOME2_MAC, nat_port: 20002, other_interface: false },
    Pinned { client: "10.0.0.2:5065", home: "10.1.0.5", home_mac: HOME5_MAC, nat_port: 20005, other_interface: true },
];

/// Nat ports of the fixture's six static clients.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 20000..=20005;

impl Pinned {
    fn client(&self) -> SocketAddr {
        self.client.parse().unwrap()
    }

    fn home(&self) -> IpAddr {
        self.home.parse().unwrap()
    }

    fn by_client(client: SocketAddr) -> Option<&'static Pinned> {
        PINNED.iter().find(|p| p.client() == client)
    }

    fn by_nat_port(port: u16) -> Option<&'static Pinned> {
        PINNED.iter().find(|p| p.nat_port == port)
    }
}

fn vip(v6: bool) -> IpAddr {
    if v6 { VIP6.into() } else { VIP4.into() }
}

fn edge(v6: bool) -> IpAddr {
    if v6 { EDGE6.into() } else { EDGE4.into() }
}

fn frame_of(src_mac: Mac, vlan: Option<u16>, datagram: &Datagram) -> Vec<u8> {
    ethernet(src_mac, EDGE_MAC, vlan, datagram.ethertype(), &datagram.ip_packet())
}

/// Starting points for mutation: one per rule of the program.
fn seeds() -> Vec<Vec<u8>> {
    let to_vip4 = |src: &str| Datagram::new(src, "192.0.2.10:5060");
    let v6 = Datagram::new("[fd00::2]:5060", "[2001:db8::10]:5060");
    let subscribe = b"SUBSCRIBE sip:bob@example.net SIP/2.0\r\n\r\n".to_vec();
    // nat adds ;rport to this one's top Via.
    let no_rport = b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK7\r\n\r\n".to_vec();
    let options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
    vec![
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5060")),
        frame_of(CLIENT_MAC, Some(9), &to_vip4("10.0.0.2:5060")),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5060").with(|d| d.ipv4_options = options.clone())),
        frame_of(CLIENT_MAC, Some(7), &to_vip4("10.0.0.2:5062").with(|d| d.zero_udp_checksum = true)),
        frame_of(CLIENT_MAC, None, &v6),
        frame_of(CLIENT_MAC, Some(3), &v6),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5060").with(|d| d.payload = subscribe.clone())),
        frame_of(CLIENT_MAC, None, &v6.clone().with(|d| d.payload = subscribe.clone())),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5060").with(|d| d.payload = no_rport.clone())),
        frame_of(CLIENT_MAC, Some(2), &v6.clone().with(|d| d.payload = no_rport.clone())),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5063")),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5064")),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:5065")),
        frame_of(CLIENT_MAC, None, &to_vip4("10.0.0.2:7777")),
        frame_of(HOME1_MAC, None, &Datagram::new("10.0.0.11:5060", "10.0.0.1:20000")),
        frame_of(HOME1_MAC, Some(5), &Datagram::new("10.0.0.11:5060", "10.0.0.1:20000")),
        frame_of(HOME1_MAC, None, &Datagram::new("[fd00::11]:5060", "[fd00::1]:20001")),
        ethernet(CLIENT_MAC, EDGE_MAC, None, EtherType::IPV4, &ipv4_fragment(&to_vip4("10.0.0.2:5060"), true, 0)),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Set { at: usize, value: u8 },
    Truncate(usize),
    Extend(Vec<u8>),
}

fn apply(frame: &mut Vec<u8>, mutation: Mutation) {
    match mutation {
        Mutation::Set { at, value } => {
            let at = at % frame.len();
            frame[at] = value;
        }
        Mutation::Truncate(len) => frame.truncate(len.max(14)),
        Mutation::Extend(bytes) => frame.extend(bytes),
    }
}

/// Mutations, most of them in the headers (the first 70 bytes hold
/// Ethernet, a tag, IPv4 with options or IPv6, and UDP).
fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (12usize..70, any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        2 => (0usize..120, any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => (14usize..120).prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Extend),
    ]
}

fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (0..seeds.len(), prop::collection::vec(mutation(), 1..4), any::<bool>()).prop_map(move |(seed, mutations, fix)| {
        let mut frame = seeds[seed].clone();
        for mutation in mutations {
            apply(&mut frame, mutation);
        }
        if fix {
            repair_checksums(&mut frame);
        }
        frame
    })
}

/// What a random frame's IP header is shaped into.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Left as random bytes.
    Raw,
    /// To the service, from a random source.
    ToService,
    /// To the service, from a pinned client (10.0.0.2 / fd00::2, port 5060).
    FromClient,
    /// To the edge on a nat port, from home1 (10.0.0.11 / fd00::11, port 5060).
    NatReply,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![Just(Shape::Raw), Just(Shape::ToService), Just(Shape::FromClient), Just(Shape::NatReply)]
}

/// Random bytes behind an Ethernet header whose ethertype is IPv4, IPv6 or
/// 802.1Q most of the time, shaped (most of the time) into an IP header
/// of the right version carrying UDP to a service or the edge.
fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    let ethertype = prop_oneof![4 => Just(0x0800u16), 3 => Just(0x86dd), 1 => Just(0x8100), 1 => any::<u16>()];
    (ethertype, prop::collection::vec(any::<u8>(), 20..200), shape(), any::<bool>()).prop_map(
        |(ethertype, body, shape, fix)| {
            let mut frame = [EDGE_MAC, CLIENT_MAC].concat();
            frame.extend(ethertype.to_be_bytes());
            frame.extend(body);
            shape_ip(&mut frame, shape);
            if fix {
                repair_checksums(&mut frame);
            }
            frame
        },
    )
}

/// Makes the bytes after the Ethernet header (and a tag) an IP header of
/// the ethertype's version carrying UDP as `shape` says: not a fragment,
/// lengths that fit the frame; the rest of the header stays random.
fn shape_ip(frame: &mut [u8], shape: Shape) {
    let l3 = if u16::from_be_bytes([frame[12], frame[13]]) == 0x8100 { 18 } else { 14 };
    let ethertype = u16::from_be_bytes([frame[l3 - 2], frame[l3 - 1]]);
    let v6 = ethertype == 0x86dd;
    let (src, dst) = match shape {
        Shape::Raw => return,
        Shape::ToService => (None, vip(v6)),
        Shape::FromClient => (Some(if v6 { "fd00::2" } else { "10.0.0.2" }), vip(v6)),
        Shape::NatReply => (Some(if v6 { "fd00::11" } else { "10.0.0.11" }), edge(v6)),
    };
    let src: Option<IpAddr> = src.map(|a| a.parse().unwrap());
    let ip = &mut frame[l3..];
    let l4 = match ethertype {
        0x0800 if ip.len() >= 36 => shape_ipv4(ip, src, dst),
        0x86dd if ip.len() >= 48 => shape_ipv6(ip, src, dst),
        _ => return,
    };
    let udp = &mut frame[l3 + l4..];
    let dport = if matches!(shape, Shape::NatReply) { 20000 + u16::from(udp[2] % 6) } else { SERVICE_PORT };
    set_udp(udp, src.map(|_| 5060), dport);
}

/// Returns the header length.
fn shape_ipv4(ip: &mut [u8], src: Option<IpAddr>, dst: IpAddr) -> usize {
    let ihl = 5 + usize::from(ip[0] % 3);
    ip[0] = 0x40 | ihl as u8;
    let len = ip.len() as u16;
    ip[2..4].copy_from_slice(&len.to_be_bytes());
    ip[6..8].fill(0);
    ip[9] = 17;
    set_address(&mut ip[12..16], src);
    set_address(&mut ip[16..20], Some(dst));
    ihl * 4
}

fn shape_ipv6(ip: &mut [u8], src: Option<IpAddr>, dst: IpAddr) -> usize {
    ip[0] = 0x60 | (ip[0] & 0x0f);
    let len = (ip.len() - 40) as u16;
    ip[4..6].copy_from_slice(&len.to_be_bytes());
    ip[6] = 17;
    set_address(&mut ip[8..24], src);
    set_address(&mut ip[24..40], Some(dst));
    40
}

/// Writes `address` into `field` unless it is `None` (the random bytes stay)
/// or of the other family (a v6 address in an IPv4 header, say).
fn set_address(field: &mut [u8], address: Option<IpAddr>) {
    match address {
        Some(IpAddr::V4(ip)) if field.len() == 4 => field.copy_from_slice(&ip.octets()),
        Some(IpAddr::V6(ip)) if field.len() == 16 => field.copy_from_slice(&ip.octets()),
        _ => {}
    }
}

/// UDP ports (`None` keeps the random source port) and the length to the end.
fn set_udp(udp: &mut [u8], sport: Option<u16>, dport: u16) {
    if let Some(sport) = sport {
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
    }
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
}

/// Where a frame's layers are, read by hand from the bytes (not by the
/// program under test): the 802.1Q tag, the IP header, its end as the IP
/// length says, the transport header and the addresses.
#[derive(Debug)]
struct Layers {
    tag: Option<[u8; 4]>,
    l3: usize,
    l4: usize,
    ip_end: usize,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
}

impl Layers {
    fn parse(frame: &[u8]) -> Option<Self> {
        let (tag, l3) = match be16(frame, 12)? {
            0x8100 => (Some(frame.get(12..16)?.try_into().ok()?), 18),
            _ => (None, 14),
        };
        match be16(frame, l3 - 2)? {
            0x0800 => Self::ipv4(frame, tag, l3),
            0x86dd => Self::ipv6(frame, tag, l3),
            _ => None,
        }
    }

    fn ipv4(frame: &[u8], tag: Option<[u8; 4]>, l3: usize) -> Option<Self> {
        let header = frame.get(l3..l3 + 20)?;
        let src: [u8; 4] = header[12..16].try_into().ok()?;
        let dst: [u8; 4] = header[16..20].try_into().ok()?;
        Some(Self {
            tag,
            l3,
            l4: l3 + usize::from(header[0] & 0x0f) * 4,
            ip_end: l3 + usize::from(u16::from_be_bytes([header[2], header[3]])),
            protocol: header[9],
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
        })
    }

    fn ipv6(frame: &[u8], tag: Option<[u8; 4]>, l3: usize) -> Option<Self> {
        let header = frame.get(l3..l3 + 40)?;
        let src: [u8; 16] = header[8..24].try_into().ok()?;
        let dst: [u8; 16] = header[24..40].try_into().ok()?;
        Some(Self {
            tag,
            l3,
            l4: l3 + 40,
            ip_end: l3 + 40 + usize::from(u16::from_be_bytes([header[4], header[5]])),
            protocol: header[6],
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
        })
    }

    fn v6(&self) -> bool {
        self.src.is_ipv6()
    }

    fn ports(&self, frame: &[u8]) -> Option<(u16, u16)> {
        Some((be16(frame, self.l4)?, be16(frame, self.l4 + 2)?))
    }

    fn source(&self, frame: &[u8]) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.src, self.ports(frame)?.0))
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// RFC 1071 one's-complement sum, folded (not inverted).
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let bytes = parts.concat();
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Rewrites the IPv4 header checksum and the UDP checksum (a v4 zero, "no
/// checksum", stays zero) to the correct values, where the headers fit.
fn repair_checksums(frame: &mut [u8]) {
    let Some(layers) = Layers::parse(frame) else { return };
    if !layers.v6() && layers.l4 >= layers.l3 + 20 && layers.l4 <= frame.len() {
        frame[layers.l3 + 10..layers.l3 + 12].fill(0);
        let check = !ones_sum(&[&frame[layers.l3..layers.l4]]);
        frame[layers.l3 + 10..layers.l3 + 12].copy_from_slice(&check.to_be_bytes());
    }
    let Some(udp_len) = be16(frame, layers.l4 + 4).map(usize::from) else { return };
    let zero_means_none = !layers.v6() && be16(frame, layers.l4 + 6) == Some(0);
    if layers.protocol != 17 || udp_len < 8 || layers.l4 + udp_len > frame.len() || zero_means_none {
        return;
    }
    frame[layers.l4 + 6..layers.l4 + 8].fill(0);
    let pseudo = pseudo_header(&layers, udp_len);
    let check = match !ones_sum(&[&pseudo, &frame[layers.l4..layers.l4 + udp_len]]) {
        0 => 0xffff,
        check => check,
    };
    frame[layers.l4 + 6..layers.l4 + 8].copy_from_slice(&check.to_be_bytes());
}

fn pseudo_header(layers: &Layers, udp_len: usize) -> Vec<u8> {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    [octets(layers.src), octets(layers.dst), vec![0, 17], (udp_len as u16).to_be_bytes().to_vec()].concat()
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

/// A checksum's state as computed here with etherparse.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// IPv4 UDP's zero: no checksum.
    Absent,
    Valid,
    Invalid,
}

fn check_of(valid: bool) -> Check {
    if valid { Check::Valid } else { Check::Invalid }
}

/// The IPv4 header checksum of the IP packet at `ip`.
fn ipv4_check(ip: &[u8]) -> Check {
    let (header, _) = Ipv4Header::from_slice(ip).expect("a forwarded IPv4 header parses");
    check_of(header.calc_header_checksum() == header.header_checksum)
}

/// The UDP checksum of the well-formed IP/UDP packet at `ip`.
fn udp_check(ip: &[u8]) -> Check {
    let (udp, computed) = if ip[0] >> 4 == 4 {
        let (header, rest) = Ipv4Header::from_slice(ip).expect("IPv4");
        let (udp, payload) = UdpHeader::from_slice(rest).expect("UDP");
        if udp.checksum == 0 {
            return Check::Absent;
        }
        let computed = udp.calc_checksum_ipv4(&header, &payload[..usize::from(udp.length) - 8]);
        (udp, computed)
    } else {
        let (header, rest) = Ipv6Header::from_slice(ip).expect("IPv6");
        let (udp, payload) = UdpHeader::from_slice(rest).expect("UDP");
        let computed = udp.calc_checksum_ipv6(&header, &payload[..usize::from(udp.length) - 8]);
        (udp, computed)
    };
    check_of(computed.expect("a checksum") == udp.checksum)
}

/// The one counter that moved (by one) between two readings.
fn moved(before: &[(Counter, u64)], after: &[(Counter, u64)]) -> Result<Counter, TestCaseError> {
    let changed: Vec<(Counter, u64)> =
        before.iter().zip(after).filter(|(b, a)| a.1 != b.1).map(|(b, a)| (b.0, a.1 - b.1)).collect();
    match changed[..] {
        [(counter, 1)] => Ok(counter),
        _ => Err(TestCaseError::fail(format!("exactly one counter moves, by one: {changed:?}"))),
    }
}

const PASS_COUNTERS: &[Counter] = &[
    Counter::NotService,
    Counter::PassMiss,
    Counter::PassSubscribe,
    Counter::PassServerDown,
    Counter::FibMiss,
    Counter::NoAddressForFamily,
    Counter::NoHeadroom,
    Counter::Malformed,
    Counter::Fragment,
    Counter::PassViaUnseen,
    Counter::PassViasUnseen,
];

/// Checks one frame; returns the counter it moved, or "dropped".
fn check_frame(fx: &mut Fixture, mode: &str, frame: &[u8]) -> Result<&'static str, TestCaseError> {
    let before = fx.counters();
    let outcome = fx.run(frame);
    let counter = moved(&before, &fx.counters())?;
    match outcome.action {
        XDP_PASS => {
            prop_assert!(PASS_COUNTERS.contains(&counter), "passed but counted {}", counter.label());
            prop_assert_eq!(&outcome.frame, frame, "passed frames are untouched");
        }
        XDP_DROP => check_dropped(mode, frame, counter)?,
        XDP_TX | XDP_REDIRECT => {
            prop_assert!(well_formed(frame), "forwarded a malformed frame {:02x?}", frame);
            check_forwarded(mode, frame, &outcome.frame, outcome.action, counter)?;
        }
        other => prop_assert!(false, "verdict {} for {:02x?}", other, frame),
    }
    Ok(if outcome.action == XDP_DROP { "dropped" } else { counter.label() })
}

/// Rule 4: UDP to us (nat ports only in nat mode) whose length lies or
/// whose IPv6 checksum is zero.
fn check_dropped(mode: &str, frame: &[u8], counter: Counter) -> Result<(), TestCaseError> {
    prop_assert_eq!(counter, Counter::Malformed, "dropped frames are counted malformed");
    let layers = Layers::parse(frame).ok_or_else(|| TestCaseError::fail("dropped a frame that is not IP"))?;
    let (_, dport) = layers.ports(frame).ok_or_else(|| TestCaseError::fail("dropped without a UDP header"))?;
    let to_service = layers.dst == vip(layers.v6()) && dport == SERVICE_PORT;
    let to_nat_port = mode == "nat" && layers.dst == edge(layers.v6()) && NAT_PORTS.contains(&dport);
    prop_assert!(layers.protocol == 17 && (to_service || to_nat_port), "dropped what is not ours: {:?}", layers);
    let udp_len = usize::from(be16(frame, layers.l4 + 4).unwrap());
    let zero_v6_checksum = layers.v6() && be16(frame, layers.l4 + 6) == Some(0);
    prop_assert!(
        udp_len < 8 || layers.l4 + udp_len > layers.ip_end || zero_v6_checksum,
        "dropped a datagram whose UDP header is sound: {:02x?}",
        frame
    );
    Ok(())
}

/// What a forwarded frame must look like, by the counter that moved.
fn check_forwarded(
    mode: &str,
    input: &[u8],
    output: &[u8],
    action: u32,
    counter: Counter,
) -> Result<(), TestCaseError> {
    let i = Layers::parse(input).unwrap();
    let o = Layers::parse(output).ok_or_else(|| TestCaseError::fail(format!("output not IP: {output:02x?}")))?;
    prop_assert_eq!(o.tag, i.tag, "the VLAN tag is kept");
    match (mode, counter) {
        ("dsr", Counter::Forwarded) => check_tunnelled(input, output, &i, &o, action),
        ("nat", Counter::Forwarded) => check_nat_forward(input, output, &i, &o, action),
        ("nat", Counter::NatReply) => check_nat_reply(input, output, &i, &o, action),
        _ => Err(TestCaseError::fail(format!("{mode}: forwarded but counted {}", counter.label()))),
    }
}

/// The home server pinned for the input's source, and that the output left
/// by the interface and MACs the fixture's FIB gives for it.
fn pinned_client(input: &[u8], output: &[u8], i: &Layers, action: u32) -> Result<&'static Pinned, TestCaseError> {
    let source = i.source(input).unwrap();
    let pinned =
        Pinned::by_client(source).ok_or_else(|| TestCaseError::fail(format!("forwarded unknown client {source}")))?;
    prop_assert_eq!(i.dst, vip(i.v6()), "forwarded only traffic to the service");
    prop_assert_eq!(i.ports(input).unwrap().1, SERVICE_PORT);
    let redirected = pinned.other_interface && i.tag.is_none();
    prop_assert_eq!(action, if redirected { XDP_REDIRECT } else { XDP_TX }, "verdict for {}", pinned.client);
    let edge_mac = if pinned.other_interface { OTHER_EDGE_MAC } else { EDGE_MAC };
    prop_assert_eq!(&output[..12], &[pinned.home_mac, edge_mac].concat()[..], "MACs towards {}", pinned.home);
    Ok(pinned)
}

/// dsr: the input's IP packet, byte for byte, inside an outer header from
/// the edge to the home server with a valid checksum.
fn check_tunnelled(input: &[u8], output: &[u8], i: &Layers, o: &Layers, action: u32) -> Result<(), TestCaseError> {
    let pinned = pinned_client(input, output, i, action)?;
    prop_assert_eq!((o.src, o.dst), (edge(i.v6()), pinned.home()), "outer addresses");
    prop_assert_eq!(o.protocol, if i.v6() { 41 } else { 4 }, "IPIP / IPv6-in-IPv6");
    prop_assert_eq!(&output[o.l4..], &input[i.l3..], "the inner packet is the input's, byte for byte");
    prop_assert_eq!(o.ip_end - o.l4, i.ip_end - i.l3, "the outer length covers the inner IP packet");
    if !i.v6() {
        prop_assert_eq!(ipv4_check(&output[o.l3..]), Check::Valid, "outer IPv4 header checksum");
    }
    Ok(())
}

/// nat: source the edge on the client's nat port, destination the home
/// server; every other byte as it came, checksums valid when they were.
fn check_nat_forward(input: &[u8], output: &[u8], i: &Layers, o: &Layers, action: u32) -> Result<(), TestCaseError> {
    let pinned = pinned_client(input, output, i, action)?;
    let expected = (SocketAddr::new(edge(i.v6()), pinned.nat_port), SocketAddr::new(pinned.home(), HOME_PORT));
    check_rewritten(input, output, (i, o), expected, rport_at(input, i))
}

/// nat reply: from the home server to a client's nat port, rewritten to
/// come from the service to the client.
fn check_nat_reply(input: &[u8], output: &[u8], i: &Layers, o: &Layers, action: u32) -> Result<(), TestCaseError> {
    let (sport, dport) = i.ports(input).unwrap();
    let pinned = Pinned::by_nat_port(dport).ok_or_else(|| TestCaseError::fail(format!("nat reply to port {dport}")))?;
    prop_assert_eq!((i.src, sport, i.dst), (pinned.home(), HOME_PORT, edge(i.v6())), "only the home's replies");
    prop_assert_eq!(action, XDP_TX);
    prop_assert_eq!(&output[..12], &[CLIENT_MAC, EDGE_MAC].concat()[..], "MACs towards the client");
    let expected = (SocketAddr::new(vip(i.v6()), SERVICE_PORT), pinned.client());
    check_rewritten(input, output, (i, o), expected, None)
}

/// A rewrite of the endpoints to `expected` (source, destination), in
/// place but for `;rport` inserted at frame offset `rport_at` if given:
/// lengths grown by its length, checksums as valid as the input's, all
/// else identical.
fn check_rewritten(
    input: &[u8],
    output: &[u8],
    (i, o): (&Layers, &Layers),
    expected: (SocketAddr, SocketAddr),
    rport_at: Option<usize>,
) -> Result<(), TestCaseError> {
    let growth = if rport_at.is_some() { RPORT.len() } else { 0 };
    prop_assert_eq!(output.len(), input.len() + growth, "rewritten in place, grown only by ;rport");
    prop_assert_eq!((o.source(output).unwrap(), SocketAddr::new(o.dst, o.ports(output).unwrap().1)), expected);
    let (ip_in, ip_out) = (&input[i.l3..], &output[o.l3..]);
    let grown = |at: usize| be16(input, at).unwrap() as usize + growth;
    if i.v6() {
        prop_assert_eq!((&ip_out[..4], &ip_out[6..8]), (&ip_in[..4], &ip_in[6..8]), "IPv6 fixed fields");
        prop_assert_eq!(be16(output, o.l3 + 4).unwrap() as usize, grown(i.l3 + 4), "IPv6 payload length");
    } else {
        prop_assert_eq!(
            (&ip_out[..2], &ip_out[4..10]),
            (&ip_in[..2], &ip_in[4..10]),
            "IPv4 fields before the checksum"
        );
        prop_assert_eq!(be16(output, o.l3 + 2).unwrap() as usize, grown(i.l3 + 2), "IPv4 total length");
        prop_assert_eq!(&output[o.l3 + 20..o.l4], &input[i.l3 + 20..i.l4], "IPv4 options");
        prop_assert_eq!(ipv4_check(ip_out), ipv4_check(ip_in), "IPv4 header checksum");
    }
    prop_assert_eq!(be16(output, o.l4 + 4).unwrap() as usize, grown(i.l4 + 4), "UDP length");
    let mut payload = input[i.l4 + 8..].to_vec();
    if let Some(at) = rport_at {
        payload.splice(at - (i.l4 + 8)..at - (i.l4 + 8), RPORT);
    }
    prop_assert_eq!(&output[o.l4 + 8..], &payload[..], "payload byte-identical (but for ;rport)");
    prop_assert_eq!(udp_check(ip_out), udp_check(ip_in), "UDP checksum");
    Ok(())
}

/// Where nat inserts `;rport` into a client's frame, by the shared scan
/// (checked on its own against the SIP parser in `sip_scan_properties.rs`).
fn rport_at(input: &[u8], i: &Layers) -> Option<usize> {
    let mut scanned = [0u8; VIA_SCAN];
    let udp_end = i.l4 + be16(input, i.l4 + 4).unwrap() as usize;
    let end = udp_end.min(VIA_SCAN);
    scanned[..end].copy_from_slice(&input[..end]);
    match top_via(&scanned, i.l4 + 8, end) {
        TopVia::AddRportAt(at) => Some(at),
        _ => None,
    }
}

/// How many cases ended in each counter, to show the generators reach
/// every rule.
type Reached = std::collections::BTreeMap<&'static str, u32>;

fn run_property(mode: &str, strategy: impl Strategy<Value = Vec<u8>>, cases: u32) -> Reached {
    let fx = std::cell::RefCell::new(Fixture::new(mode));
    let reached = std::cell::RefCell::new(Reached::new());
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |frame| {
            let reached_by = check_frame(&mut fx.borrow_mut(), mode, &frame)?;
            *reached.borrow_mut().entry(reached_by).or_default() += 1;
            Ok(())
        })
        .unwrap();
    let reached = reached.into_inner();
    eprintln!("{mode}: {reached:?}");
    reached
}

/// Each of `outcomes` (counter labels, or "dropped") ended at least 1% of `cases`.
fn assert_reached(reached: &Reached, outcomes: &[&str], cases: u32) {
    for outcome in outcomes {
        let count = reached.get(outcome).copied().unwrap_or(0);
        assert!(count * 100 >= cases, "{outcome} reached by {count} of {cases} cases: {reached:?}");
    }
}

/// What mutations of the seeds reach in either mode.
const EVERY_RULE: &[&str] = &[
    "not_service",
    "malformed",
    "dropped",
    "fragment",
    "pass_subscribe",
    "pass_miss",
    "pass_server_down",
    "fib_miss",
    "forwarded",
];

#[test]
fn mutated_frames_in_dsr_mode_get_the_verdict_counter_and_output_their_rule_says() {
    if !privileged() {
        return;
    }
    assert_reached(&run_property("dsr", mutated_frame(), 5000), EVERY_RULE, 5000);
}

#[test]
fn mutated_frames_in_nat_mode_get_the_verdict_counter_and_output_their_rule_says() {
    if !privileged() {
        return;
    }
    let reached = run_property("nat", mutated_frame(), 5000);
    assert_reached(&reached, &[EVERY_RULE, &["nat_reply"]].concat(), 5000);
}

#[test]
fn random_frames_get_the_verdict_counter_and_output_their_rule_says() {
    if !privileged() {
        return;
    }
    // Random payloads carry no Via: nat passes a known client's up.
    let reached = run_property("nat", random_frame(), 4000);
    assert_reached(&reached, &["not_service", "malformed", "pass_miss", "pass_via_unseen", "nat_reply"], 4000);
    let reached = run_property("dsr", random_frame(), 2000);
    assert_reached(&reached, &["not_service", "malformed", "pass_miss", "forwarded"], 2000);
}
