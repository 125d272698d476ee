//! Assignments expire: a client not seen for `[store] expire_after` loses
//! its assignment (store, kernel entries, counts), so AORs that anyone
//! could create do not pile up forever. "Seen" is a first contact or a
//! fast-path packet (the kernel's `last_seen`), both kept in memory.
//!
//! A `Walk` goes over the store one page at a time, so the owner never
//! stalls installs and moves for the length of a large store. The same
//! walk persists when clients were last seen, coarsely: only a time that
//! moved more than `Policy::persist_gap` past the stored one is written,
//! so a busy client costs a database write every few days, not one per
//! packet or first contact. A restart can at most lose that gap plus one
//! walk's period of a client's freshness.
//!
//! Pure: the caller reads the pages and the clock.

use std::time::Duration;

use crate::{sip::Aor, store::Assignment};

/// When assignments expire and how often that is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Seconds without a sighting after which an assignment goes.
    expire_after: u64,
}

/// A walk starts at least this often, however long `expire_after` is.
const LONGEST_WALK_PERIOD: u64 = 3600;

impl Policy {
    /// `None` when assignments never expire (`expire_after` of 0).
    pub fn new(expire_after: Duration) -> Option<Self> {
        let expire_after = expire_after.as_secs();
        (expire_after > 0).then_some(Self { expire_after })
    }

    /// Whether a client last seen at `last_seen` has expired at `now`.
    pub fn expired(&self, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) >= self.expire_after
    }

    /// How far a sighting may run ahead of the stored one before it is
    /// written: a sixteenth of `expire_after`.
    fn persist_gap(&self) -> u64 {
        (self.expire_after / 16).max(1)
    }

    /// How often a walk over the store starts: as often as the persist gap,
    /// between once a second and once an hour.
    pub fn walk_every(&self) -> Duration {
        Duration::from_secs(self.persist_gap().min(LONGEST_WALK_PERIOD))
    }
}

/// What one page of the store comes to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Assignments whose client was not seen for `expire_after`.
    pub expired: Vec<Assignment>,
    /// Clients whose sighting is to be persisted, with its time.
    pub persist: Vec<(Aor, u64)>,
}

/// A walk over the store, a page at a time, in AOR order.
#[derive(Debug, Default)]
pub struct Walk {
    /// The last AOR judged.
    after: Option<Aor>,
    done: bool,
}

