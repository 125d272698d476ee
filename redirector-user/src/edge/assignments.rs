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
    store::{Assignment, AssignmentStore, Cache, Reassigned, StoreError, next_assignment},
};

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
        for assignment in store.all()? {
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
    /// assignments held so far). Per AOR: its usable assignment, or why it
    /// has none.
    pub fn assign_all(
        &mut self,
        aors: &[&Aor],
        pool: &Pool,
        admit: &mut dyn FnMut(&Aor, u64) -> Result<(), Refused>,
    ) -> Result<Vec<Result<Assigned, Refused>>, StoreError> {
        if aors.is_empty() {
            return Ok(Vec::new());
        }
        let mut held: u64 = self.client_counts().values().sum();
        // Per AOR: Ok(Some(previous server)) when this transaction assigned it.
        let mut decided: Vec<Result<Option<Option<String>>, Refused>> = Vec::with_capacity(aors.len());
        let stored = self.store.update_many(aors, &mut |aor, current| {
            if current.is_some_and(|a| pool.usable(&a.server)) {
                decided.push(Ok(None));
                return None;
            }
            if current.is_none()
                && let Err(refused) = admit(aor, held)
            {
                decided.push(Err(refused));
                return None;
            }
            let Some(server) = pool.choose(aor, current.map(|a| a.server.as_str())) else {
                decided.push(Err(Refused::NoServer));
                return None;
            };
            held += u64::from(current.is_none());
            decided.push(Ok(Some(current.map(|a| a.server.clone()))));
            Some(next_assignment(aor, &server.name, current))
        })?;
        Ok(stored.into_iter().zip(decided).map(|(stored, decided)| self.settle(stored, decided?, pool)).collect())
    }

    /// Records a stored assignment; `previous` is `Some` when it was just made.
    fn settle(
        &mut self,
        stored: Option<Assignment>,
        previous: Option<Option<String>>,
        pool: &Pool,
    ) -> Result<Assigned, Refused> {
        let stored = stored.ok_or(Refused::NoServer)?;
        let moved = match previous {
            Some(previous) => {
                bump(if previous.is_some() { &self.counters.reassigned } else { &self.counters.assigned });
                self.count_move(previous.as_deref(), &stored);
                self.cache.put(&stored);
                previous.is_some()
            }
            None => {
                // Usable as stored, yet it came here: the cache lacks it
                // (a failed release): put it back.
                if self.cache.get(&stored.aor).is_none_or(|c| c.generation != stored.generation) {
                    self.cache.put(&stored);
                }
                false
            }
        };
        if !pool.usable(&stored.server) {
            return Err(Refused::NoServer);
        }
        Ok(Assigned { assignment: stored, moved })
    }

    /// Records each AOR on its server with the next generation, in one
    /// durable transaction. An AOR is left alone (`None`) if its target is
    /// down or gone by then, or, with `only_from`, if it is no longer on
    /// that server (something else moved it since the move was planned).
    pub fn reassign_many(
        &mut self,
        moves: &[(&Aor, &str)],
        only_from: Option<&str>,
        pool: &Pool,
    ) -> Result<Vec<Option<Reassigned>>, StoreError> {
        let aors: Vec<&Aor> = moves.iter().map(|&(aor, _)| aor).collect();
        let mut targets = moves.iter().map(|&(_, to)| to);
        let mut previous = Vec::with_capacity(moves.len());
        let stored = self.store.update_many(&aors, &mut |aor, current| {
            let to = targets.next().expect("one call per move");
            let still_there = only_from.is_none_or(|from| current.is_some_and(|a| a.server == from));
            let moving = still_there && pool.usable(to);
            previous.push(moving.then(|| current.map(|a| a.server.clone())));
            moving.then(|| next_assignment(aor, to, current))
        })?;
        let done = previous.into_iter().zip(stored).map(|(previous, stored)| {
            let (previous, stored) = (previous?, stored?);
            self.count_move(previous.as_deref(), &stored);
            self.cache.put(&stored);
            Some(Reassigned { previous, generation: stored.generation })
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
    pub fn expire(&mut self, expired: &[Assignment], persist: &[(Aor, u64)]) -> Result<(), StoreError> {
        let gone: Vec<&Aor> = expired.iter().map(|a| &a.aor).collect();
        let seen: Vec<(&Aor, u64)> = persist.iter().map(|(aor, at)| (aor, *at)).collect();
        self.store.expire(&gone, &seen)?;
        for assignment in expired {
            *self.counts.entry(assignment.server.clone()).or_default() -= 1;
            self.cache.remove(&assignment.aor);
            self.routes.record(&assignment.aor, None);
        }
        Ok(())
    }

    /// Takes `aor` out of the cache while it moves: its first contacts then
    /// wait for the owner, which answers after the move's commit.
    pub fn hold(&self, aor: &Aor) {
        self.cache.hold(aor);
    }

    /// Puts held AORs that did not move back in the cache, as stored.
    pub fn release(&self, aor: &Aor) -> Result<(), StoreError> {
        if self.cache.get(aor).is_none()
            && let Some(stored) = self.store.get(aor)?
        {
            self.cache.put(&stored);
        }
        Ok(())
    }

    /// Counts `to` moved from `from` (`None`: new) and logs the change.
    fn count_move(&mut self, from: Option<&str>, to: &Assignment) {
        if let Some(from) = from {
            *self.counts.entry(from.to_owned()).or_default() -= 1;
        }
        *self.counts.entry(to.server.clone()).or_default() += 1;
        self.routes.record(&to.aor, Some(&to.server));
    }
}
