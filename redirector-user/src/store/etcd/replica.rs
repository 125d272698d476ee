//! This edge's local copy of the shared store (`[store] replica`, a redb
//! file). Every batch the follower delivers is written to it with the
//! revision it brings the copy to, so the copy is always the store as it
//! was at that revision. A restarted edge loads the copy and watches from
//! the next revision: when etcd still holds that history, nothing else is
//! read; when it was compacted, the watch says so and the edge reloads.
//! The copy also lets an edge start while etcd is out of reach: its known
//! clients are served from it, new ones get 503 until the follower is back.
//!
//! Writes run on a thread of their own, in order, so neither the follower
//! nor the state owner waits for an fsync, and reach the disk at most a
//! second apart (a crash costs the next start that second's replay). After
//! a write fails, the copy stays at its last mark until the next reload.
//! The writes waiting are bounded (`QUEUED_WRITES`): a writer that falls
//! that far behind (a stalled disk) drops what comes next, counted, and the
//! copy stays at its last mark, as after a failed write, rather than the
//! edge's memory growing without end.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::StoreEvent;
use crate::{
    counters::bump,
    store::{Assignment, AssignmentStore, DialogKind, RedbStore, StoreCounters, StoreError, StoredPool},
};

/// Where a copy stands: every change of the pool under `prefix` in etcd
/// cluster `cluster` up to `revision`; `pool_revision` is the revision the
/// pool's key was written at (what a save of the pool compares).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMark {
    pub cluster: u64,
    pub prefix: String,
    pub revision: i64,
    pub pool_revision: i64,
}

enum Write {
    /// Followed changes, and where they bring the copy.
    Followed(Vec<StoreEvent>, ReplicaMark),
    /// This edge's dialogs as saved to etcd.
    Dialogs(DialogKind, Vec<(String, String)>, Vec<String>),
    /// This edge's dialogs as read from etcd: every other one is removed.
    AllDialogs(DialogKind, Vec<(String, String)>),
}

pub struct Replica {
    path: std::path::PathBuf,
    copy: Arc<RedbStore>,
    writes: mpsc::SyncSender<Write>,
    /// A write was dropped, the queue full: the writer stops following.
    dropped: Arc<AtomicBool>,
    counters: Arc<StoreCounters>,
    /// The cluster the copy follows (etcd's cluster ID).
    cluster: std::sync::atomic::AtomicU64,
    prefix: String,
}

impl Replica {
    /// Opens (or creates) the copy and starts its writer.
    pub fn open(path: &Path, prefix: &str, counters: Arc<StoreCounters>) -> Result<Self, StoreError> {
        Self::with_queue(path, prefix, counters, QUEUED_WRITES)
    }

