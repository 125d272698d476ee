//! Dialogs the edge keeps on behalf of a client and persists in the store:
//! the watchers' SUBSCRIBE dialogs (`watchers`) and the clients' own
//! `ua-profile` subscriptions (`profiles`). What both need is here once:
//! the dialogs by id, by client and oldest first, a bound on how many are
//! kept (the oldest go first), and the record of what changed since the
//! store last saw them (`take_changes`, `retry`, `restore`).
//!
//! A store keeps each dialog as a (key, record) pair, the record being the
//! JSON of `Aged<D>`: the dialog's own fields and its age. Records that no
//! longer read back (say, from an older version) are skipped, counted and
//! removed from the store with the next save.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::sip::Aor;

/// Longest header value recorded: a dialog's size is bounded, not set by
/// whoever sends the SUBSCRIBE.
pub const MAX_FIELD: usize = 1024;

/// A dialog as the registry keeps it.
pub trait Dialog: Serialize + DeserializeOwned {
    type Id: Clone + Eq + Hash + std::fmt::Debug;
    fn id(&self) -> &Self::Id;
    /// The client the dialog is about (the watched one, or the profile's).
    fn client(&self) -> &Aor;
    /// `id`'s key in the store.
    fn key(id: &Self::Id) -> String;
}

/// A kept dialog and its age (its place in the eviction order); also what
/// the store keeps of it, the dialog's fields flattened beside `age`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Aged<D> {
    pub age: u64,
    #[serde(flatten)]
    pub dialog: D,
}

/// Dialogs changed since the store last saw them: each kept one's key and
/// record, each removed one's key.
#[derive(Debug)]
pub struct Changes<Id> {
    ids: HashSet<Id>,
    pub kept: Vec<(String, String)>,
    pub removed: Vec<String>,
}

impl<Id> Changes<Id> {
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.removed.is_empty()
    }
}

/// The dialogs, by id and by client, oldest first.
#[derive(Debug)]
pub struct Dialogs<D: Dialog> {
    capacity: usize,
    next_age: u64,
    entries: HashMap<D::Id, Aged<D>>,
    by_age: BTreeMap<u64, D::Id>,
    by_client: HashMap<Aor, HashSet<D::Id>>,
    /// Dialogs added, changed or removed since the store last saw them.
    touched: HashSet<D::Id>,
    /// Store keys whose records did not read back: removed with the next
    /// save.
    unreadable: Vec<String>,
}

impl<D: Dialog> Dialogs<D> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_age: 0,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            by_client: HashMap::new(),
            touched: HashSet::new(),
            unreadable: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &D::Id) -> Option<&D> {
        self.entries.get(id).map(|aged| &aged.dialog)
    }

    /// The dialog, to change: it is written with the next save.
    pub fn get_mut(&mut self, id: &D::Id) -> Option<&mut D> {
        let aged = self.entries.get_mut(id)?;
        self.touched.insert(id.clone());
        Some(&mut aged.dialog)
    }

    /// The ids of `client`'s dialogs.
    pub fn of(&self, client: &Aor) -> Vec<D::Id> {
        self.by_client.get(client).map(|ids| ids.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every dialog's id.
    pub fn ids(&self) -> Vec<D::Id> {
        self.entries.keys().cloned().collect()
    }

    /// Keeps `dialog` as the newest, in place of one with its id; returns
    /// how many older dialogs were dropped to make room.
    pub fn insert(&mut self, dialog: D) -> usize {
        self.remove(dialog.id());
        let mut evicted = 0;
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.remove(&oldest);
            evicted += 1;
        }
        let age = self.next_age;
        self.next_age += 1;
        self.put(Aged { age, dialog });
        evicted
    }

    fn put(&mut self, aged: Aged<D>) {
        let id = aged.dialog.id().clone();
        self.by_age.insert(aged.age, id.clone());
        self.by_client.entry(aged.dialog.client().clone()).or_default().insert(id.clone());
        self.touched.insert(id.clone());
        self.entries.insert(id, aged);
    }

    pub fn remove(&mut self, id: &D::Id) -> Option<D> {
        let aged = self.entries.remove(id)?;
        self.touched.insert(id.clone());
        self.by_age.remove(&aged.age);
        let client = aged.dialog.client();
        if let Some(ids) = self.by_client.get_mut(client) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_client.remove(client);
            }
        }
        Some(aged.dialog)
    }

    /// What changed since the last call, for the store.
    pub fn take_changes(&mut self) -> Changes<D::Id> {
        let ids = std::mem::take(&mut self.touched);
        let (mut kept, mut removed) = (Vec::new(), std::mem::take(&mut self.unreadable));
        for id in &ids {
            match self.entries.get(id) {
                Some(aged) => kept.push((D::key(id), serde_json::to_string(aged).expect("plain data"))),
                None => removed.push(D::key(id)),
            }
        }
        Changes { ids, kept, removed }
    }

    /// Changes the store did not take: written with the next save (the
    /// unreadable records' removals too).
    pub fn retry(&mut self, changes: Changes<D::Id>) {
        let touched: std::collections::HashSet<String> = changes.ids.iter().map(D::key).collect();
        self.unreadable.extend(changes.removed.into_iter().filter(|key| !touched.contains(key)));
        self.touched.extend(changes.ids);
    }

    /// Takes back what the store kept (records that no longer read are
    /// skipped, counted and removed from the store with the next save);
    /// the oldest beyond capacity are dropped. Returns how many were
    /// restored and skipped.
    pub fn restore(&mut self, stored: Vec<(String, String)>) -> (usize, usize) {
        let mut entries: Vec<Aged<D>> = Vec::with_capacity(stored.len());
        let mut skipped = 0;
        for (key, record) in stored {
            match serde_json::from_str(&record) {
                Ok(aged) => entries.push(aged),
                Err(_) => {
                    skipped += 1;
                    self.unreadable.push(key);
                }
            }
        }
        entries.sort_by_key(|aged| aged.age);
        let dropped = entries.len().saturating_sub(self.capacity);
        for aged in entries.drain(..dropped) {
            self.touched.insert(aged.dialog.id().clone());
        }
        self.next_age = entries.last().map_or(0, |aged| aged.age + 1);
        let restored = entries.len();
        for aged in entries {
            self.put(aged);
        }
        self.touched.retain(|id| !self.entries.contains_key(id));
        (restored, skipped + dropped)
    }
}
