//! Follows what any edge commits under the pool's prefix: one etcd watch
//! from the revision after the last full read, each response handed to
//! the state owner as one batch of `StoreEvent`s. A broken watch is
//! started again from the revision after the last one delivered, so no
//! change is missed; if etcd no longer holds that history (it was
//! compacted), everything is read again and delivered as `Reloaded`.

use std::{sync::Arc, time::Duration};

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};

use super::keys::{self, Keys, Record};
use crate::{
    counters::bump,
    sip::Aor,
    store::{Assignment, StoreCounters, StoredPool},
};

/// A change committed to the shared store, by another edge or this one.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// A new assignment or a move (seen when assigned: sightings come apart).
    Assigned(Assignment),
    /// An expired assignment.
    Removed(Aor),
    Seen(Aor, u64),
    Pool(StoredPool),
    /// The history since the last delivered change is gone: every
    /// assignment as it is now, which replaces what the edge had.
    Reloaded(Vec<Assignment>),
}

/// Where the follower delivers each batch of changes.
pub type Sink = Box<dyn Fn(Vec<StoreEvent>) + Send + Sync>;

/// How long the follower waits before watching again after a failure.
const RETRY: Duration = Duration::from_millis(500);

pub struct Follower {
    pub client: Client,
    pub keys: Keys,
    pub endpoints: String,
    /// The first revision not delivered yet.
    pub from: i64,
    pub sink: Sink,
    pub counters: Arc<StoreCounters>,
    /// Told when the watch is back: etcd answers again.
    pub reach: Arc<super::Reach>,
    /// The pool's revision as the edge knows it: an older (or its own)
    /// save is not delivered again.
    pub pool_revision: Arc<std::sync::atomic::AtomicI64>,
    /// This edge's local copy, written with every batch.
    pub replica: Option<Arc<super::Replica>>,
}

