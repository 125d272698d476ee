//! IP packets as the fast path forwards them, built in user space for the
//! datagrams the program passes up from clients it knows (IP fragments the
//! kernel reassembled, or datagrams too big for the egress MTU once
//! forwarded): a UDP datagram cut into fragments that each fit
//! `PACKET_LIMIT` (RFC 791 §2.3, RFC 8200 §4.5), and, in dsr mode, each
//! fragment wrapped in the outer header the program writes (`xdp/encap.rs`).
//! Fragmenting the inner datagram, not the outer packet, is what a Linux
//! tunnel device does too: the home's decapsulator (an ipip device or
//! `redirector decap`) sees whole outer packets, and its kernel reassembles
//! the client's datagram.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use redirector_ebpf::checksum;

/// The most bytes a packet built here takes: IPv6's minimum link MTU,
/// which every path carries, so no route's MTU need be looked up per send.
/// Only datagrams the fast path could not forward are built, which are rare.
pub const PACKET_LIMIT: usize = 1280;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const FRAGMENT_HLEN: usize = 8;
const UDP_HLEN: usize = 8;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_FRAGMENT: u8 = 44;
/// The program's `ENCAP_TTL`, and Linux's default TTL.
const TTL: u8 = 64;
const MORE_FRAGMENTS_V4: u16 = 0x2000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("a {len}-byte UDP payload does not fit in one datagram; it is not sent on")]
    TooBig { len: usize },
    #[error("{from} and {to} are of different families; nothing is sent between them")]
    FamiliesDiffer { from: IpAddr, to: IpAddr },
}

/// `payload` as UDP from `from` to `to`, in IP packets of at most `limit`
/// bytes: one if it fits, else fragments sharing the identification `id`.
pub fn udp_packets(
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
    id: u32,
    limit: usize,
) -> Result<Vec<Vec<u8>>, PacketError> {
    let datagram = udp_datagram(from, to, payload)?;
    match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ok(ipv4_packets(src, dst, &datagram, id as u16, limit)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ok(ipv6_packets(src, dst, &datagram, id, limit)),
        (from, to) => Err(PacketError::FamiliesDiffer { from, to }),
    }
}

/// The bytes an outer header adds in `address`'s family.
pub fn encapsulation_overhead(address: IpAddr) -> usize {
    if address.is_ipv4() { IPV4_HLEN } else { IPV6_HLEN }
}

/// `inner` behind an outer IPv4 (protocol 4) or IPv6 (next header 41)
/// header from `from` to `to`, as the program encapsulates (over IPv4 the
/// identification copied from the inner packet).
pub fn encapsulated(from: IpAddr, to: IpAddr, inner: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut packet = match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let id = u16::from_be_bytes([inner[4], inner[5]]);
            ipv4_header(src, dst, IPPROTO_IPIP, inner.len(), id, 0).to_vec()
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => ipv6_header(src, dst, IPPROTO_IPV6, inner.len()).to_vec(),
        (from, to) => return Err(PacketError::FamiliesDiffer { from, to }),
    };
    packet.extend_from_slice(inner);
    Ok(packet)
}

fn udp_datagram(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
    let len = UDP_HLEN + payload.len();
    // IPv4's total length covers its header too.
    let room = if from.is_ipv4() { usize::from(u16::MAX) - IPV4_HLEN } else { usize::from(u16::MAX) };
    if len > room {
        return Err(PacketError::TooBig { len: payload.len() });
    }
    let mut datagram = Vec::with_capacity(len);
    datagram.extend_from_slice(&from.port().to_be_bytes());
    datagram.extend_from_slice(&to.port().to_be_bytes());
    datagram.extend_from_slice(&(len as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let check = udp_checksum(from.ip(), to.ip(), &datagram);
    datagram[6..8].copy_from_slice(&check.to_be_bytes());
    Ok(datagram)
}

/// RFC 768 over the pseudo-header; a computed zero is sent as 0xffff.
fn udp_checksum(src: IpAddr, dst: IpAddr, datagram: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
            pseudo.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        }
        _ => {
            pseudo.extend_from_slice(&ipv6_octets(src));
            pseudo.extend_from_slice(&ipv6_octets(dst));
            pseudo.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        }
    }
    match !checksum::fold(sum(&pseudo) + sum(datagram)) {
        0 => 0xffff,
        check => check,
    }
}

