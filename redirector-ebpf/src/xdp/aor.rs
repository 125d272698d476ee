//! A request from a socket on the fast path takes it only if it is for the
//! AOR the socket was put there for (a shared socket's responses too, by
//! their `To`); one of another AOR from a shared socket, or from another
//! source that came through another proxy, may go to its AOR's home (see
//! `redirector_ebpf::aor`, `redirector_ebpf::vias`).

use aya_ebpf::programs::XdpContext;
use redirector_ebpf::{
    aor::{RequestAor, RequestLine, header_aor, message_line, request_line},
    vias::{Vias, count_vias},
};

use super::{
    packet::Ip,
    scratch::{self, Scratch},
};

/// The datagram may take the entry.
pub const TAKES: u32 = 0;
/// A request (a shared socket's response) for another AOR, whose hash
/// `hashed` returns.
pub const OTHER_AOR: u32 = 1;
/// A request whose AOR the program cannot read with certainty.
pub const UNSEEN: u32 = 2;

/// No request: no AOR to read.
pub const NOT_REQUEST: u32 = 0;
/// A request whose AOR's hash `hashed` returns.
pub const HASHED: u32 = 1;
/// A request whose AOR the program cannot read with certainty.
pub const UNKNOWN: u32 = 2;

/// Whether the datagram may take a fast path installed for the AOR that
/// hashes to `aor_hash`: what is no SIP message (a keepalive, STUN) does,
/// a request or response only with that hash (a response's AOR is its
/// `To`: only a shared socket's responses are checked).
#[inline(always)]
pub fn check(ctx: &XdpContext, ip: &Ip, aor_hash: u64) -> u32 {
    match read(ctx, ip) {
        NOT_REQUEST => TAKES,
        HASHED if hashed() == aor_hash => TAKES,
        HASHED => OTHER_AOR,
        _ => UNSEEN,
    }
}

/// Reads the datagram's AOR into the scratch (`message_line`: a
/// response's `To` too): `NOT_REQUEST`, `HASHED` (then `hashed` is its
/// `aor_hash`) or `UNKNOWN`.
/// A subprogram: its stack does not add to its siblings'.
#[inline(never)]
pub fn read(ctx: &XdpContext, ip: &Ip) -> u32 {
    match scratch::load(ctx, ip) {
        Some(scratch) => hash_message(scratch),
        None => UNKNOWN,
    }
}

/// The hash the last `read` that answered `HASHED` found.
#[inline(always)]
pub fn hashed() -> u64 {
    scratch::current().map_or(0, |scratch| scratch::result(scratch))
}

/// The request carries more than one Via value.
pub const SEVERAL_VIAS: u32 = 0;
/// It carries at most one, or it is no request the program reads.
pub const NOT_SEVERAL_VIAS: u32 = 1;
/// The program cannot tell.
pub const VIAS_UNSEEN: u32 = 2;

/// Counts the Via values of the datagram's request, its bytes left in the
/// scratch for `reread`. What is no request, or one whose AOR the program
/// would not read (`request_line`), is not counted.
/// A subprogram: its stack does not add to its siblings'.
#[inline(never)]
pub fn vias(ctx: &XdpContext, ip: &Ip) -> u32 {
    let Some(scratch) = scratch::load(ctx, ip) else {
        return NOT_SEVERAL_VIAS;
    };
    count(scratch)
}

#[inline(never)]
fn count(scratch: &mut Scratch) -> u32 {
    let (start, end) = scratch::bounds(scratch);
    if !matches!(request_line(&scratch.bytes, start, end), RequestLine::Reads(_)) {
        return NOT_SEVERAL_VIAS;
    }
    match count_vias(&scratch.bytes, start, end) {
        Vias::Several => SEVERAL_VIAS,
        Vias::Alone | Vias::NotSeveral => NOT_SEVERAL_VIAS,
        Vias::Unknown => VIAS_UNSEEN,
    }
}

/// Reads the AOR of the request `vias` counted, as `read` does.
#[inline(never)]
pub fn reread() -> u32 {
    match scratch::current() {
        Some(scratch) => hash(scratch),
        None => UNKNOWN,
    }
}

/// A subprogram of its own, in and out through memory (see `scratch`).
/// The header to read goes to `scan` through memory too, so the verifier
/// checks the scan once, not once per header.
#[inline(never)]
fn hash(scratch: &mut Scratch) -> u32 {
    let (start, end) = scratch::bounds(scratch);
    hash_header(scratch, request_line(&scratch.bytes, start, end))
}

/// As `hash`, a response read by its `To` (`message_line`).
#[inline(never)]
fn hash_message(scratch: &mut Scratch) -> u32 {
    let (start, end) = scratch::bounds(scratch);
    hash_header(scratch, message_line(&scratch.bytes, start, end))
}

#[inline(always)]
fn hash_header(scratch: &mut Scratch, line: RequestLine) -> u32 {
    match line {
        RequestLine::NotRequest => NOT_REQUEST,
        RequestLine::Unknown => UNKNOWN,
        RequestLine::Reads(header) => {
            scratch::set_result(scratch, header as u64);
            scan(scratch)
        }
    }
}

#[inline(never)]
fn scan(scratch: &mut Scratch) -> u32 {
    let (start, end) = scratch::bounds(scratch);
    match header_aor(&scratch.bytes, start, end, scratch::result(scratch) as u8) {
        RequestAor::Hash(hash) => {
            scratch::set_result(scratch, hash);
            HASHED
        }
        _ => UNKNOWN,
    }
}
