//! Internet checksum arithmetic (RFC 1071), shared by the XDP program and
//! host-side tests.
//!
//! Incremental updates (RFC 1624, eqn. 3) work on a *diff*: the
//! one's-complement sum of the old bytes complemented plus the new bytes, as
//! the kernel's `bpf_csum_diff` returns it. Checksum fields are then read and
//! written in native byte order, which is valid because one's-complement sums
//! do not depend on byte order as long as everything uses the same one.

/// Folds a one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of `bytes` from scratch (its own checksum field zeroed),
/// as a big-endian value.
#[inline(always)]
pub fn compute<const N: usize>(bytes: &[u8; N]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    if N % 2 == 1 {
        sum += (bytes[N - 1] as u64) << 8;
    }
    !fold(sum)
}

/// A checksum field (native order) after the covered bytes changed by `diff`.
#[inline(always)]
pub const fn apply_diff(check: u16, diff: u32) -> u16 {
    !fold((!check) as u64 + diff as u64)
}

/// As `apply_diff`, for UDP: a zero checksum means "none" over IPv4 and
/// stays zero; a computed zero is sent as 0xffff (RFC 768, RFC 8200 §8.1).
#[inline(always)]
pub const fn apply_udp_diff(check: u16, diff: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply_diff(check, diff) {
        0 => 0xffff,
        updated => updated,
    }
}

/// Host model of `bpf_csum_diff(old, new, seed)`: the sum of the complemented
/// old and the new native 32-bit words, plus `seed`, folded to 32 bits.
/// Both slices have the same length, a multiple of 4.
pub fn diff(old: &[u8], new: &[u8], seed: u32) -> u32 {
    let words = |bytes: &[u8]| {
        let mut sum = 0u64;
        for chunk in bytes.chunks_exact(4) {
            sum += u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as u64;
        }
        sum
    };
    let complemented = old.len() as u64 / 4 * 0xffff_ffff - words(old);
    let sum = seed as u64 + complemented + words(new);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}
