//! What other edges committed to a shared store, applied to this edge's
//! state: its cache and counts, its kernel entries (a moved client's
//! entries point at its new home at once), its pool, and the watchers
//! whose dialogs it holds. Changes this edge made itself come back too,
//! and change nothing.

use std::sync::Arc;

use super::Operations;
use crate::{
    counters::{add, bump},
    edge::servers,
    kernel::{fast_path::FastPathError, loader},
    sip::Aor,
    store::{Assignment, StoreEvent, StoredPool},
};

crate::counters::counters! {
    Following, "What this edge applied of other edges' changes to a shared store.",
    /// Assignments made, moved or removed by another edge, applied here.
    changes_applied,
    /// Clients moved by another edge whose kernel entries were repointed.
    clients_repointed,
}

/// How many stragglers a following edge remembers at most.
const STRAGGLERS_KEPT: usize = 100_000;

/// New clients another edge gave a server that takes no new ones, as a
/// following edge saw them: if it takes over from a leader that missed
/// them (its lease lapsed meanwhile), it moves them. A client kept on a
/// server set draining by `servers set` is never one: only clients
/// assigned after the change are.
#[derive(Default)]
pub struct Stragglers(Vec<(Aor, String)>);

impl Stragglers {
    fn remember(&mut self, first_assigned: Vec<(Aor, String)>, pool: &crate::edge::pool::Pool) {
        let leaving = first_assigned.into_iter().filter(|(_, server)| is_leaving(pool, server));
        let room = STRAGGLERS_KEPT.saturating_sub(self.0.len());
        self.0.extend(leaving.take(room));
    }

    pub fn take(&mut self) -> Vec<(Aor, String)> {
        std::mem::take(&mut self.0)
    }
}

/// Whether `server` takes no new clients (draining, down or removing).
fn is_leaving(pool: &crate::edge::pool::Pool, server: &str) -> bool {
    pool.server(server).is_some_and(|home| !home.accepts_new())
}

impl Operations {
    /// Applies one batch of followed changes, in order.
    pub fn follow(&mut self, events: Vec<StoreEvent>) {
        let mut moved = Vec::new();
        let mut first_assigned = Vec::new();
        for event in events {
            match event {
                StoreEvent::Assigned(assignment) => {
                    moved.extend(self.learn(&assignment));
                    if assignment.generation == 1 {
                        first_assigned.push((assignment.aor, assignment.server));
                    }
                }
                StoreEvent::Removed(aor) => self.unlearn(&aor),
                StoreEvent::Seen(aor, at) => self.assignments.seen(&aor, at),
                StoreEvent::Pool(stored) => self.adopt_pool(stored),
                StoreEvent::Reloaded(all) => moved.extend(self.relearn(all)),
            }
        }
        self.repoint(moved);
        self.save_watchers();
        self.save_profiles();
        if self.leading.is_some() {
            self.move_stragglers(first_assigned);
        } else {
            self.stragglers.remember(first_assigned, &self.pool.load());
        }
    }

    /// New clients another edge gave a server that no longer takes new
    /// ones (that edge had not yet learned of the drain, removal or
    /// failure; the edge that moved the server's clients had read the store
    /// before): the leader moves them as a drain would.
    pub(super) fn move_stragglers(&mut self, first_assigned: Vec<(Aor, String)>) {
        let pool = self.pool.load_full();
        let mut stragglers: std::collections::BTreeMap<String, Vec<Aor>> = Default::default();
        for (aor, server) in first_assigned {
            if is_leaving(&pool, &server) && self.assignments.server_of(&aor).is_some_and(|now| *now == *server) {
                stragglers.entry(server).or_default().push(aor);
            }
        }
        for (from, left) in stragglers {
            tracing::info!(
                server = from,
                clients = left.len(),
                "clients assigned elsewhere to a server that takes no new ones: moving them"
            );
            let why = "assigned by another edge to a server that takes no new clients; moved";
            let job = super::MoveJob { from, left, moves: Vec::new(), reply: None, fence: None, why, retire: false };
            self.jobs.extend(self.leaders(job));
        }
    }

