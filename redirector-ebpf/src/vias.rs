//! Whether a request was forwarded by another proxy: it carries more than
//! one Via value (RFC 3261 §16.6 step 8), which the daemon proxies rather
//! than redirects, and which the XDP program may send to its AOR's home
//! (see `aor`, `AORS`).
//!
//! Counted: header lines named `Via` or `v` (any case, whitespace before
//! the colon), each holding one or more values separated by commas. A
//! value counts once it has a byte that is no whitespace, so an empty
//! element never does (the daemon's `split_list` skips those too). The
//! answer is `Several` only where the daemon's `via_values` certainly has
//! two or more: a quote or `<` in a Via value before the second (a comma
//! inside them separates nothing), a folded Via line, a CR not ending its
//! line or starting one without a line feed after it, or whitespace between a name and its colon followed by anything
//! but the colon, make it `Unknown`. So does running out of bytes.
//! Table-driven like `via`, for the verifier.

use crate::via::{VIA_SCAN, at};

/// How many Via values a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vias {
    /// One value, and the line after it is no Via header: proxies put
    /// theirs together at the top (RFC 3261 §16.6 step 8), so the scan
    /// stops there, and a client's own request is read no further (the
    /// daemon may still find another Via further down).
    Alone,
    /// The headers end (a blank line) with at most one Via value.
    NotSeveral,
    /// Two or more.
    Several,
    /// The bytes read cannot tell.
    Unknown,
}

/// Counts the Via values of the request at `bytes[start..end]` (`end`
/// clamped to the buffer); `start` is where its request line starts.
#[inline(always)]
pub fn count_vias(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> Vias {
    let end = if end > VIA_SCAN { VIA_SCAN } else { end };
    if start >= end {
        return Vias::Unknown;
    }
    scan(bytes, start, core::hint::black_box(end))
}

/// One pass of the automaton. `end` must be opaque to LLVM (see
/// `via::top_via`'s callers).
#[inline(always)]
fn scan(bytes: &[u8; VIA_SCAN], start: usize, end: usize) -> Vias {
    let len = end - start;
    let mut state = IN_LINE as usize;
    let mut k = 0;
    while k < VIA_SCAN && k < len {
        let class = CLASS[at(bytes, start + k) as usize];
        state = STEP[((state % STATES) * CLASSES) | (class as usize % CLASSES)] as usize;
        if state >= ALONE as usize {
            return match state as u8 {
                ALONE => Vias::Alone,
                NOT_SEVERAL => Vias::NotSeveral,
                SEVERAL => Vias::Several,
                _ => Vias::Unknown,
            };
        }
        k += 1;
    }
    Vias::Unknown
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
const COMMA: u8 = 8;
/// `"` or `<`: a comma after it may separate nothing.
const OPENS: u8 = 9;
const CLASSES: usize = 16;

// States, each twice: before any Via value (`+ 0`) and after one (`+ ONE`).
/// In a line that is no Via header (the request line first).
const IN_LINE: u8 = 0;
/// After a line feed that ended any other line.
const LINE_START: u8 = 1;
const AFTER_V: u8 = 2;
const AFTER_VI: u8 = 3;
const AFTER_VIA: u8 = 4;
/// Whitespace between a Via header's name and its colon.
const NAME_WS: u8 = 5;
/// In a Via header's value, before a value's first byte (after the colon
/// or a comma).
const EMPTY: u8 = 6;
/// In a Via value with content (the one counted in `ONE`).
const VALUE: u8 = 7;
/// After a CR in a Via header.
const VALUE_CR: u8 = 8;
/// After the line feed ending a Via header: whitespace would fold it.
const VALUE_LF: u8 = 9;
/// A CR at a line's start: the blank line ending the headers, if a line
/// feed follows.
const BLANK_CR: u8 = 10;
/// Added to a state once a Via value was seen.
const ONE: u8 = 11;
// The ends, final, and the greatest: one comparison tells any.
const ALONE: u8 = 28;
const NOT_SEVERAL: u8 = 29;
const SEVERAL: u8 = 30;
const UNKNOWN: u8 = 31;
const STATES: usize = 32;

static CLASS: [u8; 256] = classes();
static STEP: [u8; STATES * CLASSES] = steps();

const fn classes() -> [u8; 256] {
    let mut table = [OTHER; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b'v' | b'V' => V,
            b'i' | b'I' => I,
            b'a' | b'A' => A,
            b':' => COLON,
            b' ' | b'\t' => SPACE,
            b'\n' => LF,
            b'\r' => CR,
            b',' => COMMA,
            b'"' | b'<' => OPENS,
            _ => OTHER,
        };
        byte += 1;
    }
    table
}

const fn steps() -> [u8; STATES * CLASSES] {
    let mut table = [UNKNOWN; STATES * CLASSES];
    let mut state = 0;
    while state < 2 * ONE as usize {
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
    let seen = state >= ONE;
    let base = if seen { ONE } else { 0 };
    match (state - base, class) {
        // A blank line ends the headers.
        (LINE_START | VALUE_LF, LF) | (BLANK_CR, LF) => NOT_SEVERAL,
        (LINE_START | VALUE_LF, CR) => base + BLANK_CR,
        // Whitespace at a line's start continues the line before: a Via
        // value folded onto it is not read.
        (VALUE_LF, SPACE) => UNKNOWN,
        (LINE_START, SPACE) => base + IN_LINE,
        (LINE_START | VALUE_LF, V) => base + AFTER_V,
        (AFTER_V, I) => base + AFTER_VI,
        (AFTER_VI, A) => base + AFTER_VIA,
        (AFTER_V | AFTER_VIA | NAME_WS, COLON) => base + EMPTY,
        (AFTER_V | AFTER_VIA | NAME_WS, SPACE) => base + NAME_WS,
        (NAME_WS, _) => UNKNOWN,
        // A line after the one Via value that is no Via.
        (VALUE_LF, _) if seen => ALONE,
        (IN_LINE | AFTER_V | AFTER_VI | AFTER_VIA, LF) => base + LINE_START,
        (IN_LINE | LINE_START | VALUE_LF | AFTER_V | AFTER_VI | AFTER_VIA, _) => base + IN_LINE,
        (EMPTY | VALUE, CR) => base + VALUE_CR,
        (EMPTY | VALUE, LF) | (VALUE_CR, LF) => base + VALUE_LF,
        (VALUE_CR, _) => UNKNOWN,
        (EMPTY, SPACE | COMMA) => base + EMPTY,
        (EMPTY | VALUE, OPENS) => UNKNOWN,
        // A value's first byte: the first one makes `ONE`, a second one
        // is what was looked for.
        (EMPTY, _) if seen => SEVERAL,
        (EMPTY, _) => ONE + VALUE,
        (VALUE, COMMA) => base + EMPTY,
        (VALUE, _) => base + VALUE,
        _ => UNKNOWN,
    }
}
