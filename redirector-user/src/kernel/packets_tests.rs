//! Packets checked with an independent parser (etherparse): headers,
//! fragment offsets and flags, and every checksum.

use etherparse::{Ipv4Header, Ipv6FragmentHeader, Ipv6Header, UdpHeader};

use super::*;

const CLIENT_V4: &str = "10.77.0.2:5070";
const SERVICE_V4: &str = "192.0.2.10:5060";
const CLIENT_V6: &str = "[fd00:77::2]:5070";
const SERVICE_V6: &str = "[2001:db8::10]:5060";

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// One packet's IP header fields that reassembly needs, and its data.
struct Piece {
    id: u32,
    offset: usize,
    more: bool,
    data: Vec<u8>,
}

/// Parses a packet (IPv4, or IPv6 with or without a fragment header),
/// checking its addresses, lengths and header checksum.
fn piece(packet: &[u8], from: IpAddr, to: IpAddr) -> Piece {
    match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let (header, data) = Ipv4Header::from_slice(packet).unwrap();
            assert_eq!((header.source, header.destination), (src.octets(), dst.octets()));
            assert_eq!(header.header_checksum, header.calc_header_checksum(), "IPv4 header checksum");
            assert_eq!(usize::from(header.total_len), packet.len());
            assert_eq!(header.protocol.0, IPPROTO_UDP);
            let offset = usize::from(header.fragment_offset.value()) * 8;
            Piece { id: header.identification.into(), offset, more: header.more_fragments, data: data.to_vec() }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let (header, rest) = Ipv6Header::from_slice(packet).unwrap();
            assert_eq!((header.source, header.destination), (src.octets(), dst.octets()));
            assert_eq!(usize::from(header.payload_length), rest.len());
            if header.next_header.0 == IPPROTO_UDP {
                return Piece { id: 0, offset: 0, more: false, data: rest.to_vec() };
            }
            assert_eq!(header.next_header.0, IPPROTO_FRAGMENT);
            let (fragment, data) = Ipv6FragmentHeader::from_slice(rest).unwrap();
            assert_eq!(fragment.next_header.0, IPPROTO_UDP);
            let offset = usize::from(fragment.fragment_offset.value()) * 8;
            Piece { id: fragment.identification, offset, more: fragment.more_fragments, data: data.to_vec() }
        }
        _ => unreachable!("one family per test"),
    }
}

/// Reassembles `packets` as a receiver would and checks the UDP datagram
/// they carry: ports, length, checksum, payload.
fn reassembled(packets: &[Vec<u8>], from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let pieces: Vec<Piece> = packets.iter().map(|p| piece(p, from.ip(), to.ip())).collect();
    let mut datagram = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        assert_eq!(piece.offset, datagram.len(), "fragment {index} follows the one before");
        assert_eq!(piece.more, index + 1 < pieces.len(), "fragment {index}: more fragments");
        assert_eq!(piece.id, pieces[0].id, "one identification");
        datagram.extend_from_slice(&piece.data);
    }
    let (udp, payload) = UdpHeader::from_slice(&datagram).unwrap();
    assert_eq!((udp.source_port, udp.destination_port), (from.port(), to.port()));
    assert_eq!(usize::from(udp.length), datagram.len());
    let expected = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload).unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload).unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(udp.checksum, expected, "UDP checksum");
    payload.to_vec()
}

fn families() -> [(SocketAddr, SocketAddr); 2] {
    [
        (CLIENT_V4.parse().unwrap(), SERVICE_V4.parse().unwrap()),
        (CLIENT_V6.parse().unwrap(), SERVICE_V6.parse().unwrap()),
    ]
}

#[test]
fn a_datagram_that_fits_is_one_unfragmented_packet() {
    for (from, to) in families() {
        let packets = udp_packets(from, to, &payload(1000), 7, PACKET_LIMIT).unwrap();
        assert_eq!(packets.len(), 1, "{from}");
        assert_eq!(reassembled(&packets, from, to), payload(1000), "{from}");
    }
}

