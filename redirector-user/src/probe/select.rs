//! The client's choice, sans IO: one probe with one tag goes to every
//! server; the first valid answer wins, and the tag is then spent, so a
//! later answer carrying it (a slower server's, or a replay) changes
//! nothing. The caller feeds datagrams and instants and reads the report.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use redirector_ebpf::probe::{Cookie, PROBE_LEN, parse_answer, probe};
use serde::{Deserialize, Serialize};

use super::{cookie_text, ip_of};

pub struct Selection {
    tag: u64,
    sent_at: Instant,
    servers: Vec<SocketAddr>,
    answers: Vec<Option<(Duration, Cookie)>>,
    chosen: Option<usize>,
}

/// What one datagram did to the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The first valid answer: its server is the choice.
    Chosen,
    /// A valid answer after the choice: its time is reported, nothing else.
    Late,
    /// Not an answer to this probe from a server probed (another tag,
    /// another sender, a second answer, a server naming another address).
    Ignored,
}

/// Each server's response time (`None`: no answer by the timeout), the
/// choice and its cookie (the `Redirector-Cookie` value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tag: String,
    pub servers: Vec<ServerResult>,
    pub chosen: Option<SocketAddr>,
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerResult {
    pub server: SocketAddr,
    /// Milliseconds from the probe to the answer.
    pub answered_ms: Option<f64>,
    pub chosen: bool,
}

impl Selection {
    pub fn new(tag: u64, servers: Vec<SocketAddr>, sent_at: Instant) -> Self {
        let answers = vec![None; servers.len()];
        Self { tag, sent_at, servers, answers, chosen: None }
    }

    /// The probe to send to every server.
    pub fn probe(&self) -> [u8; PROBE_LEN] {
        probe(self.tag)
    }

    pub fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8], at: Instant) -> Outcome {
        let Some(index) = self.servers.iter().position(|&server| server == from) else {
            return Outcome::Ignored;
        };
        let Some(answer) = parse_answer(bytes) else { return Outcome::Ignored };
        if answer.tag != self.tag || ip_of(&answer.cookie.server) != from.ip() || self.answers[index].is_some() {
            return Outcome::Ignored;
        }
        self.answers[index] = Some((at.saturating_duration_since(self.sent_at), answer.cookie));
        if self.chosen.is_some() {
            return Outcome::Late;
        }
        self.chosen = Some(index);
        Outcome::Chosen
    }

    /// Every server has answered.
    pub fn complete(&self) -> bool {
        self.answers.iter().all(Option::is_some)
    }

    pub fn report(&self) -> Report {
        let servers = self
            .servers
            .iter()
            .zip(&self.answers)
            .enumerate()
            .map(|(index, (&server, answer))| ServerResult {
                server,
                answered_ms: answer.map(|(after, _)| after.as_secs_f64() * 1e3),
                chosen: self.chosen == Some(index),
            })
            .collect();
        let chosen = self.chosen.map(|index| (self.servers[index], self.answers[index].map(|(_, c)| c)));
        Report {
            tag: format!("{:016x}", self.tag),
            servers,
            chosen: chosen.map(|(server, _)| server),
            cookie: chosen.and_then(|(_, cookie)| cookie).map(|cookie| cookie_text(&cookie)),
        }
    }
}
