//! The shared checksum arithmetic against from-scratch computation.

use proptest::prelude::*;
use redirector_ebpf::checksum::{apply_diff, apply_udp_diff, compute, diff};

/// RFC 1071 from scratch, written independently of the code under test.
fn reference(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest! {
    #[test]
    fn compute_matches_rfc1071(header in any::<[u8; 20]>()) {
        prop_assert_eq!(compute(&header), reference(&header));
    }

    /// Changing any 4-byte-aligned field and applying the diff to the old
    /// checksum gives the checksum of the new bytes.
    #[test]
    fn applied_diff_equals_recomputation(
        mut header in any::<[u8; 40]>(),
        field in 0usize..9,
        width in prop::sample::select(vec![4usize, 8, 16, 32]),
        new in any::<[u8; 32]>(),
    ) {
        let start = (field * 4).min(40 - width);
        let check_at = 38;
        header[check_at] = 0;
        header[check_at + 1] = 0;
        let check = reference(&header);
        let covered = if start + width > check_at { check_at - start } else { width } / 4 * 4;
        prop_assume!(covered > 0);
        let old = header[start..start + covered].to_vec();
        header[start..start + covered].copy_from_slice(&new[..covered]);
        let d = diff(&old, &header[start..start + covered], 0);
        let updated = u16::from_ne_bytes(apply_diff(u16::from_ne_bytes(check.to_be_bytes()), d).to_ne_bytes());
        prop_assert_eq!(u16::from_be_bytes(updated.to_ne_bytes()), reference(&header));
    }

    #[test]
    fn udp_zero_checksum_means_none_and_a_computed_zero_is_sent_as_ffff(check in any::<u16>(), d in any::<u32>()) {
        prop_assert_eq!(apply_udp_diff(0, d), 0);
        let updated = apply_udp_diff(check.max(1), d);
        prop_assert_ne!(updated, 0);
        let plain = apply_diff(check.max(1), d);
        prop_assert_eq!(updated, if plain == 0 { 0xffff } else { plain });
    }

    #[test]
    fn seeded_diff_chains(a in any::<[u8; 8]>(), b in any::<[u8; 8]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>()) {
        let chained = diff(&c, &d, diff(&a, &b, 0));
        let whole = diff(&[a.as_slice(), &c].concat(), &[b.as_slice(), &d].concat(), 0);
        prop_assert_eq!(apply_diff(0x1234, chained), apply_diff(0x1234, whole));
    }
}
