//! The frame's first bytes copied out of the packet, for the scans that
//! read SIP (`via`, `aor`): more than a BPF stack holds. The probe
//! responder works on a probe's payload here too (`probe`). A scan runs
//! as a subprogram of its own whose inputs and result are in here, in
//! memory, not registers: the verifier then checks it without the caller's
//! knowledge of the packet, and what follows it once, not once per offset
//! it can end at.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, macros::map, maps::PerCpuArray, programs::XdpContext};
use redirector_ebpf::{Endpoint, via::VIA_SCAN};

use super::{
    headers::*,
    packet::{Ip, read_at},
};

#[repr(C)]
pub struct Scratch {
    pub bytes: [u8; VIA_SCAN],
    /// Where the SIP message starts and the copy ends, in `bytes`.
    pub start: usize,
    pub end: usize,
    /// What the last scan found.
    pub result: u64,
    /// Where a shared socket's other line is sent from and to
    /// (`redirector_other_line`, whose stack has no room for them).
    pub ends: Ends,
}

/// The edge's and the home server's endpoints a forward goes between.
#[repr(C)]
#[derive(Default)]
pub struct Ends {
    pub edge: Endpoint,
    pub server: Endpoint,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch, filled with the frame's first bytes up to the end of
/// the UDP payload; `None` if there is no payload or the copy failed.
#[inline(always)]
pub fn load(ctx: &XdpContext, ip: &Ip) -> Option<&'static mut Scratch> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let udp: UdpHdr = read_at(ctx, ip.l4)?;
    let payload_end = ip.l4 + u16::from_be_bytes(udp.len) as usize;
    let copied = if payload_end > VIA_SCAN { VIA_SCAN } else { payload_end };
    if copied <= ip.l4 + UDP_HLEN {
        return None;
    }
    // SAFETY: `scratch` is this CPU's map value, whose first VIA_SCAN bytes
    // are the buffer, and `copied` is at most VIA_SCAN; the helper checks
    // the frame's bounds itself.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, scratch.cast(), copied as u32) } != 0 {
        return None;
    }
    // SAFETY: a live per-CPU map value nothing else on this CPU touches
    // while the program runs.
    let scratch = unsafe { &mut *scratch };
    scratch.start = ip.l4 + UDP_HLEN;
    scratch.end = copied;
    Some(scratch)
}

/// This CPU's scratch as the last `load` and scan left it.
#[inline(always)]
pub fn current() -> Option<&'static mut Scratch> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: as in `load`.
    Some(unsafe { &mut *scratch })
}

/// This CPU's scratch's endpoints, for a forward to fill.
#[inline(always)]
pub fn ends() -> Option<&'static mut Ends> {
    current().map(|scratch| &mut scratch.ends)
}

/// The scan's bounds, read back from memory (see the module docs).
#[inline(always)]
pub fn bounds(scratch: &Scratch) -> (usize, usize) {
    // SAFETY: valid references into the scratch.
    unsafe { (core::ptr::read_volatile(&scratch.start), core::ptr::read_volatile(&scratch.end)) }
}

#[inline(always)]
pub fn set_result(scratch: &mut Scratch, result: u64) {
    // SAFETY: a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(&mut scratch.result, result) }
}

#[inline(always)]
pub fn result(scratch: &Scratch) -> u64 {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(&scratch.result) }
}