#[test]
fn a_3000_byte_datagram_is_cut_into_fragments_within_the_limit_that_reassemble_to_it() {
    for (from, to) in families() {
        let packets = udp_packets(from, to, &payload(3000), 0x1234_5678, PACKET_LIMIT).unwrap();
        assert_eq!(packets.len(), 3, "{from}: 3,008 bytes in pieces of about 1,200");
        assert!(packets.iter().all(|p| p.len() <= PACKET_LIMIT), "{from}: every packet within the limit");
        assert_eq!(reassembled(&packets, from, to), payload(3000), "{from}");
    }
}

#[test]
fn encapsulated_fragments_fit_the_limit_and_carry_the_inner_packet_to_the_home() {
    for (client, service) in families() {
        let (edge, home): (IpAddr, IpAddr) = if client.is_ipv4() {
            ("10.77.0.1".parse().unwrap(), "10.77.0.11".parse().unwrap())
        } else {
            ("fd00:77::1".parse().unwrap(), "fd00:77::11".parse().unwrap())
        };
        let limit = PACKET_LIMIT - encapsulation_overhead(home);
        let inner = udp_packets(client, service, &payload(3000), 9, limit).unwrap();
        let mut carried = Vec::new();
        for packet in &inner {
            let outer = encapsulated(edge, home, packet).unwrap();
            assert!(outer.len() <= PACKET_LIMIT, "{client}");
            let (protocol, rest) = piece_header(&outer, edge, home);
            assert_eq!(protocol, if client.is_ipv4() { IPPROTO_IPIP } else { IPPROTO_IPV6 });
            carried.push(rest.to_vec());
        }
        assert_eq!(carried, inner, "{client}: the inner packets, unchanged");
        assert_eq!(reassembled(&inner, client, service), payload(3000));
    }
}

/// The outer header's protocol and what it carries, its addresses,
/// lengths and checksum checked.
fn piece_header(packet: &[u8], from: IpAddr, to: IpAddr) -> (u8, &[u8]) {
    match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let (header, rest) = Ipv4Header::from_slice(packet).unwrap();
            assert_eq!((header.source, header.destination), (src.octets(), dst.octets()));
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            assert_eq!(usize::from(header.total_len), packet.len());
            assert_eq!(header.identification, u16::from_be_bytes([rest[4], rest[5]]), "the inner identification");
            (header.protocol.0, rest)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let (header, rest) = Ipv6Header::from_slice(packet).unwrap();
            assert_eq!((header.source, header.destination), (src.octets(), dst.octets()));
            assert_eq!(usize::from(header.payload_length), rest.len());
            (header.next_header.0, rest)
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_datagram_too_big_for_udp_or_between_families_is_refused() {
    let (v4, v6): (SocketAddr, SocketAddr) = (CLIENT_V4.parse().unwrap(), SERVICE_V6.parse().unwrap());
    let refused = udp_packets(v4, v4, &payload(65_508), 1, PACKET_LIMIT).unwrap_err();
    assert_eq!(refused, PacketError::TooBig { len: 65_508 });
    assert!(matches!(udp_packets(v4, v6, b"x", 1, PACKET_LIMIT), Err(PacketError::FamiliesDiffer { .. })));
}

#[test]
fn a_raw_sockets_udp_datagram_is_read_behind_the_ipv4_header_and_from_the_start_over_ipv6() {
    let (from, to): (SocketAddr, SocketAddr) = (SERVICE_V4.parse().unwrap(), CLIENT_V4.parse().unwrap());
    let packet = udp_packets(from, to, b"SIP/2.0 200 OK", 1, PACKET_LIMIT).unwrap().remove(0);
    let expected = ReceivedUdp { source_port: 5060, destination_port: 5070, payload: b"SIP/2.0 200 OK" };
    assert_eq!(received_udp(&packet, true), Some(expected));
    let (from, to): (SocketAddr, SocketAddr) = (SERVICE_V6.parse().unwrap(), CLIENT_V6.parse().unwrap());
    let packet = udp_packets(from, to, b"SIP/2.0 200 OK", 1, PACKET_LIMIT).unwrap().remove(0);
    let expected = ReceivedUdp { source_port: 5060, destination_port: 5070, payload: b"SIP/2.0 200 OK" };
    assert_eq!(received_udp(&packet[40..], false), Some(expected));
    assert_eq!(received_udp(&packet[40..47], false), None, "cut short");
    assert_eq!(received_udp(&packet[40..55], false), None, "shorter than its length says");
}
