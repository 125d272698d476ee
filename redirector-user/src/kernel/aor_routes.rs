//! Which AORs the kernel's `AORS` map may route, by the hash the program
//! computes from a request (`redirector_ebpf::aor::aor_hash` of the
//! canonical AOR). The hash is 64-bit FNV-1a: two AORs may share one, and
//! a request must never reach another AOR's home, so an AOR whose hash
//! another AOR holds is left out of the kernel, and so is the other: both
//! go up to first contact, as every proxied request did before, until the
//! daemon restarts and builds the map anew.

use std::collections::{HashMap, HashSet};

use redirector_ebpf::aor::aor_hash;

use crate::{kernel::fast_path::owner_of, sip::Aor};

type Seeded = foldhash::fast::RandomState;

/// What the kernel may do with an AOR's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Route it: the hash is this AOR's alone.
    Route(u64),
    /// Remove it: another AOR shares the hash.
    Shared(u64),
}

#[derive(Default)]
pub struct AorRoutes {
    /// By hash: the key (`owner_of`) of the AOR routed under it.
    owners: HashMap<u64, u64, Seeded>,
    /// Hashes two AORs share.
    shared: HashSet<u64, Seeded>,
}

impl AorRoutes {
    /// `aor` is to be routed.
    pub fn claim(&mut self, aor: &Aor) -> Claim {
        let hash = hash_of(aor);
        if self.shared.contains(&hash) {
            return Claim::Shared(hash);
        }
        let owner = owner_of(aor);
        match *self.owners.entry(hash).or_insert(owner) {
            held if held == owner => Claim::Route(hash),
            _ => {
                tracing::warn!(%aor, hash, "two AORs share a kernel hash: their requests through other proxies go up to first contact");
                self.owners.remove(&hash);
                self.shared.insert(hash);
                Claim::Shared(hash)
            }
        }
    }

    /// The hash `aor` is routed under, if it is.
    pub fn routed(&self, aor: &Aor) -> Option<u64> {
        let hash = hash_of(aor);
        (self.owners.get(&hash) == Some(&owner_of(aor))).then_some(hash)
    }

    /// The route under `hash` is gone from the kernel, whoever held it.
    pub fn forget(&mut self, hash: u64) {
        self.owners.remove(&hash);
    }

    /// `aor` is no longer routed (the kernel let its route go).
    pub fn release(&mut self, aor: &Aor) {
        if let Some(hash) = self.routed(aor) {
            self.owners.remove(&hash);
        }
    }
}

/// The key the program looks `aor`'s requests up by.
pub fn hash_of(aor: &Aor) -> u64 {
    aor_hash(aor.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(user: &str) -> Aor {
        Aor::from_uri(&format!("sip:{user}@example.net"), "test").unwrap()
    }

    #[test]
    fn an_aor_claims_its_hash_and_releases_it() {
        let mut routes = AorRoutes::default();
        let alice = aor("alice");
        assert_eq!(routes.claim(&alice), Claim::Route(hash_of(&alice)));
        assert_eq!(routes.claim(&alice), Claim::Route(hash_of(&alice)), "claimed again, unchanged");
        assert_eq!(routes.routed(&alice), Some(hash_of(&alice)));
        routes.release(&alice);
        assert_eq!(routes.routed(&alice), None);
        routes.release(&alice);
        assert_eq!(routes.claim(&alice), Claim::Route(hash_of(&alice)), "claimed anew");
    }

    #[test]
    fn a_hash_two_aors_share_is_routed_for_neither() {
        let mut routes = AorRoutes::default();
        let (alice, bob) = (aor("alice"), aor("bob"));
        // Stand-in for a collision: bob's key put under alice's hash.
        routes.owners.insert(hash_of(&alice), owner_of(&bob));
        assert_eq!(routes.claim(&alice), Claim::Shared(hash_of(&alice)));
        assert_eq!(routes.routed(&alice), None);
        assert_eq!(routes.claim(&alice), Claim::Shared(hash_of(&alice)), "stays out");
        assert_eq!(routes.routed(&bob), None);
    }
}
