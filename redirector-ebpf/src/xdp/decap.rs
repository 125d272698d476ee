//! redirector_decap, for home servers behind a dsr edge where the kernel
//! has no ipip / ip6tnl device: strips an outer IPv4 (protocol 4) or IPv6
//! (next header 41) header addressed to one of `DECAP_ADDRESSES` from one of
//! `DECAP_SOURCES` (the edges), so the inner packet (to the service address
//! on the server's loopback) goes up the stack as if it had arrived
//! directly. Everything else passes untouched: a tunnel from anywhere else
//! could carry any inner source, which the server would then answer.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use redirector_ebpf::{Counter, Endpoint, FAMILY_V4};

use super::{
    encap::move_l2_header_to,
    headers::*,
    maps::{DECAP_ADDRESSES, DECAP_SOURCES},
    packet::{Ip, parse_ip, read_at},
};

#[inline(always)]
pub fn strip_tunnel(ctx: &XdpContext) -> Counter {
    let ip = match parse_ip(ctx) {
        Ok(ip) => ip,
        Err(counter) => return counter,
    };
    let inner_protocol = if ip.family == FAMILY_V4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    if ip.protocol != inner_protocol {
        return Counter::NotService;
    }
    let Some((outer_src, outer_dst)) = outer_endpoints(ctx, &ip) else {
        return Counter::Malformed;
    };
    // SAFETY: only presence is read; no reference outlives the call.
    if unsafe { DECAP_ADDRESSES.get(outer_dst).is_none() || DECAP_SOURCES.get(outer_src).is_none() } {
        return Counter::NotService;
    }
    let outer_len = ip.l4 - ip.l3;
    if move_l2_header_to(ctx, 0, outer_len, ip.vlan).is_none() {
        return Counter::Malformed;
    }
    // SAFETY: shrinking by the outer header, which the parse proved present.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Counter::Malformed;
    }
    Counter::Decapsulated
}

/// The outer (source, destination) addresses, as port-0 endpoints.
#[inline(always)]
fn outer_endpoints(ctx: &XdpContext, ip: &Ip) -> Option<(Endpoint, Endpoint)> {
    if ip.family == FAMILY_V4 {
        let hdr: Ipv4Hdr = read_at(ctx, ip.l3)?;
        Some((Endpoint::v4(hdr.src, 0), Endpoint::v4(hdr.dst, 0)))
    } else {
        let hdr: Ipv6Hdr = read_at(ctx, ip.l3)?;
        Some((Endpoint::v6(hdr.src, 0), Endpoint::v6(hdr.dst, 0)))
    }
}