impl Walk {
    /// Where the next page starts (after this AOR; from the first if `None`).
    pub fn cursor(&self) -> Option<&Aor> {
        self.after.as_ref()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Judges `page`, the next at most `limit` assignments after the
    /// cursor, at `now`, and moves the cursor past it. `last_seen` gives a
    /// client's sighting in memory; a client without one (held out of the
    /// cache while it moves) is left for the next walk.
    pub fn judge(
        &mut self,
        policy: &Policy,
        page: &[Assignment],
        limit: usize,
        last_seen: impl Fn(&Aor) -> Option<u64>,
        now: u64,
    ) -> Verdicts {
        let mut verdicts = Verdicts::default();
        for assignment in page {
            let Some(seen) = last_seen(&assignment.aor) else { continue };
            let seen = seen.max(assignment.last_seen);
            if policy.expired(seen, now) {
                verdicts.expired.push(assignment.clone());
            } else if seen > assignment.last_seen + policy.persist_gap() {
                verdicts.persist.push((assignment.aor.clone(), seen));
            }
        }
        self.done = page.len() < limit;
        if let Some(last) = page.last() {
            self.after = Some(last.aor.clone());
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    const DAY: u64 = 86_400;

    fn aor(user: &str) -> Aor {
        Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
    }

    /// A store's rows, in AOR order as the real one pages them.
    struct Rows(BTreeMap<Aor, Assignment>);

    impl Rows {
        fn page(&self, after: Option<&Aor>, limit: usize) -> Vec<Assignment> {
            let from = self.0.iter().filter(|(aor, _)| after.is_none_or(|after| *aor > after));
            from.take(limit).map(|(_, a)| a.clone()).collect()
        }
    }

    /// Walks every page of `rows` at `now` with pages of `limit`; the
    /// verdicts of each page, in order.
    fn walk(rows: &Rows, seen: &HashMap<Aor, u64>, limit: usize, now: u64) -> Vec<Verdicts> {
        let policy = Policy::new(Duration::from_secs(30 * DAY)).unwrap();
        let mut walk = Walk::default();
        let mut pages = Vec::new();
        while !walk.is_done() {
            assert!(pages.len() <= rows.0.len(), "a walk ends");
            let page = rows.page(walk.cursor(), limit);
            pages.push(walk.judge(&policy, &page, limit, |aor| seen.get(aor).copied(), now));
        }
        pages
    }

    fn stored(user: &str, last_seen: u64) -> (Aor, Assignment) {
        (aor(user), Assignment { last_seen, ..Assignment::new(aor(user), "home1".into()) })
    }

    fn users(assignments: &[Assignment]) -> Vec<String> {
        assignments.iter().map(|a| a.aor.to_string()).collect()
    }

    #[test]
    fn a_walk_expires_the_unseen_a_page_at_a_time_and_persists_only_big_advances() {
        let start = 1_000 * DAY;
        // Stored sightings (what a restart would load) and those in memory.
        let rows = Rows(BTreeMap::from([
            stored("alice", start),
            stored("bob", start),
            stored("carol", start),
            stored("dave", start),
            stored("erin", start),
        ]));
        let seen = HashMap::from([
            (aor("alice"), start),           // not seen since
            (aor("bob"), start + 29 * DAY),  // fast-path traffic a day ago
            (aor("carol"), start + DAY / 2), // seen, but not far past what is stored
            (aor("dave"), start + 10 * DAY), // seen long ago, not yet expired
        ]);
        // erin is held out of the cache (moving): never judged.
        let pages = walk(&rows, &seen, 2, start + 30 * DAY);
        assert_eq!(pages.len(), 3, "five rows in pages of two");
        let expired: Vec<String> = pages.iter().flat_map(|p| users(&p.expired)).collect();
        assert_eq!(expired, ["sip:alice@example.net"]);
        let persisted: Vec<(Aor, u64)> = pages.into_iter().flat_map(|p| p.persist).collect();
        assert_eq!(persisted, [(aor("bob"), start + 29 * DAY), (aor("dave"), start + 10 * DAY)]);

        // A day before alice's 30 days are up, nothing expires.
        let early = walk(&rows, &seen, 2, start + 29 * DAY);
        assert!(early.iter().all(|p| p.expired.is_empty()), "{early:?}");
        // Ten days later, carol's and dave's 30 days are up too; bob's are not.
        let later = walk(&rows, &seen, 10, start + 40 * DAY);
        assert_eq!(later.len(), 1, "one page holds all five");
        let expired = ["sip:alice@example.net", "sip:carol@example.net", "sip:dave@example.net"];
        assert_eq!(users(&later[0].expired), expired);
    }

    #[test]
    fn a_stored_sighting_newer_than_memory_counts() {
        let start = 1_000 * DAY;
        let rows = Rows(BTreeMap::from([stored("alice", start + 20 * DAY)]));
        let seen = HashMap::from([(aor("alice"), start)]);
        let pages = walk(&rows, &seen, 2, start + 31 * DAY);
        assert_eq!(pages, [Verdicts::default()]);
    }

    #[test]
    fn zero_never_expires_and_walks_come_between_a_second_and_an_hour_apart() {
        assert_eq!(Policy::new(Duration::ZERO), None);
        let walk_every = |secs| Policy::new(Duration::from_secs(secs)).unwrap().walk_every();
        assert_eq!(walk_every(4), Duration::from_secs(1));
        assert_eq!(walk_every(160), Duration::from_secs(10));
        assert_eq!(walk_every(30 * DAY), Duration::from_secs(3600));
    }
}
