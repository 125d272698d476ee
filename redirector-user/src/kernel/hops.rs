//! The next hops the program follows without asking the FIB: one per home
//! server slot and family (`HOPS`), fresh while `HOP_STATE` says so (see
//! the rules in `redirector-ebpf/src/xdp/mod.rs`). The `Keeper` is the one
//! writer of both maps: it resolves each home server's address through the
//! kernel's tables (`netlink`), and makes every hop stale at once when the
//! tables change under them, until it has recomputed them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{Array, MapData, MapError};
use redirector_ebpf::{HOP_STATE_MAP, HOPS_MAP, HopState, NextHop, server_hop};

use crate::model::HomeServer;

use super::{
    fast_path::monotonic_ns,
    loader::endpoint,
    netlink::{Change, NetlinkError, Route, Tables},
};

/// How long the keeper vouches for the hops after each renewal: if it
/// stops renewing (the daemon died), the program asks the FIB again.
pub const LEASE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum HopError {
    #[error("BPF map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

type Result<T, E = HopError> = std::result::Result<T, E>;

/// `HOPS` and `HOP_STATE`, taken out of the data plane for their writer.
pub struct HopMaps {
    hops: Array<MapData, NextHop>,
    state: Array<MapData, HopState>,
}

impl HopMaps {
    pub fn new(hops: Array<MapData, NextHop>, state: Array<MapData, HopState>) -> Self {
        Self { hops, state }
    }

    pub fn set(&mut self, index: u32, hop: NextHop) -> Result<()> {
        self.hops.set(index, hop, 0).map_err(|source| HopError::Map { name: HOPS_MAP, source })
    }

    pub fn get(&self, index: u32) -> Result<NextHop> {
        self.hops.get(&index, 0).map_err(|source| HopError::Map { name: HOPS_MAP, source })
    }

    pub fn publish(&mut self, state: HopState) -> Result<()> {
        self.state.set(0, state, 0).map_err(|source| HopError::Map { name: HOP_STATE_MAP, source })
    }
}

/// A home server's address the keeper keeps a hop for, in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub slot: u32,
    pub address: IpAddr,
}

impl Destination {
    /// Every address of every one of `servers`, in its slot.
    pub fn of_servers(servers: &[HomeServer]) -> Vec<Self> {
        servers
            .iter()
            .flat_map(|server| {
                let addresses = [server.ipv4.map(IpAddr::from), server.ipv6.map(IpAddr::from)];
                addresses.into_iter().flatten().map(|address| Self { slot: server.index, address })
            })
            .collect()
    }

    fn index(&self) -> u32 {
        server_hop(self.slot, endpoint(self.address, 0).family)
    }
}

