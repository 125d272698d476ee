//! Shared by the property tests.

/// Edit kinds `mutate` draws from: mostly overwrites and inserts, which
/// keep a message whole enough to reach the code past the scanner; a
/// truncation (which mostly ends in "no blank line") one time in ten.
pub const EDIT_KINDS: std::ops::Range<u8> = 0..10;

/// `base` with `edits` applied: (position, byte, kind) where kinds 0-5
/// overwrite, 6-8 insert and 9 truncates at the position.
pub fn mutate(base: &[u8], edits: Vec<(usize, u8, u8)>) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for (at, byte, kind) in edits {
        let at = at % (bytes.len() + 1);
        match kind {
            0..=5 if at < bytes.len() => bytes[at] = byte,
            0..=8 => bytes.insert(at, byte),
            _ => bytes.truncate(at),
        }
    }
    bytes
}
