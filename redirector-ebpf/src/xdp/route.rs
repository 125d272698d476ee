//! Next hop, kept by the daemon or else from the kernel FIB, and sending
//! the rewritten frame.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use redirector_ebpf::{Endpoint, FAMILY_V4, NextHop, address_bits, reply_key, reply_prefix_bits};

use super::{
    headers::EthHdr,
    maps::{HOP_STATE, HOPS, REPLY_HOPS},
    packet::write_at,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The next hop towards `dst` for an IP packet of `len` bytes: the kept hop
/// `HOPS[kept]` when it is fresh and the packet fits its MTU, else the
/// FIB's answer (`lookup`). Returns `FOUND` with `hop` filled, or the FIB's
/// reason for not answering.
#[inline(always)]
pub fn resolve(ctx: &XdpContext, src: &Endpoint, dst: &Endpoint, len: usize, kept: u32, hop: &mut NextHop) -> u32 {
    let taken = HOPS.get(kept).is_some_and(|kept| kept.addr == dst.addr && take_kept(kept, len, hop));
    if taken { FOUND } else { lookup(ctx, src, dst, len, hop) }
}

/// As `resolve`, for a nat reply to client `dst`: the kept hop is the
/// `REPLY_HOPS` entry of the longest prefix holding `dst`, as the kernel
/// would match its route (one lookup; clients behind one gateway share
/// its hop, an on-link client has its own or none).
#[inline(always)]
pub fn resolve_reply(ctx: &XdpContext, src: &Endpoint, dst: &Endpoint, len: usize, hop: &mut NextHop) -> u32 {
    if take_kept_reply(dst, len, hop) { FOUND } else { lookup(ctx, src, dst, len, hop) }
}

// A separate BPF subprogram: the trie key's stack is not added to the
// FIB lookup's, its sibling.
#[inline(never)]
fn take_kept_reply(dst: &Endpoint, len: usize, hop: &mut NextHop) -> bool {
    let key = Key::new(reply_prefix_bits(address_bits(dst.family)), reply_key(dst.family, &dst.addr));
    REPLY_HOPS.get(&key).is_some_and(|kept| take_kept(kept, len, hop))
}

/// Copies `kept` into `hop` if `HOP_STATE` vouches for it and `len` bytes fit it.
#[inline(always)]
fn take_kept(kept: &NextHop, len: usize, hop: &mut NextHop) -> bool {
    let Some(state) = HOP_STATE.get(0) else {
        return false;
    };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if !state.vouches(kept, now) || len > kept.mtu as usize {
        return false;
    }
    *hop = *kept;
    true
}

/// Asks the FIB how to reach `dst` from `src` with an IP packet of `len`
/// bytes and fills `hop` on `BPF_FIB_LKUP_RET_SUCCESS`. Any other result
/// (no route, no resolved neighbour yet, the packet would need
/// fragmenting…) is returned as it is: the caller then passes the packet to
/// the kernel. (`hop` is an out-parameter because BPF subprograms cannot
/// return aggregates.)
#[inline(never)]
pub fn lookup(ctx: &XdpContext, src: &Endpoint, dst: &Endpoint, len: usize, hop: &mut NextHop) -> u32 {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_1.tot_len = len as u16;
    if src.family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src.addr[0], src.addr[1], src.addr[2], src.addr[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst.addr[0], dst.addr[1], dst.addr[2], dst.addr[3]]);
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(&src.addr);
        params.__bindgen_anon_4.ipv6_dst = words(&dst.addr);
    }
    let size = size_of::<bpf_fib_lookup>() as i32;
    // SAFETY: params is a valid, initialised bpf_fib_lookup of `size` bytes.
    let ret = unsafe { fib_lookup(ctx.ctx.cast(), &mut params, size, 0) };
    if ret != i64::from(FOUND) {
        // Negative: bad arguments, which never happens with a zeroed request.
        return u32::try_from(ret).unwrap_or(u32::MAX);
    }
    *hop = NextHop { ifindex: params.ifindex, dst_mac: params.dmac, src_mac: params.smac, ..NextHop::default() };
    FOUND
}

pub const FOUND: u32 = BPF_FIB_LKUP_RET_SUCCESS;
/// The route is known but its next hop's MAC is not (yet).
pub const NO_NEIGHBOUR: u32 = BPF_FIB_LKUP_RET_NO_NEIGH;

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([addr[4 * i], addr[4 * i + 1], addr[4 * i + 2], addr[4 * i + 3]]);
        i += 1;
    }
    out
}

/// Writes the next hop's MACs and sends the frame: back out of the ingress
/// device (`XDP_TX`) or redirected to the hop's egress device. A VLAN-tagged
/// frame always leaves where it came in, keeping its tag: the FIB's egress
/// would be the VLAN device, which cannot take XDP frames.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &NextHop, vlan: bool) -> Option<u32> {
    write_at(ctx, offset_of!(EthHdr, dst), hop.dst_mac)?;
    write_at(ctx, offset_of!(EthHdr, src), hop.src_mac)?;
    if vlan || hop.ifindex == ctx.ingress_ifindex() as u32 {
        return Some(xdp_action::XDP_TX);
    }
    // SAFETY: plain helper call; it returns XDP_REDIRECT or XDP_ABORTED.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    Some(if action == xdp_action::XDP_REDIRECT { action } else { xdp_action::XDP_DROP })
}
