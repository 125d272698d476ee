//! Bounds-checked packet access and the L2-L4 parse shared by both programs.

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};
use redirector_ebpf::{Counter, Endpoint, FAMILY_V4, FAMILY_V6};

use super::headers::*;

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
/// The one bounds check every header access goes through.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The `T` at `offset`, if the whole `T` lies inside the packet.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at proved all of the T inside the packet; unaligned, as
    // packet bytes promise no alignment.
    Some(unsafe { ptr.read_unaligned() })
}

/// Writes `value` at `offset`, if the whole `T` lies inside the packet.
#[inline(always)]
pub fn write_at<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at proved all of the T inside the packet, which XDP may
    // write; unaligned, as packet bytes promise no alignment.
    unsafe { ptr.write_unaligned(value) };
    Some(())
}

/// Replaces the `N` bytes at `offset` (a multiple of 4) with `new`, if they
/// lie inside the packet, and returns the checksum difference the change
/// makes (`bpf_csum_diff` from `seed`), for incremental checksum updates.
#[inline(always)]
pub fn replace_at<const N: usize>(ctx: &XdpContext, offset: usize, new: &mut [u8; N], seed: u32) -> Option<u32> {
    let old = ptr_at::<[u8; N]>(ctx, offset)?;
    // SAFETY: ptr_at proved the N old bytes inside the packet and `new` is N
    // bytes on our stack; the helper only reads both.
    let diff = unsafe { bpf_csum_diff(old.cast(), N as u32, new.as_mut_ptr().cast(), N as u32, seed) } as u32;
    // SAFETY: the same N bytes, inside the packet, which XDP may write.
    unsafe { old.write_unaligned(*new) };
    Some(diff)
}

/// Where an IP packet's headers sit in the frame.
pub struct Ip {
    /// Ethernet header length, 14 or 18 with a VLAN tag; also the IP offset.
    pub l3: usize,
    pub vlan: bool,
    pub family: u8,
    /// Offset of the transport header.
    pub l4: usize,
    /// The IP packet's own length (header included), which may be shorter
    /// than the frame when the link padded it.
    pub len: usize,
    /// IPv4 protocol or IPv6 next header.
    pub protocol: u8,
}

/// Parses Ethernet (one optional 802.1Q tag) and the IP header.
#[inline(always)]
pub fn parse_ip(ctx: &XdpContext) -> Result<Ip, Counter> {
    let eth: EthHdr = read_at(ctx, 0).ok_or(Counter::Malformed)?;
    let mut ethertype = u16::from_be_bytes(eth.ethertype);
    let mut l3 = ETH_HLEN;
    let vlan = ethertype == ETH_P_8021Q;
    if vlan {
        let tag: VlanHdr = read_at(ctx, ETH_HLEN).ok_or(Counter::Malformed)?;
        ethertype = u16::from_be_bytes(tag.ethertype);
        l3 += VLAN_HLEN;
    }
    let frame_len = ctx.data_end() - ctx.data();
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, l3, vlan, frame_len),
        ETH_P_IPV6 => parse_ipv6(ctx, l3, vlan, frame_len),
        _ => Err(Counter::NotService),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, vlan: bool, frame_len: usize) -> Result<Ip, Counter> {
    let ip: Ipv4Hdr = read_at(ctx, l3).ok_or(Counter::Malformed)?;
    let (header_len, len, fragment) = (ip.header_len(), u16::from_be_bytes(ip.tot_len) as usize, ip.is_fragment());
    if ip.version_ihl >> 4 != 4 || header_len < IPV4_HLEN || len < header_len || l3 + len > frame_len {
        return Err(Counter::Malformed);
    }
    if fragment {
        return Err(Counter::Fragment);
    }
    Ok(Ip { l3, vlan, family: FAMILY_V4, l4: l3 + header_len, len, protocol: ip.protocol })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, vlan: bool, frame_len: usize) -> Result<Ip, Counter> {
    let ip: Ipv6Hdr = read_at(ctx, l3).ok_or(Counter::Malformed)?;
    let len = IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
    if ip.version_class_flow[0] >> 4 != 6 || l3 + len > frame_len {
        return Err(Counter::Malformed);
    }
    if ip.next_header == IPV6_FRAGMENT {
        return Err(Counter::Fragment);
    }
    Ok(Ip { l3, vlan, family: FAMILY_V6, l4: l3 + IPV6_HLEN, len, protocol: ip.next_header })
}

