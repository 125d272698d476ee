//! Home-server health from the reachability pings: a server is marked down
//! after `down_after` pings in a row went unanswered, and up again after
//! `up_after` answered in a row. Pure bookkeeping; the daemon sends the
//! pings and applies the transitions.

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
    servers: Vec<Server>,
}

impl Tracker {
    /// `servers` servers, all up.
    pub fn new(servers: usize, down_after: u32, up_after: u32) -> Self {
        Self { down_after: down_after.max(1), up_after: up_after.max(1), servers: vec![Server::default(); servers] }
    }

    /// Closes the previous round (counting its unanswered pings) and opens
    /// round `sequence`; returns the servers whose health changed.
    pub fn tick(&mut self, sequence: u32) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for (index, server) in self.servers.iter_mut().enumerate() {
            if let Some((_, false)) = server.outstanding {
                server.misses += 1;
                server.answers = 0;
                if !server.down && server.misses >= self.down_after {
                    server.down = true;
                    transitions.push(Transition::Down(index as u32));
                }
            }
            server.outstanding = Some((sequence, false));
        }
        transitions
    }

    /// A server answered ping `sequence`; late answers to older rounds are ignored.
    pub fn answered(&mut self, index: u32, sequence: u32) -> Option<Transition> {
        let up_after = self.up_after;
        let server = self.servers.get_mut(index as usize)?;
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
        let mut tracker = Tracker::new(2, 3, 2);
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
    fn a_miss_between_answers_resets_the_count_and_late_answers_do_not_count() {
        let mut tracker = Tracker::new(1, 2, 1);
        tracker.tick(1);
        tracker.tick(2);
        assert_eq!(tracker.answered(0, 1), None, "round 1 is over");
        assert_eq!(tracker.answered(0, 2), None, "still up: only one miss");
        tracker.tick(3);
        assert_eq!(tracker.tick(4), [], "one miss after an answer");
        assert_eq!(tracker.tick(5), [Transition::Down(0)]);
        assert!(tracker.tick(6).is_empty(), "down once, not again");
    }
}
