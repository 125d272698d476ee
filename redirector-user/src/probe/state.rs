//! A home's state as the edge tells it, so that a draining or down home
//! does not answer probes (issue #14). The leading edge sends every home a
//! signed state message (`redirector_ebpf::probe::StateMessage`) whenever
//! the pool changes and again every `[probe] state_every` seconds, so a
//! lost datagram heals. `Follower` is the home's side, sans IO: it checks
//! a message (layout, MAC, that it names this home, freshness) and says
//! whether the home answers probes, the operator's hold included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use redirector_ebpf::{
    Endpoint,
    probe::{HOME_ACTIVE, HOME_DOWN, HOME_DRAINING, PROBE_LEN, StateMessage, parse_state, state_key},
};

use super::{Keys, address};
use crate::model::{HomeServer, ServerState};

/// How far a state message's time may be from the home's clock, either
/// way: the edges' and the homes' clocks must agree this well.
pub const CLOCK_WINDOW_MS: u64 = 30_000;

/// Rejects are logged at most this often (with the counts so far), so a
/// flood of forged messages cannot flood the log.
const REJECT_LOG_GAP_MS: u64 = 10_000;

/// What an edge tells a home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeState {
    /// Takes new clients: answers probes.
    Active,
    /// Keeps its clients, takes no new ones (also while being removed).
    Draining,
    /// Down, or failing the edge's health checks.
    Down,
}

impl HomeState {
    /// The state the edge acts on (the operator's, or down when unhealthy).
    pub fn of(server: &HomeServer) -> Self {
        match server.effective_state() {
            ServerState::Active => Self::Active,
            ServerState::Draining | ServerState::Removing => Self::Draining,
            ServerState::Down => Self::Down,
        }
    }

    pub const fn wire(self) -> u8 {
        match self {
            Self::Active => HOME_ACTIVE,
            Self::Draining => HOME_DRAINING,
            Self::Down => HOME_DOWN,
        }
    }

    fn from_wire(byte: u8) -> Option<Self> {
        [Self::Active, Self::Draining, Self::Down].into_iter().find(|state| state.wire() == byte)
    }
}

/// One home as the edge tells it: its addresses and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub state: HomeState,
}

impl Announcement {
    pub fn of(server: &HomeServer) -> Self {
        Self { ipv4: server.ipv4, ipv6: server.ipv6, state: HomeState::of(server) }
    }

    /// Where the message goes, and the home it names: the home's IPv4
    /// address if the edge sends IPv4 (`v4`), else its IPv6 one if the
    /// edge sends IPv6.
    pub fn address(&self, v4: bool, v6: bool) -> Option<IpAddr> {
        let ipv4 = self.ipv4.filter(|_| v4).map(IpAddr::V4);
        ipv4.or(self.ipv6.filter(|_| v6).map(IpAddr::V6))
    }
}

/// What an edge tells the homes: every server's state while it makes the
/// pool's decisions, nothing while another edge does (with a shared store
/// every edge sees the same pool, and one speaks for it).
pub fn announcements(servers: &[HomeServer], leading: bool) -> Vec<Announcement> {
    if !leading {
        return Vec::new();
    }
    servers.iter().map(Announcement::of).collect()
}

impl Keys {
    /// The state message telling `home` its `state`, sent at `sent_ms`
    /// (milliseconds since the epoch).
    pub fn state_message(&self, home: IpAddr, state: HomeState, sent_ms: u64) -> [u8; PROBE_LEN] {
        StateMessage::signed(&state_key(&self.secret), address(home), state.wire(), sent_ms).to_bytes()
    }
}

/// Why a state message was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateRejected {
    #[error("not a state message (length, header, family, state or reserved bytes)")]
    Malformed,
    #[error("its MAC does not match: tampered with, or signed with another pool's probe secret")]
    Forged,
    #[error("it names another home than this one's --address")]
    OtherHome,
    #[error("it was sent more than 30 s from this host's clock: set the edge's and this host's clocks (NTP)")]
    OutOfWindow,
    #[error("it is not newer than the last one accepted (a replay)")]
    Replayed,
}

/// State messages accepted, and rejected by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub accepted: u64,
    pub malformed: u64,
    pub forged: u64,
    pub other_home: u64,
    pub out_of_window: u64,
    pub replayed: u64,
}

impl StateCounts {
    fn count(&mut self, verdict: Result<(), StateRejected>) {
        let counter = match verdict {
            Ok(()) => &mut self.accepted,
            Err(StateRejected::Malformed) => &mut self.malformed,
            Err(StateRejected::Forged) => &mut self.forged,
            Err(StateRejected::OtherHome) => &mut self.other_home,
            Err(StateRejected::OutOfWindow) => &mut self.out_of_window,
            Err(StateRejected::Replayed) => &mut self.replayed,
        };
        *counter += 1;
    }

