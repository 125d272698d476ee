//! The routing table's version and its recent changes: every change of an
//! assignment (a new client, a move, an expiry) takes the next version and
//! is logged, so that a client holding version V can be told what changed
//! since, or that it must reload the whole table. The log is bounded: the
//! oldest changes fall off, and a V older than what is left needs a reload.
//!
//! A version is `EPOCH-SEQ`: the epoch names this log (the daemon's start),
//! so that a V from before a restart is never read as one of this log's.

use std::{collections::VecDeque, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::sip::Aor;

/// Changes kept for `since` (a few megabytes at most).
pub const LOG_CAPACITY: usize = 65_536;

/// A version of the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct RouteVersion {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for RouteVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a route version (they read EPOCH-SEQ, as /routes gives them)")]
pub struct BadVersion(pub String);

impl FromStr for RouteVersion {
    type Err = BadVersion;

    fn from_str(text: &str) -> Result<Self, BadVersion> {
        let bad = || BadVersion(text.to_owned());
        let (epoch, seq) = text.split_once('-').ok_or_else(bad)?;
        Ok(Self { epoch: epoch.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

impl From<RouteVersion> for String {
    fn from(version: RouteVersion) -> Self {
        version.to_string()
    }
}

impl TryFrom<String> for RouteVersion {
    type Error = BadVersion;

    fn try_from(text: String) -> Result<Self, BadVersion> {
        text.parse()
    }
}

/// What changed since a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Each changed AOR once, with its server now (`None`: no longer assigned).
    Changes(Vec<(Aor, Option<String>)>),
    /// The version is not this log's, or older than what it keeps.
    Reload,
}

/// The log of changes, newest last.
#[derive(Debug)]
pub struct RouteLog {
    epoch: u64,
    seq: u64,
    changes: VecDeque<(u64, Aor, Option<String>)>,
    capacity: usize,
}

impl RouteLog {
    pub fn new(epoch: u64, capacity: usize) -> Self {
        Self { epoch, seq: 0, changes: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub fn version(&self) -> RouteVersion {
        RouteVersion { epoch: self.epoch, seq: self.seq }
    }

    /// `aor` is now on `server` (`None`: its assignment is gone).
    pub fn record(&mut self, aor: &Aor, server: Option<&str>) {
        self.seq += 1;
        if self.changes.len() == self.capacity {
            self.changes.pop_front();
        }
        self.changes.push_back((self.seq, aor.clone(), server.map(str::to_owned)));
    }

    /// The changes after `version`, the latest per AOR, in the order of
    /// their last change.
    pub fn since(&self, version: RouteVersion) -> Since {
        let oldest_known = self.changes.front().map_or(self.seq, |(seq, ..)| seq - 1);
        if version.epoch != self.epoch || version.seq > self.seq || version.seq < oldest_known {
            return Since::Reload;
        }
        let newer: Vec<&(u64, Aor, Option<String>)> =
            self.changes.iter().filter(|(seq, ..)| *seq > version.seq).collect();
        let mut seen = std::collections::HashSet::new();
        let mut latest: Vec<(Aor, Option<String>)> = newer
            .iter()
            .rev()
            .filter(|(_, aor, _)| seen.insert(aor))
            .map(|(_, aor, server)| (aor.clone(), server.clone()))
            .collect();
        latest.reverse();
        Since::Changes(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(user: &str) -> Aor {
        Aor::from_uri(&format!("sip:{user}@example.test"), "test").expect("AOR")
    }

    #[test]
    fn each_change_takes_the_next_version_and_since_gives_the_latest_per_aor() {
        let mut log = RouteLog::new(7, 16);
        let start = log.version();
        log.record(&aor("alice"), Some("home0"));
        log.record(&aor("bob"), Some("home0"));
        let middle = log.version();
        log.record(&aor("alice"), Some("home1"));
        log.record(&aor("bob"), None);
        assert_eq!(log.version(), RouteVersion { epoch: 7, seq: 4 });
        assert_eq!(log.since(start), Since::Changes(vec![(aor("alice"), Some("home1".into())), (aor("bob"), None)]));
        assert_eq!(log.since(middle), Since::Changes(vec![(aor("alice"), Some("home1".into())), (aor("bob"), None)]));
        assert_eq!(log.since(log.version()), Since::Changes(vec![]));
    }

    #[test]
    fn versions_of_another_epoch_the_future_or_past_the_log_need_a_reload() {
        let mut log = RouteLog::new(7, 2);
        let start = log.version();
        log.record(&aor("a"), Some("home0"));
        assert_eq!(log.since(start), Since::Changes(vec![(aor("a"), Some("home0".into()))]));
        log.record(&aor("b"), Some("home0"));
        log.record(&aor("c"), Some("home0"));
        assert_eq!(log.since(start), Since::Reload, "the first change fell off");
        assert_eq!(
            log.since(RouteVersion { epoch: 7, seq: 1 }),
            Since::Changes(vec![(aor("b"), Some("home0".into())), (aor("c"), Some("home0".into()))])
        );
        assert_eq!(log.since(RouteVersion { epoch: 6, seq: 3 }), Since::Reload);
        assert_eq!(log.since(RouteVersion { epoch: 7, seq: 4 }), Since::Reload);
    }

    #[test]
    fn versions_read_back_as_written_and_bad_ones_are_named() {
        let version = RouteVersion { epoch: 1764470000, seq: 12 };
        assert_eq!(version.to_string().parse::<RouteVersion>(), Ok(version));
        assert_eq!("12".parse::<RouteVersion>(), Err(BadVersion("12".into())));
        assert_eq!("a-1".parse::<RouteVersion>(), Err(BadVersion("a-1".into())));
    }
}
