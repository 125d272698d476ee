//! Home-server health from the reachability pings: a server is marked down
//! after `down_after` pings in a row went unanswered, and up again after
//! `up_after` answered in a row. Pure bookkeeping; the daemon sends the
//! pings and applies the transitions. Servers are tracked by their SERVERS
//! slot, and join and leave as the pool changes at runtime.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down(u32),
    Up(u32),
}

#[derive(Debug, Clone, Copy, Default)]
struct Server {
    down: bool,
    /// The sequence of the ping in flight, and whether it was answered.
    outstanding: Option<(u32, bool)>,
    misses: u32,
    answers: u32,
}

#[derive(Debug)]
pub struct Tracker {
    down_after: u32,
    up_after: u32,
    /// By SERVERS slot.
    servers: BTreeMap<u32, Server>,
}

impl Tracker {
    /// The servers in `slots`, each up or down as last known (`true`: up):
    /// a server down when the daemon stopped needs `up_after` answers to
    /// come back.
    pub fn new(slots: impl IntoIterator<Item = (u32, bool)>, down_after: u32, up_after: u32) -> Self {
        let servers = slots.into_iter().map(|(slot, up)| (slot, Server { down: !up, ..Server::default() })).collect();
        Self { down_after: down_after.max(1), up_after: up_after.max(1), servers }
    }

    /// A server added to the pool: up, and judged from the next round on
    /// (the round under way sent it no ping).
    pub fn add(&mut self, slot: u32) {
        self.servers.insert(slot, Server::default());
    }

    /// Each server's verdict (`true`: up), by slot.
    pub fn verdicts(&self) -> Vec<(u32, bool)> {
        self.servers.iter().map(|(&slot, server)| (slot, !server.down)).collect()
    }

    /// A server gone from the pool: its late answers count for nothing.
    pub fn remove(&mut self, slot: u32) {
        self.servers.remove(&slot);
    }

    /// Closes the previous round (counting its unanswered pings) and opens
    /// round `sequence`; returns the servers whose health changed.
    pub fn tick(&mut self, sequence: u32) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for (&index, server) in &mut self.servers {
            if let Some((_, false)) = server.outstanding {
                server.misses += 1;
                server.answers = 0;
                if !server.down && server.misses >= self.down_after {
                    server.down = true;
                    transitions.push(Transition::Down(index));
                }
            }
            server.outstanding = Some((sequence, false));
        }
        transitions
    }

    /// A server answered ping `sequence`; late answers to older rounds are ignored.
    pub fn answered(&mut self, index: u32, sequence: u32) -> Option<Transition> {
        let up_after = self.up_after;
        let server = self.servers.get_mut(&index)?;
        match server.outstanding {
            Some((current, false)) if current == sequence => server.outstanding = Some((current, true)),
            _ => return None,
        }
        server.misses = 0;
        server.answers += 1;
        if server.down && server.answers >= up_after {
            server.down = false;
            return Some(Transition::Up(index));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_consecutive_misses_and_up_after_consecutive_answers() {
        let mut tracker = Tracker::new([(0, true), (1, true)], 3, 2);
        let mut down = Vec::new();
        for sequence in 1..=4 {
            down.extend(tracker.tick(sequence));
            tracker.answered(1, sequence);
        }
        assert_eq!(down, [Transition::Down(0)], "server 0 missed rounds 1-3, server 1 answered all");
        assert_eq!(tracker.answered(0, 4), None, "one answer is not enough");
        assert!(tracker.tick(5).is_empty());
        assert_eq!(tracker.answered(0, 5), Some(Transition::Up(0)));
    }

    #[test]
    fn a_server_last_known_down_stays_down_until_it_answers_enough() {
        let mut tracker = Tracker::new([(0, false), (1, true)], 3, 2);
        tracker.tick(1);
        assert_eq!(tracker.answered(0, 1), None, "one answer is not enough");
        assert_eq!(tracker.answered(1, 1), None, "an up server has nothing to report");
        tracker.tick(2);
        assert_eq!(tracker.answered(0, 2), Some(Transition::Up(0)));
    }

    #[test]
    fn a_miss_between_answers_resets_the_count_and_late_answers_do_not_count() {
        let mut tracker = Tracker::new([(0, true)], 2, 1);
        tracker.tick(1);
        tracker.tick(2);
        assert_eq!(tracker.answered(0, 1), None, "round 1 is over");
        assert_eq!(tracker.answered(0, 2), None, "still up: only one miss");
        tracker.tick(3);
        assert_eq!(tracker.tick(4), [], "one miss after an answer");
        assert_eq!(tracker.tick(5), [Transition::Down(0)]);
        assert!(tracker.tick(6).is_empty(), "down once, not again");
    }

    #[test]
    fn servers_join_and_leave_by_slot() {
        let mut tracker = Tracker::new([(0, true), (5, true)], 1, 1);
        tracker.tick(1);
        tracker.add(9);
        tracker.remove(0);
        tracker.answered(5, 1);
        assert_eq!(tracker.tick(2), [], "9 joined after round 1 was sent, 0 left: no verdict on either");
        assert_eq!(tracker.answered(0, 2), None, "a removed server's answer counts for nothing");
        assert_eq!(tracker.tick(3), [Transition::Down(5), Transition::Down(9)]);
    }
}
