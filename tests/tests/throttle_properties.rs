//! The kernel's throttle of flooding source prefixes
//! (`redirector_ebpf::throttle`), on the host: how many datagrams a window
//! lets through, when it lifts, and which prefix an address falls in. The
//! program runs the same code; `fixtures.rs` pins its verdicts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use redirector::kernel::loader::{endpoint, endpoint_ip};
use redirector_ebpf::{THROTTLE_WINDOW_NS, Throttle, source_prefix};

const SECOND: u64 = THROTTLE_WINDOW_NS;

/// How many of datagrams arriving at `times` (ascending) the throttle lets through.
fn admitted(throttle: &mut Throttle, times: &[u64]) -> usize {
    times.iter().filter(|&&now| throttle.admits(now)).count()
}

proptest! {
    /// Within one window at most `allowance` pass; every window gets its own.
    #[test]
    fn each_window_passes_at_most_its_allowance(
        allowance in 0u32..50,
        start in SECOND..1_000 * SECOND,
        mut offsets in proptest::collection::vec(0..3 * SECOND, 0..300),
    ) {
        offsets.sort_unstable();
        let mut throttle = Throttle::new(u64::MAX, allowance);
        let times: Vec<u64> = offsets.iter().map(|o| start + o).collect();
        let passed = admitted(&mut throttle, &times);
        // The windows open at the first datagram after each one ends:
        // three seconds of arrivals fall in at most three of them.
        prop_assert!(passed <= 3 * allowance as usize);
        let first_window = times.iter().filter(|&&t| t < start + SECOND).count();
        let mut again = Throttle::new(u64::MAX, allowance);
        prop_assert_eq!(admitted(&mut again, &times[..first_window]), first_window.min(allowance as usize));
    }

    /// Once it lifts, everything passes, whatever the allowance.
    #[test]
    fn a_lifted_throttle_passes_everything(until in 0..1_000 * SECOND, later in proptest::collection::vec(0..SECOND, 1..100)) {
        let mut throttle = Throttle::new(until, 0);
        let times: Vec<u64> = later.iter().map(|l| until + l).collect();
        prop_assert_eq!(admitted(&mut throttle, &times), times.len());
    }

    /// An IPv4 address's prefix is its /24, an IPv6 one's its /64, port 0,
    /// and every address of a prefix has the same.
    #[test]
    fn prefixes_are_slash_24_and_slash_64(v4 in any::<u32>(), v6 in any::<u128>(), port in any::<u16>()) {
        for (ip, expected) in [
            (IpAddr::V4(Ipv4Addr::from(v4)), IpAddr::V4(Ipv4Addr::from(v4 & 0xffff_ff00))),
            (IpAddr::V6(Ipv6Addr::from(v6)), IpAddr::V6(Ipv6Addr::from(v6 & !u128::from(u64::MAX)))),
        ] {
            let prefix = source_prefix(&endpoint(ip, port));
            prop_assert_eq!(endpoint_ip(&prefix), expected);
            prop_assert_eq!(prefix, endpoint(expected, 0));
            prop_assert_eq!(source_prefix(&prefix), prefix);
        }
    }
}

#[test]
fn the_first_datagrams_of_a_window_pass_then_the_rest_are_dropped() {
    let mut throttle = Throttle::new(10 * SECOND, 2);
    let verdicts: Vec<bool> =
        [SECOND, SECOND + 1, SECOND + 2, 2 * SECOND - 1].iter().map(|&t| throttle.admits(t)).collect();
    assert_eq!(verdicts, [true, true, false, false]);
    assert!(throttle.admits(2 * SECOND), "a new window");
}
