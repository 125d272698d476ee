//! The embedded store: one redb file. `assignments` holds each AOR's
//! server; `last_seen` (added later, so a separate table: databases from
//! before it open unchanged, their AORs read as seen when read) holds when
//! each client was last seen, written coarsely (see `edge::expiry`).
//! `pool` holds the home servers (one JSON document: it is small and
//! written only when an operator or a reload changes the pool).

use std::{ops::Bound, path::Path};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};

use super::{
    Assignment, AssignmentStore, DialogKind, ReplicaMark, StoreError, StoreEvent, StoredPool, Term, unix_seconds,
};
use crate::sip::Aor;

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(Box::new(error.into()))
}

/// AOR → (server, assigned_at, generation).
const ASSIGNMENTS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("assignments");
/// AOR → seconds since the Unix epoch it was last seen.
const LAST_SEEN: TableDefinition<&str, u64> = TableDefinition::new("last_seen");
/// Watchers' dialogs: the registry's key and record of each.
const WATCHES: TableDefinition<&str, &str> = TableDefinition::new("watches");
/// Clients' ua-profile subscriptions, likewise.
const PROFILES: TableDefinition<&str, &str> = TableDefinition::new("profiles");

/// The table of a kind of dialog.
fn dialog_table(kind: DialogKind) -> TableDefinition<'static, &'static str, &'static str> {
    match kind {
        DialogKind::Watches => WATCHES,
        DialogKind::Profiles => PROFILES,
    }
}
/// `POOL_KEY` → the pool as JSON (`StoredPool`).
const POOL: TableDefinition<&str, &str> = TableDefinition::new("pool");
const POOL_KEY: &str = "servers";
/// `MARK_KEY` → where a replica of a shared store stands (`ReplicaMark`,
/// JSON); only in a replica's file.
const REPLICA: TableDefinition<&str, &str> = TableDefinition::new("replica");
const MARK_KEY: &str = "mark";

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens or creates the database file (and its directory, and any
    /// table an older version did not have).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open { path: path.display().to_string(), source: Box::new(source) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_error(redb::DatabaseError::Storage(e.into())))?;
        }
        let db = Database::create(path).map_err(open_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(ASSIGNMENTS).map_err(db_error)?;
        txn.open_table(LAST_SEEN).map_err(db_error)?;
        txn.open_table(WATCHES).map_err(db_error)?;
        txn.open_table(PROFILES).map_err(db_error)?;
        txn.open_table(POOL).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Self { db })
    }

    /// Opens a database that must exist already, creating nothing (for
    /// reading it while no daemon has it open).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let db = Database::open(path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source: Box::new(source) })?;
        Ok(Self { db })
    }

    /// `update_many`, deciding the AORs in `order` (indices into `aors`);
    /// `last_seen` is written only where it changed (a move keeps it).
    fn update_in(
        &self,
        aors: &[&Aor],
        order: Order,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        let read_at = unix_seconds();
        let mut changed = false;
        let mut stored = vec![None; aors.len()];
        {
            let mut table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
            let mut seen = txn.open_table(LAST_SEEN).map_err(db_error)?;
            let mut walk = match &order {
                Order::Keys(keys) if walks(keys.len(), table.len().map_err(db_error)?) => {
                    Some(Walk::new(&self.db, aors[keys[0]], read_at)?)
                }
                _ => None,
            };
            // The AOR decided last, and when it was seen as it stands now.
            let mut last: Option<(usize, Option<u64>)> = None;
            for i in order.indices() {
                let aor = aors[i];
                let (current, seen_at) = match (&mut walk, last) {
                    // A walk read the table as the batch found it: an AOR
                    // named again (next in key order) has what it decided.
                    (Some(_), Some((j, seen_at))) if aors[j] == aor => (stored[j].clone(), seen_at),
                    (Some(walk), _) => walk.read(aor)?,
                    (None, _) => read(&table, &seen, aor, read_at)?,
                };
                let (decided, seen_now) = match change(aor, current.as_ref()) {
                    Some(new) => {
                        let value = (new.server.as_str(), new.assigned_at, new.generation);
                        table.insert(aor.as_str(), value).map_err(db_error)?;
                        if seen_at != Some(new.last_seen) {
                            seen.insert(aor.as_str(), new.last_seen).map_err(db_error)?;
                        }
                        changed = true;
                        let seen_now = Some(new.last_seen);
                        (Some(new), seen_now)
                    }
                    None => (current, seen_at),
                };
                stored[i] = decided;
                last = Some((i, seen_now));
            }
        }
        // A batch that stores nothing (every AOR known, or refused by
        // admission during a flood) costs no commit and no fsync.
        if changed {
            txn.commit().map_err(db_error)?;
        } else if let Err(error) = txn.abort() {
            // Nothing was written: the batch's answers stand.
            tracing::warn!(%error, "aborting an assignment transaction that stored nothing");
        }
        Ok(stored)
    }
}