fn ipv6_octets(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The one's-complement sum of big-endian 16-bit words (an odd last byte
/// padded with zero).
fn sum(bytes: &[u8]) -> u64 {
    bytes.chunks(2).map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum()
}

/// Fragment data per packet: what fits after `headers`, in eighths.
fn fragment_room(limit: usize, headers: usize) -> usize {
    (limit.saturating_sub(headers) / 8 * 8).max(8)
}

fn ipv4_packets(src: Ipv4Addr, dst: Ipv4Addr, datagram: &[u8], id: u16, limit: usize) -> Vec<Vec<u8>> {
    let room = if IPV4_HLEN + datagram.len() <= limit { datagram.len() } else { fragment_room(limit, IPV4_HLEN) };
    let mut packets = Vec::new();
    for (index, data) in datagram.chunks(room).enumerate() {
        let offset = index * room;
        let more = if offset + data.len() < datagram.len() { MORE_FRAGMENTS_V4 } else { 0 };
        let fragment = more | (offset / 8) as u16;
        let mut packet = ipv4_header(src, dst, IPPROTO_UDP, data.len(), id, fragment).to_vec();
        packet.extend_from_slice(data);
        packets.push(packet);
    }
    packets
}

fn ipv6_packets(src: Ipv6Addr, dst: Ipv6Addr, datagram: &[u8], id: u32, limit: usize) -> Vec<Vec<u8>> {
    if IPV6_HLEN + datagram.len() <= limit {
        let mut packet = ipv6_header(src, dst, IPPROTO_UDP, datagram.len()).to_vec();
        packet.extend_from_slice(datagram);
        return vec![packet];
    }
    let room = fragment_room(limit, IPV6_HLEN + FRAGMENT_HLEN);
    let mut packets = Vec::new();
    for (index, data) in datagram.chunks(room).enumerate() {
        let offset = index * room;
        let more = u16::from(offset + data.len() < datagram.len());
        let mut packet = ipv6_header(src, dst, IPPROTO_FRAGMENT, FRAGMENT_HLEN + data.len()).to_vec();
        packet.extend_from_slice(&[IPPROTO_UDP, 0]);
        packet.extend_from_slice(&((offset as u16) | more).to_be_bytes());
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(data);
        packets.push(packet);
    }
    packets
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: usize, id: u16, fragment: u16) -> [u8; IPV4_HLEN] {
    let mut header = [0u8; IPV4_HLEN];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&((IPV4_HLEN + payload) as u16).to_be_bytes());
    header[4..6].copy_from_slice(&id.to_be_bytes());
    header[6..8].copy_from_slice(&fragment.to_be_bytes());
    header[8] = TTL;
    header[9] = protocol;
    header[12..16].copy_from_slice(&src.octets());
    header[16..20].copy_from_slice(&dst.octets());
    let check = checksum::compute(&header);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    header
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: usize) -> [u8; IPV6_HLEN] {
    let mut header = [0u8; IPV6_HLEN];
    header[0] = 0x60;
    header[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    header[6] = next_header;
    header[7] = TTL;
    header[8..24].copy_from_slice(&src.octets());
    header[24..40].copy_from_slice(&dst.octets());
    header
}

/// A UDP datagram as a raw socket received it.
#[derive(Debug, PartialEq, Eq)]
pub struct ReceivedUdp<'a> {
    pub source_port: u16,
    pub destination_port: u16,
    pub payload: &'a [u8],
}

/// The UDP datagram in what a raw UDP socket received: over IPv4 behind
/// the IP header, over IPv6 from the UDP header on (as Linux delivers
/// them). `None` if it is cut short or its length is inconsistent.
pub fn received_udp(bytes: &[u8], ipv4: bool) -> Option<ReceivedUdp<'_>> {
    let udp = if ipv4 { bytes.get(usize::from(bytes.first()? & 0x0f) * 4..)? } else { bytes };
    let field = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    let len = usize::from(field(4)?);
    let payload = udp.get(UDP_HLEN..len)?;
    Some(ReceivedUdp { source_port: field(0)?, destination_port: field(2)?, payload })
}

#[cfg(test)]
#[path = "packets_tests.rs"]
mod tests;
