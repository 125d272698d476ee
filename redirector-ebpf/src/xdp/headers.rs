//! Wire headers as byte arrays: alignment 1, so any offset is a valid read.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPV6_FRAGMENT: u8 = 44;
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// Hop limit of the outer header we add in dsr mode.
pub const ENCAP_TTL: u8 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The Don't Fragment bit in the first byte of `Ipv4Hdr::frag`.
pub const IPV4_DF: u8 = 0x40;

impl Ipv4Hdr {
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }

    pub fn is_fragment(&self) -> bool {
        // MF set or a non-zero offset; DF alone is not a fragment.
        u16::from_be_bytes(self.frag) & 0x3fff != 0
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}
