//! The client-to-home-server assignment database. `AssignmentStore` is the
//! seam for shared stores; `RedbStore` is the embedded default: every
//! `update` is a committed, fsynced transaction before it returns, so an assignment
//! that was answered survives a crash (SIGKILL, power loss).

use std::{path::Path, time::SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::sip::Aor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub aor: Aor,
    /// The home server's `name` (stable across config reordering).
    pub server: String,
    /// Seconds since the Unix epoch.
    pub assigned_at: u64,
    /// Bumped by every move; 1 for a first assignment.
    pub generation: u64,
}

impl Assignment {
    pub fn new(aor: Aor, server: String) -> Self {
        Self { aor, server, assigned_at: unix_seconds(), generation: 1 }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the assignment database {path}: {source} (is another redirector using it?)")]
    Open { path: String, source: Box<redb::DatabaseError> },
    #[error("assignment database: {0}")]
    Database(#[from] Box<redb::Error>),
}

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(Box::new(error.into()))
}

pub trait AssignmentStore: Send + Sync {
    fn get(&self, aor: &Aor) -> Result<Option<Assignment>, StoreError>;
    /// Reads each AOR's assignment and, where `change` (called once per
    /// AOR, in order) returns a new one, stores it — all in one transaction,
    /// durably, so no concurrent writer slips in between and one commit
    /// serves the lot. Returns the assignments as stored afterwards.
    fn update_many(
        &self,
        aors: &[&Aor],
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError>;
    fn all(&self) -> Result<Vec<Assignment>, StoreError>;

    /// `update_many` for one AOR.
    fn update(
        &self,
        aor: &Aor,
        change: &mut dyn FnMut(Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Option<Assignment>, StoreError> {
        Ok(self.update_many(&[aor], &mut |_, current| change(current))?.pop().flatten())
    }

    /// Moves each AOR to its server with the next generation (a first
    /// assignment if it had none), in one transaction; returns what each
    /// move did, in order.
    fn reassign_many(&self, moves: &[(&Aor, &str)]) -> Result<Vec<Reassigned>, StoreError> {
        let aors: Vec<&Aor> = moves.iter().map(|&(aor, _)| aor).collect();
        let mut targets = moves.iter().map(|&(_, server)| server);
        let mut previous = Vec::with_capacity(moves.len());
        let stored = self.update_many(&aors, &mut |aor, current| {
            previous.push(current.map(|a| a.server.clone()));
            Some(next_assignment(aor, targets.next().expect("one call per move"), current))
        })?;
        Ok(previous
            .into_iter()
            .zip(stored)
            .map(|(previous, stored)| Reassigned { previous, generation: stored.map_or(0, |a| a.generation) })
            .collect())
    }
}

/// `aor` on `server`, one generation after `current`.
pub fn next_assignment(aor: &Aor, server: &str, current: Option<&Assignment>) -> Assignment {
    let generation = current.map_or(0, |a| a.generation) + 1;
    Assignment { generation, ..Assignment::new(aor.clone(), server.to_owned()) }
}

/// One AOR's move in `reassign_many`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassigned {
    /// The server it was on, if it had one.
    pub previous: Option<String>,
    pub generation: u64,
}

/// AOR → (server, assigned_at, generation).
const ASSIGNMENTS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("assignments");

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens or creates the database file (and its directory).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open { path: path.display().to_string(), source: Box::new(source) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_error(redb::DatabaseError::Storage(e.into())))?;
        }
        let db = Database::create(path).map_err(open_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(ASSIGNMENTS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Self { db })
    }
}

impl AssignmentStore for RedbStore {
    fn get(&self, aor: &Aor) -> Result<Option<Assignment>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
        let row = table.get(aor.as_str()).map_err(db_error)?;
        Ok(row.map(|value| {
            let (server, assigned_at, generation) = value.value();
            Assignment { aor: aor.clone(), server: server.to_owned(), assigned_at, generation }
        }))
    }

    fn update_many(
        &self,
        aors: &[&Aor],
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        let stored = {
            let mut table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
            aors.iter()
                .map(|&aor| {
                    let current = table.get(aor.as_str()).map_err(db_error)?.map(|value| {
                        let (server, assigned_at, generation) = value.value();
                        Assignment { aor: aor.clone(), server: server.to_owned(), assigned_at, generation }
                    });
                    match change(aor, current.as_ref()) {
                        Some(new) => {
                            let value = (new.server.as_str(), new.assigned_at, new.generation);
                            table.insert(aor.as_str(), value).map_err(db_error)?;
                            Ok(Some(new))
                        }
                        None => Ok(current),
                    }
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        };
        txn.commit().map_err(db_error)?;
        Ok(stored)
    }

    fn all(&self) -> Result<Vec<Assignment>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(ASSIGNMENTS).map_err(db_error)?;
        table
            .iter()
            .map_err(db_error)?
            .map(|row| {
                let (key, value) = row.map_err(db_error)?;
                let (server, assigned_at, generation) = value.value();
                Ok(Assignment {
                    aor: Aor::from_canonical(key.value().to_owned()),
                    server: server.to_owned(),
                    assigned_at,
                    generation,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(user: &str) -> Aor {
        Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
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

    /// One transaction moves every AOR: existing ones get the next
    /// generation, unknown ones a first assignment.
    #[test]
    fn reassign_many_moves_all_in_one_go() {
        let dir = std::env::temp_dir().join(format!("redirector-store-many-{}", std::process::id()));
        let store = RedbStore::open(&dir.join("assignments.redb")).unwrap();
        store.update(&aor("alice"), &mut |_| Some(Assignment::new(aor("alice"), "home1".into()))).unwrap();
        let (alice, bob) = (aor("alice"), aor("bob"));
        let reassigned = store.reassign_many(&[(&alice, "home2"), (&bob, "home3")]).unwrap();
        let expected = [
            Reassigned { previous: Some("home1".into()), generation: 2 },
            Reassigned { previous: None, generation: 1 },
        ];
        assert_eq!(reassigned, expected);
        assert_eq!(store.get(&alice).unwrap().unwrap().server, "home2");
        assert_eq!(store.get(&bob).unwrap().unwrap().server, "home3");

        std::fs::remove_dir_all(dir).unwrap();
    }
}
