//! nat: rewrite a datagram's source and destination endpoints in place,
//! with incremental IPv4 header and UDP checksum updates (`bpf_csum_diff`).

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};
use redirector_ebpf::{Endpoint, FAMILY_V4, checksum};

use super::{
    headers::*,
    packet::{Ip, ptr_at},
};

/// Offset of the source address inside the IPv4 / IPv6 header; the
/// destination follows it directly.
const IPV4_ADDRS_AT: usize = 12;
const IPV6_ADDRS_AT: usize = 8;

#[inline(always)]
pub fn rewrite(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<()> {
    let address_diff = if ip.family == FAMILY_V4 {
        rewrite_ipv4_addresses(ctx, ip, src, dst)?
    } else {
        rewrite_ipv6_addresses(ctx, ip, src, dst)?
    };
    let udp: *mut UdpHdr = ptr_at(ctx, ip.l4)?;
    let old_ports: *mut [u8; 4] = ptr_at(ctx, ip.l4)?;
    let mut new_ports = [0u8; 4];
    new_ports[..2].copy_from_slice(&src.port_be.to_ne_bytes());
    new_ports[2..].copy_from_slice(&dst.port_be.to_ne_bytes());
    let diff = csum_diff(old_ports, &mut new_ports, address_diff);
    unsafe {
        *old_ports = new_ports;
        let check = checksum::apply_udp_diff(u16::from_ne_bytes((*udp).check), diff);
        (*udp).check = check.to_ne_bytes();
    }
    Some(())
}

/// Rewrites both IPv4 addresses and the header checksum; returns the diff
/// the UDP pseudo-header saw.
#[inline(always)]
fn rewrite_ipv4_addresses(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<u32> {
    let hdr: *mut Ipv4Hdr = ptr_at(ctx, ip.l3)?;
    let old: *mut [u8; 8] = ptr_at(ctx, ip.l3 + IPV4_ADDRS_AT)?;
    let mut new = [0u8; 8];
    new[..4].copy_from_slice(&src.addr[..4]);
    new[4..].copy_from_slice(&dst.addr[..4]);
    let diff = csum_diff(old, &mut new, 0);
    unsafe {
        *old = new;
        let check = checksum::apply_diff(u16::from_ne_bytes((*hdr).check), diff);
        (*hdr).check = check.to_ne_bytes();
    }
    Some(diff)
}

#[inline(always)]
fn rewrite_ipv6_addresses(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<u32> {
    let old: *mut [u8; 32] = ptr_at(ctx, ip.l3 + IPV6_ADDRS_AT)?;
    let mut new = [0u8; 32];
    new[..16].copy_from_slice(&src.addr);
    new[16..].copy_from_slice(&dst.addr);
    let diff = csum_diff(old, &mut new, 0);
    unsafe { *old = new };
    Some(diff)
}

/// `bpf_csum_diff` over two equally sized buffers (a multiple of 4 bytes).
#[inline(always)]
fn csum_diff<const N: usize>(old: *mut [u8; N], new: &mut [u8; N], seed: u32) -> u32 {
    // SAFETY: both pointers cover N readable bytes (packet bounds checked by the caller).
    unsafe { bpf_csum_diff(old.cast(), N as u32, new.as_mut_ptr().cast(), N as u32, seed) as u32 }
}