/// The order a batch is decided in.
enum Order {
    /// As given (`create_many`: admission is first come, first served).
    Given(usize),
    /// By AOR (`key_order`'s indices): one pass over the B-tree.
    Keys(Vec<usize>),
}

impl Order {
    fn indices(self) -> Box<dyn Iterator<Item = usize>> {
        match self {
            Order::Given(len) => Box::new(0..len),
            Order::Keys(keys) => Box::new(keys.into_iter()),
        }
    }
}

/// Whether a batch of `batch` AORs in key order reads the table by
/// walking it (`Walk`): when it names at least one row in 16, reading the
/// leaves in order costs less than a descent of the tree for each AOR.
fn walks(batch: usize, rows: u64) -> bool {
    batch > 0 && batch as u64 * 16 >= rows
}

/// An AOR's assignment and the record of when it was last seen, read from
/// the transaction's own tables (what the batch wrote so far included).
fn read(
    table: &Table<'_, (&'static str, u64, u64)>,
    seen: &Table<'_, u64>,
    aor: &Aor,
    read_at: u64,
) -> Result<(Option<Assignment>, Option<u64>), StoreError> {
    let seen_at = seen.get(aor.as_str()).map_err(db_error)?.map(|at| at.value());
    let row = table.get(aor.as_str()).map_err(db_error)?;
    let current = row.map(|row| assignment(aor.clone(), row.value(), seen_at.unwrap_or(read_at)));
    Ok((current, seen_at))
}

/// The assignments and sightings as a batch's write transaction found them
/// (a read transaction begun after it: no one else commits meanwhile),
/// read side by side with a batch in key order, a leaf at a time.
struct Walk {
    rows: Cursor<(&'static str, u64, u64)>,
    seen: Cursor<u64>,
    read_at: u64,
}

impl Walk {
    /// From `first`, the batch's first AOR in key order.
    fn new(db: &Database, first: &Aor, read_at: u64) -> Result<Self, StoreError> {
        let snapshot = db.begin_read().map_err(db_error)?;
        let rows = snapshot.open_table(ASSIGNMENTS).map_err(db_error)?;
        let rows = Cursor::from(rows.range::<&str>(first.as_str()..).map_err(db_error)?);
        let seen = match seen_table(&snapshot)? {
            Some(seen) => Cursor::from(seen.range::<&str>(first.as_str()..).map_err(db_error)?),
            None => Cursor::empty(),
        };
        Ok(Self { rows, seen, read_at })
    }

    /// As `read`, for AORs asked in ascending order.
    fn read(&mut self, aor: &Aor) -> Result<(Option<Assignment>, Option<u64>), StoreError> {
        let seen_at = self.seen.get(aor.as_str())?.map(|at| at.value());
        let row = self.rows.get(aor.as_str())?;
        let current = row.map(|row| assignment(aor.clone(), row.value(), seen_at.unwrap_or(self.read_at)));
        Ok((current, seen_at))
    }
}

/// A table's rows in key order, for keys asked in ascending order.
struct Cursor<V: redb::Value + 'static> {
    rows: Option<std::iter::Peekable<redb::Range<'static, &'static str, V>>>,
}

