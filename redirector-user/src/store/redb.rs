//! The embedded store: one redb file, one table.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Assignment, AssignmentStore, StoreError};
use crate::sip::Aor;

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(Box::new(error.into()))
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

    /// Opens a database that must exist already, creating nothing (for
    /// reading it while no daemon has it open).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let db = Database::open(path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source: Box::new(source) })?;
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
    use crate::store::Reassigned;

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
