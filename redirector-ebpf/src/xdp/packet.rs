//! Bounds-checked packet access and the L2-L4 parse shared by both programs.

use aya_ebpf::programs::XdpContext;
use redirector_ebpf::{Counter, Endpoint, FAMILY_V4, FAMILY_V6};

use super::headers::*;

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
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
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Counter::Malformed)?;
    let mut ethertype = u16::from_be_bytes(unsafe { (*eth).ethertype });
    let mut l3 = ETH_HLEN;
    let vlan = ethertype == ETH_P_8021Q;
    if vlan {
        let tag: *const VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(Counter::Malformed)?;
        ethertype = u16::from_be_bytes(unsafe { (*tag).ethertype });
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
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Counter::Malformed)?;
    let (version_ihl, header_len, len, fragment, protocol) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).header_len(),
            u16::from_be_bytes((*ip).tot_len) as usize,
            (*ip).is_fragment(),
            (*ip).protocol,
        )
    };
    if version_ihl >> 4 != 4 || header_len < IPV4_HLEN || len < header_len || l3 + len > frame_len {
        return Err(Counter::Malformed);
    }
    if fragment {
        return Err(Counter::Fragment);
    }
    Ok(Ip { l3, vlan, family: FAMILY_V4, l4: l3 + header_len, len, protocol })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, vlan: bool, frame_len: usize) -> Result<Ip, Counter> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Counter::Malformed)?;
    let (version, payload_len, next_header) = unsafe {
        ((*ip).version_class_flow[0] >> 4, u16::from_be_bytes((*ip).payload_len) as usize, (*ip).next_header)
    };
    let len = IPV6_HLEN + payload_len;
    if version != 6 || l3 + len > frame_len {
        return Err(Counter::Malformed);
    }
    if next_header == IPV6_FRAGMENT {
        return Err(Counter::Fragment);
    }
    Ok(Ip { l3, vlan, family: FAMILY_V6, l4: l3 + IPV6_HLEN, len, protocol: next_header })
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
    let udp: *const UdpHdr = ptr_at(ctx, ip.l4).ok_or(Counter::Malformed)?;
    let (sport, dport) = unsafe { (u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst)) };
    let (src, dst) = if ip.family == FAMILY_V4 {
        let hdr: *const Ipv4Hdr = ptr_at(ctx, ip.l3).ok_or(Counter::Malformed)?;
        unsafe { (Endpoint::v4((*hdr).src, sport), Endpoint::v4((*hdr).dst, dport)) }
    } else {
        let hdr: *const Ipv6Hdr = ptr_at(ctx, ip.l3).ok_or(Counter::Malformed)?;
        unsafe { (Endpoint::v6((*hdr).src, sport), Endpoint::v6((*hdr).dst, dport)) }
    };
    Ok(Datagram { ip, src, dst })
}

/// The UDP header is sound: its length agrees with the IP payload (at
/// least a header, at most what the IP packet carries; shorter is legal,
/// the rest is padding) and, over IPv6, it carries a checksum (zero is
/// not allowed there, RFC 8200 §8.1: the receiver would drop it).
#[inline(always)]
pub fn udp_header_ok(ctx: &XdpContext, ip: &Ip) -> bool {
    let Some(udp) = ptr_at::<UdpHdr>(ctx, ip.l4) else {
        return false;
    };
    let (len, check) = unsafe { (u16::from_be_bytes((*udp).len) as usize, (*udp).check) };
    let checksum_ok = ip.family == FAMILY_V4 || check != [0, 0];
    len >= UDP_HLEN && ip.l4 + len <= ip.l3 + ip.len && checksum_ok
}

/// `SUBSCRIBE ` as the two loads that compare it: no memcmp on BPF.
const SUBSCRIBE_HEAD: u64 = u64::from_ne_bytes(*b"SUBSCRIB");
const SUBSCRIBE_TAIL: u16 = u16::from_ne_bytes(*b"E ");

/// The UDP payload starts with a SUBSCRIBE request line.
#[inline(always)]
pub fn is_subscribe(ctx: &XdpContext, ip: &Ip) -> bool {
    let Some(start) = ptr_at::<[u8; 10]>(ctx, ip.l4 + UDP_HLEN) else {
        return false;
    };
    let bytes = unsafe { *start };
    let head = u64::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
    let tail = u16::from_ne_bytes([bytes[8], bytes[9]]);
    head == SUBSCRIBE_HEAD && tail == SUBSCRIBE_TAIL
}
