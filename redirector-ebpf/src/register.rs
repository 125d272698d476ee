//! Which AOR a REGISTER is for, as the XDP program can tell: a hash of its
//! `To` header value (the first line of it, byte for byte). A socket on the
//! fast path was put there for one AOR; a REGISTER from it for another (a
//! phone's second line, a scanner enumerating extensions) must reach the
//! daemon, which assigns that AOR its own home and answers within the flood
//! limits, instead of being registered at the first AOR's home.
//!
//! The daemon hashes the REGISTERs it sees with the same function, so the
//! two agree byte for byte; a `To` the program cannot see whole is
//! `Unknown`, and the REGISTER goes up. Table-driven like `via`, for the
//! verifier.

use crate::via::{VIA_SCAN, at};

/// SIP bytes searched for the `To` line's end (as many as `via` reads of
/// a frame). A `To` past them makes the REGISTER go up.
pub const TO_SCAN: usize = VIA_SCAN;

/// A REGISTER request line starts so. RFC 3261 method names are
/// case-sensitive, but registrars such as Kamailio match them in any case,
/// so any case is checked.
pub const REGISTER: [u8; 9] = *b"REGISTER ";

/// What a datagram is, for the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterTo {
    /// Not a REGISTER: nothing to check.
    NotRegister,
    /// A REGISTER, and the hash of its `To` value.
    Hash(u64),
    /// A REGISTER whose `To` line is not complete within the bytes scanned.
    Unknown,
}

/// Reads the SIP message at `bytes[start..end]` (`end` clamped to the buffer).
#[inline(always)]
pub fn register_to(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> RegisterTo {
    let end = if end > VIA_SCAN { VIA_SCAN } else { end };
    // The constant bound first: the verifier cannot follow `start + 9 <= end`.
    if start > VIA_SCAN - REGISTER.len() || start + REGISTER.len() > end {
        return RegisterTo::NotRegister;
    }
    let mut i = 0;
    while i < REGISTER.len() {
        if !at(bytes, start + i).eq_ignore_ascii_case(&REGISTER[i]) {
            return RegisterTo::NotRegister;
        }
        i += 1;
    }
    to_hash(bytes, start, core::hint::black_box(end))
}

/// FNV-1a, 64 bits: enough to tell a socket's lines apart, cheap in BPF.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of the first `To` (or `t`) header's value, from just after its
/// colon to the end of its physical line (a folded `To` is hashed by its
/// first line: the daemon declines to check such a socket, see
/// `edge::first_contact`). `end` must be opaque to LLVM: knowing it is at
/// most `VIA_SCAN`, LLVM would drop the masks in `at` behind `k < len` and
/// leave the verifier an access it cannot bound.
#[inline(always)]
fn to_hash(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> RegisterTo {
    let len = end - start;
    let (mut state, mut hash) = (IN_LINE, FNV_OFFSET);
    let mut k = 0;
    while k < TO_SCAN && k < len {
        let byte = at(bytes, start + k);
        state = STEP[((state as usize % STATES) * CLASSES) | (CLASS[byte as usize] as usize % CLASSES)];
        // An FNV-1a step for a byte of the value, none for the others,
        // without a branch: one path per byte for the verifier.
        let in_value = (state == VALUE) as u64;
        hash = (hash ^ (byte as u64 * in_value)).wrapping_mul(1 + in_value * (FNV_PRIME - 1));
        match state {
            VALUE_ENDS => return RegisterTo::Hash(hash),
            HEADERS_END => return RegisterTo::Unknown,
            _ => k += 1,
        }
    }
    RegisterTo::Unknown
}

// Byte classes.
const OTHER: u8 = 0;
const T: u8 = 1;
const O: u8 = 2;
const COLON: u8 = 3;
const SPACE: u8 = 4;
const LF: u8 = 5;
const CR: u8 = 6;
const CLASSES: usize = 8;

// States: looking for the To header line, in its value, and the ends.
const IN_LINE: u8 = 0;
const LINE_START: u8 = 1;
const AFTER_T: u8 = 2;
const AFTER_NAME: u8 = 3;
/// In the value; its bytes are hashed (not the colon, `VALUE_START`).
const VALUE: u8 = 4;
const VALUE_ENDS: u8 = 5;
const HEADERS_END: u8 = 6;
const VALUE_START: u8 = 7;
const STATES: usize = 8;

static CLASS: [u8; 256] = classes();
static STEP: [u8; STATES * CLASSES] = steps();

const fn classes() -> [u8; 256] {
    let mut table = [OTHER; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b't' | b'T' => T,
            b'o' | b'O' => O,
            b':' => COLON,
            b' ' | b'\t' => SPACE,
            b'\n' => LF,
            b'\r' => CR,
            _ => OTHER,
        };
        byte += 1;
    }
    table
}

const fn steps() -> [u8; STATES * CLASSES] {
    let mut table = [HEADERS_END; STATES * CLASSES];
    let mut state = 0;
    while state < STATES {
        let mut class = 0;
        while class < CLASSES {
            table[state * CLASSES + class] = step(state as u8, class as u8);
            class += 1;
        }
        state += 1;
    }
    table
}

/// The automaton, written out; `steps` tabulates it.
const fn step(state: u8, class: u8) -> u8 {
    match (state, class) {
        (VALUE | VALUE_START, CR | LF) => VALUE_ENDS,
        (VALUE | VALUE_START, _) => VALUE,
        (LINE_START, CR | LF) => HEADERS_END,
        (IN_LINE | AFTER_T | AFTER_NAME, LF) => LINE_START,
        (LINE_START, T) => AFTER_T,
        (AFTER_T, O) => AFTER_NAME,
        (AFTER_T | AFTER_NAME, COLON) => VALUE_START,
        (AFTER_T | AFTER_NAME, SPACE) => AFTER_NAME,
        (IN_LINE | LINE_START | AFTER_T | AFTER_NAME, _) => IN_LINE,
        // The ends are final.
        _ => state,
    }
}
