//! The client-to-home-server assignment database. `AssignmentStore` is the
//! seam; `EtcdStore` shares it between several edges (see `etcd`), and
//! `RedbStore` is the embedded default for a single edge: every
//! `update` is a committed, fsynced transaction before it returns, so an assignment
//! that was answered survives a crash (SIGKILL, power loss). `Cache` holds
//! what was committed, for reads that must not touch the database.

mod cache;
mod etcd;
mod redb;

use std::{collections::HashMap, time::SystemTime};

pub use self::{
    cache::{Cache, Cached},
    etcd::{EtcdSettings, EtcdStore, LEADER_LEASE, MAX_TXN_OPS, ReplicaMark, Sink, StoreEvent, Tls},
    redb::RedbStore,
};
use crate::{model::ServerSpec, sip::Aor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub aor: Aor,
    /// The home server's `name` (stable across config reordering).
    pub server: String,
    /// Seconds since the Unix epoch.
    pub assigned_at: u64,
    /// Bumped by every move; 1 for a first assignment.
    pub generation: u64,
    /// Seconds since the Unix epoch when the client was last seen, as last
    /// persisted (coarsely: see `edge::expiry`). A row from a database that
    /// predates the field reads as seen when it is read.
    pub last_seen: u64,
}

impl Assignment {
    /// A first assignment, made at the client's first contact: seen now.
    pub fn new(aor: Aor, server: String) -> Self {
        let now = unix_seconds();
        Self { aor, server, assigned_at: now, generation: 1, last_seen: now }
    }
}

/// This edge's term as the leader of the pool's decisions (health
/// verdicts, failover, rebalancing, expiry). Every write made as the leader
/// carries it: a shared store makes the write only while the election
/// still names this term, so an edge deposed without knowing it yet (paused,
/// cut off, slow) cannot commit a decision over the new leader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// Alone with its store: it leads for good.
    Alone,
    /// Elected through etcd: the election key this edge's campaign created
    /// (it lives as long as this edge's lease) and its create revision.
    Elected { key: Vec<u8>, created: i64 },
}

/// Told `Some(term)` when this edge starts leading, `None` when it stops.
pub type Leadership = Box<dyn Fn(Option<Term>) + Send + Sync>;

/// The dialogs an edge keeps for its clients, each kind apart (a redb
/// table, an etcd key prefix of the edge's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogKind {
    /// Watchers' SUBSCRIBE dialogs, proxied to homes (`edge::watchers`).
    Watches,
    /// Clients' own ua-profile subscriptions (`edge::profiles`).
    Profiles,
}

impl DialogKind {
    /// The table's name (redb), the key prefix's word (etcd).
    pub fn name(self) -> &'static str {
        match self {
            DialogKind::Watches => "watches",
            DialogKind::Profiles => "profiles",
        }
    }
}

/// The wall clock in seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The home servers as the daemon last had them, kept in the store so that
/// `redirector servers add / remove / set` outlive restarts (see
/// `edge::servers` for how the config's `[[servers]]` are merged in).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredPool {
    pub servers: Vec<StoredServer>,
    /// The config's `[[servers]]` as last applied: what the next config is
    /// compared with, so only what the config itself changed is applied.
    pub applied: Vec<ServerSpec>,
    /// The lowest SERVERS slot never used yet.
    pub next_slot: u32,
    /// Slots of removed servers, longest retired first: reused only once
    /// no never-used slot is left.
    pub retired: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredServer {
    pub slot: u32,
    pub spec: ServerSpec,
    /// The health checks' last verdict: a restarted daemon starts from it,
    /// not from "all up" (records from before it was kept read as up).
    #[serde(default = "healthy")]
    pub healthy: bool,
}

fn healthy() -> bool {
    true
}

