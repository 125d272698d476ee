//! The fast path's client entries as first contact reads them: which client
//! sockets the kernel forwards, and where. A copy of the kernel's client
//! map kept in step by `FastPath` (its only writer, on the state owner's
//! thread) and read by every first-contact core without a syscall: a
//! datagram the program passed up from such a client (an IP fragment, or
//! one too big for the egress MTU once forwarded) is sent on as the kernel
//! sends the client's small ones, not answered as a first contact. In nat
//! mode the reply entries are kept too, by edge port, so a home server's
//! reply that came as fragments is relayed to its client as the program
//! relays the small ones. The upstream proxies whose misses the program
//! reads (`PROXIES`) are kept too, so first contact asks the owner to
//! write only a proxy not written lately.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// Where the kernel sends one client's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRoute {
    /// The home server's slot.
    pub server: u32,
    /// nat mode: the client's edge port.
    pub nat_port: Option<u16>,
    /// nat mode: the program adds `;rport` to its requests' top Via
    /// (`CLIENT_ADDS_RPORT`).
    pub adds_rport: bool,
    /// Only REGISTERs (every request when `shared`) whose AOR hashes to
    /// this take the route (`CLIENT_CHECKS_REGISTER`); any with `None`.
    pub aor_hash: Option<u64>,
    /// The socket carries several AORs (`CLIENT_SHARED`).
    pub shared: bool,
}

/// Where the kernel relays a home server's reply to an edge port (nat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatReply {
    pub client: SocketAddr,
    /// Where the client sent to: the relayed reply's source.
    pub service: SocketAddr,
    /// Only replies from this server's slot are relayed.
    pub server: u32,
}

/// Keyed by what clients send, so hashed with a random seed.
#[derive(Debug, Default)]
pub struct InstalledClients {
    routes: DashMap<SocketAddr, KernelRoute, foldhash::fast::RandomState>,
    /// By (IPv4?, edge port).
    nat_replies: DashMap<(bool, u16), NatReply, foldhash::fast::RandomState>,
    /// Upstream proxies' addresses, by when they were last put in `PROXIES`.
    proxies: DashMap<IpAddr, Instant, foldhash::fast::RandomState>,
    /// nat: shared sockets' other lines `AORS` routes by an edge port of
    /// their own, by `aor_hash`: their home's slot and that port.
    line_routes: DashMap<u64, LineRoute, foldhash::fast::RandomState>,
}

/// nat: where `AORS` routes a shared socket's other line (`AorRoute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRoute {
    pub server: u32,
    pub nat_port: u16,
}

/// How long a proxy written to `PROXIES` is taken to be there: its LRU may
/// have dropped it since (more proxies than `MAX_PROXIES`), so one whose
/// requests still go up is written again after this.
pub const PROXY_REWRITTEN_AFTER: Duration = Duration::from_secs(60);

impl InstalledClients {
    pub fn get(&self, client: SocketAddr) -> Option<KernelRoute> {
        self.routes.get(&client).map(|route| *route)
    }

    /// `client`'s kernel entry was written.
    pub fn put(&self, client: SocketAddr, route: KernelRoute) {
        self.routes.insert(client, route);
    }

    /// `client`'s kernel entry was removed.
    pub fn remove(&self, client: SocketAddr) {
        self.routes.remove(&client);
    }

    /// The reply entry of edge port `edge_port` in `ipv4`'s family.
    pub fn nat_reply(&self, ipv4: bool, edge_port: u16) -> Option<NatReply> {
        self.nat_replies.get(&(ipv4, edge_port)).map(|reply| *reply)
    }

    /// A reply entry was written.
    pub fn put_nat_reply(&self, edge_port: u16, reply: NatReply) {
        self.nat_replies.insert((reply.client.is_ipv4(), edge_port), reply);
    }

    /// Whether upstream proxy `source` is to be written to `PROXIES`: not
    /// written in the last `PROXY_REWRITTEN_AFTER`.
    pub fn proxy_unwritten(&self, source: IpAddr, now: Instant) -> bool {
        self.proxies.get(&source).is_none_or(|at| now.saturating_duration_since(*at) >= PROXY_REWRITTEN_AFTER)
    }

    /// Upstream proxy `source` was written to `PROXIES` at `now`. As many
    /// are remembered as the map holds: beyond that, those written before
    /// the last `PROXY_REWRITTEN_AFTER` are forgotten, and if that is not
    /// enough (a flood of forged sources), all of them (each is written
    /// again at its next request that goes up).
    pub fn proxy_written(&self, source: IpAddr, now: Instant) {
        if self.proxies.len() >= redirector_ebpf::MAX_PROXIES as usize {
            self.proxies.retain(|_, at| now.saturating_duration_since(*at) < PROXY_REWRITTEN_AFTER);
            if self.proxies.len() >= redirector_ebpf::MAX_PROXIES as usize {
                self.proxies.clear();
            }
        }
        self.proxies.insert(source, now);
    }

    /// A reply entry was removed.
    pub fn remove_nat_reply(&self, ipv4: bool, edge_port: u16) {
        self.nat_replies.remove(&(ipv4, edge_port));
    }

    /// nat: the route of the line whose AOR hashes to `hash`, if `AORS`
    /// sends it by a port of its own.
    pub fn line_route(&self, hash: u64) -> Option<LineRoute> {
        self.line_routes.get(&hash).map(|route| *route)
    }

    /// A line's route with its own port was written.
    pub fn put_line_route(&self, hash: u64, route: LineRoute) {
        self.line_routes.insert(hash, route);
    }

    /// The route under `hash` was removed, or written without a port.
    pub fn remove_line_route(&self, hash: u64) {
        self.line_routes.remove(&hash);
    }
}