impl<V: redb::Value + 'static> From<redb::Range<'static, &'static str, V>> for Cursor<V> {
    fn from(rows: redb::Range<'static, &'static str, V>) -> Self {
        Self { rows: Some(rows.peekable()) }
    }
}

impl<V: redb::Value + 'static> Cursor<V> {
    fn empty() -> Self {
        Self { rows: None }
    }

    /// `key`'s value, skipping the rows before it.
    fn get(&mut self, key: &str) -> Result<Option<redb::AccessGuard<'static, V>>, StoreError> {
        let Some(rows) = &mut self.rows else { return Ok(None) };
        while rows.next_if(|row| row.as_ref().is_ok_and(|(at, _)| at.value() < key)).is_some() {}
        match rows.next_if(|row| row.as_ref().map_or(true, |(at, _)| at.value() == key)) {
            Some(row) => Ok(Some(row.map_err(db_error)?.1)),
            None => Ok(None),
        }
    }
}

/// A copy of a shared store, kept by its follower (see `etcd::replica`).
impl RedbStore {
    /// Where the copy stands; `None` when it has never been marked.
    pub fn replica_mark(&self) -> Result<Option<ReplicaMark>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = match txn.open_table(REPLICA) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(db_error(error)),
        };
        let Some(json) = table.get(MARK_KEY).map_err(db_error)? else { return Ok(None) };
        Ok(Some(serde_json::from_str(json.value())?))
    }

    /// Applies followed changes in order, and the mark they bring the copy
    /// to, in one transaction: the copy is always what the store held at
    /// its mark's revision. Unless `durable`, the commit reaches the disk
    /// with the next durable one (a crash before loses it whole).
    pub fn replicate(&self, events: &[StoreEvent], mark: &ReplicaMark, durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(db_error)?;
        }
        {
            let mut table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
            let mut seen = txn.open_table(LAST_SEEN).map_err(db_error)?;
            for event in events {
                apply(event, &mut table, &mut seen, &txn)?;
            }
            let json = serde_json::to_string(mark)?;
            txn.open_table(REPLICA).map_err(db_error)?.insert(MARK_KEY, json.as_str()).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    /// Puts every commit made without durability on the disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.begin_write().map_err(db_error)?.commit().map_err(db_error)
    }
}

type Table<'t, V> = redb::Table<'t, &'static str, V>;

/// One followed change, applied to a replica.
fn apply(
    event: &StoreEvent,
    table: &mut Table<'_, (&'static str, u64, u64)>,
    seen: &mut Table<'_, u64>,
    txn: &redb::WriteTransaction,
) -> Result<(), StoreError> {
    match event {
        StoreEvent::Assigned(assignment) => put(table, seen, assignment)?,
        StoreEvent::Removed(aor) => {
            table.remove(aor.as_str()).map_err(db_error)?;
            seen.remove(aor.as_str()).map_err(db_error)?;
        }
        StoreEvent::Seen(aor, at) => {
            seen.insert(aor.as_str(), *at).map_err(db_error)?;
        }
        StoreEvent::Pool(pool) => {
            let json = serde_json::to_string(pool)?;
            txn.open_table(POOL).map_err(db_error)?.insert(POOL_KEY, json.as_str()).map_err(db_error)?;
        }
        StoreEvent::Reloaded(assignments) => {
            let kept: std::collections::HashSet<&str> = assignments.iter().map(|a| a.aor.as_str()).collect();
            table.retain(|aor, _| kept.contains(aor)).map_err(db_error)?;
            seen.retain(|aor, _| kept.contains(aor)).map_err(db_error)?;
            for assignment in assignments {
                put(table, seen, assignment)?;
            }
        }
    }
    Ok(())
}

