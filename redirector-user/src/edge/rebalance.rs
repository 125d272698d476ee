//! Rebalancing on skewed load. `plan` is pure: given each server's weight
//! and each client's packet rate, it picks the fewest moves that bring the
//! most loaded server (per unit of weight) under `settle` × the mean, once it
//! is over `trigger` × the mean — two thresholds, so a balance just under the
//! trigger is left alone (hysteresis); every move must lower the hottest
//! server's load. `Rebalancer` adds time: rates from
//! counter samples, a skew must persist over `sustain` samples before it
//! acts, and after acting it rests for `cooldown` samples (rate limit).

use std::collections::HashMap;

use crate::sip::Aor;

#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub trigger: f64,
    pub settle: f64,
    /// Moves per plan at most.
    pub max_moves: usize,
    /// Below this many packets/s in all, there is nothing to balance.
    pub min_rate: f64,
}

/// A server that takes new clients (others are drained or down, and their
/// clients are moved by those mechanisms, not by load).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLoad {
    pub name: String,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientLoad {
    pub aor: Aor,
    pub server: String,
    /// Packets per second through the fast path.
    pub rate: f64,
}

/// One planned move.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub aor: Aor,
    pub from: String,
    pub to: String,
    pub rate: f64,
}

pub fn plan(servers: &[ServerLoad], clients: &[ClientLoad], thresholds: &Thresholds) -> Vec<Planned> {
    let mut load: HashMap<&str, f64> = servers.iter().map(|s| (s.name.as_str(), 0.0)).collect();
    let mut placed: Vec<(&ClientLoad, &str)> = Vec::new();
    for client in clients {
        if let Some(total) = load.get_mut(client.server.as_str()) {
            *total += client.rate;
            placed.push((client, client.server.as_str()));
        }
    }
    let total: f64 = load.values().sum();
    let weight: f64 = servers.iter().map(|s| s.weight).sum();
    if servers.len() < 2 || total < thresholds.min_rate || weight <= 0.0 {
        return Vec::new();
    }
    let mean = total / weight;
    let norm = |load: &HashMap<&str, f64>, server: &ServerLoad| load[server.name.as_str()] / server.weight;
    let hottest =
        |load: &HashMap<&str, f64>| servers.iter().max_by(|a, b| norm(load, a).total_cmp(&norm(load, b))).unwrap();
    if norm(&load, hottest(&load)) <= thresholds.trigger * mean {
        return Vec::new();
    }
    let mut moves: Vec<Planned> = Vec::new();
    while moves.len() < thresholds.max_moves && norm(&load, hottest(&load)) > thresholds.settle * mean {
        let hot = hottest(&load);
        let hot_norm = norm(&load, hot);
        // The single move that leaves the two servers involved least loaded.
        let best = placed
            .iter()
            .enumerate()
            .filter(|(_, (client, at))| *at == hot.name && !moves.iter().any(|m| m.aor == client.aor))
            .flat_map(|(i, (client, _))| {
                let load = &load;
                servers.iter().filter(|s| s.name != hot.name).map(move |to| {
                    let after = ((load[hot.name.as_str()] - client.rate) / hot.weight)
                        .max((load[to.name.as_str()] + client.rate) / to.weight);
                    (after, i, to)
                })
            })
            .filter(|(after, _, _)| *after < hot_norm)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, index, to)) = best else { break };
        let (client, _) = placed[index];
        *load.get_mut(hot.name.as_str()).unwrap() -= client.rate;
        *load.get_mut(to.name.as_str()).unwrap() += client.rate;
        placed[index].1 = to.name.as_str();
        moves.push(Planned { aor: client.aor.clone(), from: hot.name.clone(), to: to.name.clone(), rate: client.rate });
    }
    moves
}

/// One counter sample of a client on the fast path.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub aor: Aor,
    pub server: String,
    /// Distinguishes several addresses of one AOR.
    pub key: u64,
    pub packets: u64,
}

#[derive(Debug)]
pub struct Rebalancer {
    pub thresholds: Thresholds,
    sustain: u32,
    cooldown: u32,
    streak: u32,
    resting: u32,
    previous: HashMap<u64, u64>,
    /// The client rates of the latest sample, for dry runs.
    pub latest: Vec<ClientLoad>,
}

impl Rebalancer {
    pub fn new(thresholds: Thresholds, sustain: u32, cooldown: u32) -> Self {
        Self {
            thresholds,
            sustain: sustain.max(1),
            cooldown,
            streak: 0,
            resting: 0,
            previous: HashMap::new(),
            latest: Vec::new(),
        }
    }

    /// Takes a sample `seconds` after the previous one; returns the moves to
    /// make now (empty while the skew is not sustained, or while resting).
    pub fn observe(&mut self, servers: &[ServerLoad], samples: &[Sample], seconds: f64) -> Vec<Planned> {
        self.latest = self.rates(samples, seconds);
        let planned = plan(servers, &self.latest, &self.thresholds);
        if self.resting > 0 {
            self.resting -= 1;
            return Vec::new();
        }
        if planned.is_empty() {
            self.streak = 0;
            return Vec::new();
        }
        self.streak += 1;
        if self.streak < self.sustain {
            return Vec::new();
        }
        self.streak = 0;
        self.resting = self.cooldown;
        planned
    }

