//! The assignments as the state owner keeps them: the durable store, the
//! cache first-contact cores read, and the client count per server, changed
//! together and only here. Every write is one durable transaction for any
//! number of AORs (group commit).

use std::{collections::HashMap, sync::Arc};

use crate::{
    counters::bump,
    edge::{
        admission::Refused,
        first_contact::Counters,
        pool::Pool,
        routes::{LOG_CAPACITY, RouteLog},
    },
    sip::Aor,
    store::{Assignment, AssignmentStore, Cache, Cached, Reassigned, StoreError, Term, next_assignment, positions},
};

/// What first contact's new clients get: `aor`'s current assignment if
/// usable (no change), else a new one from `pool` (an AOR never assigned
/// is first admitted, and goes to the home `cookie_home` names for it if
/// that home takes new clients). The decision is `Ok(Some(previous
/// server))` when a new assignment is made.
fn decide(
    aor: &Aor,
    current: Option<&Assignment>,
    pool: &Pool,
    admit: &mut dyn FnMut(&Aor) -> Result<(), Refused>,
    cookie_home: &dyn Fn(&Aor) -> Option<String>,
) -> (Result<Option<Option<String>>, Refused>, Option<Assignment>) {
    if current.is_some_and(|a| pool.usable(&a.server)) {
        return (Ok(None), None);
    }
    if current.is_none()
        && let Err(refused) = admit(aor)
    {
        return (Err(refused), None);
    }
    let asked = current.is_none().then(|| cookie_home(aor)).flatten();
    let asked = asked.and_then(|name| pool.server(&name).filter(|home| home.accepts_new()));
    let Some(server) = asked.or_else(|| pool.choose(aor, current.map(|a| a.server.as_str()))) else {
        return (Err(Refused::NoServer), None);
    };
    (Ok(Some(current.map(|a| a.server.clone()))), Some(next_assignment(aor, &server.name, current)))
}

/// An AOR's usable assignment, and whether getting it moved the client off
/// an unusable server (its watchers are then to be told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub assignment: Assignment,
    pub moved: bool,
}

pub struct Assignments {
    store: Box<dyn AssignmentStore>,
    cache: Arc<Cache>,
    /// Per server name; signed so that any order of updates adds up.
    counts: HashMap<String, i64>,
    counters: Arc<Counters>,
    /// Every change, versioned, for the routing table's clients.
    routes: RouteLog,
}

impl Assignments {
    /// Loads every stored assignment into the cache and the counts; the
    /// routing table's versions start in `epoch` (see `edge::routes`).
    pub fn open(store: Box<dyn AssignmentStore>, counters: Arc<Counters>, epoch: u64) -> Result<Self, StoreError> {
        let cache = Arc::new(Cache::default());
        let mut counts = HashMap::new();
        for assignment in store.load()? {
            *counts.entry(assignment.server.clone()).or_default() += 1;
            cache.put(&assignment);
        }
        Ok(Self { store, cache, counts, counters, routes: RouteLog::new(epoch, LOG_CAPACITY) })
    }

    /// The cache, for first-contact cores.
    pub fn cache(&self) -> Arc<Cache> {
        self.cache.clone()
    }

    /// The routing table's version and recent changes.
    pub fn routes(&self) -> &RouteLog {
        &self.routes
    }

    pub fn store(&self) -> &(dyn AssignmentStore + 'static) {
        self.store.as_ref()
    }

    /// How many clients each server has.
    pub fn client_counts(&self) -> HashMap<String, u64> {
        self.counts.iter().map(|(server, n)| (server.clone(), (*n).max(0) as u64)).collect()
    }

    /// The server `aor` is on, as the cache has it.
    pub fn server_of(&self, aor: &Aor) -> Option<Arc<str>> {
        self.cache.get(aor).map(|cached| cached.server)
    }

    /// The generation `aor` is at, if assigned.
    pub fn generation(&self, aor: &Aor) -> Option<u64> {
        self.cache.get(aor).map(|cached| cached.generation)
    }

    /// Gives every AOR without a usable assignment a new one on a server of
    /// `pool` that takes new clients, all in one durable transaction. An
    /// AOR never assigned before is first put to `admit` (with the
    /// assignments held so far), and goes to the home `cookie_home` names
    /// for it if that home takes new clients. Per AOR: its usable
    /// assignment, or why it has none.
    pub fn assign_all(
        &mut self,
        aors: &[&Aor],
        pool: &Pool,
        admit: &mut dyn FnMut(&Aor, u64) -> Result<(), Refused>,
        cookie_home: &dyn Fn(&Aor) -> Option<String>,
    ) -> Result<Vec<Result<Assigned, Refused>>, StoreError> {
        if aors.is_empty() {
            return Ok(Vec::new());
        }
        let mut held: u64 = self.client_counts().values().sum();
        // Per AOR: Ok(Some(previous server)) when this transaction assigned
        // it. A shared store may call `change` again for an AOR another edge
        // wrote meanwhile: the last call's decision is the one that holds.
        let mut decided: HashMap<Aor, Result<Option<Option<String>>, Refused>> = HashMap::with_capacity(aors.len());
        // Absent from the cache: new to the pool, as far as this edge knows.
        let cache = self.cache.clone();
        let absent = |aor: &Aor| cache.current(aor).is_none();
        let stored = self.store.create_many(aors, &absent, &mut |aor, current| {
            let (decision, new) = decide(aor, current, pool, &mut |aor| admit(aor, held), cookie_home);
            held += u64::from(current.is_none() && new.is_some());
            decided.insert(aor.clone(), decision);
            new
        })?;
        Ok(stored
            .into_iter()
            .zip(aors)
            .map(|(stored, aor)| {
                let decision = decided.remove(*aor).unwrap_or(Ok(None));
                self.settle(stored, decision?, pool)
            })
            .collect())
    }

