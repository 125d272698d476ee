//! dsr: wrap the client's IP packet in an outer IPv4 (IPIP) or IPv6
//! (IPv6-in-IPv6) header addressed to the home server, Katran style. The
//! outer header copies the inner TOS / traffic class and, over IPv4, the
//! Don't Fragment bit (RFC 2003 §3.1) and the identification (unique per
//! sender as the inner one is, as RFC 6864 wants of a datagram that may be
//! fragmented); it has no flow label and a hop limit of `ENCAP_TTL`. ICMP errors from the
//! tunnel path reach the edge and are not relayed to the client (RFC 2003
//! §4): the FIB lookup passes up any packet that would exceed the egress
//! MTU instead, and edge and home servers are expected on one link or a
//! path with the MTU of it.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use redirector_ebpf::{Endpoint, FAMILY_V4, checksum};

use super::{
    headers::*,
    packet::{Ip, read_at, write_at},
};

/// Bytes the outer header adds for a packet of this family.
#[inline(always)]
pub const fn overhead(family: u8) -> usize {
    if family == FAMILY_V4 { IPV4_HLEN } else { IPV6_HLEN }
}

/// Grows the frame at the front and writes the outer header. `None` means
/// the frame could not be grown (it is then unchanged) or, after growing,
/// a bounds check failed (the caller drops it: it is no longer the input).
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, ip: &Ip, src: &Endpoint, dst: &Endpoint) -> Option<()> {
    let grow = overhead(ip.family);
    // SAFETY: the helper checks the headroom itself and fails without change.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return None;
    }
    move_l2_header(ctx, grow, ip.vlan)?;
    if ip.family == FAMILY_V4 { write_ipv4(ctx, ip, grow, src, dst) } else { write_ipv6(ctx, ip, grow, src, dst) }
}

/// Copies the Ethernet header (and VLAN tag) from `from` to the frame start.
#[inline(always)]
pub fn move_l2_header_to(ctx: &XdpContext, from: usize, to: usize, vlan: bool) -> Option<()> {
    write_at(ctx, to, read_at::<EthHdr>(ctx, from)?)?;
    if vlan {
        write_at(ctx, to + ETH_HLEN, read_at::<VlanHdr>(ctx, from + ETH_HLEN)?)?;
    }
    Some(())
}

#[inline(always)]
fn move_l2_header(ctx: &XdpContext, grown: usize, vlan: bool) -> Option<()> {
    move_l2_header_to(ctx, grown, 0, vlan)
}

#[inline(always)]
fn write_ipv4(ctx: &XdpContext, ip: &Ip, grow: usize, src: &Endpoint, dst: &Endpoint) -> Option<()> {
    let inner: Ipv4Hdr = read_at(ctx, ip.l3 + grow)?;
    let total = ((ip.len + IPV4_HLEN) as u16).to_be_bytes();
    let mut outer = [0u8; IPV4_HLEN];
    outer[0] = 0x45;
    outer[1] = inner.tos;
    outer[2] = total[0];
    outer[3] = total[1];
    outer[4] = inner.id[0];
    outer[5] = inner.id[1];
    outer[6] = inner.frag[0] & IPV4_DF;
    outer[8] = ENCAP_TTL;
    outer[9] = IPPROTO_IPIP;
    outer[12..16].copy_from_slice(&src.addr[..4]);
    outer[16..20].copy_from_slice(&dst.addr[..4]);
    let check = checksum::compute(&outer).to_be_bytes();
    outer[10] = check[0];
    outer[11] = check[1];
    write_at(ctx, ip.l3, outer)
}

#[inline(always)]
fn write_ipv6(ctx: &XdpContext, ip: &Ip, grow: usize, src: &Endpoint, dst: &Endpoint) -> Option<()> {
    let inner: Ipv6Hdr = read_at(ctx, ip.l3 + grow)?;
    let class_flow = inner.version_class_flow;
    let outer = Ipv6Hdr {
        version_class_flow: [class_flow[0], class_flow[1] & 0xf0, 0, 0],
        payload_len: (ip.len as u16).to_be_bytes(),
        next_header: IPPROTO_IPV6,
        hop_limit: ENCAP_TTL,
        src: src.addr,
        dst: dst.addr,
    };
    write_at(ctx, ip.l3, outer)
}
