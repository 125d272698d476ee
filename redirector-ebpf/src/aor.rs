//! Which AOR a request is for, as the XDP program can tell: a hash of the
//! daemon's canonical AOR text (`sip:user@host`, see the daemon's
//! `Aor::from_uri`), read from the request's `To` (REGISTER) or `From`
//! (any other request): the header the daemon's `identity` reads. A socket
//! on the fast path was put there for one AOR; a request from it for
//! another (a phone's second line, a scanner enumerating extensions) must
//! reach the daemon, which routes it by its own AOR.
//!
//! Read: the first header line so named (`To`/`t`, `From`/`f`, any case,
//! whitespace before the colon), its value `<uri>` after an optional
//! display name (tokens, or a quoted string without escapes) or a bare
//! addr-spec, to its line's end and one byte past it (no fold). The AOR
//! is `sip:` (for `sip` or `sips`, any case), the user part as it is, `@`
//! and the host lower-cased; port, parameters and headers dropped.
//!
//! The daemon hashes the AORs it installs sockets for with `aor_hash`, so
//! the two agree whenever the program reads a value at all. Wherever the
//! daemon could read the value otherwise (a fold, a quoted escape, an IPv6
//! host, a password, another scheme, a value past the scanned bytes…) the
//! answer is `Unknown` and the request goes up. Table-driven like `via`,
//! for the verifier.

use crate::via::{VIA_SCAN, at};

/// What a datagram says of its AOR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestAor {
    /// No request (a response, whose first bytes are `SIP/`; a keepalive
    /// shorter than any request line; STUN or other bytes no method starts
    /// with): no AOR to check.
    NotRequest,
    /// A request, and the `aor_hash` of its AOR.
    Hash(u64),
    /// A request whose AOR the program cannot read with certainty.
    Unknown,
}

impl RequestAor {
    /// Whether the datagram may take an entry installed for the AOR whose
    /// hash is `aor_hash`.
    pub fn takes(self, aor_hash: u64) -> bool {
        match self {
            RequestAor::NotRequest => true,
            RequestAor::Hash(hash) => hash == aor_hash,
            RequestAor::Unknown => false,
        }
    }
}

/// FNV-1a, 64 bits: enough to tell a socket's lines apart, cheap in BPF.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of a canonical AOR (`sip:alice@example.net`): the daemon's key
/// for the entries it installs, and what `request_aor` computes.
pub const fn aor_hash(canonical: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < canonical.len() {
        hash = fnv(hash, canonical[i]);
        i += 1;
    }
    hash
}

#[inline(always)]
const fn fnv(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
}

/// The hash of the canonical scheme every AOR starts with.
const SCHEME_HASH: u64 = aor_hash(b"sip:");

/// A REGISTER request line starts so; its AOR is its `To`'s.
const REGISTER: [u8; 9] = *b"REGISTER ";
/// A SUBSCRIBE's AOR is its `To`'s too, but the program passes every
/// SUBSCRIBE up before it reads one (rule 5): declined, not read.
const SUBSCRIBE: [u8; 10] = *b"SUBSCRIBE ";

/// A response's status line starts so.
const RESPONSE: [u8; 8] = *b"SIP/2.0 ";

/// Which header names a request's AOR, as its request line tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestLine {
    /// No request (see `RequestAor::NotRequest`): no AOR to check.
    NotRequest,
    /// A request the program cannot tell the AOR header of.
    Unknown,
    /// A request whose AOR is in this header (a `Header` as a byte, as the
    /// program passes it to `header_aor` through memory).
    Reads(u8),
}

/// The header a request's AOR is read from (the daemon's `identity`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// `To`, for a REGISTER.
    To = IN_LINE_TO,
    /// `From`, for the other requests.
    From = IN_LINE_FROM,
}

