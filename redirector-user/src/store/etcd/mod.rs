//! The store shared by several edges: etcd, through its v3 API. Every edge
//! keeps the same assignments, pool and watchers' dialogs under one key
//! prefix (see `keys`), serves from its cache, and learns of what other
//! edges commit through a watch (`follow`).
//!
//! Writes are compare-and-swap transactions: an AOR is written only if it
//! is still as read (absent, for a new one), so two edges that see the
//! same new AOR at once end with one assignment; the loser's `change` is
//! called again with the winner's assignment, which it adopts. Etcd caps a
//! transaction's operations (128 by default), so a batch is written as
//! several transactions, sent together; each AOR is still all or nothing.
//!
//! The leader's writes (health verdicts, the moves they cause, rebalancing,
//! expiry) are fenced: each transaction also compares the leader's election
//! key with the term the write was decided in (`Fence`), so a leader that
//! lost its lease without knowing it yet commits nothing; the refusal
//! (`StoreError::Deposed`) is counted and ends the campaign's term.
//!
//! The daemon's state owner is a plain thread: each call here runs on the
//! store's own small runtime and the caller waits for its answer, at most
//! `timeout`.

mod follow;
mod keys;
mod leader;
mod pages;
mod replica;

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KvClient, TlsOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
pub use follow::{Sink, StoreEvent};
use keys::Keys;
pub use leader::LEASE as LEADER_LEASE;
use pages::PAGE;
use replica::Replica;
pub use replica::ReplicaMark;

use super::{Assignment, AssignmentStore, DialogKind, Leadership, StoreCounters, StoreError, StoredPool, Term};
use crate::sip::Aor;

/// Operations etcd takes in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = crate::config::ETCD_MAX_TXN_OPS;

/// How often a batch is tried again when other edges keep writing its AORs.
const ATTEMPTS: usize = 8;

/// How an edge reaches etcd (`[store]` in the config).
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Every key of the pool starts with it, e.g. `/redirector/pool-a/`.
    pub prefix: String,
    /// This edge's name among the pool's edges (its watchers' dialogs are
    /// kept under it).
    pub edge: String,
    pub user: Option<(String, String)>,
    pub tls: Option<Tls>,
    /// The longest any request may take before it counts as failed.
    pub timeout: Duration,
    /// This edge's local copy of the store (see `replica`), if it keeps one.
    pub replica: Option<PathBuf>,
    /// The most operations one transaction may hold: the members'
    /// `--max-txn-ops` (`MAX_TXN_OPS` unless they were started with more).
    pub max_txn_ops: usize,
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificate the members' certificates are checked against.
    pub ca: PathBuf,
    /// A client certificate and its key, for clusters that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub struct EtcdStore {
    runtime: StoreRuntime,
    client: Client,
    keys: Keys,
    /// The endpoints, as errors name them.
    endpoints: String,
    /// How the campaign for leadership connects (see `connect_options`).
    campaigning: (Vec<String>, ConnectOptions),
    timeout: Duration,
    /// The most operations of one transaction (at least 4).
    max_txn_ops: usize,
    /// The revision of the last full read (`all`): a watch started from
    /// the next one misses nothing.
    loaded: Arc<AtomicI64>,
    /// The revision of the pool as this edge last knew it (read, saved or
    /// followed): what a save compares, and older pool events are skipped.
    pool_revision: Arc<AtomicI64>,
    counters: Arc<StoreCounters>,
    reach: Arc<Reach>,
    replica: Option<Arc<Replica>>,
    /// Where the replica is resumed from, until the first `load` takes it.
    resume: std::sync::Mutex<Option<ReplicaMark>>,
    /// The last term a fenced write found ended: the campaign, if it is
    /// still in that term, steps down.
    deposed: tokio::sync::watch::Sender<Option<Term>>,
}

/// A leader's write condition: its election key still has the create
/// revision it had when this edge won (a lease that ran out or was revoked
/// deleted it; another edge's key is another key).
struct Fence<'a> {
    term: &'a Term,
    key: &'a [u8],
    created: i64,
}