    pub fn rejected(&self) -> u64 {
        self.malformed + self.forged + self.other_home + self.out_of_window + self.replayed
    }
}

/// A home's side: what the edges said last, and the operator's hold.
///
/// It answers probes unless held (`hold`) or the last state message
/// accepted said draining or down. Before any message it answers, as it
/// did before edges sent them; when the messages stop (the edge is gone,
/// or the network between), it keeps the last state it was told.
pub struct Follower {
    key: [u64; 2],
    /// This home's addresses (port 0): a message must name one of them.
    homes: Vec<Endpoint>,
    /// The newest message accepted: when it was sent, and what it said.
    last: Option<(u64, HomeState)>,
    held: bool,
    pub counts: StateCounts,
    /// When a reject was last logged (milliseconds since the epoch).
    reject_logged_ms: Option<u64>,
}

impl Follower {
    pub fn new(keys: &Keys, homes: &[IpAddr]) -> Self {
        Self {
            key: state_key(&keys.secret),
            homes: homes.iter().map(|&ip| address(ip)).collect(),
            last: None,
            held: false,
            counts: StateCounts::default(),
            reject_logged_ms: None,
        }
    }

    /// Takes a datagram read on the probe port at `now_ms`: the state it
    /// tells, or why it was rejected. Either is counted.
    pub fn receive(&mut self, datagram: &[u8], now_ms: u64) -> Result<HomeState, StateRejected> {
        let judged = self.judge(datagram, now_ms);
        self.counts.count(judged.map(|_| ()));
        let (sent_ms, state) = judged?;
        self.last = Some((sent_ms, state));
        Ok(state)
    }

    /// `receive`, logged: a change of what the edge says at info, rejects
    /// at warn (at most once per `REJECT_LOG_GAP_MS`, with the counts).
    pub fn heed(&mut self, datagram: &[u8], now_ms: u64) {
        let before = self.edge_state();
        match self.receive(datagram, now_ms) {
            Ok(state) if before != Some(state) => {
                tracing::info!(?state, answering = self.answering(), "the edge told this home its state");
            }
            Ok(_) => {}
            Err(error) => {
                if self.reject_logged_ms.is_some_and(|at| now_ms.saturating_sub(at) < REJECT_LOG_GAP_MS) {
                    return;
                }
                self.reject_logged_ms = Some(now_ms);
                tracing::warn!(%error, counts = ?self.counts, "a state message was rejected");
            }
        }
    }

    fn judge(&self, datagram: &[u8], now_ms: u64) -> Result<(u64, HomeState), StateRejected> {
        let message = parse_state(datagram).ok_or(StateRejected::Malformed)?;
        let state = HomeState::from_wire(message.state).ok_or(StateRejected::Malformed)?;
        if !message.signed_by(&self.key) {
            return Err(StateRejected::Forged);
        }
        if !self.homes.contains(&message.home) {
            return Err(StateRejected::OtherHome);
        }
        if message.sent_ms.abs_diff(now_ms) > CLOCK_WINDOW_MS {
            return Err(StateRejected::OutOfWindow);
        }
        if self.last.is_some_and(|(sent_ms, _)| message.sent_ms <= sent_ms) {
            return Err(StateRejected::Replayed);
        }
        Ok((message.sent_ms, state))
    }

    /// The operator's override (`decap` gets SIGUSR1 to hold, SIGUSR2 to
    /// release): held, the home is silent whatever the edge says.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// What the last message accepted said, if any came.
    pub fn edge_state(&self) -> Option<HomeState> {
        self.last.map(|(_, state)| state)
    }

    /// Whether this home answers probes.
    pub fn answering(&self) -> bool {
        !self.held && self.edge_state().is_none_or(|state| state == HomeState::Active)
    }

    /// What the readers of the probe port check before they queue a
    /// datagram, so a flood of unsigned ones cannot crowd out the edge's.
    pub fn signature(&self) -> Signature {
        Signature(self.key)
    }
}

/// A home's state key, for the readers of its probe port.
#[derive(Clone, Copy)]
pub struct Signature([u64; 2]);

impl Signature {
    /// Whether `datagram` is a state message signed with this key (the
    /// follower still checks the rest).
    pub fn signs(&self, datagram: &[u8]) -> bool {
        parse_state(datagram).is_some_and(|message| message.signed_by(&self.0))
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
