//! nat mode's `;rport` (RFC 3581): where the XDP program adds it to a
//! request's top Via. A home server that follows RFC 3261 §18.2.2 sends a
//! response to the Via's sent-by port when the Via has no `rport`; in nat
//! mode that port is the client's, at the edge's address, where nothing
//! maps it back. With `rport` it answers the port the request came from:
//! the client's edge port, which the program rewrites back.
//!
//! A pure scan over the first `VIA_SCAN` bytes of a frame, shared by the
//! program and host-side tests, written for the verifier (see `top_via`).

/// The parameter added. Its even length keeps every byte after it at its
/// 16-bit alignment, so the UDP checksum changes by its own words only.
pub const RPORT: [u8; 6] = *b";rport";

/// Frame bytes scanned for the top Via, headers included (a power of two).
pub const VIA_SCAN: usize = 512;

/// What a datagram's top Via needs in nat mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopVia {
    /// A response, or a request whose top Via asks for `rport` already.
    Unchanged,
    /// `;rport` goes at this offset of the frame: the end of the top Via
    /// value, where its `,` or line end was (parameters are separated by
    /// `;` with optional whitespace, so this holds after any of them).
    AddRportAt(usize),
    /// No complete top Via in the bytes scanned (none at all, or one that
    /// runs past them): the program passes the datagram to the daemon.
    NotFound,
}

