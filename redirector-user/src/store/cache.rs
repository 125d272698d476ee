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
    /// `None` while the client is held out of first contact (it moves).
    cached: Option<Cached>,
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
        self.assignments.get(aor).and_then(|entry| entry.cached.clone())
    }

    /// Calls `visit` with every assignment not held out of first contact.
    pub fn for_each(&self, mut visit: impl FnMut(&Aor, &Cached)) {
        for entry in &self.assignments {
            if let Some(cached) = &entry.value().cached {
                visit(entry.key(), cached);
            }
        }
    }

    /// Records `assignment`, keeping a later sighting than the one it carries.
    pub fn put(&self, assignment: &Assignment) {
        let cached = Cached { server: Arc::from(assignment.server.as_str()), generation: assignment.generation };
        let held_since = self.assignments.get(&assignment.aor).map_or(0, |e| e.last_seen.load(Ordering::Relaxed));
        let last_seen = AtomicU64::new(held_since.max(assignment.last_seen));
        self.assignments.insert(assignment.aor.clone(), Entry { cached: Some(cached), last_seen });
    }

    /// Hides `aor` from first contact (`get`) while it moves; when it was
    /// last seen is kept.
    pub fn hold(&self, aor: &Aor) {
        if let Some(mut entry) = self.assignments.get_mut(aor) {
            entry.cached = None;
        }
    }

    /// Forgets `aor` altogether (its assignment expired).
    pub fn remove(&self, aor: &Aor) {
        self.assignments.remove(aor);
    }

    /// `aor` was seen at `unix_seconds` (never moves its time back).
    pub fn seen(&self, aor: &Aor, unix_seconds: u64) {
        if let Some(entry) = self.assignments.get(aor)
            && entry.last_seen.load(Ordering::Relaxed) < unix_seconds
        {
            // Read first: most sightings are within the same second, and a
            // read keeps the cache line shared between cores.
            entry.last_seen.fetch_max(unix_seconds, Ordering::Relaxed);
        }
    }

    /// When `aor` was last seen, if it is cached and not held.
    pub fn last_seen(&self, aor: &Aor) -> Option<u64> {
        let entry = self.assignments.get(aor)?;
        entry.cached.as_ref().map(|_| entry.last_seen.load(Ordering::Relaxed))
    }
}
