//! nat: adds `;rport` to a request's top Via (see `redirector_ebpf::via`),
//! growing the frame at the front: everything before the insertion point
//! moves 6 bytes forward, everything after it stays where it is.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use redirector_ebpf::{
    FAMILY_V4, checksum,
    via::{self, RPORT, TopVia, VIA_SCAN},
};

use super::{
    headers::*,
    packet::{Ip, read_at, write_at},
    scratch::{self, Scratch},
};

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
    match scratch::load(ctx, ip) {
        Some(scratch) => scan(scratch),
        None => Needed::Unknown,
    }
}

/// A subprogram of its own, in and out through memory (see `scratch`).
#[inline(never)]
fn scan(scratch: &mut Scratch) -> Needed {
    let (start, end) = scratch::bounds(scratch);
    match via::top_via(&scratch.bytes, start, end) {
        TopVia::Unchanged => Needed::Nothing,
        TopVia::AddRportAt(offset) => {
            scratch::set_result(scratch, offset as u64);
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
    let scratch = scratch::current()?;
    let at = scratch::result(scratch) as usize;
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
    let moved = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, scratch.bytes.as_mut_ptr().cast(), at as u32) };
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