impl Fence<'_> {
    fn compare(&self) -> Compare {
        Compare::create_revision(self.key, CompareOp::Equal, self.created)
    }

    /// Read when a transaction's compares fail, to tell whether this one did.
    fn read(&self) -> TxnOp {
        TxnOp::get(self.key, None)
    }

    /// Whether a transaction that failed found the term over.
    fn broken(&self, answer: &TxnResponse) -> bool {
        !answer.succeeded()
            && answer.op_responses().iter().any(|op| match op {
                TxnOpResponse::Get(got) => got.kvs().first().is_none_or(|kv| kv.create_revision() != self.created),
                _ => false,
            })
    }
}

/// A transaction making `ops` if `compares` hold and, with a fence, if it
/// holds too (the fence's key is read if they do not).
fn fenced(mut compares: Vec<Compare>, ops: Vec<TxnOp>, fence: Option<&Fence>) -> Txn {
    compares.extend(fence.map(Fence::compare));
    Txn::new().when(compares).and_then(ops).or_else(fence.map(Fence::read).into_iter().collect::<Vec<_>>())
}

/// How often an idle connection to etcd is pinged: twice etcd's minimum.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);

/// How soon a request that found etcd out of reach is sent again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// How long requests fail at once after etcd was found out of reach,
/// unless the follower's watch is back before.
const PROBE_AFTER: Duration = Duration::from_secs(5);

/// Whether etcd answered lately. Once a request finds it out of reach,
/// requests fail at once (a new client gets its 503 without waiting for the
/// timeout, and the state owner is not held up) until the follower's watch
/// is back, or `PROBE_AFTER` has passed and a request tries again.
#[derive(Debug, Default)]
pub struct Reach {
    lost_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Reach {
    fn lost_recently(&self) -> bool {
        self.lost_at.lock().expect("reach lock").is_some_and(|at| at.elapsed() < PROBE_AFTER)
    }

    fn lost(&self) {
        *self.lost_at.lock().expect("reach lock") = Some(std::time::Instant::now());
    }

    /// etcd answered.
    pub fn back(&self) {
        *self.lost_at.lock().expect("reach lock") = None;
    }
}

/// The store's own runtime (one worker). Dropped without waiting for its
/// tasks: the daemon may drop its store inside its own runtime (a start
/// that fails), where a blocking shutdown would panic.
struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    fn new() -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Runtime { source })?;
        Ok(Self(Some(runtime)))
    }
}

impl std::ops::Deref for StoreRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the runtime lives until drop")
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// An AOR as read: its assignment, and the revision its key was last
/// written at (0: absent), which the write compares.
type Read = (Option<Assignment>, i64);

impl EtcdStore {
    /// Connects to the cluster and checks that it answers. With a replica
    /// that this cluster can resume, an edge also starts while etcd is out
    /// of reach: it serves the clients the replica knows.
    pub fn connect(settings: &EtcdSettings) -> Result<Self, StoreError> {
        let endpoints = settings.endpoints.join(",");
        let runtime = StoreRuntime::new()?;
        let campaigning = connect_options(settings)?;
        let options = campaigning.clone().with_timeout(settings.timeout);
        let connecting = Client::connect(settings.endpoints.clone(), Some(options));
        let client = wait_on(&runtime, settings.timeout, connecting)
            .ok_or_else(|| StoreError::timed_out(&endpoints, "connecting", settings.timeout))?
            .map_err(|source| StoreError::etcd(&endpoints, "connecting", source))?;
        let counters = Arc::<StoreCounters>::default();
        let replica = settings.replica.as_deref().and_then(|path| {
            Replica::open(path, &settings.prefix, counters.clone())
                .inspect_err(|error| tracing::warn!(path = %path.display(), %error, "the local replica cannot be opened: running without it (a restart reads everything from etcd, and needs etcd to start)"))
                .ok()
        });
        let store = Self {
            runtime,
            client,
            keys: Keys::new(&settings.prefix, &settings.edge),
            endpoints,
            campaigning: (settings.endpoints.clone(), campaigning),
            timeout: settings.timeout,
            max_txn_ops: settings.max_txn_ops.max(4),
            loaded: Arc::default(),
            pool_revision: Arc::default(),
            counters,
            reach: Arc::default(),
            replica: replica.map(Arc::new),
            resume: std::sync::Mutex::default(),
            deposed: tokio::sync::watch::Sender::new(None),
        };
        let resume = store.resume_point()?;
        *store.resume.lock().expect("resume lock") = resume;
        store.check_txn_limit()?;
        Ok(store)
    }