/// The edge's own addresses, the source of what it forwards (the FIB is
/// asked from them too).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Sources {
    fn of(&self, destination: IpAddr) -> Option<IpAddr> {
        match destination {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

pub struct Keeper {
    maps: HopMaps,
    tables: Tables,
    sources: Sources,
    /// How long each renewal vouches for the hops (`LEASE` in the daemon).
    lease: Duration,
    generation: u32,
    /// What each destination resolved to when last computed (`None`: no
    /// route out of an Ethernet device).
    kept: HashMap<Destination, Option<Route>>,
}

impl Keeper {
    pub fn new(maps: HopMaps, tables: Tables, sources: Sources, lease: Duration) -> Self {
        Self { maps, tables, sources, lease, generation: 1, kept: HashMap::new() }
    }

    /// The destinations hops are kept for.
    pub fn destinations(&self) -> impl Iterator<Item = &Destination> {
        self.kept.keys()
    }

    /// Resolves every one of `destinations` and writes its hop (an empty,
    /// never fresh one when it has no resolved neighbour: the FIB serves
    /// it and reports the miss); slots no longer among them are emptied.
    /// The hops are written under a generation published only once they
    /// all are (every hop stale meanwhile): no packet follows one while its
    /// bytes are being written.
    pub fn recompute(&mut self, destinations: &[Destination]) -> Result<()> {
        self.invalidate()?;
        self.generation = self.generation.wrapping_add(1);
        let mut kept = HashMap::with_capacity(destinations.len());
        for &destination in destinations {
            let route = self.tables.resolve(destination.address, self.sources.of(destination.address))?;
            let hop = route.and_then(|route| self.entry(destination, &route)).unwrap_or_default();
            self.maps.set(destination.index(), hop)?;
            kept.insert(destination, route);
        }
        let wanted: Vec<u32> = destinations.iter().map(Destination::index).collect();
        for gone in self.kept.keys().map(Destination::index).filter(|index| !wanted.contains(index)) {
            self.maps.set(gone, NextHop::default())?;
        }
        self.kept = kept;
        self.renew()
    }

    /// The hop written for `destination`.
    pub fn hop(&self, destination: Destination) -> Result<NextHop> {
        self.maps.get(destination.index())
    }

    fn entry(&self, destination: Destination, route: &Route) -> Option<NextHop> {
        Some(NextHop {
            ifindex: route.ifindex,
            mtu: route.mtu,
            generation: self.generation,
            dst_mac: route.dst_mac?,
            src_mac: route.src_mac,
            addr: endpoint(destination.address, 0).addr,
        })
    }

    /// Makes every hop stale at once: the tables changed and the hops are
    /// not recomputed yet.
    pub fn invalidate(&mut self) -> Result<()> {
        self.generation = self.generation.wrapping_add(1);
        self.renew()
    }

    /// Vouches for the hops for another `LEASE`.
    pub fn renew(&mut self) -> Result<()> {
        let lease_until_ns = monotonic_ns() + self.lease.as_nanos() as u64;
        self.maps.publish(HopState { generation: self.generation, _pad: 0, lease_until_ns })
    }

    /// Stops vouching: the program asks the FIB for everything.
    pub fn release(&mut self) -> Result<()> {
        self.maps.publish(HopState { generation: self.generation, _pad: 0, lease_until_ns: 0 })
    }

    /// Whether `change` may make a kept hop wrong (see `affects`).
    pub fn affected_by(&self, change: &Change) -> bool {
        affects(self.kept.values().flatten(), change)
    }
}

/// Whether `change` may make a hop resolved to one of `routes` wrong: any
/// route or link change, or a new state of a neighbour some route goes
/// through whose MAC is not the one it was resolved with (a neighbour
/// merely going stale, as they do under XDP, changes nothing).
fn affects<'a>(mut routes: impl Iterator<Item = &'a Route>, change: &Change) -> bool {
    match *change {
        Change::Other => true,
        Change::Neighbour { ifindex, address, mac } => {
            routes.any(|route| route.ifindex == ifindex && route.via == address && route.dst_mac != mac)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

    fn route(via: &str, dst_mac: Option<[u8; 6]>) -> Route {
        Route { ifindex: 2, mtu: 1500, src_mac: [2, 0, 0, 0, 0, 1], via: via.parse().unwrap(), dst_mac }
    }

    fn neighbour(ifindex: u32, address: &str, mac: Option<[u8; 6]>) -> Change {
        Change::Neighbour { ifindex, address: address.parse().unwrap(), mac }
    }

    #[test]
    fn only_changes_that_differ_from_a_kept_hop_affect_it() {
        let routes = [route("10.0.0.11", Some(HOME)), route("10.0.0.1", None)];
        let affects = |change| affects(routes.iter(), &change);
        assert!(affects(Change::Other), "a route or link change");
        assert!(!affects(neighbour(2, "10.0.0.11", Some(HOME))), "the same MAC (a neighbour gone stale)");
        assert!(affects(neighbour(2, "10.0.0.11", Some([2, 0, 0, 0, 0, 0xa1]))), "a new MAC");
        assert!(affects(neighbour(2, "10.0.0.11", None)), "the neighbour failed or was deleted");
        assert!(affects(neighbour(2, "10.0.0.1", Some(HOME))), "an unresolved gateway resolved");
        assert!(!affects(neighbour(3, "10.0.0.11", None)), "the same address on another link");
        assert!(!affects(neighbour(2, "10.0.0.99", None)), "a neighbour no hop goes through");
    }
}
