//! The committed assignments in memory, shared by every first-contact core:
//! a known client costs a map lookup, not a database read. Only the state
//! owner writes it, after each commit; a client being moved is hidden from
//! first contact first, so its next first contact goes to the owner, which
//! answers once the move is committed. Each entry also holds when its
//! client was last seen (kept while it is hidden), which first-contact
//! cores and the owner's scan of the fast path move forward (an atomic: no
//! write lock for a sighting).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;

use super::Assignment;
use crate::sip::Aor;

/// What first contact needs of an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub server: Arc<str>,
    pub generation: u64,
}

#[derive(Debug)]
struct Entry {
    cached: Cached,
    /// While the client moves it is held out of first contact.
    held: bool,
    /// Seconds since the Unix epoch.
    last_seen: AtomicU64,
}

/// Keyed by what clients send, so hashed with a random seed (foldhash:
/// fast, and no one can aim collisions at it).
#[derive(Debug, Default)]
pub struct Cache {
    assignments: DashMap<Aor, Entry, foldhash::fast::RandomState>,
}

impl Cache {
    pub fn get(&self, aor: &Aor) -> Option<Cached> {
        self.assignments.get(aor).filter(|entry| !entry.held).map(|entry| entry.cached.clone())
    }

    /// `get`, recording that `aor` was seen at `unix_seconds` when it is
    /// cached and not held (as `seen` does), in the same lookup.
    pub fn sighted(&self, aor: &Aor, unix_seconds: u64) -> Option<Cached> {
        let entry = self.assignments.get(aor).filter(|entry| !entry.held)?;
        see(&entry.last_seen, unix_seconds);
        Some(entry.cached.clone())
    }

    /// Calls `visit` with every assignment not held out of first contact.
    pub fn for_each(&self, mut visit: impl FnMut(&Aor, &Cached)) {
        for entry in self.assignments.iter().filter(|entry| !entry.held) {
            visit(entry.key(), &entry.cached);
        }
    }

    /// Records `assignment` (released if held), keeping a later sighting
    /// than the one it carries; returns the server it was cached on before.
    pub fn put(&self, assignment: &Assignment) -> Option<Arc<str>> {
        let cached = Cached { server: Arc::from(assignment.server.as_str()), generation: assignment.generation };
        let held_since = self.assignments.get(&assignment.aor).map_or(0, |e| e.last_seen.load(Ordering::Relaxed));
        let last_seen = AtomicU64::new(held_since.max(assignment.last_seen));
        let previous = self.assignments.insert(assignment.aor.clone(), Entry { cached, held: false, last_seen });
        previous.map(|entry| entry.cached.server)
    }

    /// The assignment `aor` is cached with, held or not.
    pub fn current(&self, aor: &Aor) -> Option<Cached> {
        self.assignments.get(aor).map(|entry| entry.cached.clone())
    }

    /// Hides `aor` from first contact (`get`) while it moves; when it was
    /// last seen is kept.
    pub fn hold(&self, aor: &Aor) {
        if let Some(mut entry) = self.assignments.get_mut(aor) {
            entry.held = true;
        }
    }

    /// Shows a held `aor` to first contact again, as it was cached.
    pub fn unhold(&self, aor: &Aor) {
        if let Some(mut entry) = self.assignments.get_mut(aor) {
            entry.held = false;
        }
    }

    /// Forgets `aor` altogether (its assignment expired); returns the
    /// server it was on.
    pub fn remove(&self, aor: &Aor) -> Option<Arc<str>> {
        self.assignments.remove(aor).map(|(_, entry)| entry.cached.server)
    }

    /// `aor` was seen at `unix_seconds` (never moves its time back).
    pub fn seen(&self, aor: &Aor, unix_seconds: u64) {
        if let Some(entry) = self.assignments.get(aor) {
            see(&entry.last_seen, unix_seconds);
        }
    }

    /// When `aor` was last seen, if it is cached and not held.
    pub fn last_seen(&self, aor: &Aor) -> Option<u64> {
        let entry = self.assignments.get(aor).filter(|entry| !entry.held)?;
        Some(entry.last_seen.load(Ordering::Relaxed))
    }
}

/// Moves `last_seen` forward to `unix_seconds`, never back.
fn see(last_seen: &AtomicU64, unix_seconds: u64) {
    // Read first: most sightings are within the same second, and a read
    // keeps the cache line shared between cores.
    if last_seen.load(Ordering::Relaxed) < unix_seconds {
        last_seen.fetch_max(unix_seconds, Ordering::Relaxed);
    }
}
