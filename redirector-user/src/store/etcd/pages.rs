//! Assignments read a page at a time, each with its sighting, at one
//! revision: a full read of a large pool never asks etcd for one answer
//! bigger than a gRPC message may be. Used by the store's own reads and by
//! the follower's reload.

use std::{collections::HashMap, sync::Arc};

use etcd_client::{GetOptions, KvClient};

use super::keys::{self, Keys, Record};
use crate::{
    counters::bump,
    sip::Aor,
    store::{Assignment, StoreCounters},
};

/// Keys one range read returns at most.
pub const PAGE: i64 = 10_000;

/// One page: the assignments in key order, the revision it was read at,
/// and the key the next page starts at if this one was full.
pub struct Page {
    pub assignments: Vec<Assignment>,
    pub revision: i64,
    pub next: Option<Vec<u8>>,
}

/// Where a read of the assignments after `after` (from the first
/// without) starts.
pub fn start_after(keys: &Keys, after: Option<&Aor>) -> Vec<u8> {
    after.map_or_else(|| keys.assignments(), |aor| format!("{}\0", keys.assignment(aor))).into_bytes()
}

/// Up to `limit` assignments from key `start`, at `revision` (0: the
/// newest). Records that do not read back are skipped and counted.
pub async fn page(
    mut kv: KvClient,
    keys: Keys,
    start: Vec<u8>,
    limit: i64,
    revision: i64,
    counters: Arc<StoreCounters>,
) -> Result<Page, etcd_client::Error> {
    let options =
        GetOptions::new().with_range(prefix_end(&keys.assignments())).with_limit(limit).with_revision(revision);
    let mut answer = kv.get(start, Some(options)).await?;
    let at = answer.header().map_or(revision, |header| header.revision());
    let rows = answer.take_kvs();
    let next = rows.last().filter(|_| rows.len() as i64 == limit).map(|last| [last.key(), b"\0"].concat());
    let records: Vec<(Aor, &[u8])> = rows
        .iter()
        .filter_map(|kv| match keys.record(kv.key_str().ok()?) {
            Some(Record::Assignment(aor)) => Some((aor, kv.value())),
            _ => None,
        })
        .collect();
    let aors: Vec<&Aor> = records.iter().map(|(aor, _)| aor).collect();
    let seen = sightings(&mut kv, &keys, &aors, at).await?;
    let assignments = records
        .iter()
        .filter_map(|(aor, value)| {
            keys::decode(aor.clone(), value, seen.get(aor).copied())
                .inspect_err(|error| {
                    bump(&counters.unreadable);
                    let key = keys.assignment(aor);
                    tracing::warn!(key, %error, "an assignment in etcd does not read back; skipped (delete or rewrite it with etcdctl)");
                })
                .ok()
        })
        .collect();
    Ok(Page { assignments, revision: at, next })
}

/// Every assignment, a page at a time, all at the revision of the first
/// page; also that revision.
pub async fn all(
    kv: KvClient,
    keys: &Keys,
    counters: &Arc<StoreCounters>,
) -> Result<(Vec<Assignment>, i64), etcd_client::Error> {
    let first = page(kv.clone(), keys.clone(), start_after(keys, None), PAGE, 0, counters.clone()).await?;
    let (mut assignments, revision, mut next) = (first.assignments, first.revision, first.next);
    while let Some(start) = next {
        let more = page(kv.clone(), keys.clone(), start, PAGE, revision, counters.clone()).await?;
        next = more.next;
        assignments.extend(more.assignments);
    }
    Ok((assignments, revision))
}

/// When each of `aors` (in key order) was last seen, as kept at `revision`.
async fn sightings(
    kv: &mut KvClient,
    keys: &Keys,
    aors: &[&Aor],
    revision: i64,
) -> Result<HashMap<Aor, u64>, etcd_client::Error> {
    let (Some(first), Some(last)) = (aors.first(), aors.last()) else { return Ok(HashMap::new()) };
    let options = GetOptions::new().with_range(format!("{}\0", keys.seen(last))).with_revision(revision);
    let mut answer = kv.get(keys.seen(first), Some(options)).await?;
    Ok(answer
        .take_kvs()
        .iter()
        .filter_map(|kv| match keys.record(kv.key_str().ok()?)? {
            Record::Seen(aor) => Some((aor, keys::seen_at(kv.value())?)),
            _ => None,
        })
        .collect())
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_is_its_next_key() {
        assert_eq!(prefix_end("/r/a/"), b"/r/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
