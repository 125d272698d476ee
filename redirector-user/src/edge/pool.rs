//! The home servers as the edge sees them now. The state owner publishes a
//! new `Pool` whenever a server changes (drain, health); first-contact cores
//! read the latest without a lock (`PoolView`).

use std::{net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;

use crate::{
    edge::rendezvous::{self, Candidate},
    model::{HomeServer, ServerState},
    sip::Aor,
};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pool {
    servers: Vec<HomeServer>,
}

/// The published pool, shared between the owner and every reader.
pub type PoolView = Arc<ArcSwap<Pool>>;

pub fn view(pool: Pool) -> PoolView {
    Arc::new(ArcSwap::from_pointee(pool))
}

impl Pool {
    pub fn new(servers: Vec<HomeServer>) -> Self {
        Self { servers }
    }

    pub fn servers(&self) -> &[HomeServer] {
        &self.servers
    }

    pub fn server(&self, name: &str) -> Option<&HomeServer> {
        self.servers.iter().find(|s| s.name == name)
    }

    pub fn by_index(&self, index: u32) -> Option<&HomeServer> {
        self.servers.iter().find(|s| s.index == index)
    }

    /// Configured and not down: its clients stay with it.
    pub fn usable(&self, name: &str) -> bool {
        self.server(name).is_some_and(|s| s.effective_state() != ServerState::Down)
    }

    /// One of the servers has the address `ip`.
    pub fn is_home(&self, ip: IpAddr) -> bool {
        self.servers.iter().any(|s| s.has_address(ip))
    }

    /// Where rendezvous hashing puts `aor` among the servers taking new
    /// clients, other than `excluding`.
    pub fn choose(&self, aor: &Aor, excluding: Option<&str>) -> Option<&HomeServer> {
        let candidates: Vec<Candidate<'_>> = self
            .servers
            .iter()
            .filter(|s| s.accepts_new() && Some(s.name.as_str()) != excluding)
            .map(|s| Candidate { name: &s.name, weight: s.weight })
            .collect();
        let name = rendezvous::choose(aor.as_str(), &candidates)?;
        self.server(name)
    }

    /// This pool with `change` applied to the server `matches` picks;
    /// `None` if there is no such server.
    pub fn changed(
        &self,
        matches: impl Fn(&HomeServer) -> bool,
        change: impl FnOnce(&mut HomeServer),
    ) -> Option<(Self, HomeServer)> {
        let mut next = self.clone();
        let server = next.servers.iter_mut().find(|s| matches(s))?;
        change(server);
        let changed = server.clone();
        Some((next, changed))
    }
}