/// Finds what the SIP message at `bytes[start..end]` needs (`end` is
/// clamped to the buffer).
///
/// One pass of a table-driven automaton: the first header line named `Via`
/// or `v` (RFC 3261 §7.3.3, any case, optional whitespace before the
/// colon), then its value up to its end (`,` or the line's end), looking
/// for a parameter `rport` (any case, with or without a value). `;` appears
/// in a Via value only before a parameter (§20.42), so the whole value is
/// searched. Tables, not branches, for the verifier: it cannot know the
/// next state, so it checks each byte's step once instead of once per state.
#[inline(always)]
pub fn top_via(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> TopVia {
    let end = if end > VIA_SCAN { VIA_SCAN } else { end };
    // The constant bound first: the verifier cannot follow `start + 4 <= end`.
    if start > VIA_SCAN - 4 || start + 4 > end {
        return TopVia::NotFound;
    }
    // A response, or no request at all (a CRLF or STUN keepalive, RFC 5626
    // §4.4): nothing to add, forwarded as it is.
    if is_response(bytes, start) || !at(bytes, start).is_ascii_alphabetic() {
        return TopVia::Unchanged;
    }
    let len = end - start;
    let mut state = IN_LINE;
    let mut k = 0;
    while k < VIA_SCAN && k < len {
        let class = CLASS[at(bytes, start + k) as usize];
        state = STEP[((state as usize % STATES) * CLASSES) | (class as usize % CLASSES)];
        match state {
            VALUE_ENDS => return TopVia::AddRportAt(start + k),
            HAS_RPORT => return TopVia::Unchanged,
            HEADERS_END => return TopVia::NotFound,
            _ => k += 1,
        }
    }
    TopVia::NotFound
}

// Byte classes.
const OTHER: u8 = 0;
const V: u8 = 1;
const I: u8 = 2;
const A: u8 = 3;
const COLON: u8 = 4;
const SPACE: u8 = 5;
const LF: u8 = 6;
const CR: u8 = 7;
const SEMI: u8 = 8;
const R: u8 = 9;
const P: u8 = 10;
const O: u8 = 11;
const T: u8 = 12;
const EQUALS: u8 = 13;
const COMMA: u8 = 14;
const CLASSES: usize = 16;

// States: looking for the Via header, then in its value (`MATCHED + n`
// when its last `n` bytes matched `RPORT[..n]`), then the three ends.
const IN_LINE: u8 = 0;
const LINE_START: u8 = 1;
const AFTER_V: u8 = 2;
const AFTER_VI: u8 = 3;
const AFTER_NAME: u8 = 4;
const MATCHED: u8 = 5;
const HEADERS_END: u8 = 12;
const HAS_RPORT: u8 = 13;
const VALUE_ENDS: u8 = 14;
const STATES: usize = 16;

static CLASS: [u8; 256] = classes();
static STEP: [u8; STATES * CLASSES] = steps();

const fn classes() -> [u8; 256] {
    let mut table = [OTHER; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = class_of(byte as u8);
        byte += 1;
    }
    table
}

const fn class_of(byte: u8) -> u8 {
    match byte {
        b'v' | b'V' => V,
        b'i' | b'I' => I,
        b'a' | b'A' => A,
        b':' => COLON,
        b' ' | b'\t' => SPACE,
        b'\n' => LF,
        b'\r' => CR,
        b';' => SEMI,
        b'r' | b'R' => R,
        b'p' | b'P' => P,
        b'o' | b'O' => O,
        b't' | b'T' => T,
        b'=' => EQUALS,
        b',' => COMMA,
        _ => OTHER,
    }
}

const fn steps() -> [u8; STATES * CLASSES] {
    let mut table = [HEADERS_END; STATES * CLASSES];
    let mut state = 0;
    while state < VALUE_ENDS as usize + 1 {
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
    if state >= MATCHED && state < HEADERS_END {
        return value_step(state - MATCHED, class);
    }
    match (state, class) {
        (LINE_START, CR | LF) => HEADERS_END,
        (IN_LINE | AFTER_V | AFTER_VI | AFTER_NAME, LF) => LINE_START,
        (LINE_START, V) => AFTER_V,
        (AFTER_V, I) => AFTER_VI,
        (AFTER_VI, A) => AFTER_NAME,
        (AFTER_V | AFTER_NAME, COLON) => MATCHED,
        (AFTER_V | AFTER_NAME, SPACE) => AFTER_NAME,
        (IN_LINE | LINE_START | AFTER_V | AFTER_VI | AFTER_NAME, _) => IN_LINE,
        // The ends are final.
        _ => state,
    }
}

/// In the Via value, `matched` bytes of `RPORT` just seen.
const fn value_step(matched: u8, class: u8) -> u8 {
    let full = matched as usize == RPORT.len();
    match class {
        COMMA | CR | LF if full => HAS_RPORT,
        COMMA | CR | LF => VALUE_ENDS,
        EQUALS | SEMI | SPACE if full => HAS_RPORT,
        SEMI => MATCHED + 1,
        // Whitespace may follow the semicolon (SEMI = SWS ";" SWS).
        SPACE if matched == 1 => MATCHED + 1,
        _ if !full && class == class_of(RPORT[matched as usize]) => MATCHED + matched + 1,
        _ => MATCHED,
    }
}

/// `bytes[i]`, masked: the verifier bounds each access by the mask alone.
#[inline(always)]
pub(crate) fn at(bytes: &[u8; VIA_SCAN], i: usize) -> u8 {
    bytes[i % VIA_SCAN]
}

/// A status line starts `SIP/` (a request line starts with its method).
#[inline(always)]
fn is_response(bytes: &[u8; VIA_SCAN], start: usize) -> bool {
    at(bytes, start) == b'S'
        && at(bytes, start + 1) == b'I'
        && at(bytes, start + 2) == b'P'
        && at(bytes, start + 3) == b'/'
}

/// The UDP checksum difference (a one's-complement sum of big-endian
/// words) of inserting `RPORT` at an even (`odd == false`) or odd offset
/// from the UDP header, together with the UDP length growing by its
/// length in both the header and the pseudo-header.
#[inline(always)]
pub const fn rport_checksum_diff(odd: bool) -> u32 {
    let words = if odd {
        // Inserted between two bytes of one word: that word's bytes part,
        // and the sum is that of the text rotated by one byte.
        [u16::from_be_bytes([b'r', b'p']), u16::from_be_bytes([b'o', b'r']), u16::from_be_bytes([b't', b';'])]
    } else {
        [u16::from_be_bytes([b';', b'r']), u16::from_be_bytes([b'p', b'o']), u16::from_be_bytes([b'r', b't'])]
    };
    words[0] as u32 + words[1] as u32 + words[2] as u32 + 2 * RPORT.len() as u32
}