    /// Whether the members take transactions as large as `max_txn_ops`
    /// (their `--max-txn-ops`): otherwise every batch of new clients would
    /// be refused. Not known while etcd is out of reach.
    fn check_txn_limit(&self) -> Result<(), StoreError> {
        if self.max_txn_ops <= MAX_TXN_OPS {
            return Ok(());
        }
        let key = self.keys.pool();
        let compares: Vec<Compare> =
            (0..self.max_txn_ops).map(|_| Compare::version(key.as_str(), CompareOp::Greater, -1)).collect();
        match self.txns("checking the transaction size ([store] max_txn_ops)", vec![Txn::new().when(compares)]) {
            Err(StoreError::Etcd { source, .. }) if is_invalid(&source) => {
                Err(StoreError::TxnLimit { endpoints: self.endpoints.clone(), max: self.max_txn_ops })
            }
            Err(error) if error.is_unavailable() => Ok(()),
            checked => checked.map(drop),
        }
    }

    /// Reads the cluster's revision and ID, and decides whether the replica
    /// can be resumed from.
    fn resume_point(&self) -> Result<Option<ReplicaMark>, StoreError> {
        let reading = self.get("reading the pool", self.keys.pool(), None);
        let Some(replica) = &self.replica else { return reading.map(|_| None) };
        match reading {
            Ok(answer) => {
                let header = answer.header();
                let (cluster, revision) = (header.map(|h| h.cluster_id()), header.map(|h| h.revision()));
                let mark = replica.resumable(cluster, revision);
                if mark.is_none() {
                    replica.following(cluster.unwrap_or_default());
                }
                Ok(mark)
            }
            Err(error) if error.is_unavailable() => {
                let Some(mark) = replica.resumable(None, None) else { return Err(error) };
                tracing::warn!(
                    endpoints = self.endpoints,
                    revision = mark.revision,
                    "etcd is out of reach: starting from the local replica (new clients get 503 until etcd answers)"
                );
                Ok(Some(mark))
            }
            Err(error) => Err(error),
        }
    }

