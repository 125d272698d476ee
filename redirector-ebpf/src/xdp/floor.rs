//! `redirector_floor`: the least any forwarder does, as the benchmark's
//! floor (BENCHMARKS.md section 1). It parses Ethernet, IPv4 and UDP, looks
//! the source up in `FLOOR` once, writes that entry's MACs and sends the
//! frame back out. Everything else is `XDP_PASS`. It counts nothing and
//! checks nothing more: a real forwarder can only cost more.
//!
//! `redirector_limit`: the physical limit of an `XDP_TX` forwarder, as the
//! throughput benchmark's reference (BENCHMARKS.md section 2). Every IPv4
//! frame gets the MACs of `LIMIT`'s one entry and goes back out; nothing is
//! parsed past the ethertype, nothing hashed. Not a literal MAC swap: on
//! the benchmark's bridge a swapped frame would go back to the client's
//! port, where nothing counts it; the next hop's MACs send it on to the
//! home server, for the same cost (12 bytes written, an array lookup the
//! verifier inlines).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use redirector_ebpf::{Endpoint, FloorHop};

use super::{
    headers::{ETH_HLEN, ETH_P_IPV4, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr},
    maps::{FLOOR, LIMIT},
    packet::{read_at, write_at},
};

#[xdp]
pub fn redirector_floor(ctx: XdpContext) -> u32 {
    forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn forward(ctx: &XdpContext) -> Option<u32> {
    let eth: EthHdr = read_at(ctx, 0)?;
    if u16::from_be_bytes(eth.ethertype) != ETH_P_IPV4 {
        return None;
    }
    let ip: Ipv4Hdr = read_at(ctx, ETH_HLEN)?;
    if ip.protocol != IPPROTO_UDP {
        return None;
    }
    let udp: UdpHdr = read_at(ctx, ETH_HLEN + ip.header_len())?;
    let source = Endpoint::v4(ip.src, u16::from_ne_bytes(udp.src));
    // SAFETY: the value is copied out; no reference outlives the call.
    let hop: FloorHop = *unsafe { FLOOR.get(source) }?;
    write_at(ctx, 0, hop)?;
    Some(xdp_action::XDP_TX)
}

#[xdp]
pub fn redirector_limit(ctx: XdpContext) -> u32 {
    rewrite_macs(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn rewrite_macs(ctx: &XdpContext) -> Option<u32> {
    let eth: EthHdr = read_at(ctx, 0)?;
    if u16::from_be_bytes(eth.ethertype) != ETH_P_IPV4 {
        return None;
    }
    write_at(ctx, 0, *LIMIT.get(0)?)?;
    Some(xdp_action::XDP_TX)
}
