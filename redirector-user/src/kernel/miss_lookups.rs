//! Which of the lookups a miss may need can find anything: the flags of
//! `CONFIG` that let the program skip `THROTTLED` (`CONFIG_THROTTLING`)
//! and `PROXIES` (`CONFIG_KNOWS_PROXIES`) while they cannot. Sans IO:
//! `DataPlane`, `CONFIG`'s one writer, writes the flags whenever they
//! change, before the entry that set them and after the entries that
//! cleared them.

use redirector_ebpf::{CONFIG_KNOWS_PROXIES, CONFIG_THROTTLING, THROTTLE_WINDOW_NS};

/// How long after the last throttle's end `CONFIG_THROTTLING` stays set:
/// the program's coarse clock may lag CLOCK_MONOTONIC by a tick, and a
/// throttle that has lifted admits everything, so clearing the flag a
/// window later changes no decision.
pub const LIFT_MARGIN_NS: u64 = THROTTLE_WINDOW_NS;

/// Whose `PROXIES` the flag speaks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Proxies {
    #[default]
    None,
    /// The flag was found set in an adopted `CONFIG`: a previous daemon's
    /// program, still attached, knows proxies of its own (its `PROXIES`
    /// is not pinned).
    Adopted,
    /// This daemon wrote one to its own program's `PROXIES`.
    Written,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MissLookups {
    /// While `CONFIG_THROTTLING` is set: the latest end (CLOCK_MONOTONIC
    /// ns) of the throttles written.
    throttled_until_ns: Option<u64>,
    proxies: Proxies,
}

impl MissLookups {
    /// What the maps hold at load (adopted or new): `CONFIG`'s flags as
    /// found, and the end of every throttle in `THROTTLED`; at `now_ns`.
    pub fn found(config_flags: u8, throttles_until_ns: impl IntoIterator<Item = u64>, now_ns: u64) -> Self {
        let mut lookups = Self::default();
        if config_flags & CONFIG_KNOWS_PROXIES != 0 {
            lookups.proxies = Proxies::Adopted;
        }
        for until_ns in throttles_until_ns {
            lookups.throttling(until_ns);
        }
        lookups.lift(now_ns);
        lookups
    }

    /// The flags of `CONFIG` these lookups take.
    pub fn flags(self) -> u8 {
        let throttling = if self.throttled_until_ns.is_some() { CONFIG_THROTTLING } else { 0 };
        let proxies = if self.proxies == Proxies::None { 0 } else { CONFIG_KNOWS_PROXIES };
        throttling | proxies
    }

    /// A throttle lifting at `until_ns` is about to be written.
    pub fn throttling(&mut self, until_ns: u64) {
        self.throttled_until_ns = Some(self.throttled_until_ns.map_or(until_ns, |latest| latest.max(until_ns)));
    }

    /// At `now_ns`: the throttles all lifted (by `LIFT_MARGIN_NS`) are
    /// looked up no more. An entry the LRU evicted earlier only keeps the
    /// flag set longer.
    pub fn lift(&mut self, now_ns: u64) {
        if self.throttled_until_ns.is_some_and(|until_ns| now_ns >= until_ns.saturating_add(LIFT_MARGIN_NS)) {
            self.throttled_until_ns = None;
        }
    }

    /// An upstream proxy is about to be written to `PROXIES`.
    pub fn proxy_known(&mut self) {
        self.proxies = Proxies::Written;
    }

    /// This daemon's program was attached, in place of any other: an
    /// adopted flag spoke for that program's proxies, which it no longer
    /// forwards by.
    pub fn attached(&mut self) {
        if self.proxies == Proxies::Adopted {
            self.proxies = Proxies::None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn nothing_written_is_nothing_looked_up() {
        assert_eq!(MissLookups::default().flags(), 0);
        assert_eq!(MissLookups::found(0, [], 100 * SECOND).flags(), 0);
    }

    #[test]
    fn throttling_is_set_by_the_first_throttle_and_cleared_after_the_last_lifts() {
        let mut lookups = MissLookups::default();
        lookups.throttling(10 * SECOND);
        assert_eq!(lookups.flags(), CONFIG_THROTTLING, "set before the entry is written");
        lookups.throttling(20 * SECOND);
        lookups.throttling(15 * SECOND);
        for now in [10 * SECOND, 20 * SECOND, 20 * SECOND + LIFT_MARGIN_NS - 1] {
            lookups.lift(now);
            assert_eq!(lookups.flags(), CONFIG_THROTTLING, "at {now}: the latest throttle has not lifted");
        }
        lookups.lift(20 * SECOND + LIFT_MARGIN_NS);
        assert_eq!(lookups.flags(), 0, "cleared once the last has lifted");
        lookups.throttling(30 * SECOND);
        assert_eq!(lookups.flags(), CONFIG_THROTTLING, "set again by the next");
    }

    #[test]
    fn adopted_throttles_keep_the_flag_while_any_has_not_lifted() {
        let live = MissLookups::found(0, [5 * SECOND, 50 * SECOND], 10 * SECOND);
        assert_eq!(live.flags(), CONFIG_THROTTLING);
        let lifted = MissLookups::found(CONFIG_THROTTLING, [5 * SECOND, 8 * SECOND], 10 * SECOND);
        assert_eq!(lifted.flags(), 0, "a set flag found is not kept for throttles that have lifted");
    }

    #[test]
    fn proxies_are_looked_up_from_the_first_written_on() {
        let mut lookups = MissLookups::default();
        lookups.proxy_known();
        assert_eq!(lookups.flags(), CONFIG_KNOWS_PROXIES);
        lookups.attached();
        lookups.lift(u64::MAX);
        assert_eq!(lookups.flags(), CONFIG_KNOWS_PROXIES, "never cleared while the program runs");
    }

    #[test]
    fn an_adopted_proxy_flag_lasts_until_this_daemons_program_is_attached() {
        let mut adopted = MissLookups::found(CONFIG_KNOWS_PROXIES, [], SECOND);
        assert_eq!(adopted.flags(), CONFIG_KNOWS_PROXIES, "the previous program still reads it");
        adopted.attached();
        assert_eq!(adopted.flags(), 0, "this program's PROXIES is empty");
        let mut written = MissLookups::found(CONFIG_KNOWS_PROXIES, [], SECOND);
        written.proxy_known();
        written.attached();
        assert_eq!(written.flags(), CONFIG_KNOWS_PROXIES, "one written before the attach is this program's");
    }
}