    /// Runs `request` on the store's runtime with a fresh KV client and
    /// waits for its answer, at most `timeout`. A request that finds its
    /// member out of reach, or the cluster electing a leader, or that takes
    /// a third of the timeout, is sent again within the timeout: the client
    /// balances over the members, and a member that just died is not yet
    /// out of its set.
    fn run<T, F>(&self, what: &'static str, request: impl Fn(KvClient) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        if self.reach.lost_recently() {
            crate::counters::bump(&self.counters.failures);
            return Err(StoreError::Unreachable { endpoints: self.endpoints.clone(), what });
        }
        let started = std::time::Instant::now();
        let mut result = self.try_once(what, &request);
        while matches!(&result, Err(error @ (StoreError::Etcd { .. } | StoreError::TimedOut { .. })) if error.is_unavailable())
            && started.elapsed() + RETRY_EVERY < self.timeout
        {
            std::thread::sleep(RETRY_EVERY);
            result = self.try_once(what, &request);
        }
        match &result {
            Err(error) => {
                crate::counters::bump(&self.counters.failures);
                if error.is_unavailable() {
                    self.reach.lost();
                }
            }
            Ok(_) => self.reach.back(),
        }
        result
    }

    fn try_once<T, F>(&self, what: &'static str, request: &impl Fn(KvClient) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        // A third of the timeout: a request stuck on a member that just
        // died leaves time for two more through the others.
        let attempt = self.timeout / 3;
        match wait_on(&self.runtime, attempt, request(self.client.kv_client())) {
            Some(done) => done.map_err(|source| StoreError::etcd(&self.endpoints, what, source)),
            None => Err(StoreError::timed_out(&self.endpoints, what, attempt)),
        }
    }

    /// One range read.
    fn get(
        &self,
        what: &'static str,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        let key: Vec<u8> = key.into();
        self.run(what, |mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
    }

    /// One put.
    fn put(&self, what: &'static str, key: String, value: String) -> Result<(), StoreError> {
        self.run(what, |mut kv| {
            let (key, value) = (key.clone(), value.clone());
            async move { kv.put(key, value, None).await.map(drop) }
        })
    }

    /// Transactions, sent together.
    fn txns(&self, what: &'static str, txns: Vec<Txn>) -> Result<Vec<TxnResponse>, StoreError> {
        self.run(what, |kv| all(kv, txns.clone()))
    }

    /// Each AOR's assignment and its key's revision, read in transactions
    /// of at most `max_txn_ops` reads, sent together.
    fn read(&self, aors: &[&Aor]) -> Result<Vec<Read>, StoreError> {
        let chunks: Vec<Txn> = aors
            .chunks(self.max_txn_ops / 2)
            .map(|chunk| {
                let reads = chunk.iter().flat_map(|aor| {
                    [TxnOp::get(self.keys.assignment(aor), None), TxnOp::get(self.keys.seen(aor), None)]
                });
                Txn::new().and_then(reads.collect::<Vec<_>>())
            })
            .collect();
        let answers = self.txns("reading assignments", chunks)?;
        let values = answers.into_iter().flat_map(|answer| answer.op_responses()).map(|op| match op {
            TxnOpResponse::Get(mut got) => got.take_kvs().pop(),
            _ => None,
        });
        let values: Vec<_> = values.collect();
        aors.iter()
            .zip(values.chunks(2))
            .map(|(aor, pair)| {
                let [assignment, seen] = pair else { return Ok((None, 0)) };
                let Some(assignment) = assignment else { return Ok((None, 0)) };
                let seen = seen.as_ref().and_then(|kv| keys::seen_at(kv.value()));
                let decoded = keys::decode((*aor).clone(), assignment.value(), seen)
                    .map_err(|source| StoreError::Record { key: self.keys.assignment(aor), source })?;
                Ok((Some(decoded), assignment.mod_revision()))
            })
            .collect()
    }

    /// Writes each assignment if its key is still at the revision it was
    /// read at (and the `fence` holds); per write, whether it was made.
    fn write(&self, writes: &[(Assignment, i64, bool)], fence: Option<&Fence>) -> Result<Vec<bool>, StoreError> {
        const WHAT: &str = "writing assignments";
        // A fence's compare takes one of the transaction's operations.
        let chunks = write_chunks(writes, self.max_txn_ops - usize::from(fence.is_some()));
        let txns: Vec<Txn> = chunks
            .iter()
            .map(|chunk| {
                let compares: Vec<Compare> = chunk
                    .iter()
                    .map(|(new, revision, _)| {
                        Compare::mod_revision(self.keys.assignment(&new.aor), CompareOp::Equal, *revision)
                    })
                    .collect();
                let puts = chunk.iter().flat_map(|(new, _, seen)| {
                    let assignment = TxnOp::put(self.keys.assignment(&new.aor), keys::encode(new), None);
                    let sighting = seen.then(|| TxnOp::put(self.keys.seen(&new.aor), new.last_seen.to_string(), None));
                    std::iter::once(assignment).chain(sighting)
                });
                fenced(compares, puts.collect(), fence)
            })
            .collect();
        let answers = self.txns(WHAT, txns)?;
        self.check_fence(WHAT, fence, &answers)?;
        let made = answers
            .iter()
            .zip(&chunks)
            .flat_map(|(answer, chunk)| std::iter::repeat_n(answer.succeeded(), chunk.len()));
        Ok(made.collect())
    }

    /// One page of assignments from key `start` (see `pages::page`).
    fn range(&self, start: &[u8], limit: i64, revision: i64) -> Result<pages::Page, StoreError> {
        self.run("reading assignments", |kv| {
            let (keys, start, counters) = (self.keys.clone(), start.to_vec(), self.counters.clone());
            pages::page(kv, keys, start, limit, revision, counters)
        })
    }

    /// Every key under `prefix` and its value, a page at a time, all at the
    /// revision of the first page; keys or values that are not UTF-8 are
    /// skipped.
    fn read_prefix(&self, what: &'static str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let (mut rows, mut start, mut revision) = (Vec::new(), prefix.as_bytes().to_vec(), 0);
        loop {
            let options =
                GetOptions::new().with_range(pages::prefix_end(prefix)).with_limit(PAGE).with_revision(revision);
            let mut answer = self.get(what, start.clone(), Some(options))?;
            revision = answer.header().map_or(revision, |header| header.revision());
            let page = answer.take_kvs();
            let Some(last) = page.last() else { return Ok(rows) };
            start = [last.key(), b"\0"].concat();
            let full = page.len() as i64 == PAGE;
            rows.extend(
                page.iter().filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), kv.value_str().ok()?.to_owned()))),
            );
            if !full {
                return Ok(rows);
            }
        }
    }

    /// Each AOR decided by `change` and written if it changed. New AORs
    /// (`absent`) are not read first: each is written on the condition
    /// that it still has no key (one round trip, not two); one that another
    /// edge wrote meanwhile is read and decided again. One that `change`
    /// left unassigned is read to be sure it is absent.
    fn decide(
        &self,
        aors: &[&Aor],
        absent: &dyn Fn(&Aor) -> bool,
        fence: Option<&Fence>,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        let mut results: Vec<Option<Assignment>> = vec![None; aors.len()];
        let mut pending: Vec<usize> = (0..aors.len()).collect();
        let mut trusted: Vec<bool> = aors.iter().map(|aor| absent(aor)).collect();
        for _ in 0..ATTEMPTS {
            let (read, unread): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&i| !trusted[i]);
            let wanted: Vec<&Aor> = read.iter().map(|&i| aors[i]).collect();
            let currents = self.read(&wanted)?.into_iter().chain(std::iter::repeat_with(|| (None, 0)));
            let (mut writes, mut written, mut unsure) = (Vec::new(), Vec::new(), Vec::new());
            for (i, (current, revision)) in read.into_iter().chain(unread).zip(currents) {
                match change(aors[i], current.as_ref()) {
                    Some(new) => {
                        // A first assignment reads back as seen when made.
                        let seen = new.last_seen != current.as_ref().map_or(new.assigned_at, |c| c.last_seen);
                        writes.push((new, revision, seen));
                        written.push(i);
                    }
                    None if trusted[i] => unsure.push(i),
                    None => results[i] = current,
                }
            }
            let made = self.write(&writes, fence)?;
            pending.clear();
            for ((i, (new, _, _)), made) in written.into_iter().zip(writes).zip(made) {
                if made {
                    results[i] = Some(new);
                } else {
                    // Another edge wrote it since it was read: decided again.
                    pending.push(i);
                }
            }
            let checking: Vec<&Aor> = unsure.iter().map(|&i| aors[i]).collect();
            for (i, (current, _)) in unsure.into_iter().zip(self.read(&checking)?) {
                if current.is_some() {
                    pending.push(i);
                }
            }
            if pending.is_empty() {
                return Ok(results);
            }
            trusted.fill(false);
        }
        Err(StoreError::Contended { endpoints: self.endpoints.clone(), aors: pending.len() })
    }

    /// Puts and deletes, in transactions of at most `max_txn_ops`, each
    /// made only while the `fence` holds.
    fn apply(&self, what: &'static str, ops: Vec<TxnOp>, fence: Option<&Fence>) -> Result<(), StoreError> {
        let chunks: Vec<Txn> =
            ops.chunks(self.max_txn_ops).map(|chunk| fenced(Vec::new(), chunk.to_vec(), fence)).collect();
        let answers = self.txns(what, chunks)?;
        self.check_fence(what, fence, &answers)
    }

    /// The fence of a leader's write in `term`.
    fn fence<'a>(&self, what: &'static str, term: Option<&'a Term>) -> Result<Option<Fence<'a>>, StoreError> {
        match term {
            None => Ok(None),
            Some(term @ Term::Elected { key, created }) => Ok(Some(Fence { term, key, created: *created })),
            // Never elected here: no term of this store's election.
            Some(term @ Term::Alone) => Err(self.deposed(what, term)),
        }
    }

    /// Refuses the write if any of its transactions found the term over
    /// (the others, committed while it lasted, stand).
    fn check_fence(
        &self,
        what: &'static str,
        fence: Option<&Fence>,
        answers: &[TxnResponse],
    ) -> Result<(), StoreError> {
        match fence {
            Some(fence) if answers.iter().any(|answer| fence.broken(answer)) => Err(self.deposed(what, fence.term)),
            _ => Ok(()),
        }
    }

    /// A leader's write refused: counted, and the campaign, if still in
    /// `term`, steps down.
    fn deposed(&self, what: &'static str, term: &Term) -> StoreError {
        crate::counters::bump(&self.counters.deposed_writes);
        self.deposed.send_replace(Some(term.clone()));
        let error = StoreError::Deposed { endpoints: self.endpoints.clone(), what };
        tracing::warn!(%error, "a leader's write was refused");
        error
    }
}

