//! Frames for fixtures, built with etherparse so every checksum is computed
//! independently of the code under test.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, SingleVlanHeader,
    UdpHeader, VlanId,
};

pub type Mac = [u8; 6];

/// A request as a user agent sends it: its Via asks for `rport`.
pub const REGISTER: &[u8] =
    b"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport\r\n\r\n";

/// A UDP datagram to be framed.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    pub tos: u8,
    pub ttl: u8,
    /// Raw IPv4 options (a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// Over IPv4, send the "no checksum" zero instead of computing one.
    pub zero_udp_checksum: bool,
    /// Over IPv4, the Don't Fragment bit.
    pub dont_fragment: bool,
}

impl Datagram {
    pub fn new(src: &str, dst: &str) -> Self {
        Self {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            payload: REGISTER.to_vec(),
            tos: 0x10,
            ttl: 61,
            ipv4_options: Vec::new(),
            zero_udp_checksum: false,
            dont_fragment: false,
        }
    }

    pub fn with(mut self, edit: impl FnOnce(&mut Self)) -> Self {
        edit(&mut self);
        self
    }

    /// The IP packet: header, UDP header, payload.
    pub fn ip_packet(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = Ipv4Header::new(
                    (8 + self.payload.len()) as u16,
                    self.ttl,
                    IpNumber::UDP,
                    src.octets(),
                    dst.octets(),
                )
                .unwrap();
                ip.options =
                    self.ipv4_options.as_slice().try_into().expect("options are a multiple of 4 bytes, at most 40");
                ip.total_len = (ip.header_len() + 8 + self.payload.len()) as u16;
                ip.dscp = etherparse::IpDscp::try_new(self.tos >> 2).unwrap();
                ip.dont_fragment = self.dont_fragment;
                ip.identification = 0x1234;
                ip.header_checksum = ip.calc_header_checksum();
                let mut udp =
                    UdpHeader::with_ipv4_checksum(self.src.port(), self.dst.port(), &ip, &self.payload).unwrap();
                if self.zero_udp_checksum {
                    udp.checksum = 0;
                }
                out.extend_from_slice(&ip.to_bytes());
                out.extend_from_slice(&udp.to_bytes());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Header {
                    traffic_class: self.tos,
                    flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
                    payload_length: (8 + self.payload.len()) as u16,
                    next_header: IpNumber::UDP,
                    hop_limit: self.ttl,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                let udp = UdpHeader::with_ipv6_checksum(self.src.port(), self.dst.port(), &ip, &self.payload).unwrap();
                out.extend_from_slice(&ip.to_bytes());
                out.extend_from_slice(&udp.to_bytes());
            }
            _ => panic!("mixed address families in {self:?}"),
        }
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn ethertype(&self) -> EtherType {
        if self.src.is_ipv4() { EtherType::IPV4 } else { EtherType::IPV6 }
    }
}

/// An Ethernet frame, optionally with one 802.1Q tag.
pub fn ethernet(src: Mac, dst: Mac, vlan: Option<u16>, ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match vlan {
        Some(id) => {
            out.extend_from_slice(
                &Ethernet2Header { source: src, destination: dst, ether_type: EtherType::VLAN_TAGGED_FRAME }.to_bytes(),
            );
            let tag = SingleVlanHeader {
                pcp: Default::default(),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id).unwrap(),
                ether_type,
            };
            out.extend_from_slice(&tag.to_bytes());
        }
        None => out.extend_from_slice(&Ethernet2Header { source: src, destination: dst, ether_type }.to_bytes()),
    }
    out.extend_from_slice(payload);
    out
}

/// IPIP as the dsr encapsulator writes it: TOS copied, id 0, no DF, TTL 64.
pub fn ipip(outer_src: IpAddr, outer_dst: IpAddr, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match (outer_src, outer_dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = Ipv4Header::new(inner.len() as u16, 64, IpNumber::IPV4, src.octets(), dst.octets()).unwrap();
            ip.dscp = etherparse::IpDscp::try_new(inner[1] >> 2).unwrap();
            ip.ecn = etherparse::IpEcn::try_new(inner[1] & 3).unwrap();
            // DF (RFC 2003 §3.1) and the identification are copied from the inner header.
            ip.dont_fragment = inner[6] & 0x40 != 0;
            ip.identification = u16::from_be_bytes([inner[4], inner[5]]);
            ip.header_checksum = ip.calc_header_checksum();
            out.extend_from_slice(&ip.to_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let traffic_class = (inner[0] << 4) | (inner[1] >> 4);
            let ip = Ipv6Header {
                traffic_class,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: inner.len() as u16,
                next_header: IpNumber::IPV6,
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
            };
            out.extend_from_slice(&ip.to_bytes());
        }
        _ => panic!("mixed outer address families"),
    }
    out.extend_from_slice(inner);
    out
}

/// An IPv4 fragment header variant of `datagram`: MF set and/or an offset.
pub fn ipv4_fragment(datagram: &Datagram, more_fragments: bool, offset: u16) -> Vec<u8> {
    let mut packet = datagram.ip_packet();
    let (mut ip, rest) = Ipv4Header::from_slice(&packet).unwrap();
    let rest = rest.to_vec();
    ip.more_fragments = more_fragments;
    ip.fragment_offset = IpFragOffset::try_new(offset).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    packet.clear();
    packet.extend_from_slice(&ip.to_bytes());
    packet.extend_from_slice(&rest);
    packet
}