    /// `open`, with room for `queued` writes waiting.
    fn with_queue(path: &Path, prefix: &str, counters: Arc<StoreCounters>, queued: usize) -> Result<Self, StoreError> {
        let copy = Arc::new(RedbStore::open(path)?);
        let (writes, queue) = mpsc::sync_channel(queued);
        let dropped = Arc::new(AtomicBool::new(false));
        let writer = Writer::new(copy.clone(), counters.clone(), dropped.clone());
        std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || write_all(writer, &queue))
            .map_err(|source| StoreError::Runtime { source })?;
        let (path, cluster) = (path.to_owned(), Default::default());
        Ok(Self { path, copy, writes, dropped, counters, cluster, prefix: prefix.to_owned() })
    }

    /// The copy's mark, if it is a copy of this pool that a watch can
    /// resume from: same cluster (`None`: not known, etcd is out of reach)
    /// and not ahead of the cluster's `revision`. A copy that does not
    /// read back is not resumed from (it is only a cache of etcd).
    pub fn resumable(&self, cluster: Option<u64>, revision: Option<i64>) -> Option<ReplicaMark> {
        let mark = self.copy.replica_mark().inspect_err(|error| self.unreadable(error)).ok().flatten();
        let mark = mark.filter(|mark| {
            mark.prefix == self.prefix
                && mark.revision > 0
                && cluster.is_none_or(|cluster| cluster == mark.cluster)
                && revision.is_none_or(|revision| mark.revision <= revision)
        });
        if let Some(mark) = &mark {
            self.following(mark.cluster);
        }
        mark
    }

    /// Says the copy at `path` does not read back, and what to do.
    pub fn unreadable(&self, error: &StoreError) {
        tracing::warn!(path = %self.path.display(), %error, "the local replica does not read back: everything is read from etcd instead (delete the file if this repeats)");
    }

    /// The cluster the copy follows from now on.
    pub fn following(&self, cluster: u64) {
        self.cluster.store(cluster, std::sync::atomic::Ordering::Release);
    }

    /// The cluster the copy follows (0: not known yet).
    pub fn cluster(&self) -> u64 {
        self.cluster.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The mark of a copy at `revision`.
    pub fn mark(&self, revision: i64, pool_revision: i64) -> ReplicaMark {
        let cluster = self.cluster.load(std::sync::atomic::Ordering::Acquire);
        ReplicaMark { cluster, prefix: self.prefix.clone(), revision, pool_revision }
    }

    pub fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        self.copy.all()
    }

    pub fn pool(&self) -> Result<Option<StoredPool>, StoreError> {
        self.copy.pool()
    }

    pub fn dialogs(&self, kind: DialogKind) -> Result<Vec<(String, String)>, StoreError> {
        self.copy.dialogs(kind)
    }

    /// Changes followed up to `mark` (written in the background).
    pub fn followed(&self, events: Vec<StoreEvent>, mark: ReplicaMark) {
        self.send(Write::Followed(events, mark));
    }

    /// Dialogs saved to etcd (written in the background).
    pub fn saved_dialogs(&self, kind: DialogKind, kept: &[(String, String)], removed: &[String]) {
        self.send(Write::Dialogs(kind, kept.to_vec(), removed.to_vec()));
    }

    /// Dialogs read from etcd, which replace the copy's.
    pub fn read_dialogs(&self, kind: DialogKind, all: &[(String, String)]) {
        self.send(Write::AllDialogs(kind, all.to_vec()));
    }

    /// Queues `write` without waiting; a full queue drops it (the writer
    /// then stops following until a reload).
    fn send(&self, write: Write) {
        match self.writes.try_send(write) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                bump(&self.counters.replica_overflows);
                if !self.dropped.swap(true, Ordering::Release) {
                    tracing::warn!(path = %self.path.display(), queued = QUEUED_WRITES, "the local replica's writer fell behind (a slow or stalled disk?): it stays at its last revision until etcd's history is read again; the edge serves from etcd meanwhile");
                }
            }
            // The writer ends only with the process (it never returns early).
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Writes that may wait for the writer (each a watch response's changes or
/// a dialog save); a writer that keeps up takes them every `GATHER`.
const QUEUED_WRITES: usize = 1024;

/// How long followed changes may stay in the replica without an fsync:
/// a crash loses at most that much, which the next start's watch replays.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How long the writer gathers writes before it commits them.
const GATHER: Duration = Duration::from_millis(100);

/// The writer: applies writes in order, consecutive followed batches in
/// one transaction, and puts them on the disk at most every `SYNC_EVERY`.
fn write_all(mut writer: Writer, queue: &mpsc::Receiver<Write>) {
    loop {
        let first = match queue.recv_timeout(SYNC_EVERY) {
            Ok(write) => write,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                writer.sync();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return writer.sync(),
        };
        // What arrives within `GATHER` is written in one transaction: a
        // busy pool's watch responses cost a commit each otherwise.
        let until = Instant::now() + GATHER;
        let gathered = std::iter::from_fn(|| {
            let left = until.checked_duration_since(Instant::now())?;
            queue.recv_timeout(left).ok()
        });
        let mut waiting = std::iter::once(first).chain(gathered).peekable();
        while let Some(write) = waiting.next() {
            writer.notice_dropped();
            let copy = &writer.copy;
            let done = match write {
                Write::Followed(mut events, mut mark) => {
                    // A batch queued after a drop is not merged: it must
                    // meet `notice_dropped` first.
                    let follows =
                        |w: &Write| matches!(w, Write::Followed(..)) && !writer.dropped.load(Ordering::Acquire);
                    while let Some(Write::Followed(more, later)) = waiting.next_if(follows) {
                        events.extend(more);
                        mark = later;
                    }
                    writer.replicate(&events, &mark)
                }
                // Durable, and so everything before.
                Write::Dialogs(kind, kept, removed) => writer.synced(copy.save_dialogs(kind, &kept, &removed)),
                Write::AllDialogs(kind, all) => writer.synced(replace_dialogs(copy, kind, &all)),
            };
            writer.count(done);
        }
    }
}

struct Writer {
    copy: Arc<RedbStore>,
    counters: Arc<StoreCounters>,
    /// Set by `Replica::send` when it dropped a write.
    dropped: Arc<AtomicBool>,
    /// A batch failed or was dropped: later ones would skip it.
    broken: bool,
    synced: Instant,
    /// Commits made since the last durable one.
    unsynced: bool,
}

impl Writer {
    fn new(copy: Arc<RedbStore>, counters: Arc<StoreCounters>, dropped: Arc<AtomicBool>) -> Self {
        Self { copy, counters, dropped, broken: false, synced: Instant::now(), unsynced: false }
    }

    /// A followed batch after a dropped one would skip it: from the drop
    /// on, the copy is written again only from a full reload. (The
    /// follower sets the flag before it queues its next batch, so the
    /// writer sees the flag before that batch.)
    fn notice_dropped(&mut self) {
        if self.dropped.swap(false, Ordering::Acquire) {
            self.broken = true;
        }
    }

    /// A failed transaction leaves the copy as it was at its last mark,
    /// from which a restart resumes; later batches would skip the failed
    /// one, so the copy is written again only from a full reload.
    fn replicate(&mut self, events: &[StoreEvent], mark: &ReplicaMark) -> Result<(), StoreError> {
        let start = events.iter().rposition(|event| matches!(event, StoreEvent::Reloaded(_)));
        if self.broken && start.is_none() {
            return Ok(());
        }
        let durable = self.synced.elapsed() >= SYNC_EVERY;
        let written = self.copy.replicate(&events[start.unwrap_or(0)..], mark, durable);
        self.broken = written.is_err();
        if durable {
            self.synced(written)
        } else {
            self.unsynced |= written.is_ok();
            written
        }
    }

    fn sync(&mut self) {
        if self.unsynced {
            let synced = self.copy.sync();
            let done = self.synced(synced);
            self.count(done);
        }
    }

    fn synced(&mut self, done: Result<(), StoreError>) -> Result<(), StoreError> {
        if done.is_ok() {
            (self.synced, self.unsynced) = (Instant::now(), false);
        }
        done
    }

    fn count(&self, done: Result<(), StoreError>) {
        if let Err(error) = done {
            bump(&self.counters.replica_failures);
            tracing::warn!(%error, "writing the local replica failed; a restart reads what it lacks from etcd");
        }
    }
}

fn replace_dialogs(copy: &RedbStore, kind: DialogKind, all: &[(String, String)]) -> Result<(), StoreError> {
    let kept: std::collections::HashSet<&str> = all.iter().map(|(key, _)| key.as_str()).collect();
    let removed: Vec<String> =
        copy.dialogs(kind)?.into_iter().map(|(key, _)| key).filter(|key| !kept.contains(key.as_str())).collect();
    copy.save_dialogs(kind, all, &removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sip::Aor, store::Assignment};

    fn assigned(n: i64) -> StoreEvent {
        let aor = Aor::from_uri(&format!("sip:u{n}@example.net"), "To").unwrap();
        StoreEvent::Assigned(Assignment::new(aor, "home1".into()))
    }

    /// Opens the copy at `path` once the dropped replica's writer has
    /// written what it had and closed the file.
    fn reopened(path: &Path) -> RedbStore {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match RedbStore::open_existing(path) {
                Ok(copy) => return copy,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(error) => panic!("the replica stays open after it was dropped: {error}"),
            }
        }
    }

    /// A writer that falls a full queue behind: the batches that do not fit
    /// are dropped and counted, and the copy stays exactly at a mark it
    /// reached (every change up to it, none after), even when later
    /// batches fit again: never a mark past a change it skipped.
    #[test]
    fn a_full_queue_drops_batches_and_the_copy_stays_at_a_mark_it_reached() {
        let dir = std::env::temp_dir().join(format!("redirector-replica-queue-{}", std::process::id()));
        let path = dir.join("replica.redb");
        let counters = Arc::new(StoreCounters::default());
        let replica = Replica::with_queue(&path, "/p/", counters.clone(), 1).unwrap();
        let mut sent = 0;
        while counters.replica_overflows.load(Ordering::Relaxed) == 0 && sent < 1_000_000 {
            sent += 1;
            replica.followed(vec![assigned(sent)], replica.mark(sent, 0));
        }
        // Once the writer has caught up, later batches fit the queue again;
        // written, they would skip the dropped one.
        std::thread::sleep(GATHER * 3);
        for more in sent + 1..=sent + 10 {
            std::thread::sleep(Duration::from_millis(5));
            replica.followed(vec![assigned(more)], replica.mark(more, 0));
        }
        assert!(counters.replica_overflows.load(Ordering::Relaxed) > 0, "a queue of one overflowed in {sent} batches");
        drop(replica);
        let copy = reopened(&path);
        let mark = copy.replica_mark().unwrap().map_or(0, |mark| mark.revision);
        assert!(mark < sent, "the copy stopped at or before the first dropped batch: {mark} of {sent}");
        let mut held: Vec<i64> = copy
            .all()
            .unwrap()
            .iter()
            .map(|a| a.aor.as_str().trim_start_matches("sip:u").split('@').next().unwrap().parse().unwrap())
            .collect();
        held.sort_unstable();
        assert_eq!(held, (1..=mark).collect::<Vec<_>>(), "the copy holds exactly the changes up to its mark");
        drop(copy);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