/// Writes cut into transactions of at most `max_ops` compares and as many
/// puts: one compare and one put per AOR, and a second put for a sighting
/// to keep.
fn write_chunks(writes: &[(Assignment, i64, bool)], max_ops: usize) -> Vec<&[(Assignment, i64, bool)]> {
    let mut chunks = Vec::new();
    let (mut start, mut puts) = (0, 0);
    for (index, (_, _, seen)) in writes.iter().enumerate() {
        let needs = 1 + usize::from(*seen);
        if index - start == max_ops || puts + needs > max_ops {
            chunks.push(&writes[start..index]);
            (start, puts) = (index, 0);
        }
        puts += needs;
    }
    if start < writes.len() {
        chunks.push(&writes[start..]);
    }
    chunks
}

/// Whether etcd refused a request as malformed (too large, for one).
fn is_invalid(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::InvalidArgument)
}

/// Runs `future` on `runtime` and waits for it, `timeout` at most (`None`
/// then). Callable from any thread, a tokio worker's too (the daemon opens
/// its store inside its runtime), since it only blocks on a channel.
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    future: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (sender, answer) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(tokio::time::timeout(timeout, future).await);
    });
    answer.recv().ok()?.ok()
}

/// Sends every transaction at once and waits for them all, in order.
async fn all(kv: KvClient, txns: Vec<Txn>) -> Result<Vec<TxnResponse>, etcd_client::Error> {
    let mut sending = tokio::task::JoinSet::new();
    for (index, txn) in txns.into_iter().enumerate() {
        let mut kv = kv.clone();
        sending.spawn(async move { (index, kv.txn(txn).await) });
    }
    let mut answers: Vec<Option<TxnResponse>> = Vec::new();
    answers.resize_with(sending.len(), || None);
    while let Some(done) = sending.join_next().await {
        let (index, answer) = done.map_err(|error| etcd_client::Error::InvalidArgs(error.to_string()))?;
        answers[index] = Some(answer?);
    }
    Ok(answers.into_iter().flatten().collect())
}

