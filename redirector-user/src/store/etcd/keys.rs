//! Where each record lives under the pool's prefix, and how it is written.
//! Values are JSON, so that `etcdctl get --prefix` shows them readably.
//!
//! ```text
//! <prefix>assignments/<aor>      {"server":"home1","assigned_at":…,"generation":…}
//! <prefix>seen/<aor>             seconds since the Unix epoch the client was last seen (if since assigned)
//! <prefix>pool                   the home servers (`StoredPool`)
//! <prefix>watches/<edge>/<key>   a watcher's dialog, kept by the edge that holds it
//! <prefix>profiles/<edge>/<key>  a client's ua-profile subscription, likewise
//! <prefix>health/<edge>          {"home1":true,…}: what that edge's health checks see
//! <prefix>leader/…               the election of the edge that leads (see `leader`)
//! ```
//!
//! When a client was last seen is a key of its own: sightings are written
//! coarsely by whichever edge saw the client, without a read of the
//! assignment and without racing a move. A client never seen since its
//! first assignment has none: it reads as seen when assigned.

use serde::{Deserialize, Serialize};

use crate::{
    sip::Aor,
    store::{Assignment, DialogKind},
};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    edge: String,
}

/// What a key the follower acts on holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Assignment(Aor),
    Seen(Aor),
    Pool,
}

impl Keys {
    pub fn new(prefix: &str, edge: &str) -> Self {
        Self { prefix: prefix.to_owned(), edge: edge.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn assignments(&self) -> String {
        format!("{}assignments/", self.prefix)
    }

    pub fn assignment(&self, aor: &Aor) -> String {
        format!("{}assignments/{}", self.prefix, aor.as_str())
    }

    pub fn seen(&self, aor: &Aor) -> String {
        format!("{}seen/{}", self.prefix, aor.as_str())
    }

    pub fn edge(&self) -> &str {
        &self.edge
    }

    /// What this edge's health checks see.
    pub fn health(&self) -> String {
        format!("{}health/{}", self.prefix, self.edge)
    }

    /// The election of the edge that makes the pool's decisions.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    pub fn pool(&self) -> String {
        format!("{}pool", self.prefix)
    }

    /// This edge's dialogs of `kind`.
    pub fn dialogs(&self, kind: DialogKind) -> String {
        format!("{}{}/{}/", self.prefix, kind.name(), self.edge)
    }

    pub fn dialog(&self, kind: DialogKind, key: &str) -> String {
        format!("{}{key}", self.dialogs(kind))
    }

    /// What `key` holds, or `None` for a key the follower leaves alone
    /// (dialogs, health views, the election) or does not know.
    pub fn record(&self, key: &str) -> Option<Record> {
        let rest = key.strip_prefix(&self.prefix)?;
        if let Some(aor) = rest.strip_prefix("assignments/") {
            return Some(Record::Assignment(Aor::from_canonical(aor.to_owned())));
        }
        if let Some(aor) = rest.strip_prefix("seen/") {
            return Some(Record::Seen(Aor::from_canonical(aor.to_owned())));
        }
        (rest == "pool").then_some(Record::Pool)
    }
}

/// An assignment as stored (its AOR is in the key).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    server: String,
    assigned_at: u64,
    generation: u64,
}

pub fn encode(assignment: &Assignment) -> String {
    let stored = Stored {
        server: assignment.server.clone(),
        assigned_at: assignment.assigned_at,
        generation: assignment.generation,
    };
    serde_json::to_string(&stored).expect("an assignment serializes")
}

/// `aor`'s assignment from its value; seen `last_seen` if a sighting was
/// kept, else when it was assigned (a first assignment keeps none).
pub fn decode(aor: Aor, value: &[u8], last_seen: Option<u64>) -> Result<Assignment, serde_json::Error> {
    let stored: Stored = serde_json::from_slice(value)?;
    Ok(Assignment {
        aor,
        server: stored.server,
        assigned_at: stored.assigned_at,
        generation: stored.generation,
        last_seen: last_seen.unwrap_or(stored.assigned_at),
    })
}

/// A sighting's value: seconds as decimal text.
pub fn seen_at(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Aor {
        Aor::from_uri("sip:alice@example.net", "To").unwrap()
    }

    #[test]
    fn every_key_reads_back_as_what_it_holds() {
        let keys = Keys::new("/redirector/pool/", "edge-a");
        assert_eq!(keys.record(&keys.assignment(&alice())), Some(Record::Assignment(alice())));
        assert_eq!(keys.record(&keys.seen(&alice())), Some(Record::Seen(alice())));
        assert_eq!(keys.record(&keys.pool()), Some(Record::Pool));
        for kind in [DialogKind::Watches, DialogKind::Profiles] {
            assert_eq!(keys.record(&keys.dialog(kind, "dialog")), None, "dialogs are each edge's own");
        }
        assert_ne!(keys.dialogs(DialogKind::Watches), keys.dialogs(DialogKind::Profiles));
        assert_eq!(keys.record("/redirector/other/pool"), None, "another pool's key");
        assert_eq!(keys.record("/redirector/pool/unknown"), None);
    }

    #[test]
    fn an_assignment_round_trips() {
        let assignment = Assignment { generation: 3, ..Assignment::new(alice(), "home2".into()) };
        let decoded = decode(alice(), encode(&assignment).as_bytes(), Some(assignment.last_seen)).unwrap();
        assert_eq!(decoded, assignment);
        assert!(decode(alice(), b"{not json", None).is_err());
        assert_eq!(seen_at(b"1700000000"), Some(1_700_000_000));
        assert_eq!(seen_at(b"soon"), None);
    }
}
