//! nat: rewrite a datagram's source and destination endpoints in place,
//! with incremental IPv4 header and UDP checksum updates (`bpf_csum_diff`).

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use redirector_ebpf::{Endpoint, FAMILY_V4, checksum};

use super::{
    headers::*,
    packet::{Ip, read_at, replace_at, write_at},
};

/// Offset of the source address inside the IPv4 / IPv6 header; the
/// destination follows it directly.
const IPV4_ADDRS_AT: usize = offset_of!(Ipv4Hdr, src);
const IPV6_ADDRS_AT: usize = offset_of!(Ipv6Hdr, src);
/// The ports lead the UDP header, source then destination.
const UDP_PORTS_AT: usize = offset_of!(UdpHdr, src);
const UDP_CHECK_AT: usize = offset_of!(UdpHdr, check);
const IPV4_CHECK_AT: usize = offset_of!(Ipv4Hdr, check);

#[inline(always)]
pub fn rewrite(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<()> {
    let address_diff = if ip.family == FAMILY_V4 {
        rewrite_ipv4_addresses(ctx, ip, src, dst)?
    } else {
        rewrite_ipv6_addresses(ctx, ip, src, dst)?
    };
    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&src.port_be.to_ne_bytes());
    ports[2..].copy_from_slice(&dst.port_be.to_ne_bytes());
    let diff = replace_at(ctx, ip.l4 + UDP_PORTS_AT, &mut ports, address_diff)?;
    let check: [u8; 2] = read_at(ctx, ip.l4 + UDP_CHECK_AT)?;
    write_at(ctx, ip.l4 + UDP_CHECK_AT, checksum::apply_udp_diff(u16::from_ne_bytes(check), diff).to_ne_bytes())
}

/// Rewrites both IPv4 addresses and the header checksum; returns the diff
/// the UDP pseudo-header saw.
#[inline(always)]
fn rewrite_ipv4_addresses(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<u32> {
    let mut addresses = [0u8; 8];
    addresses[..4].copy_from_slice(&src.addr[..4]);
    addresses[4..].copy_from_slice(&dst.addr[..4]);
    let diff = replace_at(ctx, ip.l3 + IPV4_ADDRS_AT, &mut addresses, 0)?;
    let check: [u8; 2] = read_at(ctx, ip.l3 + IPV4_CHECK_AT)?;
    write_at(ctx, ip.l3 + IPV4_CHECK_AT, checksum::apply_diff(u16::from_ne_bytes(check), diff).to_ne_bytes())?;
    Some(diff)
}

#[inline(always)]
fn rewrite_ipv6_addresses(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<u32> {
    let mut addresses = [0u8; 32];
    addresses[..16].copy_from_slice(&src.addr);
    addresses[16..].copy_from_slice(&dst.addr);
    replace_at(ctx, ip.l3 + IPV6_ADDRS_AT, &mut addresses, 0)
}