/// How to connect; without a timeout per request, for the campaign, whose
/// request waits until this edge leads.
fn connect_options(settings: &EtcdSettings) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.timeout)
        // etcd closes connections that ping more often than every 5 s
        // (`--grpc-keepalive-min-time`), dropping their watches.
        .with_keep_alive(KEEP_ALIVE_EVERY, settings.timeout)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some((name, password)) = &settings.user {
        options = options.with_user(name, password);
    }
    if let Some(tls) = &settings.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    Ok(options)
}

fn tls_options(tls: &Tls) -> Result<TlsOptions, StoreError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| StoreError::Certificate { path: path.display().to_string(), source })
    };
    let mut options = TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

impl AssignmentStore for EtcdStore {
    fn get(&self, aor: &Aor) -> Result<Option<Assignment>, StoreError> {
        Ok(self.read(&[aor])?.pop().and_then(|(assignment, _)| assignment))
    }

    fn update_many(
        &self,
        aors: &[&Aor],
        fence: Option<&Term>,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        let fence = self.fence("writing assignments", fence)?;
        self.decide(aors, &|_| false, fence.as_ref(), change)
    }

    fn create_many(
        &self,
        aors: &[&Aor],
        absent: &dyn Fn(&Aor) -> bool,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        self.decide(aors, absent, None, change)
    }