/// An assignment as followed; a later sighting already kept stays (a
/// reload reads assignments without their sightings).
fn put(
    table: &mut Table<'_, (&'static str, u64, u64)>,
    seen: &mut Table<'_, u64>,
    a: &Assignment,
) -> Result<(), StoreError> {
    table.insert(a.aor.as_str(), (a.server.as_str(), a.assigned_at, a.generation)).map_err(db_error)?;
    let kept = seen.get(a.aor.as_str()).map_err(db_error)?.map_or(0, |at| at.value());
    seen.insert(a.aor.as_str(), kept.max(a.last_seen)).map_err(db_error)?;
    Ok(())
}

/// The last-seen table, or `None` in a database opened read-only that
/// predates it.
fn seen_table(txn: &ReadTransaction) -> Result<Option<redb::ReadOnlyTable<&'static str, u64>>, StoreError> {
    match txn.open_table(LAST_SEEN) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(db_error(error)),
    }
}

/// When `aor` was last seen; `read_at` if the database has no record of it.
fn seen_in(table: Option<&impl ReadableTable<&'static str, u64>>, aor: &str, read_at: u64) -> Result<u64, StoreError> {
    let Some(table) = table else { return Ok(read_at) };
    Ok(table.get(aor).map_err(db_error)?.map_or(read_at, |seen| seen.value()))
}

/// The batch's indices in AOR order: a B-tree written in key order visits
/// each page once while it is hot, where a large batch in arrival order
/// (a drain's, a failover's) lands on pages at random. Stable, so an AOR
/// named twice is decided in the order given.
fn key_order(aors: &[&Aor]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..aors.len()).collect();
    if !aors.is_sorted() {
        order.sort_unstable_by(|&a, &b| aors[a].cmp(aors[b]).then(a.cmp(&b)));
    }
    order
}

fn assignment(aor: Aor, (server, assigned_at, generation): (&str, u64, u64), last_seen: u64) -> Assignment {
    Assignment { aor, server: server.to_owned(), assigned_at, generation, last_seen }
}

