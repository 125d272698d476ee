//! Source prefixes throttled in the kernel. When a prefix brings in new
//! clients faster than the daemon's flood limits allow, the daemon puts it
//! in `THROTTLED` for a while; the program then lets only `allowance` of
//! that prefix's first-contact datagrams a second reach the daemon and
//! drops the rest (`Counter::DropThrottled`), so a flood is refused before
//! it fills the daemon's socket. Clients already on the fast path are not
//! affected: only datagrams bound for first contact are looked up (those
//! that miss `CLIENTS`, and REGISTERs for another AOR than their socket's).

use bytemuck::{Pod, Zeroable};

use crate::{Endpoint, FAMILY_V4};

/// Prefixes throttled at once; the LRU forgets the oldest beyond this.
pub const MAX_THROTTLED: u32 = 1 << 16;

/// The length of an allowance window.
pub const THROTTLE_WINDOW_NS: u64 = 1_000_000_000;

/// `THROTTLED` value, keyed by `source_prefix`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Throttle {
    /// CLOCK_MONOTONIC when the throttle lifts.
    pub until_ns: u64,
    /// When the current window began (0: none yet).
    pub window_ns: u64,
    /// Datagrams let through in the current window.
    pub passed: u32,
    /// Datagrams a window lets through.
    pub allowance: u32,
}

impl Throttle {
    pub const fn new(until_ns: u64, allowance: u32) -> Self {
        Self { until_ns, window_ns: 0, passed: 0, allowance }
    }

    /// Whether a first-contact datagram arriving at `now_ns` may pass,
    /// counting it if so. The program updates the shared entry without
    /// atomics: two CPUs racing may each let one more through.
    #[inline(always)]
    pub fn admits(&mut self, now_ns: u64) -> bool {
        if now_ns >= self.until_ns {
            return true;
        }
        if now_ns.wrapping_sub(self.window_ns) >= THROTTLE_WINDOW_NS {
            self.window_ns = now_ns;
            self.passed = 0;
        }
        if self.passed >= self.allowance {
            return false;
        }
        self.passed += 1;
        true
    }
}

/// The flood limits' unit of source: the /24 of an IPv4 address, the /64 of
/// an IPv6 one, as an `Endpoint` with port 0.
#[inline(always)]
pub fn source_prefix(source: &Endpoint) -> Endpoint {
    // An IPv4 address fills only the first 4 bytes of `addr`.
    let mut addr = source.addr;
    if source.family == FAMILY_V4 {
        addr[3] = 0;
    } else {
        for byte in &mut addr[8..] {
            *byte = 0;
        }
    }
    Endpoint { addr, port_be: 0, family: source.family, _pad: 0 }
}