    fn rates(&mut self, samples: &[Sample], seconds: f64) -> Vec<ClientLoad> {
        let mut per_aor: Vec<ClientLoad> = Vec::new();
        let mut seen = HashMap::new();
        for sample in samples {
            // A counter that went down was zeroed (its load slot freed and
            // handed out again): count from zero.
            let before = self.previous.get(&sample.key).copied().filter(|b| *b <= sample.packets).unwrap_or(0);
            seen.insert(sample.key, sample.packets);
            let rate = if seconds > 0.0 { (sample.packets - before) as f64 / seconds } else { 0.0 };
            match per_aor.iter_mut().find(|c| c.aor == sample.aor) {
                Some(client) => client.rate += rate,
                None => per_aor.push(ClientLoad { aor: sample.aor.clone(), server: sample.server.clone(), rate }),
            }
        }
        self.previous = seen;
        per_aor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds { trigger: 1.5, settle: 1.1, max_moves: 10, min_rate: 10.0 }
    }

    fn servers(n: usize) -> Vec<ServerLoad> {
        (0..n).map(|i| ServerLoad { name: format!("home{i}"), weight: 1.0 }).collect()
    }

    fn client(user: &str, server: &str, rate: f64) -> ClientLoad {
        ClientLoad { aor: Aor::from_canonical(format!("sip:{user}@x")), server: server.into(), rate }
    }

    #[test]
    fn balanced_or_quiet_pools_are_left_alone() {
        let balanced = [client("a", "home0", 100.0), client("b", "home1", 90.0), client("c", "home2", 110.0)];
        assert!(plan(&servers(3), &balanced, &thresholds()).is_empty());
        let quiet = [client("a", "home0", 5.0)];
        assert!(plan(&servers(3), &quiet, &thresholds()).is_empty(), "under min_rate");
    }

    #[test]
    fn a_hot_server_sheds_the_fewest_clients_that_restore_balance() {
        let skewed = [
            client("a", "home0", 100.0),
            client("b", "home0", 100.0),
            client("c", "home0", 10.0),
            client("d", "home1", 5.0),
        ];
        let moves = plan(&servers(3), &skewed, &thresholds());
        let moved: Vec<(&str, &str)> = moves.iter().map(|m| (m.aor.as_str(), m.to.as_str())).collect();
        assert!(moves.len() <= 3, "{moved:?}");
        assert!(moves[..2].iter().all(|m| m.from == "home0" && m.rate == 100.0), "the hot clients go first: {moved:?}");
        assert_ne!(moves[0].to, moves[1].to, "the two hot clients go to different servers");
        assert!(moves.iter().all(|m| m.aor.as_str() != "sip:c@x"), "the small client stays home: {moved:?}");
        let after: Vec<ClientLoad> = skewed
            .iter()
            .map(|c| match moves.iter().find(|m| m.aor == c.aor) {
                Some(m) => ClientLoad { server: m.to.clone(), ..c.clone() },
                None => c.clone(),
            })
            .collect();
        assert!(plan(&servers(3), &after, &thresholds()).is_empty(), "the result does not trigger again");
    }

    #[test]
    fn weights_count_and_max_moves_bound_a_plan() {
        let heavy =
            vec![ServerLoad { name: "big".into(), weight: 3.0 }, ServerLoad { name: "small".into(), weight: 1.0 }];
        let fair = [client("a", "big", 300.0), client("b", "small", 100.0)];
        assert!(plan(&heavy, &fair, &thresholds()).is_empty(), "3:1 load on 3:1 weights is balanced");
        let many: Vec<ClientLoad> = (0..20).map(|i| client(&format!("u{i}"), "home0", 20.0)).collect();
        let bounded = Thresholds { max_moves: 3, ..thresholds() };
        assert_eq!(plan(&servers(2), &many, &bounded).len(), 3);
    }

    #[test]
    fn the_rebalancer_waits_for_a_sustained_skew_then_rests() {
        let mut rebalancer = Rebalancer::new(thresholds(), 2, 2);
        let aor = |u: &str| Aor::from_canonical(format!("sip:{u}@x"));
        let sample = |packets| {
            vec![
                Sample { aor: aor("a"), server: "home0".into(), key: 1, packets },
                Sample { aor: aor("b"), server: "home0".into(), key: 2, packets },
            ]
        };
        assert!(rebalancer.observe(&servers(2), &sample(0), 1.0).is_empty(), "first sample: no rates yet");
        assert!(rebalancer.observe(&servers(2), &sample(100), 1.0).is_empty(), "skewed once");
        assert_eq!(rebalancer.observe(&servers(2), &sample(200), 1.0).len(), 1, "skewed twice: act");
        assert!(rebalancer.observe(&servers(2), &sample(300), 1.0).is_empty(), "resting");
        assert!(rebalancer.observe(&servers(2), &sample(400), 1.0).is_empty(), "resting");
        assert_eq!(rebalancer.latest.iter().map(|c| c.rate).sum::<f64>(), 200.0);
    }
}