    /// A page at a time, each its own request (with its own timeout).
    fn all(&self) -> Result<Vec<Assignment>, StoreError> {
        let first = self.range(&pages::start_after(&self.keys, None), PAGE, 0)?;
        let (mut assignments, revision, mut next) = (first.assignments, first.revision, first.next);
        while let Some(start) = next {
            let more = self.range(&start, PAGE, revision)?;
            next = more.next;
            assignments.extend(more.assignments);
        }
        self.loaded.store(revision, Ordering::Release);
        Ok(assignments)
    }

    /// From the replica when it can be resumed (the follower then starts
    /// at the revision after its mark); otherwise everything is read and
    /// the replica starts anew from it.
    fn load(&self) -> Result<Vec<Assignment>, StoreError> {
        let Some(replica) = &self.replica else { return self.all() };
        let resume = self.resume.lock().expect("resume lock").take();
        let resumed =
            resume.and_then(|mark| Some((replica.assignments().inspect_err(|e| replica.unreadable(e)).ok()?, mark)));
        if let Some((assignments, mark)) = resumed {
            self.loaded.store(mark.revision, Ordering::Release);
            self.pool_revision.fetch_max(mark.pool_revision, Ordering::AcqRel);
            crate::counters::bump(&self.counters.resumes);
            tracing::info!(
                revision = mark.revision,
                assignments = assignments.len(),
                "resumed from the local replica; following etcd from the next revision"
            );
            return Ok(assignments);
        }
        let assignments = self.all()?;
        let pool = self.pool()?;
        let loaded = self.loaded.load(Ordering::Acquire);
        let events = std::iter::once(StoreEvent::Reloaded(assignments.clone())).chain(pool.map(StoreEvent::Pool));
        replica.followed(events.collect(), replica.mark(loaded, self.pool_revision.load(Ordering::Acquire)));
        Ok(assignments)
    }