    /// Records an assignment committed elsewhere; returns the AOR if its
    /// client moved (its watchers are told, its entries repointed).
    fn learn(&mut self, assignment: &Assignment) -> Option<Aor> {
        let current = self.assignments.current(&assignment.aor);
        if current.is_some_and(|c| c.generation >= assignment.generation) {
            return None;
        }
        bump(&self.following.changes_applied);
        let Some(from) = self.assignments.record(assignment)? else {
            // New here: routed in the kernel as this edge's own are.
            self.route_current(&[&assignment.aor]);
            return None;
        };
        tracing::debug!(aor = %assignment.aor, %from, to = assignment.server, "moved by another edge");
        self.client_moved(&assignment.aor);
        Some(assignment.aor.clone())
    }

    /// An assignment removed elsewhere (expired): gone here too.
    fn unlearn(&mut self, aor: &Aor) {
        if self.assignments.forget(aor).is_none() {
            return;
        }
        bump(&self.following.changes_applied);
        if let Err(error) = self.fast_path.forget_many(std::slice::from_ref(aor)) {
            tracing::warn!(%aor, %error, "an assignment expired elsewhere kept its kernel entries");
        }
        self.document_changed(aor);
    }

    /// Everything as the store has it now: what is gone is forgotten, the
    /// rest learned.
    fn relearn(&mut self, all: Vec<Assignment>) -> Vec<Aor> {
        let kept: std::collections::HashSet<&Aor> = all.iter().map(|a| &a.aor).collect();
        let mut gone = Vec::new();
        self.assignments.cache().for_each(|aor, _| {
            if !kept.contains(aor) {
                gone.push(aor.clone());
            }
        });
        gone.iter().for_each(|aor| self.unlearn(aor));
        all.iter().filter_map(|assignment| self.learn(assignment)).collect()
    }

    /// Points moved clients' kernel entries at their new homes, in place.
    /// A home this edge does not know yet gets no client: those entries
    /// are withdrawn, and the client's next packet meets first contact.
    fn repoint(&mut self, moved: Vec<Aor>) {
        if moved.is_empty() {
            return;
        }
        let pool = self.pool.load_full();
        let (mut repoints, mut unknown) = (Vec::new(), Vec::new());
        for aor in &moved {
            match self.assignments.server_of(aor).and_then(|name| pool.server(&name)) {
                Some(home) => repoints.push((aor, home.index)),
                None => unknown.push(aor.clone()),
            }
        }
        add(&self.following.clients_repointed, repoints.len() as u64);
        if let Err(error) = self.fast_path.repoint_many(&repoints) {
            tracing::warn!(%error, "clients moved by another edge meet first contact with their next packet");
        }
        if let Err(error) = self.fast_path.withdraw_many(&unknown) {
            tracing::warn!(%error, "clients moved by another edge to a home not known here keep their kernel entries until their next packet");
        }
    }

    /// The pool as another edge saved it: published to first contact, and
    /// every slot that differs written to the kernel.
    fn adopt_pool(&mut self, stored: StoredPool) {
        let (next, applied) = servers::restore(Some(stored));
        let current = self.pool.load_full();
        if *current == next {
            return;
        }
        for home in next.servers() {
            if current.by_index(home.index) != Some(home) {
                if current.by_index(home.index).is_none() {
                    self.tracker.add(home.index);
                }
                self.write_slot(home.index, loader::server_entry(home));
            }
        }
        for gone in current.servers().iter().filter(|s| next.by_index(s.index).is_none()) {
            self.tracker.remove(gone.index);
            self.write_slot(gone.index, Default::default());
        }
        tracing::info!(servers = next.servers().len(), "the pool as another edge changed it");
        self.pool.store(Arc::new(next));
        self.applied = applied;
        self.refresh_profiles();
    }

    fn write_slot(&mut self, slot: u32, entry: redirector_ebpf::Server) {
        if let Err(error) = self.fast_path.dataplane().set_server(slot, entry).map_err(FastPathError::from) {
            tracing::warn!(slot, %error, "writing a home server changed by another edge to the kernel failed");
        }
    }
}
