//! The home servers as the edge sees them now. The state owner publishes a
//! new `Pool` whenever a server changes (drain, health, `servers add /
//! remove / set`, a reload); first-contact cores read the latest without a
//! lock (`PoolView`). Each server has a slot in the kernel's SERVERS array;
//! the pool also remembers which slots were ever used (see
//! `edge::servers` for why a removed server's slot waits to be reused).

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
    /// The lowest SERVERS slot never used.
    next_slot: u32,
    /// Slots of removed servers, longest retired first.
    retired: Vec<u32>,
}

/// The published pool, shared between the owner and every reader.
pub type PoolView = Arc<ArcSwap<Pool>>;

pub fn view(pool: Pool) -> PoolView {
    Arc::new(ArcSwap::from_pointee(pool))
}

impl Pool {
    /// `servers` in their slots, the slots above them never used.
    pub fn new(servers: Vec<HomeServer>) -> Self {
        let next_slot = servers.iter().map(|s| s.index + 1).max().unwrap_or(0);
        Self { servers, next_slot, retired: Vec::new() }
    }

    /// A pool as it was saved: its servers and the slots' history.
    pub fn restore(servers: Vec<HomeServer>, next_slot: u32, retired: Vec<u32>) -> Self {
        let next_slot = next_slot.max(Self::new(servers.clone()).next_slot);
        Self { servers, next_slot, retired }
    }

    /// The lowest slot never used.
    pub fn next_slot(&self) -> u32 {
        self.next_slot
    }

    /// Slots of removed servers, longest retired first.
    pub fn retired(&self) -> &[u32] {
        &self.retired
    }

    /// The slot a new server gets: one never used if any is left, else
    /// the one retired longest ago; `None` when SERVERS is full.
    pub(crate) fn take_slot(&mut self) -> Option<u32> {
        if self.next_slot < redirector_ebpf::MAX_SERVERS {
            self.next_slot += 1;
            return Some(self.next_slot - 1);
        }
        (!self.retired.is_empty()).then(|| self.retired.remove(0))
    }

    pub(crate) fn push(&mut self, server: HomeServer) {
        self.servers.push(server);
    }

    /// Takes the server `name` out, its slot retired.
    pub(crate) fn take(&mut self, name: &str) -> Option<HomeServer> {
        let position = self.servers.iter().position(|s| s.name == name)?;
        let server = self.servers.remove(position);
        self.retired.push(server.index);
        Some(server)
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
