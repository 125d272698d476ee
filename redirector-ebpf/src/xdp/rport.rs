//! nat: adds `;rport` to a request's top Via (see `redirector_ebpf::via`),
//! growing the frame at the front: everything before the insertion point
//! moves 6 bytes forward, everything after it stays where it is.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use redirector_ebpf::{
    FAMILY_V4, checksum,
    via::{self, RPORT, TopVia, VIA_SCAN},
};

use super::{
    headers::*,
    packet::{Ip, read_at, write_at},
};

/// The frame's first bytes, copied out to be scanned (more than a BPF stack
/// holds), and the scan's bounds and result.
#[repr(C)]
pub struct Scratch {
    bytes: [u8; VIA_SCAN],
    start: usize,
    end: usize,
    rport_at: usize,
}

#[map]
static VIA_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Bytes the frame grows by.
pub const GROWTH: usize = RPORT.len();

/// What a datagram's top Via needs (the offset stays in the scratch).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Needed {
    Nothing,
    Rport,
    /// Not found in the bytes scanned, or the scratch could not be filled.
    Unknown,
}

#[inline(always)]
pub fn inspect(ctx: &XdpContext, ip: &Ip) -> Needed {
    let Some(scratch) = VIA_SCRATCH.get_ptr_mut(0) else {
        return Needed::Unknown;
    };
    let Some(udp) = read_at::<UdpHdr>(ctx, ip.l4) else {
        return Needed::Unknown;
    };
    let payload_end = ip.l4 + u16::from_be_bytes(udp.len) as usize;
    let copied = if payload_end > VIA_SCAN { VIA_SCAN } else { payload_end };
    if copied <= ip.l4 + UDP_HLEN {
        return Needed::Unknown;
    }
    // SAFETY: `scratch` is this CPU's map value, whose first VIA_SCAN bytes
    // are the buffer, and `copied` is at most VIA_SCAN; the helper checks
    // the frame's bounds itself.
    let loaded = unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, scratch.cast(), copied as u32) };
    if loaded != 0 {
        return Needed::Unknown;
    }
    // SAFETY: a live per-CPU map value nothing else on this CPU touches.
    let scratch = unsafe { &mut *scratch };
    scratch.start = ip.l4 + UDP_HLEN;
    scratch.end = copied;
    scan(scratch)
}

/// The scan, as a subprogram of its own whose inputs and output are in
/// memory: the verifier checks it without the caller's knowledge of the
/// packet, and what follows it once, not once per offset it can end at.
#[inline(never)]
fn scan(scratch: &mut Scratch) -> Needed {
    // SAFETY: valid references into the scratch (volatile: the values must
    // come from memory, see above).
    let (start, end) = unsafe { (core::ptr::read_volatile(&scratch.start), core::ptr::read_volatile(&scratch.end)) };
    match via::top_via(&scratch.bytes, start, end) {
        TopVia::Unchanged => Needed::Nothing,
        TopVia::AddRportAt(offset) => {
            // SAFETY: a valid, exclusive reference.
            unsafe { core::ptr::write_volatile(&mut scratch.rport_at, offset) };
            Needed::Rport
        }
        TopVia::NotFound => Needed::Unknown,
    }
}

/// Inserts `RPORT` where `inspect` found it goes (its bytes are still in
/// the scratch) and fixes the lengths and checksums. `None` if the frame
/// could not grow (then it is unchanged: `grown` stays false) or a later
/// step failed (the frame is no longer the input).
#[inline(always)]
pub fn insert(ctx: &XdpContext, ip: &Ip, grown: &mut bool) -> Option<()> {
    let scratch = VIA_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a live per-CPU map value; `inspect` wrote the field.
    let at = unsafe { core::ptr::read_volatile(&(*scratch).rport_at) };
    if at <= ip.l4 || at >= VIA_SCAN {
        return None;
    }
    // SAFETY: the helper checks the headroom itself and fails without change.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWTH as i32)) } != 0 {
        return None;
    }
    *grown = true;
    // SAFETY: the scratch starts with the frame's first VIA_SCAN bytes as
    // they were, and at < VIA_SCAN; the helper checks the frame's bounds.
    let moved = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, scratch.cast(), at as u32) };
    let mut text = RPORT;
    // SAFETY: `text` is GROWTH bytes on our stack; the helper checks the frame's bounds.
    let inserted = unsafe { bpf_xdp_store_bytes(ctx.ctx, at as u32, text.as_mut_ptr().cast(), GROWTH as u32) };
    if moved != 0 || inserted != 0 {
        return None;
    }
    grow_lengths(ctx, ip)?;
    let udp_check = ip.l4 + core::mem::offset_of!(UdpHdr, check);
    let check: [u8; 2] = read_at(ctx, udp_check)?;
    let diff = via::rport_checksum_diff((at - ip.l4) % 2 == 1);
    write_at(ctx, udp_check, checksum::apply_udp_diff(u16::from_be_bytes(check), diff).to_be_bytes())
}

/// The IP and UDP lengths, each `GROWTH` larger (and the IPv4 header
/// checksum with them).
#[inline(always)]
fn grow_lengths(ctx: &XdpContext, ip: &Ip) -> Option<()> {
    let udp_len = ip.l4 + core::mem::offset_of!(UdpHdr, len);
    add_to_be16(ctx, udp_len, GROWTH as u16)?;
    if ip.family != FAMILY_V4 {
        return add_to_be16(ctx, ip.l3 + core::mem::offset_of!(Ipv6Hdr, payload_len), GROWTH as u16);
    }
    add_to_be16(ctx, ip.l3 + core::mem::offset_of!(Ipv4Hdr, tot_len), GROWTH as u16)?;
    let check_at = ip.l3 + core::mem::offset_of!(Ipv4Hdr, check);
    let check: [u8; 2] = read_at(ctx, check_at)?;
    write_at(ctx, check_at, checksum::apply_diff(u16::from_be_bytes(check), GROWTH as u32).to_be_bytes())
}

#[inline(always)]
fn add_to_be16(ctx: &XdpContext, offset: usize, amount: u16) -> Option<()> {
    let value: [u8; 2] = read_at(ctx, offset)?;
    write_at(ctx, offset, u16::from_be_bytes(value).wrapping_add(amount).to_be_bytes())
}
