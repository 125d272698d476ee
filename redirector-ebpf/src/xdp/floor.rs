//! `redirector_floor`: the least any forwarder does, as the benchmark's
//! floor (BENCHMARKS.md section 1). It parses Ethernet, IPv4 and UDP, looks
//! the source up in `FLOOR` once, writes that entry's MACs and sends the
//! frame back out. Everything else is `XDP_PASS`. It counts nothing and
//! checks nothing more: a real forwarder can only cost more.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use redirector_ebpf::{Endpoint, FloorHop};

use super::{
    headers::{ETH_HLEN, ETH_P_IPV4, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr},
    maps::FLOOR,
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