/// A UDP datagram's endpoints as read from the packet.
pub struct Datagram {
    pub ip: Ip,
    pub src: Endpoint,
    pub dst: Endpoint,
}

/// Parses through UDP. Non-UDP is `not_service`; a UDP header cut short
/// is `malformed`.
#[inline(always)]
pub fn parse_udp(ctx: &XdpContext) -> Result<Datagram, Counter> {
    let ip = parse_ip(ctx)?;
    if ip.protocol != IPPROTO_UDP {
        return Err(Counter::NotService);
    }
    if ip.l4 + UDP_HLEN > ip.l3 + ip.len {
        return Err(Counter::Malformed);
    }
    let (src, dst) = if ip.family == FAMILY_V4 {
        let hdr: Ipv4Hdr = read_at(ctx, ip.l3).ok_or(Counter::Malformed)?;
        (Endpoint::v4(hdr.src, 0), Endpoint::v4(hdr.dst, 0))
    } else {
        let hdr: Ipv6Hdr = read_at(ctx, ip.l3).ok_or(Counter::Malformed)?;
        (Endpoint::v6(hdr.src, 0), Endpoint::v6(hdr.dst, 0))
    };
    let udp: UdpHdr = read_at(ctx, ip.l4).ok_or(Counter::Malformed)?;
    let src = Endpoint { port_be: u16::from_ne_bytes(udp.src), ..src };
    let dst = Endpoint { port_be: u16::from_ne_bytes(udp.dst), ..dst };
    Ok(Datagram { ip, src, dst })
}

/// The UDP header is sound: its length agrees with the IP payload (at
/// least a header, at most what the IP packet carries; shorter is legal,
/// the rest is padding) and, over IPv6, it carries a checksum (zero is
/// not allowed there, RFC 8200 §8.1: the receiver would drop it).
#[inline(always)]
pub fn udp_header_ok(ctx: &XdpContext, ip: &Ip) -> bool {
    let Some(udp) = read_at::<UdpHdr>(ctx, ip.l4) else {
        return false;
    };
    let len = u16::from_be_bytes(udp.len) as usize;
    let checksum_ok = ip.family == FAMILY_V4 || udp.check != [0, 0];
    len >= UDP_HLEN && ip.l4 + len <= ip.l3 + ip.len && checksum_ok
}

/// `SUBSCRIBE ` as the two loads that compare it: no memcmp on BPF.
const SUBSCRIBE_HEAD: u64 = u64::from_ne_bytes(*b"SUBSCRIB");
const SUBSCRIBE_TAIL: u16 = u16::from_ne_bytes(*b"E ");

/// The UDP payload starts with a SUBSCRIBE request line.
#[inline(always)]
pub fn is_subscribe(ctx: &XdpContext, ip: &Ip) -> bool {
    let Some(bytes) = read_at::<[u8; 10]>(ctx, ip.l4 + UDP_HLEN) else {
        return false;
    };
    let head = u64::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
    let tail = u16::from_ne_bytes([bytes[8], bytes[9]]);
    head == SUBSCRIBE_HEAD && tail == SUBSCRIBE_TAIL
}

/// `register` as one load: with each byte's 0x20 bit set, only the letters
/// of `REGISTER` in either case give it.
const REGISTER_ANY_CASE: u64 = u64::from_ne_bytes(*b"register");

/// The UDP payload starts with a REGISTER request line, in any case (the
/// check itself reads the whole head; this spares the copy for every
/// other request).
#[inline(always)]
pub fn is_register(ctx: &XdpContext, ip: &Ip) -> bool {
    let Some(bytes) = read_at::<[u8; 9]>(ctx, ip.l4 + UDP_HLEN) else {
        return false;
    };
    let head = u64::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
    head | 0x2020_2020_2020_2020 == REGISTER_ANY_CASE && bytes[8] == b' '
}