impl Follower {
    /// Runs until the store's runtime ends.
    pub async fn run(mut self) {
        loop {
            match self.watch().await {
                Ok(()) => tracing::warn!(endpoints = self.endpoints, "the etcd watch ended; watching again"),
                Err(error) => {
                    tracing::warn!(endpoints = self.endpoints, %error, "following etcd failed; trying again")
                }
            }
            bump(&self.counters.watch_restarts);
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One watch, until it breaks.
    async fn watch(&mut self) -> Result<(), etcd_client::Error> {
        let options = WatchOptions::new().with_prefix().with_start_revision(self.from).with_progress_notify();
        let mut stream = self.client.watch_client().watch(self.keys.prefix(), Some(options)).await?;
        while let Some(response) = stream.message().await? {
            self.reach.back();
            if response.compact_revision() > 0 || self.is_behind(&response) || self.is_another_cluster(&response) {
                return self.reload().await;
            }
            if response.canceled() {
                return Err(etcd_client::Error::WatchError(response.cancel_reason().to_owned()));
            }
            self.deliver(&response);
        }
        Ok(())
    }

    /// A cluster whose newest revision is older than what this edge has
    /// followed (restored from a backup, or another cluster): its history
    /// is not this edge's.
    fn is_behind(&self, response: &WatchResponse) -> bool {
        response.header().is_some_and(|header| header.revision() < self.from - 1)
    }

    /// A replica started while etcd was out of reach follows another
    /// cluster than the one that answers now (rebuilt under the same URLs).
    fn is_another_cluster(&self, response: &WatchResponse) -> bool {
        let Some((replica, header)) = self.replica.as_ref().zip(response.header()) else { return false };
        replica.cluster() != 0 && replica.cluster() != header.cluster_id()
    }

    /// A response's events, up to the revision of its last one: a watch
    /// catching up gets its history in several responses, each headed by
    /// the newest revision, which only an event-less progress report
    /// (never the watch's creation) says has been seen.
    fn deliver(&mut self, response: &WatchResponse) {
        let (mut replicated, mut fresh) = (Vec::new(), Vec::new());
        for (event, is_new) in response.events().iter().filter_map(|event| self.decode(event)) {
            if is_new {
                fresh.push(event.clone());
            }
            replicated.push(event);
        }
        let last_event = response.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
        let progress = (!response.created()).then(|| response.header().map(|header| header.revision())).flatten();
        if let Some(revision) = last_event.or(progress) {
            self.from = self.from.max(revision + 1);
        }
        if !fresh.is_empty() {
            crate::counters::add(&self.counters.changes_followed, fresh.len() as u64);
        }
        self.hand_over(replicated, fresh);
    }

    /// To the replica, marked with the last revision delivered, then what
    /// is news to it to the state owner.
    fn hand_over(&self, replicated: Vec<StoreEvent>, fresh: Vec<StoreEvent>) {
        if let Some(replica) = &self.replica {
            let pool_revision = self.pool_revision.load(std::sync::atomic::Ordering::Acquire);
            replica.followed(replicated, replica.mark(self.from - 1, pool_revision));
        }
        if !fresh.is_empty() {
            (self.sink)(fresh);
        }
    }

    /// The change an event makes, and whether it is news to this edge: a
    /// pool it saved itself, or older than one it knows, is only kept in
    /// the replica (in order, so the replica ends with the newest).
    fn decode(&self, event: &etcd_client::Event) -> Option<(StoreEvent, bool)> {
        let kv = event.kv()?;
        let key = kv.key_str().ok()?;
        let record = self.keys.record(key)?;
        let decoded = match (event.event_type(), record) {
            (EventType::Put, Record::Assignment(aor)) => keys::decode(aor, kv.value(), None).map(StoreEvent::Assigned),
            (EventType::Delete, Record::Assignment(aor)) => Ok(StoreEvent::Removed(aor)),
            (EventType::Put, Record::Seen(aor)) => {
                return keys::seen_at(kv.value()).map(|at| (StoreEvent::Seen(aor, at), true));
            }
            (EventType::Put, Record::Pool) => {
                let known = self.pool_revision.fetch_max(kv.mod_revision(), std::sync::atomic::Ordering::AcqRel);
                let is_new = kv.mod_revision() > known;
                return serde_json::from_slice(kv.value())
                    .map(|pool| (StoreEvent::Pool(pool), is_new))
                    .inspect_err(|error| self.unreadable(key, error))
                    .ok();
            }
            _ => return None,
        };
        decoded.map(|event| (event, true)).inspect_err(|error| self.unreadable(key, error)).ok()
    }

    fn unreadable(&self, key: &str, error: &serde_json::Error) {
        bump(&self.counters.unreadable);
        tracing::warn!(key, %error, "a record in etcd does not read back; skipped");
    }

    /// Reads every assignment (a page at a time), and the pool, anew at
    /// one revision (the watch's history was compacted, or is another
    /// cluster's).
    async fn reload(&mut self) -> Result<(), etcd_client::Error> {
        let mut kv = self.client.kv_client();
        let (assignments, revision) = super::pages::all(kv.clone(), &self.keys, &self.counters).await?;
        let options = GetOptions::new().with_revision(revision);
        let mut answer = kv.get(self.keys.pool(), Some(options)).await?;
        if let (Some(replica), Some(header)) = (&self.replica, answer.header()) {
            replica.following(header.cluster_id());
        }
        let pool = answer.take_kvs().pop();
        if let Some(kv) = &pool {
            self.pool_revision.store(kv.mod_revision(), std::sync::atomic::Ordering::Release);
        }
        let pool: Option<StoredPool> = pool.and_then(|kv| serde_json::from_slice(kv.value()).ok());
        bump(&self.counters.reloads);
        tracing::warn!(
            endpoints = self.endpoints,
            "etcd no longer holds the history this edge has not seen (compacted, or another cluster's): reloaded"
        );
        self.from = revision + 1;
        let events: Vec<StoreEvent> =
            std::iter::once(StoreEvent::Reloaded(assignments)).chain(pool.map(StoreEvent::Pool)).collect();
        self.hand_over(events.clone(), events);
        Ok(())
    }
}