crate::counters::counters! {
    StoreCounters, "What a shared store's edge saw of it, since start.",
    /// Requests to the store that failed or timed out.
    failures,
    /// Changes committed by any edge that reached this one's watch.
    changes_followed,
    /// Times the watch broke and was started again.
    watch_restarts,
    /// Times the watch's history was gone and everything was read again.
    reloads,
    /// Records that did not read back (skipped).
    unreadable,
    /// Times this edge became the leader of the pool's decisions.
    terms_led,
    /// Leader-only writes etcd refused because this edge's term had ended
    /// (another edge leads, or none): the edge stepped down each time.
    deposed_writes,
    /// Starts that resumed from the local replica (reading only what
    /// changed since) instead of reading every assignment.
    resumes,
    /// Writes to the local replica that failed.
    replica_failures,
    /// Writes to the local replica dropped because its writer fell
    /// `QUEUED_WRITES` behind (the copy then stays at its last revision
    /// until the edge reads etcd's history again).
    replica_overflows,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the assignment database {path}: {source} (is another redirector using it?)")]
    Open { path: String, source: Box<::redb::DatabaseError> },
    #[error("assignment database: {0}")]
    Database(#[from] Box<::redb::Error>),
    #[error("the home servers kept in the assignment database do not read back: {0}")]
    Pool(#[from] serde_json::Error),
    #[error(
        "etcd at {endpoints}: {what} failed: {source} (is the cluster up, with a quorum, and reachable from this edge?)"
    )]
    Etcd { endpoints: String, what: &'static str, source: Box<etcd_client::Error> },
    #[error(
        "etcd at {endpoints}: {what} took longer than {seconds} s (is the cluster up, with a quorum, and reachable from this edge?)"
    )]
    TimedOut { endpoints: String, what: &'static str, seconds: f64 },
    #[error(
        "etcd at {endpoints}: {what} not tried: etcd was out of reach moments ago (is the cluster up, with a quorum, and reachable from this edge?)"
    )]
    Unreachable { endpoints: String, what: &'static str },
    #[error(
        "etcd at {endpoints}: {aors} assignments kept being changed by other edges while this one wrote them; try again"
    )]
    Contended { endpoints: String, aors: usize },
    #[error(
        "etcd at {endpoints}: the pool was changed on another edge meanwhile; this edge applies that change within moments: try again"
    )]
    PoolChanged { endpoints: String },
    #[error(
        "etcd at {endpoints}: {what} refused: this edge no longer leads the pool's decisions (its election key in etcd is gone or another edge's); it steps down and leaves them to the new leader"
    )]
    Deposed { endpoints: String, what: &'static str },
    #[error(
        "etcd at {endpoints} refuses transactions of {max} operations: start its members with --max-txn-ops {max} (or more), or lower [store] max_txn_ops"
    )]
    TxnLimit { endpoints: String, max: usize },
    #[error("etcd record {key} does not read back: {source}")]
    Record { key: String, source: serde_json::Error },
    #[error("reading the TLS file {path} for etcd: {source}")]
    Certificate { path: String, source: std::io::Error },
    #[error("starting the runtime that talks to etcd: {source}")]
    Runtime { source: std::io::Error },
}

impl StoreError {
    fn etcd(endpoints: &str, what: &'static str, source: etcd_client::Error) -> Self {
        Self::Etcd { endpoints: endpoints.to_owned(), what, source: Box::new(source) }
    }

    fn timed_out(endpoints: &str, what: &'static str, timeout: std::time::Duration) -> Self {
        Self::TimedOut { endpoints: endpoints.to_owned(), what, seconds: timeout.as_secs_f64() }
    }

    /// Whether a leader's write was refused because its term had ended.
    pub fn is_deposed(&self) -> bool {
        matches!(self, Self::Deposed { .. })
    }

    /// Whether the store could not be reached (as opposed to refusing or
    /// failing a request): new clients are then told to come back later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Etcd { source, .. } => out_of_reach(source),
            Self::TimedOut { .. } | Self::Unreachable { .. } | Self::Contended { .. } => true,
            _ => false,
        }
    }
}

/// Whether an etcd error says the cluster could not be reached or had no
/// quorum (rather than refusing the request).
fn out_of_reach(error: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match error {
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) | Error::LeaseKeepAliveError(_) => true,
        Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        _ => false,
    }
}

pub trait AssignmentStore: Send + Sync {
    fn get(&self, aor: &Aor) -> Result<Option<Assignment>, StoreError>;
    /// Reads each AOR's assignment and, where `change` returns a new one,
    /// stores it, durably, so that no concurrent writer slips in between
    /// and one commit serves the lot. `change` is called once per AOR, in
    /// an order the store chooses (the embedded one: by AOR), an AOR named
    /// twice in the order given; a shared store calls it again for an AOR
    /// another edge wrote meanwhile, with that edge's assignment, and the
    /// last call holds. Returns the assignments as stored afterwards, in
    /// the order given. With a `fence`, the leader's write is made only
    /// while its term lasts.
    fn update_many(
        &self,
        aors: &[&Aor],
        fence: Option<&Term>,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError>;
    /// `update_many` for a batch whose `absent` AORs the caller believes
    /// have no assignment: a shared store may skip reading them, and call
    /// `change` for one of them again with what it finds there after all.
    /// The embedded store calls `change` in the order given: it admits new
    /// clients, first come, first served.
    fn create_many(
        &self,
        aors: &[&Aor],
        _absent: &dyn Fn(&Aor) -> bool,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        self.update_many(aors, None, change)
    }

    fn all(&self) -> Result<Vec<Assignment>, StoreError>;
    /// Every assignment, read once when the daemon starts: a shared store
    /// may answer from its local replica and follow only what changed.
    fn load(&self) -> Result<Vec<Assignment>, StoreError> {
        self.all()
    }
    /// Up to `limit` assignments in AOR order, starting after `after`: a
    /// walk over the store one page at a time.
    fn page(&self, after: Option<&Aor>, limit: usize) -> Result<Vec<Assignment>, StoreError>;
    /// In one durable transaction: removes the `expired` AORs' assignments
    /// and records when the `seen` ones were last seen; with a `fence`,
    /// only while the leader's term lasts.
    fn expire(&self, expired: &[&Aor], seen: &[(&Aor, u64)], fence: Option<&Term>) -> Result<(), StoreError>;

    /// The dialogs of `kind` as last saved: (key, record) pairs their
    /// registry wrote (`edge::dialogs`). A store that keeps none (test
    /// doubles) has none.
    fn dialogs(&self, _kind: DialogKind) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }

    /// Writes the `kept` dialogs of `kind` and removes the `removed` ones,
    /// durably, in one transaction.
    fn save_dialogs(
        &self,
        _kind: DialogKind,
        _kept: &[(String, String)],
        _removed: &[String],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// The pool as last saved; `None` before the first save. A store that
    /// keeps no pool (test doubles) answers `None`: the config seeds the
    /// pool at every start.
    fn pool(&self) -> Result<Option<StoredPool>, StoreError> {
        Ok(None)
    }

    /// Replaces the saved pool, durably; with a `fence` (a health verdict),
    /// only while the leader's term lasts.
    fn save_pool(&self, _pool: &StoredPool, _fence: Option<&Term>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts delivering to `sink` every change committed after the last
    /// `all` (by any edge), in order. A store only this edge writes has
    /// nothing to deliver.
    fn follow(&self, _sink: Sink) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether other edges share the store (and so the decisions).
    fn shared(&self) -> bool {
        false
    }

    /// Campaigns for the leadership of the pool's decisions, telling `sink`
    /// whenever this edge gains (its term) or loses it. An edge alone with
    /// its store leads for good, and `sink` is never called.
    fn lead(&self, _sink: Leadership) -> Result<(), StoreError> {
        Ok(())
    }

    /// Publishes what this edge's health checks see (`true`: up), by
    /// server name, beside the other edges' views. Nothing to publish to
    /// without other edges.
    fn publish_health(&self, _seen: &std::collections::BTreeMap<String, bool>) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the store counted, for the statistics; none for a local store.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// `update_many` for one AOR.
    fn update(
        &self,
        aor: &Aor,
        change: &mut dyn FnMut(Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Option<Assignment>, StoreError> {
        Ok(self.update_many(&[aor], None, &mut |_, current| change(current))?.pop().flatten())
    }

    /// Moves each AOR to its server with the next generation (a first
    /// assignment if it had none), in one transaction (`fence`: see
    /// `update_many`); returns what each move did, in order.
    fn reassign_many(&self, moves: &[(&Aor, &str)], fence: Option<&Term>) -> Result<Vec<Reassigned>, StoreError> {
        let aors: Vec<&Aor> = moves.iter().map(|&(aor, _)| aor).collect();
        let position = positions(&aors);
        // By position: a shared store may decide one again.
        let mut previous = vec![None; moves.len()];
        let stored = self.update_many(&aors, fence, &mut |aor, current| {
            let i = position[aor];
            previous[i] = current.map(|a| a.server.clone());
            Some(next_assignment(aor, moves[i].1, current))
        })?;
        Ok(previous
            .into_iter()
            .zip(stored)
            .map(|(previous, stored)| Reassigned { previous, generation: stored.map_or(0, |a| a.generation) })
            .collect())
    }
}

/// Each AOR's position in a batch (the last, for one named twice), for
/// `change` callbacks to find what the batch says of it: a million-AOR
/// move looks each up once, without copying any.
pub fn positions<'a>(aors: &[&'a Aor]) -> HashMap<&'a Aor, usize, foldhash::fast::RandomState> {
    aors.iter().enumerate().map(|(i, &aor)| (aor, i)).collect()
}

/// `aor` on `server`, one generation after `current`; a move is not a
/// sighting, so it keeps when the client was last seen.
pub fn next_assignment(aor: &Aor, server: &str, current: Option<&Assignment>) -> Assignment {
    let generation = current.map_or(0, |a| a.generation) + 1;
    let new = Assignment::new(aor.clone(), server.to_owned());
    Assignment { generation, last_seen: current.map_or(new.last_seen, |a| a.last_seen), ..new }
}

/// One AOR's move in `reassign_many`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassigned {
    /// The server it was on, if it had one.
    pub previous: Option<String>,
    pub generation: u64,
}