    fn page(&self, after: Option<&Aor>, limit: usize) -> Result<Vec<Assignment>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX).min(PAGE);
        Ok(self.range(&pages::start_after(&self.keys, after), limit, 0)?.assignments)
    }

    fn expire(&self, expired: &[&Aor], seen: &[(&Aor, u64)], fence: Option<&Term>) -> Result<(), StoreError> {
        const WHAT: &str = "expiring assignments";
        let fence = self.fence(WHAT, fence)?;
        let removals = expired
            .iter()
            .flat_map(|aor| [TxnOp::delete(self.keys.assignment(aor), None), TxnOp::delete(self.keys.seen(aor), None)]);
        let sightings = seen.iter().map(|(aor, at)| TxnOp::put(self.keys.seen(aor), at.to_string(), None));
        self.apply(WHAT, removals.chain(sightings).collect(), fence.as_ref())
    }

    /// This edge's dialogs, a page at a time; the replica's copy while
    /// etcd is out of reach.
    fn dialogs(&self, kind: DialogKind) -> Result<Vec<(String, String)>, StoreError> {
        let own = self.keys.dialogs(kind);
        let rows = match (self.read_prefix("reading dialogs", &own), &self.replica) {
            (Err(error), Some(replica)) if error.is_unavailable() => return replica.dialogs(kind),
            (rows, _) => rows?,
        };
        let dialogs: Vec<(String, String)> =
            rows.into_iter().filter_map(|(key, value)| Some((key.strip_prefix(&own)?.to_owned(), value))).collect();
        if let Some(replica) = &self.replica {
            replica.read_dialogs(kind, &dialogs);
        }
        Ok(dialogs)
    }

    fn save_dialogs(&self, kind: DialogKind, kept: &[(String, String)], removed: &[String]) -> Result<(), StoreError> {
        let puts = kept.iter().map(|(key, record)| TxnOp::put(self.keys.dialog(kind, key), record.as_str(), None));
        let deletes = removed.iter().map(|key| TxnOp::delete(self.keys.dialog(kind, key), None));
        self.apply("saving dialogs", puts.chain(deletes).collect(), None)?;
        if let Some(replica) = &self.replica {
            replica.saved_dialogs(kind, kept, removed);
        }
        Ok(())
    }

    /// The pool; the replica's copy while etcd is out of reach.
    fn pool(&self) -> Result<Option<StoredPool>, StoreError> {
        let key = self.keys.pool();
        let mut answer = match (self.get("reading the pool", key, None), &self.replica) {
            (Err(error), Some(replica)) if error.is_unavailable() => return replica.pool(),
            (answer, _) => answer?,
        };
        let Some(kv) = answer.take_kvs().pop() else { return Ok(None) };
        self.pool_revision.store(kv.mod_revision(), Ordering::Release);
        Ok(Some(serde_json::from_slice(kv.value())?))
    }

    /// Written only over the pool as this edge last knew it: a change made
    /// meanwhile on another edge is never overwritten.
    fn save_pool(&self, pool: &StoredPool, fence: Option<&Term>) -> Result<(), StoreError> {
        const WHAT: &str = "saving the pool";
        let fence = self.fence(WHAT, fence)?;
        let json = serde_json::to_string(pool)?;
        let key = self.keys.pool();
        let known = self.pool_revision.load(Ordering::Acquire);
        let compares = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, known)];
        let txn = fenced(compares, vec![TxnOp::put(key, json, None)], fence.as_ref());
        let answers = self.txns(WHAT, vec![txn])?;
        self.check_fence(WHAT, fence.as_ref(), &answers)?;
        let Some(answer) = answers.into_iter().next().filter(TxnResponse::succeeded) else {
            return Err(StoreError::PoolChanged { endpoints: self.endpoints.clone() });
        };
        let revision = answer.header().map_or(known, |header| header.revision());
        self.pool_revision.fetch_max(revision, Ordering::AcqRel);
        Ok(())
    }

    fn follow(&self, sink: Sink) -> Result<(), StoreError> {
        let follower = follow::Follower {
            client: self.client.clone(),
            keys: self.keys.clone(),
            endpoints: self.endpoints.clone(),
            from: self.loaded.load(Ordering::Acquire) + 1,
            sink,
            counters: self.counters.clone(),
            reach: self.reach.clone(),
            pool_revision: self.pool_revision.clone(),
            replica: self.replica.clone(),
        };
        self.runtime.spawn(follower.run());
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }

    fn shared(&self) -> bool {
        true
    }

    fn publish_health(&self, seen: &std::collections::BTreeMap<String, bool>) -> Result<(), StoreError> {
        let json = serde_json::to_string(seen)?;
        let key = self.keys.health();
        self.put("publishing health verdicts", key, json)
    }

    fn lead(&self, sink: Leadership) -> Result<(), StoreError> {
        let campaign = leader::Campaign {
            connect: self.campaigning.clone(),
            name: self.keys.leader(),
            edge: self.keys.edge().to_owned(),
            sink,
            counters: self.counters.clone(),
            deposed: self.deposed.subscribe(),
        };
        self.runtime.spawn(campaign.run());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fit_etcds_transaction_limit() {
        let write = |seen| (Assignment::new(Aor::from_canonical("sip:a@b".into()), "home1".into()), 0, seen);
        let plain: Vec<_> = (0..300).map(|_| write(false)).collect();
        let sizes: Vec<usize> = write_chunks(&plain, MAX_TXN_OPS).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [128, 128, 44]);
        let sizes: Vec<usize> = write_chunks(&plain, MAX_TXN_OPS - 1).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [127, 127, 46], "a compare left for a fence");
        let seen: Vec<_> = (0..100).map(|_| write(true)).collect();
        let sizes: Vec<usize> = write_chunks(&seen, MAX_TXN_OPS).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [64, 36], "two puts each");
        let sizes: Vec<usize> = write_chunks(&plain, 1024).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [300], "members that take more");
        assert!(write_chunks(&[], MAX_TXN_OPS).is_empty());
    }
}
