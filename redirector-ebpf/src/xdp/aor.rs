//! A request from a socket on the fast path takes it only if it is for the
//! AOR the socket was put there for (see `redirector_ebpf::aor`).

use aya_ebpf::programs::XdpContext;
use redirector_ebpf::aor::{RequestAor, RequestLine, header_aor, request_line};

use super::{
    packet::Ip,
    scratch::{self, Scratch},
};

/// The datagram may take the entry.
pub const TAKES: u32 = 0;
/// A request for another AOR.
pub const OTHER_AOR: u32 = 1;
/// A request whose AOR the program cannot read with certainty.
pub const UNSEEN: u32 = 2;

const NOT_REQUEST: u32 = 0;
const HASHED: u32 = 1;
const UNKNOWN: u32 = 2;

/// Whether the datagram may take a fast path installed for the AOR that
/// hashes to `aor_hash`: what is no request (a response, a keepalive,
/// STUN) does, a request only with that hash.
/// A subprogram: its stack does not add to its siblings'.
#[inline(never)]
pub fn check(ctx: &XdpContext, ip: &Ip, aor_hash: u64) -> u32 {
    let Some(scratch) = scratch::load(ctx, ip) else {
        return UNSEEN;
    };
    match hash(scratch) {
        NOT_REQUEST => TAKES,
        HASHED if scratch::result(scratch) == aor_hash => TAKES,
        HASHED => OTHER_AOR,
        _ => UNSEEN,
    }
}

/// A subprogram of its own, in and out through memory (see `scratch`).
/// The header to read goes to `scan` through memory too, so the verifier
/// checks the scan once, not once per header.
#[inline(never)]
fn hash(scratch: &mut Scratch) -> u32 {
    let (start, end) = scratch::bounds(scratch);
    match request_line(&scratch.bytes, start, end) {
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