    /// Records a stored assignment; `previous` is `Some` when it was just made.
    fn settle(
        &mut self,
        stored: Option<Assignment>,
        previous: Option<Option<String>>,
        pool: &Pool,
    ) -> Result<Assigned, Refused> {
        let stored = stored.ok_or(Refused::NoServer)?;
        if let Some(previous) = &previous {
            bump(if previous.is_some() { &self.counters.reassigned } else { &self.counters.assigned });
        }
        // Moved here, or (read from a shared store) by another edge.
        let moved_off = self.record(&stored).is_some_and(|from| from.is_some());
        if !pool.usable(&stored.server) {
            return Err(Refused::NoServer);
        }
        let moved = moved_off || previous.is_some_and(|previous| previous.is_some());
        Ok(Assigned { assignment: stored, moved })
    }

    /// Caches a committed assignment (here or, with a shared store, by
    /// another edge) and counts it on its server; returns the server it was
    /// on before, if it changed. Recording the same assignment twice does
    /// nothing.
    pub fn record(&mut self, stored: &Assignment) -> Option<Option<Arc<str>>> {
        let previous = self.cache.put(stored);
        if previous.as_deref() == Some(stored.server.as_str()) {
            return None;
        }
        if let Some(from) = &previous {
            self.count(from, -1);
        }
        self.count(&stored.server, 1);
        self.routes.record(&stored.aor, Some(&stored.server));
        Some(previous)
    }

    /// Adds `change` to `server`'s count (a move of a million clients
    /// names a server a million times: its name is copied only once).
    fn count(&mut self, server: &str, change: i64) {
        match self.counts.get_mut(server) {
            Some(count) => *count += change,
            None => {
                self.counts.insert(server.to_owned(), change);
            }
        }
    }

    /// Forgets an assignment removed from the store (expired here or, with
    /// a shared store, elsewhere); returns the server it was on.
    pub fn forget(&mut self, aor: &Aor) -> Option<Arc<str>> {
        let server = self.cache.remove(aor)?;
        self.count(&server, -1);
        self.routes.record(aor, None);
        Some(server)
    }

    /// The assignment `aor` is cached with, held out of first contact or not.
    pub fn current(&self, aor: &Aor) -> Option<Cached> {
        self.cache.current(aor)
    }

    /// Records each AOR on its server with the next generation, in one
    /// durable transaction. An AOR is left alone (`None`) if its target is
    /// down or gone by then, or, with `only_from`, if it is no longer on
    /// that server (something else moved it since the move was planned).
    /// With a `fence`, the moves are the leader's, made only in its term.
    pub fn reassign_many(
        &mut self,
        moves: &[(&Aor, &str)],
        only_from: Option<&str>,
        pool: &Pool,
        fence: Option<&Term>,
    ) -> Result<Vec<Option<Reassigned>>, StoreError> {
        let aors: Vec<&Aor> = moves.iter().map(|&(aor, _)| aor).collect();
        let position = positions(&aors);
        // By position; as in `assign_all`, the last call for an AOR holds.
        let mut previous: Vec<Option<Option<String>>> = vec![None; moves.len()];
        let stored = self.store.update_many(&aors, fence, &mut |aor, current| {
            let i = position[aor];
            let to = moves[i].1;
            let still_there = only_from.is_none_or(|from| current.is_some_and(|a| a.server == from));
            if !(still_there && pool.usable(to)) {
                previous[i] = None;
                return None;
            }
            previous[i] = Some(current.map(|a| a.server.clone()));
            Some(next_assignment(aor, to, current))
        })?;
        let done = previous.into_iter().zip(stored).map(|(previous, stored)| {
            // What the store holds is cached, whoever wrote it.
            let stored = stored?;
            self.record(&stored);
            Some(Reassigned { previous: previous?, generation: stored.generation })
        });
        Ok(done.collect())
    }

    /// When `aor` was last seen, as the cache has it.
    pub fn last_seen(&self, aor: &Aor) -> Option<u64> {
        self.cache.last_seen(aor)
    }

    /// `aor` was seen at `unix_seconds`.
    pub fn seen(&self, aor: &Aor, unix_seconds: u64) {
        self.cache.seen(aor, unix_seconds);
    }

    /// Removes expired assignments (held out of first contact meanwhile)
    /// from the store, the cache and the counts, and persists the sightings in `persist`, in
    /// one durable transaction.
    pub fn expire(
        &mut self,
        expired: &[Assignment],
        persist: &[(Aor, u64)],
        fence: Option<&Term>,
    ) -> Result<(), StoreError> {
        let gone: Vec<&Aor> = expired.iter().map(|a| &a.aor).collect();
        let seen: Vec<(&Aor, u64)> = persist.iter().map(|(aor, at)| (aor, *at)).collect();
        self.store.expire(&gone, &seen, fence)?;
        for assignment in expired {
            self.forget(&assignment.aor);
        }
        Ok(())
    }

    /// Takes `aor` out of the cache while it moves: its first contacts then
    /// wait for the owner, which answers after the move's commit.
    pub fn hold(&self, aor: &Aor) {
        self.cache.hold(aor);
    }

    /// Shows a held AOR that did not move to first contact again.
    pub fn release(&self, aor: &Aor) {
        self.cache.unhold(aor);
    }
}
