//! A REGISTER from a socket on the fast path takes it only if it is for the
//! AOR the socket was put there for (see `redirector_ebpf::register`).

use aya_ebpf::programs::XdpContext;
use redirector_ebpf::register::{self, RegisterTo};

use super::{
    packet::Ip,
    scratch::{self, Scratch},
};

const NOT_REGISTER: u32 = 0;
const HASHED: u32 = 1;
const UNKNOWN: u32 = 2;

/// Whether the datagram may take a fast path installed for the AOR whose
/// REGISTERs hash to `aor_hash`: anything but a REGISTER does; a REGISTER
/// only with that hash. A subprogram: its stack does not add to its
/// siblings'.
#[inline(never)]
pub fn may_take(ctx: &XdpContext, ip: &Ip, aor_hash: u64) -> bool {
    let Some(scratch) = scratch::load(ctx, ip) else {
        return false;
    };
    match hash(scratch) {
        NOT_REGISTER => true,
        HASHED => scratch::result(scratch) == aor_hash,
        _ => false,
    }
}

/// A subprogram of its own, in and out through memory (see `scratch`).
#[inline(never)]
fn hash(scratch: &mut Scratch) -> u32 {
    let (start, end) = scratch::bounds(scratch);
    match register::register_to(&scratch.bytes, start, end) {
        RegisterTo::NotRegister => NOT_REGISTER,
        RegisterTo::Hash(hash) => {
            scratch::set_result(scratch, hash);
            HASHED
        }
        RegisterTo::Unknown => UNKNOWN,
    }
}
