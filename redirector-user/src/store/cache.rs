//! The committed assignments in memory, shared by every first-contact core:
//! a known client costs a map lookup, not a database read. Only the state
//! owner writes it, after each commit; a client being moved is taken out
//! first, so its next first contact goes to the owner, which answers once
//! the move is committed.

use std::sync::Arc;

use dashmap::DashMap;

use super::Assignment;
use crate::sip::Aor;

/// What first contact needs of an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub server: Arc<str>,
    pub generation: u64,
}

/// Keyed by what clients send, so hashed with a random seed (foldhash:
/// fast, and no one can aim collisions at it).
#[derive(Debug, Default)]
pub struct Cache {
    assignments: DashMap<Aor, Cached, foldhash::fast::RandomState>,
}

impl Cache {
    pub fn get(&self, aor: &Aor) -> Option<Cached> {
        self.assignments.get(aor).map(|entry| entry.value().clone())
    }

    pub fn put(&self, assignment: &Assignment) {
        let cached = Cached { server: Arc::from(assignment.server.as_str()), generation: assignment.generation };
        self.assignments.insert(assignment.aor.clone(), cached);
    }

    pub fn remove(&self, aor: &Aor) {
        self.assignments.remove(aor);
    }
}
