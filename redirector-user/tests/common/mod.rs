//! Shared by the property tests.

/// `base` with `edits` applied: (position, byte, kind) where kind 0
/// overwrites, 1 inserts and anything else truncates at the position.
pub fn mutate(base: &[u8], edits: Vec<(usize, u8, u8)>) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for (at, byte, kind) in edits {
        let at = at % (bytes.len() + 1);
        match kind {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ => bytes.truncate(at),
        }
    }
    bytes
}
