//! The probe responder (`redirector_ebpf::probe`): a probe to the probe
//! port of an address this program answers for is turned into its answer
//! in place and sent back where it came from (`XDP_TX`): Ethernet, IP and
//! UDP endpoints swapped, the payload rewritten, the UDP checksum updated
//! incrementally (swapping addresses and ports leaves the IPv4 header's and
//! the pseudo-header's sums unchanged). The frame keeps its length, VLAN
//! tag, IP options, TOS and TTL / hop limit.

use core::mem::offset_of;

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use redirector_ebpf::{
    Counter, FAMILY_V4, checksum,
    probe::{self, PROBE_LEN, ProbeConfig},
};

use super::{
    headers::*,
    packet::{Datagram, read_at, replace_at, udp_header_ok, write_at},
    scratch,
};

/// Answers the probe in `datagram` as `server`, or says why not: a frame
/// that is no well-formed probe is `ProbeMalformed`, a probe while not
/// answering `ProbeSilent` (both to be dropped), an answer `ProbeAnswered`
/// (to be sent with `XDP_TX`). At a home (`at_home`), a state message
/// from an edge is `ProbeState` (to be passed up to `decap`).
// A separate BPF subprogram: SipHash's state stays off its callers' stack,
// and the payload is worked on in this CPU's scratch, not on the stack.
#[inline(never)]
pub fn respond(ctx: &XdpContext, datagram: &Datagram, config: &ProbeConfig, at_home: bool) -> Counter {
    let ip = &datagram.ip;
    let Some(udp) = read_at::<UdpHdr>(ctx, ip.l4) else {
        return Counter::ProbeMalformed;
    };
    if !udp_header_ok(ctx, ip) || u16::from_be_bytes(udp.len) as usize != UDP_HLEN + PROBE_LEN {
        return Counter::ProbeMalformed;
    }
    let Some(bytes) = payload(ctx, ip.l4 + UDP_HLEN) else {
        return Counter::ProbeMalformed;
    };
    if at_home && probe::is_state(bytes) {
        return Counter::ProbeState;
    }
    if !probe::is_probe(bytes) {
        return Counter::ProbeMalformed;
    }
    if config.answering == 0 {
        return Counter::ProbeSilent;
    }
    probe::answer(bytes, config, &datagram.dst, &datagram.src);
    if send_back(ctx, datagram, bytes).is_none() {
        return Counter::Malformed;
    }
    Counter::ProbeAnswered
}

/// The probe's payload copied into this CPU's scratch.
#[inline(always)]
fn payload(ctx: &XdpContext, at: usize) -> Option<&'static mut [u8; PROBE_LEN]> {
    let bytes = scratch::current()?.bytes.first_chunk_mut::<PROBE_LEN>()?;
    // SAFETY: `bytes` is PROBE_LEN bytes of this CPU's map value; the helper
    // checks the frame's bounds itself.
    let copied = unsafe { bpf_xdp_load_bytes(ctx.ctx, at as u32, bytes.as_mut_ptr().cast(), PROBE_LEN as u32) };
    (copied == 0).then_some(bytes)
}

/// Writes the answer's payload, swaps the endpoints and fixes the UDP checksum.
#[inline(always)]
fn send_back(ctx: &XdpContext, datagram: &Datagram, answer: &mut [u8; PROBE_LEN]) -> Option<()> {
    let ip = &datagram.ip;
    let diff = replace_at(ctx, ip.l4 + UDP_HLEN, answer, 0)?;
    let check_at = ip.l4 + offset_of!(UdpHdr, check);
    let check: [u8; 2] = read_at(ctx, check_at)?;
    write_at(ctx, check_at, checksum::apply_udp_diff(u16::from_ne_bytes(check), diff).to_ne_bytes())?;
    let udp: UdpHdr = read_at(ctx, ip.l4)?;
    write_at(ctx, ip.l4 + offset_of!(UdpHdr, src), [udp.dst, udp.src])?;
    if ip.family == FAMILY_V4 {
        let hdr: Ipv4Hdr = read_at(ctx, ip.l3)?;
        write_at(ctx, ip.l3 + offset_of!(Ipv4Hdr, src), [hdr.dst, hdr.src])?;
    } else {
        let hdr: Ipv6Hdr = read_at(ctx, ip.l3)?;
        write_at(ctx, ip.l3 + offset_of!(Ipv6Hdr, src), [hdr.dst, hdr.src])?;
    }
    let eth: EthHdr = read_at(ctx, 0)?;
    write_at(ctx, offset_of!(EthHdr, dst), [eth.src, eth.dst])
}
