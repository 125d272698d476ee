//! The next hops the program follows without asking the FIB: one per home
//! server slot and family (`HOPS`), and in nat mode those of replies to
//! clients (`REPLY_HOPS`, see `reply_hops`), fresh while `HOP_STATE` says
//! so (see the rules in `redirector-ebpf/src/xdp/mod.rs`). The `Keeper` is
//! the one writer of the three maps: it resolves each home server's
//! address through the kernel's tables (`netlink`), mirrors the route
//! prefixes replies are routed by, and makes every hop stale at once when
//! the tables change under them, until it has recomputed them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{Array, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use netlink_packet_route::AddressFamily;
use redirector_ebpf::{
    HOP_STATE_MAP, HOPS_MAP, HopState, MAX_REPLY_HOPS, NextHop, REPLY_HOPS_MAP, ReplyKey, reply_key, reply_prefix_bits,
    server_hop,
};

use crate::model::HomeServer;

use super::{
    fast_path::monotonic_ns,
    loader::endpoint,
    netlink::{Change, Mac, NetlinkError, Prefix, Reach, Route, Tables},
    reply_hops::{Planned, plan},
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

/// `HOPS`, `REPLY_HOPS` and `HOP_STATE`, taken out of the data plane for
/// their writer.
pub struct HopMaps {
    hops: Array<MapData, NextHop>,
    replies: LpmTrie<MapData, ReplyKey, NextHop>,
    state: Array<MapData, HopState>,
}

impl HopMaps {
    pub fn new(
        hops: Array<MapData, NextHop>,
        replies: LpmTrie<MapData, ReplyKey, NextHop>,
        state: Array<MapData, HopState>,
    ) -> Self {
        Self { hops, replies, state }
    }

    /// Writes the reply hop of `prefix`.
    pub fn set_reply(&mut self, prefix: Prefix, hop: NextHop) -> Result<()> {
        self.replies
            .insert(&reply_entry_key(prefix), hop, 0)
            .map_err(|source| HopError::Map { name: REPLY_HOPS_MAP, source })
    }

    /// The reply hop written for exactly `prefix`, if any.
    pub fn reply(&self, prefix: Prefix) -> Result<Option<NextHop>> {
        match self.replies.get(&reply_entry_key(prefix), 0) {
            Ok(hop) => Ok(Some(hop)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(HopError::Map { name: REPLY_HOPS_MAP, source }),
        }
    }

    pub fn remove_reply(&mut self, prefix: Prefix) -> Result<()> {
        self.replies.remove(&reply_entry_key(prefix)).map_err(|source| HopError::Map { name: REPLY_HOPS_MAP, source })
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

/// `prefix` as a `REPLY_HOPS` key.
fn reply_entry_key(prefix: Prefix) -> Key<ReplyKey> {
    let address = endpoint(prefix.address, 0);
    Key::new(reply_prefix_bits(prefix.len), reply_key(address.family, &address.addr))
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
    /// Whether reply hops are kept (nat mode).
    keeps_replies: bool,
    /// The reply hops written, by prefix (`None`: left to the FIB).
    replies: HashMap<Prefix, Option<Route>>,
    /// The on-link prefixes, by device: a neighbour appearing in one is a
    /// client that may get a hop of its own.
    on_link: Vec<(u32, Prefix)>,
}

impl Keeper {
    pub fn new(maps: HopMaps, tables: Tables, sources: Sources, lease: Duration) -> Self {
        let (kept, replies, on_link) = (HashMap::new(), HashMap::new(), Vec::new());
        Self { maps, tables, sources, lease, generation: 1, kept, keeps_replies: false, replies, on_link }
    }

    /// Keeps the hops of nat replies too.
    pub fn keeping_replies(self) -> Self {
        Self { keeps_replies: true, ..self }
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
            let hop = route.and_then(|route| self.entry(&route, destination.address)).unwrap_or_default();
            self.maps.set(destination.index(), hop)?;
            kept.insert(destination, route);
        }
        let wanted: Vec<u32> = destinations.iter().map(Destination::index).collect();
        for gone in self.kept.keys().map(Destination::index).filter(|index| !wanted.contains(index)) {
            self.maps.set(gone, NextHop::default())?;
        }
        self.kept = kept;
        if self.keeps_replies {
            self.recompute_replies()?;
        }
        self.renew()
    }

    /// Writes the reply hops of the kernel's route prefixes and on-link
    /// clients now (`reply_hops::plan`) under the current generation, and
    /// removes those of prefixes gone.
    fn recompute_replies(&mut self) -> Result<()> {
        let mut prefixes = Vec::new();
        let mut neighbours = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            prefixes.extend(self.tables.prefixes(family)?.unwrap_or_default());
            neighbours.extend(self.tables.neighbours(family)?);
        }
        let mut links: HashMap<u32, Option<(Mac, u32)>> = HashMap::new();
        let mut written = HashMap::new();
        for (prefix, planned) in plan(&prefixes, &neighbours, MAX_REPLY_HOPS as usize) {
            let route = match planned {
                Planned::Hop { ifindex, via, mtu, mac } => {
                    let link = match links.get(&ifindex) {
                        Some(link) => *link,
                        None => *links.entry(ifindex).or_insert(self.tables.link(ifindex)?),
                    };
                    link.map(|link| Route::through(link, ifindex, via, mtu, mac))
                }
                Planned::Fib => None,
            };
            let hop = route.and_then(|route| self.entry(&route, route.via)).unwrap_or_default();
            self.maps.set_reply(prefix, hop)?;
            written.insert(prefix, route);
        }
        for &gone in self.replies.keys().filter(|prefix| !written.contains_key(prefix)) {
            self.maps.remove_reply(gone)?;
        }
        self.replies = written;
        self.on_link = prefixes
            .iter()
            .filter_map(|(prefix, reach)| match reach {
                Reach::OnLink { ifindex, .. } => Some((*ifindex, *prefix)),
                _ => None,
            })
            .collect();
        Ok(())
    }

    /// The reply hop written for exactly `prefix` (`None`: no entry).
    pub fn reply_hop(&self, prefix: Prefix) -> Result<Option<NextHop>> {
        self.maps.reply(prefix)
    }

    /// The hop written for `destination`.
    pub fn hop(&self, destination: Destination) -> Result<NextHop> {
        self.maps.get(destination.index())
    }

    /// The hop of `route`, computed for `address`.
    fn entry(&self, route: &Route, address: IpAddr) -> Option<NextHop> {
        Some(NextHop {
            ifindex: route.ifindex,
            mtu: route.mtu,
            generation: self.generation,
            dst_mac: route.dst_mac?,
            src_mac: route.src_mac,
            addr: endpoint(address, 0).addr,
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

    /// Whether `change` may make a kept hop wrong (see `affects`), or is a
    /// new on-link client a reply hop could be kept for.
    pub fn affected_by(&self, change: &Change) -> bool {
        affects(self.kept.values().flatten().chain(self.replies.values().flatten()), change)
            || self.is_new_on_link_client(change)
    }

    fn is_new_on_link_client(&self, change: &Change) -> bool {
        let Change::Neighbour { ifindex, address, mac: Some(_) } = *change else { return false };
        let room = self.replies.len() < MAX_REPLY_HOPS as usize;
        room && !self.replies.contains_key(&Prefix::host(address))
            && self.on_link.iter().any(|(at, prefix)| *at == ifindex && prefix.contains(address))
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