/// Reads the SIP message at `bytes[start..end]` (`end` clamped to the
/// buffer): `request_line`, then `header_aor`.
#[inline(always)]
pub fn request_aor(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> RequestAor {
    match request_line(bytes, start, end) {
        RequestLine::NotRequest => RequestAor::NotRequest,
        RequestLine::Unknown => RequestAor::Unknown,
        RequestLine::Reads(header) => header_aor(bytes, start, end, header),
    }
}

/// What the message at `bytes[start..end]` is. A request line that is
/// `REGISTER ` in another case, or any leading line break, is `Unknown`:
/// the daemon matches methods exactly and skips blank lines, so it could
/// read another header.
#[inline(always)]
pub fn request_line(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> RequestLine {
    let end = if end > VIA_SCAN { VIA_SCAN } else { end };
    // The constant bound first: the verifier cannot follow `start + 10 <= end`.
    if start > VIA_SCAN - SUBSCRIBE.len() {
        return RequestLine::Unknown;
    }
    // Shorter than any request line: a keepalive (RFC 5626's CRLFs).
    if start + SUBSCRIBE.len() > end || starts_with(bytes, start, b"SIP/") {
        return RequestLine::NotRequest;
    }
    let first = at(bytes, start);
    if first == b'\r' || first == b'\n' || starts_with(bytes, start, &SUBSCRIBE) {
        return RequestLine::Unknown;
    }
    // STUN (its first byte is 0 or 1) and anything else no method starts with.
    if !is_token_byte(first) {
        return RequestLine::NotRequest;
    }
    if starts_with(bytes, start, &REGISTER) {
        return RequestLine::Reads(Header::To as u8);
    }
    if starts_with_any_case(bytes, start, &REGISTER) {
        return RequestLine::Unknown;
    }
    RequestLine::Reads(Header::From as u8)
}

/// What the message at `bytes[start..end]` is, read as a socket that
/// carries several AORs is (`CLIENT_SHARED`): a request as `request_line`
/// says; a response (`SIP/2.0 ` and a status code) by its `To`, the line
/// that answered (a response's `From` is whoever sent the request).
/// Anything else starting `SIP/` is `Unknown`.
#[inline(always)]
pub fn message_line(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> RequestLine {
    let end = if end > VIA_SCAN { VIA_SCAN } else { end };
    if start > VIA_SCAN - SUBSCRIBE.len() {
        return RequestLine::Unknown;
    }
    if start + SUBSCRIBE.len() > end || !starts_with(bytes, start, b"SIP/") {
        return request_line(bytes, start, end);
    }
    if starts_with(bytes, start, &RESPONSE) { RequestLine::Reads(Header::To as u8) } else { RequestLine::Unknown }
}

/// Reads the SIP message at `bytes[start..end]` as a shared socket's:
/// `message_line`, then `header_aor`.
#[inline(always)]
pub fn message_aor(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> RequestAor {
    match message_line(bytes, start, end) {
        RequestLine::NotRequest => RequestAor::NotRequest,
        RequestLine::Unknown => RequestAor::Unknown,
        RequestLine::Reads(header) => header_aor(bytes, start, end, header),
    }
}

/// The hash of the AOR in the first `header` (a `Header` as a byte) of
/// the request at `bytes[start..end]`, or `Unknown`.
#[inline(always)]
pub fn header_aor(bytes: &[u8; VIA_SCAN], start: usize, end: usize, header: u8) -> RequestAor {
    let end = if end > VIA_SCAN { VIA_SCAN } else { end };
    if start >= end {
        return RequestAor::Unknown;
    }
    scan(bytes, start, core::hint::black_box(end), header)
}

/// RFC 3261 `token` characters: what a method is made of.
#[inline(always)]
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

#[inline(always)]
fn starts_with<const N: usize>(bytes: &[u8; VIA_SCAN], start: usize, prefix: &[u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        if at(bytes, start + i) != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn starts_with_any_case<const N: usize>(bytes: &[u8; VIA_SCAN], start: usize, prefix: &[u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        if !at(bytes, start + i).eq_ignore_ascii_case(&prefix[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// One pass of the automaton from `state`, hashing the URI's user part
/// as it is and its host lower-cased, after `sip:` (an AOR with no user
/// and an upper-case letter in its host is declined: the bytes before an
/// `@` are hashed as a user's until it comes). `end` must be opaque to
/// LLVM (see `via::top_via`'s callers).
#[inline(always)]
fn scan(bytes: &[u8; VIA_SCAN], start: usize, end: usize, first: u8) -> RequestAor {
    let len = end - start;
    let (mut state, mut hash) = (first as usize, SCHEME_HASH);
    let mut k = 0;
    while k < VIA_SCAN && k < len {
        let byte = at(bytes, start + k);
        let class = CLASS[byte as usize];
        let step = STEP[((state % STATES) * CLASSES) | (class as usize % CLASSES)];
        state = step as usize % STATES;
        // The step's hash update by its bits, without a comparison (BPF
        // has no conditional set: each would branch), so one path per
        // byte for the verifier. An upper-case letter's class has the bit
        // that lower-cases it.
        let on = (step >> HASHES) as u64 & 1;
        let lower = 0u64.wrapping_sub((step >> LOWERS) as u64 & 1);
        let byte = byte as u64 ^ ((class & UPPER) as u64 & lower);
        hash = (hash ^ (byte * on)).wrapping_mul(1 | (on * (FNV_PRIME - 1)));
        if state >= ACCEPT as usize {
            return if state == ACCEPT as usize { RequestAor::Hash(hash) } else { RequestAor::Unknown };
        }
        k += 1;
    }
    RequestAor::Unknown
}

// Byte classes.
const OTHER: u8 = 0;
const T: u8 = 1;
const O: u8 = 2;
const F: u8 = 3;
const R: u8 = 4;
const M: u8 = 5;
const S: u8 = 6;
const I: u8 = 7;
const P: u8 = 8;
const COLON: u8 = 9;
const SPACE: u8 = 10;
const LF: u8 = 11;
const CR: u8 = 12;
const AT: u8 = 13;
const LT: u8 = 14;
const GT: u8 = 15;
const QUOTE: u8 = 16;
const BACKSLASH: u8 = 17;
const SEMI: u8 = 18;
const QUESTION: u8 = 19;
const BRACKET: u8 = 20;
/// Other control characters and DEL.
const CONTROL: u8 = 21;
/// Non-ASCII: fine in a display name, declined in a URI (the daemon trims
/// Unicode whitespace there).
const HIGH: u8 = 22;
/// Or'ed into an upper-case letter's class: `0x20`, the bit that
/// lower-cases it.
const UPPER: u8 = 0x20;
const CLASSES: usize = 64;

// States. Looking for the header's line (`To` or `t` for a REGISTER,
// `From` or `f` otherwise), each line's start found after its line feed.
const IN_LINE_TO: u8 = 0;
const LINE_START_TO: u8 = 1;
const AFTER_T: u8 = 2;
const AFTER_TO: u8 = 3;
const IN_LINE_FROM: u8 = 4;
const LINE_START_FROM: u8 = 5;
const AFTER_F: u8 = 6;
const AFTER_FR: u8 = 7;
const AFTER_FRO: u8 = 8;
const AFTER_FROM: u8 = 9;
/// Whitespace between the name and its colon.
const NAME_END: u8 = 10;
/// After the colon, before the value.
const VALUE_START: u8 = 11;
/// A value starting `s`, `si`, `sip`, `sips`: an addr-spec's scheme or a
/// display name.
const VALUE_S: u8 = 12;
const VALUE_SI: u8 = 13;
const VALUE_SIP: u8 = 14;
const VALUE_SIPS: u8 = 15;
/// A display name of tokens, up to its `<`.
const DISPLAY: u8 = 16;
const QUOTED: u8 = 17;
/// After a quoted display name, before its `<`.
const QUOTE_END: u8 = 18;
/// After `<`, and the scheme in brackets.
const OPEN: u8 = 19;
const OPEN_S: u8 = 20;
const OPEN_SI: u8 = 21;
const OPEN_SIP: u8 = 22;
const OPEN_SIPS: u8 = 23;
// A URI in brackets: user or host (nothing yet, some, some with an
// upper-case letter), host after `@` (nothing yet, some), port,
// parameters and headers, whitespace before `>`.
const B_USER_START: u8 = 24;
const B_USER: u8 = 25;
const B_USER_UPPER: u8 = 26;
const B_HOST_START: u8 = 27;
const B_HOST: u8 = 28;
const B_PORT: u8 = 29;
const B_PARAMS: u8 = 30;
const B_TRAIL: u8 = 31;
/// After `>`: whitespace, then the value's parameters or its end.
const CLOSED: u8 = 32;
const TAIL: u8 = 33;
// A bare addr-spec, the same parts, ending at the line's end.
const A_USER_START: u8 = 34;
const A_USER: u8 = 35;
const A_USER_UPPER: u8 = 36;
const A_HOST_START: u8 = 37;
const A_HOST: u8 = 38;
const A_PORT: u8 = 39;
const A_PARAMS: u8 = 40;
const A_TRAIL: u8 = 41;
/// After the value's CR.
const EXPECT_LF: u8 = 42;
/// After the value's line feed: the next byte tells a fold.
const LINE_END: u8 = 43;
// The ends, final, and the greatest: one comparison tells either.
const ACCEPT: u8 = 62;
const DECLINE: u8 = 63;
const STATES: usize = 64;

// A `STEP` entry is the next state and, above it, what to do with the
// byte: hash it as it is, or lower-cased.
const HASHES: u16 = 8;
const LOWERS: u16 = 9;
const HASH: u16 = 1 << HASHES;
const HASH_LOWER: u16 = HASH | 1 << LOWERS;

static CLASS: [u8; 256] = classes();
static STEP: [u16; STATES * CLASSES] = steps();

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
    if byte.is_ascii_uppercase() {
        return class_of(byte.to_ascii_lowercase()) | UPPER;
    }
    match byte {
        b't' | b'T' => T,
        b'o' | b'O' => O,
        b'f' | b'F' => F,
        b'r' | b'R' => R,
        b'm' | b'M' => M,
        b's' | b'S' => S,
        b'i' | b'I' => I,
        b'p' | b'P' => P,
        b':' => COLON,
        b' ' | b'\t' => SPACE,
        b'\n' => LF,
        b'\r' => CR,
        b'@' => AT,
        b'<' => LT,
        b'>' => GT,
        b'"' => QUOTE,
        b'\\' => BACKSLASH,
        b';' => SEMI,
        b'?' => QUESTION,
        b'[' | b']' => BRACKET,
        0..=0x1f | 0x7f => CONTROL,
        0x80..=0xff => HIGH,
        _ => OTHER,
    }
}

const fn steps() -> [u16; STATES * CLASSES] {
    let mut table = [DECLINE as u16; STATES * CLASSES];
    let mut state = 0;
    while state < STATES {
        let mut class = 0;
        while class < CLASSES {
            let next = step(state as u8, class as u8);
            table[state * CLASSES + class] = next as u16 | action(next);
            class += 1;
        }
        state += 1;
    }
    table
}

/// What a step into `state` does with its byte: a user's (and the `@`
/// after it) is hashed as it is, a host's lower-cased.
const fn action(state: u8) -> u16 {
    match state {
        B_USER | B_USER_UPPER | B_HOST_START | A_USER | A_USER_UPPER | A_HOST_START => HASH,
        B_HOST | A_HOST => HASH_LOWER,
        _ => 0,
    }
}

/// A byte a URI's user or host may hold as it is.
const fn is_uri_byte(class: u8) -> bool {
    matches!(class, OTHER | T | O | F | R | M | S | I | P | BACKSLASH)
}

/// The automaton, written out; `steps` tabulates it. Only a URI's user
/// part tells upper-case letters apart.
const fn step(state: u8, class: u8) -> u8 {
    let upper = class & UPPER != 0;
    let class = class & !UPPER;
    match state {
        B_USER_START | B_USER | B_USER_UPPER | A_USER_START | A_USER | A_USER_UPPER => user_step(state, class, upper),
        IN_LINE_TO..=NAME_END => header_step(state, class),
        VALUE_START..=QUOTE_END => name_addr_step(state, class),
        OPEN..=TAIL => bracketed_step(state, class),
        A_USER_START..=A_TRAIL => addr_spec_step(state, class),
        EXPECT_LF => {
            if class == LF {
                LINE_END
            } else {
                DECLINE
            }
        }
        // A fold would continue the value: the daemon reads it whole.
        LINE_END => {
            if class == SPACE {
                DECLINE
            } else {
                ACCEPT
            }
        }
        _ => state,
    }
}

/// Finding the header's line: a line's start is after a line feed (the
/// request line is never one), and a line starting with whitespace
/// continues the one before.
const fn header_step(state: u8, class: u8) -> u8 {
    match (state, class) {
        (LINE_START_TO | LINE_START_FROM, CR | LF) => DECLINE,
        (IN_LINE_TO..=AFTER_TO, LF) => LINE_START_TO,
        (IN_LINE_FROM..=AFTER_FROM, LF) => LINE_START_FROM,
        (LINE_START_TO, T) => AFTER_T,
        (AFTER_T, O) => AFTER_TO,
        (LINE_START_FROM, F) => AFTER_F,
        (AFTER_F, R) => AFTER_FR,
        (AFTER_FR, O) => AFTER_FRO,
        (AFTER_FRO, M) => AFTER_FROM,
        (AFTER_T | AFTER_TO | AFTER_F | AFTER_FROM | NAME_END, COLON) => VALUE_START,
        (AFTER_T | AFTER_TO | AFTER_F | AFTER_FROM | NAME_END, SPACE) => NAME_END,
        (NAME_END, _) => DECLINE,
        (IN_LINE_TO..=AFTER_TO, _) => IN_LINE_TO,
        (_, _) => IN_LINE_FROM,
    }
}

/// The value up to its URI: a display name (tokens, or a quoted string
/// without escapes) and `<`, or a bare addr-spec's `sip:` or `sips:`.
const fn name_addr_step(state: u8, class: u8) -> u8 {
    match (state, class) {
        (VALUE_START, SPACE) => VALUE_START,
        (VALUE_START, QUOTE) => QUOTED,
        (VALUE_START, S) => VALUE_S,
        (VALUE_S, I) => VALUE_SI,
        (VALUE_SI, P) => VALUE_SIP,
        (VALUE_SIP, S) => VALUE_SIPS,
        (VALUE_SIP | VALUE_SIPS, COLON) => A_USER_START,
        (QUOTED, QUOTE) => QUOTE_END,
        (QUOTED, BACKSLASH | CR | LF) => DECLINE,
        (QUOTED, _) => QUOTED,
        (QUOTE_END, SPACE) => QUOTE_END,
        (QUOTE_END, LT) => OPEN,
        (QUOTE_END, _) => DECLINE,
        (_, LT) => OPEN,
        // A quote after a token would change which `<` the daemon finds.
        (_, QUOTE | CR | LF) => DECLINE,
        (VALUE_START, CONTROL) => DECLINE,
        (_, _) => DISPLAY,
    }
}

/// `<`, the scheme, the URI and `>`, then the value's parameters.
const fn bracketed_step(state: u8, class: u8) -> u8 {
    match (state, class) {
        (OPEN, SPACE) => OPEN,
        (OPEN, S) => OPEN_S,
        (OPEN_S, I) => OPEN_SI,
        (OPEN_SI, P) => OPEN_SIP,
        (OPEN_SIP, S) => OPEN_SIPS,
        (OPEN_SIP | OPEN_SIPS, COLON) => B_USER_START,
        (B_HOST_START | B_HOST, _) if is_uri_byte(class) => B_HOST,
        (B_PORT, _) if is_uri_byte(class) => B_PORT,
        (B_HOST | B_PORT, COLON) => B_PORT,
        (B_HOST | B_PORT, SEMI | QUESTION) => B_PARAMS,
        (B_HOST | B_PORT | B_PARAMS | B_TRAIL, GT) => CLOSED,
        (B_HOST | B_PORT | B_PARAMS | B_TRAIL, SPACE) => B_TRAIL,
        (B_PARAMS, CR | LF) => DECLINE,
        (B_PARAMS, _) => B_PARAMS,
        (CLOSED, SPACE) => CLOSED,
        (CLOSED, SEMI) => TAIL,
        (CLOSED | TAIL, CR) => EXPECT_LF,
        (CLOSED | TAIL, LF) => LINE_END,
        (TAIL, _) => TAIL,
        (_, _) => DECLINE,
    }
}

/// A bare addr-spec after its scheme: parameters belong to the header,
/// and whitespace may only end the line.
const fn addr_spec_step(state: u8, class: u8) -> u8 {
    match (state, class) {
        (A_HOST_START | A_HOST, _) if is_uri_byte(class) => A_HOST,
        (A_PORT, _) if is_uri_byte(class) => A_PORT,
        (A_HOST | A_PORT, COLON) => A_PORT,
        (A_HOST | A_PORT, SEMI) => A_PARAMS,
        (A_HOST | A_PORT | A_PARAMS | A_TRAIL, CR) => EXPECT_LF,
        (A_HOST | A_PORT | A_PARAMS | A_TRAIL, LF) => LINE_END,
        (A_HOST | A_PORT | A_TRAIL, SPACE) => A_TRAIL,
        // A `<` or quote would make the daemon read another URI.
        (A_PARAMS, LT | QUOTE) => DECLINE,
        (A_PARAMS, _) => A_PARAMS,
        (_, _) => DECLINE,
    }
}

/// The part of a URI before an `@`, or the host of one without: a user
/// part is hashed as it is, so a host with an upper-case letter (which
/// the daemon lower-cases) is declined.
const fn user_step(state: u8, class: u8, upper: bool) -> u8 {
    let bracketed = state < A_USER_START;
    let (user, user_upper, host_start) =
        if bracketed { (B_USER, B_USER_UPPER, B_HOST_START) } else { (A_USER, A_USER_UPPER, A_HOST_START) };
    let started = state != B_USER_START && state != A_USER_START;
    match class {
        _ if is_uri_byte(class) && (upper || state == user_upper) => user_upper,
        _ if is_uri_byte(class) => user,
        AT if started => host_start,
        _ if !started || state == user_upper => DECLINE,
        // The URI ends without an `@`: what was read is its host.
        _ if bracketed => bracketed_step(B_HOST, class),
        _ => addr_spec_step(A_HOST, class),
    }
}