impl AssignmentStore for RedbStore {
    fn get(&self, aor: &Aor) -> Result<Option<Assignment>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
        let seen = seen_table(&txn)?;
        let Some(row) = table.get(aor.as_str()).map_err(db_error)? else { return Ok(None) };
        let last_seen = seen_in(seen.as_ref(), aor.as_str(), unix_seconds())?;
        Ok(Some(assignment(aor.clone(), row.value(), last_seen)))
    }

    /// In AOR order (see `key_order`). The fence is moot: an edge alone
    /// with its store leads for good.
    fn update_many(
        &self,
        aors: &[&Aor],
        _fence: Option<&Term>,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        self.update_in(aors, Order::Keys(key_order(aors)), change)
    }

    /// In the order given: `change` admits new clients there, first come,
    /// first served.
    fn create_many(
        &self,
        aors: &[&Aor],
        _absent: &dyn Fn(&Aor) -> bool,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        self.update_in(aors, Order::Given(aors.len()), change)
    }

    fn dialogs(&self, kind: DialogKind) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = match txn.open_table(dialog_table(kind)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(db_error(error)),
        };
        table
            .range::<&str>(..)
            .map_err(db_error)?
            .map(|row| {
                let (key, record) = row.map_err(db_error)?;
                Ok((key.value().to_owned(), record.value().to_owned()))
            })
            .collect()
    }

    fn save_dialogs(&self, kind: DialogKind, kept: &[(String, String)], removed: &[String]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(dialog_table(kind)).map_err(db_error)?;
            for (key, record) in kept {
                table.insert(key.as_str(), record.as_str()).map_err(db_error)?;
            }
            for key in removed {
                table.remove(key.as_str()).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    fn all(&self) -> Result<Vec<Assignment>, StoreError> {
        self.page(None, usize::MAX)
    }

    fn page(&self, after: Option<&Aor>, limit: usize) -> Result<Vec<Assignment>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
        let seen = seen_table(&txn)?;
        let read_at = unix_seconds();
        let rows = match after {
            Some(after) => table.range::<&str>((Bound::Excluded(after.as_str()), Bound::Unbounded)),
            None => table.range::<&str>(..),
        };
        rows.map_err(db_error)?
            .take(limit)
            .map(|row| {
                let (key, value) = row.map_err(db_error)?;
                let last_seen = seen_in(seen.as_ref(), key.value(), read_at)?;
                Ok(assignment(Aor::from_canonical(key.value().to_owned()), value.value(), last_seen))
            })
            .collect()
    }

    fn expire(&self, expired: &[&Aor], seen: &[(&Aor, u64)], _fence: Option<&Term>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
            let mut last_seen = txn.open_table(LAST_SEEN).map_err(db_error)?;
            for aor in expired {
                table.remove(aor.as_str()).map_err(db_error)?;
                last_seen.remove(aor.as_str()).map_err(db_error)?;
            }
            for &(aor, at) in seen {
                last_seen.insert(aor.as_str(), at).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    fn pool(&self) -> Result<Option<StoredPool>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = match txn.open_table(POOL) {
            Ok(table) => table,
            // A database opened read-only that predates the table.
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(db_error(error)),
        };
        let Some(json) = table.get(POOL_KEY).map_err(db_error)? else { return Ok(None) };
        Ok(Some(serde_json::from_str(json.value())?))
    }

    fn save_pool(&self, pool: &StoredPool, _fence: Option<&Term>) -> Result<(), StoreError> {
        let json = serde_json::to_string(pool)?;
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(POOL).map_err(db_error)?.insert(POOL_KEY, json.as_str()).map_err(db_error)?;
        txn.commit().map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Reassigned, next_assignment};

    fn aor(user: &str) -> Aor {
        Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
    }

    fn user_of(aor: &Aor) -> String {
        aor.as_str().trim_start_matches("sip:").split('@').next().unwrap_or_default().to_owned()
    }

    #[test]
    fn assignments_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("redirector-store-{}", std::process::id()));
        let path = dir.join("nested/assignments.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            assert_eq!(store.get(&aor("alice")).unwrap(), None);
            store.update(&aor("alice"), &mut |_| Some(Assignment::new(aor("alice"), "home1".into()))).unwrap();
            let mut moved = Assignment::new(aor("bob"), "home2".into());
            moved.generation = 3;
            store.update(&aor("bob"), &mut |_| Some(moved.clone())).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get(&aor("alice")).unwrap().unwrap().server, "home1");
        let kept = store.update(&aor("alice"), &mut |current| {
            assert_eq!(current.map(|a| a.server.as_str()), Some("home1"));
            None
        });
        assert_eq!(kept.unwrap().unwrap().server, "home1", "no change keeps what is stored");
        let moved = store.update(&aor("alice"), &mut |current| {
            let current = current.unwrap();
            Some(Assignment { server: "home3".into(), generation: current.generation + 1, ..current.clone() })
        });
        assert_eq!(moved.unwrap().unwrap().generation, 2);
        let all = store.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().find(|a| a.aor == aor("bob")).unwrap().generation, 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dialogs_of_each_kind_survive_reopening_and_removed_ones_are_gone() {
        let dir = std::env::temp_dir().join(format!("redirector-watches-{}", std::process::id()));
        let path = dir.join("assignments.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            assert_eq!(store.dialogs(DialogKind::Watches).unwrap(), []);
            let kept = [("c1\nw1".to_owned(), "one".to_owned()), ("c2\nw2".to_owned(), "two".to_owned())];
            store.save_dialogs(DialogKind::Watches, &kept, &[]).unwrap();
            let renewed = [("c2\nw2".into(), "two, confirmed".into())];
            store.save_dialogs(DialogKind::Watches, &renewed, &["c1\nw1".into()]).unwrap();
            store.save_dialogs(DialogKind::Profiles, &[("c3\ns3".into(), "a profile".into())], &[]).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.dialogs(DialogKind::Watches).unwrap(), [("c2\nw2".to_owned(), "two, confirmed".to_owned())]);
        assert_eq!(store.dialogs(DialogKind::Profiles).unwrap(), [("c3\ns3".to_owned(), "a profile".to_owned())]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// One transaction moves every AOR: existing ones get the next
    /// generation, unknown ones a first assignment.
    #[test]
    fn reassign_many_moves_all_in_one_go() {
        let dir = std::env::temp_dir().join(format!("redirector-store-many-{}", std::process::id()));
        let store = RedbStore::open(&dir.join("assignments.redb")).unwrap();
        store.update(&aor("alice"), &mut |_| Some(Assignment::new(aor("alice"), "home1".into()))).unwrap();
        let (alice, bob) = (aor("alice"), aor("bob"));
        let reassigned = store.reassign_many(&[(&alice, "home2"), (&bob, "home3")], None).unwrap();
        let expected = [
            Reassigned { previous: Some("home1".into()), generation: 2 },
            Reassigned { previous: None, generation: 1 },
        ];
        assert_eq!(reassigned, expected);
        assert_eq!(store.get(&alice).unwrap().unwrap().server, "home2");
        assert_eq!(store.get(&bob).unwrap().unwrap().server, "home3");

        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A batch is decided in AOR order (one pass over the B-tree) and
    /// answered in the order given; an AOR named twice is decided in the
    /// order given, the second call seeing the first's result. First
    /// contacts (`create_many`) are decided in the order given: admission
    /// is first come, first served. A move keeps when the client was seen.
    #[test]
    fn a_batch_is_decided_in_aor_order_and_answered_in_the_order_given() {
        let dir = std::env::temp_dir().join(format!("redirector-store-order-{}", std::process::id()));
        let store = RedbStore::open(&dir.join("assignments.redb")).unwrap();
        let aors: Vec<Aor> = ["dave", "alice", "carol", "alice", "bob"].into_iter().map(aor).collect();
        let refs: Vec<&Aor> = aors.iter().collect();
        let mut calls = Vec::new();
        let stored = store
            .update_many(&refs, None, &mut |aor, current| {
                calls.push((user_of(aor), current.map(|a| a.generation)));
                Some(Assignment { last_seen: 1_000, ..next_assignment(aor, "home1", current) })
            })
            .unwrap();
        let expected = [("alice", None), ("alice", Some(1)), ("bob", None), ("carol", None), ("dave", None)];
        assert_eq!(calls, expected.map(|(user, generation)| (user.to_owned(), generation)));
        let answered: Vec<(String, u64)> =
            stored.into_iter().map(|a| a.map(|a| (user_of(&a.aor), a.generation)).unwrap()).collect();
        let expected = [("dave", 1), ("alice", 1), ("carol", 1), ("alice", 2), ("bob", 1)];
        assert_eq!(answered, expected.map(|(user, generation)| (user.to_owned(), generation)));

        let mut calls = Vec::new();
        store
            .create_many(&refs[..3], &|_| false, &mut |aor, _| {
                calls.push(user_of(aor));
                None
            })
            .unwrap();
        assert_eq!(calls, ["dave", "alice", "carol"]);

        let moved = store.reassign_many(&[(&aors[0], "home2")], None).unwrap();
        assert_eq!(moved, [Reassigned { previous: Some("home1".into()), generation: 2 }]);
        assert_eq!(store.get(&aors[0]).unwrap().unwrap().last_seen, 1_000, "a move is not a sighting");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A batch that names much of the table reads it in one walk beside
    /// the batch, one that names little of it row by row: both read what
    /// each AOR held (gaps, AORs before and after the stored ones, new
    /// ones) and keep when each was seen.
    #[test]
    fn dense_and_sparse_batches_read_what_each_aor_held() {
        let dir = std::env::temp_dir().join(format!("redirector-store-walk-{}", std::process::id()));
        let store = RedbStore::open(&dir.join("assignments.redb")).unwrap();
        let names: Vec<String> = (10..74).map(|i| format!("u{i}")).collect();
        let seeded: Vec<Aor> = names.iter().map(|name| aor(name)).collect();
        let refs: Vec<&Aor> = seeded.iter().collect();
        let mut seen_at = 100;
        store
            .update_many(&refs, None, &mut |aor, _| {
                seen_at += 1;
                Some(Assignment { last_seen: seen_at, ..Assignment::new(aor.clone(), "home1".into()) })
            })
            .unwrap();
        let seen: Vec<u64> = seeded.iter().map(|aor| store.get(aor).unwrap().unwrap().last_seen).collect();
        assert_eq!(seen.iter().min().zip(seen.iter().max()), Some((&101, &164)), "each its own sighting");

        // Dense: every other stored AOR, in reverse, and new ones around them.
        let new = [aor("a0"), aor("u15x"), aor("zz")];
        let dense: Vec<(&Aor, &str)> = seeded.iter().step_by(2).rev().chain(&new).map(|aor| (aor, "home2")).collect();
        assert!(walks(dense.len(), 64));
        let moved = store.reassign_many(&dense, None).unwrap();
        for ((aor, _), moved) in dense.iter().zip(&moved) {
            let known = seeded.contains(aor);
            let expected = Reassigned { previous: known.then(|| "home1".into()), generation: 1 + u64::from(known) };
            assert_eq!(moved, &expected, "{aor}");
        }
        // Sparse: two AORs of 67.
        let sparse = [(&seeded[1], "home3"), (&seeded[2], "home3")];
        assert!(!walks(sparse.len(), 67));
        let moved = store.reassign_many(&sparse, None).unwrap();
        let expected = [
            Reassigned { previous: Some("home1".into()), generation: 2 },
            Reassigned { previous: Some("home2".into()), generation: 3 },
        ];
        assert_eq!(moved, expected);
        for (aor, seen) in seeded.iter().zip(&seen) {
            assert_eq!(store.get(aor).unwrap().unwrap().last_seen, *seen, "{aor}: a move is not a sighting");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A database written before `last_seen` existed opens, read-only and
    /// read-write; its AORs read as seen when read, and a write records it.
    #[test]
    fn an_old_database_without_last_seen_opens_and_reads_as_seen_now() {
        let dir = std::env::temp_dir().join(format!("redirector-store-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("assignments.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(ASSIGNMENTS).unwrap().insert("sip:alice@example.net", ("home1", 100, 4)).unwrap();
            txn.commit().unwrap();
        }
        let before = unix_seconds();
        let read_only = RedbStore::open_existing(&path).unwrap().all().unwrap();
        assert_eq!(read_only.len(), 1);
        assert!(read_only[0].last_seen >= before, "missing reads as seen now: {read_only:?}");
        let store = RedbStore::open(&path).unwrap();
        let alice = store.get(&aor("alice")).unwrap().unwrap();
        assert_eq!((alice.server.as_str(), alice.assigned_at, alice.generation), ("home1", 100, 4));
        assert!(alice.last_seen >= before);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Last-seen times outlive the process; `expire` removes assignments and
    /// records sightings in one go; `page` walks in AOR order from a cursor.
    #[test]
    fn last_seen_survives_reopening_and_expire_removes() {
        let dir = std::env::temp_dir().join(format!("redirector-store-seen-{}", std::process::id()));
        let path = dir.join("assignments.redb");
        let names = ["alice", "bob", "carol", "dave"];
        {
            let store = RedbStore::open(&path).unwrap();
            for name in names {
                let new = Assignment { last_seen: 1_000, ..Assignment::new(aor(name), "home1".into()) };
                store.update(&aor(name), &mut |_| Some(new.clone())).unwrap();
            }
            store.expire(&[&aor("bob")], &[(&aor("carol"), 5_000)], None).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get(&aor("bob")).unwrap(), None, "expired");
        assert_eq!(store.get(&aor("carol")).unwrap().unwrap().last_seen, 5_000);
        assert_eq!(store.get(&aor("alice")).unwrap().unwrap().last_seen, 1_000);
        let first = store.page(None, 2).unwrap();
        let rest = store.page(Some(&first[1].aor), 2).unwrap();
        let walked: Vec<String> = first.iter().chain(&rest).map(|a| a.aor.to_string()).collect();
        assert_eq!(walked, ["sip:alice@example.net", "sip:carol@example.net", "sip:dave@example.net"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The pool outlives the process; a database without one reads `None`.
    #[test]
    fn the_pool_survives_reopening() {
        use crate::{
            model::{ServerSpec, ServerState},
            store::StoredServer,
        };
        let dir = std::env::temp_dir().join(format!("redirector-store-pool-{}", std::process::id()));
        let path = dir.join("assignments.redb");
        let spec = ServerSpec {
            name: "home7".into(),
            ipv4: Some("10.0.0.7".parse().unwrap()),
            ipv6: None,
            port: 5070,
            state: ServerState::Removing,
            weight: 2.5,
        };
        let pool = StoredPool {
            servers: vec![StoredServer { slot: 3, spec: spec.clone(), healthy: false }],
            applied: vec![spec],
            next_slot: 4,
            retired: vec![1],
        };
        {
            let store = RedbStore::open(&path).unwrap();
            assert_eq!(store.pool().unwrap(), None);
            store.save_pool(&pool, None).unwrap();
        }
        assert_eq!(RedbStore::open_existing(&path).unwrap().pool().unwrap(), Some(pool));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_replica_applies_followed_changes_with_its_mark() {
        let dir = std::env::temp_dir().join(format!("redirector-replica-{}", std::process::id()));
        let store = RedbStore::open(&dir.join("replica.redb")).unwrap();
        assert_eq!(store.replica_mark().unwrap(), None, "never marked");
        let at = |user: &str, server: &str, seen: u64| Assignment {
            last_seen: seen,
            ..Assignment { assigned_at: 10, generation: 1, ..Assignment::new(aor(user), server.into()) }
        };
        let mark = |revision| ReplicaMark { cluster: 7, prefix: "/p/".into(), revision, pool_revision: 3 };
        let followed = [
            StoreEvent::Assigned(at("alice", "home1", 10)),
            StoreEvent::Assigned(at("bob", "home1", 10)),
            StoreEvent::Seen(aor("alice"), 50),
            StoreEvent::Removed(aor("bob")),
            StoreEvent::Pool(StoredPool { next_slot: 2, ..StoredPool::default() }),
        ];
        store.replicate(&followed, &mark(9), true).unwrap();
        assert_eq!(store.replica_mark().unwrap(), Some(mark(9)));
        assert_eq!(store.all().unwrap(), [at("alice", "home1", 50)]);
        assert_eq!(store.pool().unwrap().map(|p| p.next_slot), Some(2));
        // A reload replaces the assignments; a later sighting already kept stays.
        let reloaded = StoreEvent::Reloaded(vec![at("alice", "home2", 10), at("carol", "home1", 10)]);
        store.replicate(&[reloaded], &mark(12), false).unwrap();
        store.sync().unwrap();
        assert_eq!(store.all().unwrap(), [at("alice", "home2", 50), at("carol", "home1", 10)]);
        assert_eq!(store.replica_mark().unwrap().map(|m| m.revision), Some(12));
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
