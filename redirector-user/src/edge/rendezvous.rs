//! Weighted rendezvous (highest random weight) hashing: each AOR goes to the
//! server with the highest `weight / -ln(h)`, `h` a stable hash of (AOR,
//! server name) in (0, 1). Adding or removing a server moves only the AORs
//! that it gains or loses, and shares follow the weights.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A server that may take new clients, with its relative weight (> 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub weight: f64,
}

/// Fixed so that the same AOR lands on the same server on every host and
/// across restarts and upgrades.
const SEED: u64 = 0x7265_6469_7265_6374;

pub fn choose<'a>(aor: &str, candidates: &[Candidate<'a>]) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|c| c.weight > 0.0)
        .map(|c| (score(aor, c), c.name))
        .max_by(|(a, an), (b, bn)| a.total_cmp(b).then_with(|| bn.cmp(an)))
        .map(|(_, name)| name)
}

fn score(aor: &str, candidate: &Candidate<'_>) -> f64 {
    let mut key = Vec::with_capacity(aor.len() + candidate.name.len() + 1);
    key.extend_from_slice(aor.as_bytes());
    key.push(0);
    key.extend_from_slice(candidate.name.as_bytes());
    let hash = xxh3_64_with_seed(&key, SEED);
    // 53 random bits mapped into the open interval (0, 1).
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    candidate.weight / -unit.ln()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn servers(names: &[&'static str]) -> Vec<Candidate<'static>> {
        names.iter().map(|name| Candidate { name, weight: 1.0 }).collect()
    }

    #[test]
    fn no_candidates_no_choice() {
        assert_eq!(choose("sip:a@b", &[]), None);
        assert_eq!(choose("sip:a@b", &[Candidate { name: "x", weight: 0.0 }]), None);
    }

    #[test]
    fn shares_follow_weights() {
        let candidates = [Candidate { name: "small", weight: 1.0 }, Candidate { name: "big", weight: 3.0 }];
        let big =
            (0..20_000).filter(|i| choose(&format!("sip:user{i}@example.net"), &candidates) == Some("big")).count();
        let share = big as f64 / 20_000.0;
        assert!((0.72..0.78).contains(&share), "weight 3 of 4 took {share}");
    }

    proptest! {
        #[test]
        fn order_does_not_matter(aor in "sip:[a-z]{1,12}@[a-z]{1,8}\\.net", rotate in 0usize..4) {
            let mut list = servers(&["h1", "h2", "h3", "h4"]);
            let chosen = choose(&aor, &list);
            list.rotate_left(rotate);
            prop_assert_eq!(choose(&aor, &list), chosen);
        }

        #[test]
        fn removing_a_server_moves_only_its_clients(aor in "sip:[a-z]{1,12}@[a-z]{1,8}\\.net", gone in 0usize..4) {
            let all = servers(&["h1", "h2", "h3", "h4"]);
            let before = choose(&aor, &all).unwrap();
            let mut fewer = all.clone();
            let removed = fewer.remove(gone).name;
            let after = choose(&aor, &fewer).unwrap();
            if before != removed {
                prop_assert_eq!(after, before);
            }
        }
    }
}
