//! Map names, sizes, keys and values.

use bytemuck::{Pod, Zeroable};

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Home servers are addressed by their index in `SERVERS`.
pub const MAX_SERVERS: u32 = 256;
/// Clients on the fast path; the LRU evicts beyond this and evicted clients
/// come back through first contact.
pub const MAX_CLIENTS: u32 = 1 << 20;
pub const MAX_SERVICES: u32 = 64;
pub const MAX_DECAP_ADDRESSES: u32 = 64;

pub const CONFIG_MAP: &str = "CONFIG";
pub const SERVICES_MAP: &str = "SERVICES";
pub const SERVERS_MAP: &str = "SERVERS";
pub const CLIENTS_MAP: &str = "CLIENTS";
pub const NAT_REPLIES_MAP: &str = "NAT_REPLIES";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const SERVER_STATS_MAP: &str = "SERVER_STATS";
pub const DECAP_ADDRESSES_MAP: &str = "DECAP_ADDRESSES";
pub const DECAP_SOURCES_MAP: &str = "DECAP_SOURCES";
pub const EVENTS_MAP: &str = "EVENTS";
pub const PROBE_MAP: &str = "PROBE";
/// Per-CPU packet counts of the clients, by `ClientEntry::load_slot`.
pub const LOADS_MAP: &str = "LOADS";
/// Assigned AORs' homes, by `aor::aor_hash` (`AorRoute`).
pub const AORS_MAP: &str = "AORS";
/// The program array `redirector` tail-calls `OTHER_LINE_PROGRAM` through.
pub const OTHER_LINES_MAP: &str = "OTHER_LINES";
/// Upstream proxies' addresses, keyed by `proxy_key`: in dsr, only a miss
/// from one of them has its Vias read (see `xdp/mod.rs`, rule 6). Never
/// pinned: a new program starts empty, and each proxy's next request that
/// goes up puts it back.
pub const PROXIES_MAP: &str = "PROXIES";
/// Upstream proxies (SBCs, other proxies) known at once; the LRU forgets
/// the one least lately seen beyond this, and the daemon writes it back
/// when a request of its goes up again.
pub const MAX_PROXIES: u32 = 4096;

/// The `PROXIES` key of a datagram's source: its address alone (an SBC
/// sends from many ports), as an `Endpoint` with port 0.
#[inline(always)]
pub const fn proxy_key(source: &Endpoint) -> Endpoint {
    Endpoint { port_be: 0, ..*source }
}

/// The layout of the maps a daemon pins (their keys, values and what they
/// mean). A daemon adopts pinned maps only of its own layout; bump this
/// whenever a pinned map's key or value type changes, even if its size
/// does not.
pub const MAP_LAYOUT: u32 = 8;
pub const THROTTLED_MAP: &str = "THROTTLED";

/// `SERVICES` values: what the program does with UDP to that endpoint.
/// A SIP service address and port: first contact and the fast path.
pub const SERVICE_SIP: u8 = 1;
/// A service address and the probe port: probes answered for the pool
/// (`probe`).
pub const SERVICE_PROBE: u8 = 2;

/// Bytes of the `EVENTS` ring buffer (a power of two, a multiple of the page).
pub const EVENTS_BYTES: u32 = 64 * 1024;

pub const REDIRECTOR_PROGRAM: &str = "redirector";
pub const DECAP_PROGRAM: &str = "redirector_decap";
pub const PASS_PROGRAM: &str = "redirector_pass";
/// A shared socket's other lines, tail-called by `redirector`
/// through `OTHER_LINES`.
pub const OTHER_LINE_PROGRAM: &str = "redirector_other_line";
/// The benchmark's floor: the least a forwarder does (`xdp/floor.rs`).
pub const FLOOR_PROGRAM: &str = "redirector_floor";
/// The floor's one map, never pinned: source endpoint to `FloorHop`.
pub const FLOOR_MAP: &str = "FLOOR";
pub const MAX_FLOOR_HOPS: u32 = 64;
/// The benchmark's physical limit: the MACs written and `XDP_TX`, nothing
/// else (`xdp/floor.rs`).
pub const LIMIT_PROGRAM: &str = "redirector_limit";
/// The limit's one map, never pinned: one `FloorHop` for every frame.
pub const LIMIT_MAP: &str = "LIMIT";
/// Next hops the daemon keeps (`NextHop`), by `server_hop`; never pinned:
/// a new daemon recomputes them, the FIB serving meanwhile.
pub const HOPS_MAP: &str = "HOPS";
/// `HOP_STATE[0]`: which `HOPS` entries are fresh (`HopState`).
pub const HOP_STATE_MAP: &str = "HOP_STATE";
/// One hop per home server slot and family.
pub const MAX_HOPS: u32 = 2 * MAX_SERVERS;

/// The `HOPS` slot of home server `slot`'s next hop for `family`.
pub const fn server_hop(slot: u32, family: u8) -> u32 {
    slot * 2 + (family == FAMILY_V6) as u32
}

/// Next hops the keeper keeps for nat replies (`NextHop`), by the prefix
/// the kernel routes a client by (`ReplyKey`, an LPM trie); never pinned.
pub const REPLY_HOPS_MAP: &str = "REPLY_HOPS";
/// The routes of both families plus the on-link clients the keeper keeps
/// a hop for; a client without one is left to the FIB.
pub const MAX_REPLY_HOPS: u32 = 1024;

/// `REPLY_HOPS`' key data: the family, then the address in
/// `Endpoint::addr`'s form, so both families share one trie; its prefix
/// length is `reply_prefix_bits` of the address bits matched.
pub type ReplyKey = [u8; 17];

/// The `REPLY_HOPS` key data of `addr` in `family`.
pub const fn reply_key(family: u8, addr: &[u8; 16]) -> ReplyKey {
    let mut key = [0u8; 17];
    key[0] = family;
    let mut i = 0;
    while i < 16 {
        key[i + 1] = addr[i];
        i += 1;
    }
    key
}

/// The LPM prefix length of a prefix of `bits` address bits: the family
/// byte always matches.
pub const fn reply_prefix_bits(bits: u8) -> u32 {
    8 + bits as u32
}

/// An address's own bits in `family`: what a packet's lookup matches with.
pub const fn address_bits(family: u8) -> u8 {
    if family == FAMILY_V4 { 32 } else { 128 }
}

/// An address and UDP port of either family. IPv4 uses the first 4 bytes of
/// `addr` and leaves the rest zero, so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u8,
    pub _pad: u8,
}

impl Endpoint {
    pub const fn v4(addr: [u8; 4], port_be: u16) -> Self {
        let mut full = [0u8; 16];
        full[0] = addr[0];
        full[1] = addr[1];
        full[2] = addr[2];
        full[3] = addr[3];
        Self { addr: full, port_be, family: FAMILY_V4, _pad: 0 }
    }

    pub const fn v6(addr: [u8; 16], port_be: u16) -> Self {
        Self { addr, port_be, family: FAMILY_V6, _pad: 0 }
    }
}

/// Forwarding mode, see DESIGN.md "Data plane".
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// IPIP / IPv6-in-IPv6 to the home server, which answers the client directly.
    Dsr = 0,
    /// Destination to the home server, source to the edge; replies rewritten back.
    Nat = 1,
}

pub const CONFIG_HAS_EDGE_V4: u8 = 1;
pub const CONFIG_HAS_EDGE_V6: u8 = 2;
/// `THROTTLED` may hold a throttle that has not lifted: the program looks
/// a first contact's source prefix up only while this is set (a miss
/// costs no lookup while nothing is throttled). Set before a throttle is
/// written; cleared only once every throttle written has lifted.
pub const CONFIG_THROTTLING: u8 = 4;
/// `PROXIES` may hold an upstream proxy: the program looks a dsr miss's
/// source address up only while this is set. Set before the first proxy
/// is written, never cleared while the program runs.
pub const CONFIG_KNOWS_PROXIES: u8 = 8;

/// `CONFIG[0]`: the edge's own addresses (outer source in dsr, rewritten
/// source in nat), the mode, and which of the lookups a miss may need
/// (`CONFIG_THROTTLING`, `CONFIG_KNOWS_PROXIES`) can find anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    pub edge_v4: [u8; 4],
    pub edge_v6: [u8; 16],
    pub mode: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Lifecycle of a home server as the data plane sees it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Slot not in use: its clients fall back to user space.
    Unused = 0,
    Active = 1,
    /// Takes no new clients, but the ones it has keep the fast path until moved.
    Draining = 2,
    /// Its clients fall back to user space until they are moved.
    Down = 3,
}

impl ServerState {
    pub const fn forwards(state: u8) -> bool {
        state == ServerState::Active as u8 || state == ServerState::Draining as u8
    }
}

pub const SERVER_HAS_V4: u8 = 1;
pub const SERVER_HAS_V6: u8 = 2;

/// `SERVERS[index]`: a home server's addresses and SIP port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Server {
    pub v4: [u8; 4],
    pub v6: [u8; 16],
    pub port_be: u16,
    pub state: u8,
    pub flags: u8,
}

/// `CLIENTS[client endpoint]`: where the client's traffic goes. A hit
/// reads it and writes nothing to it but `last_seen_ns`, at most once per
/// `LAST_SEEN_GRANULARITY_NS`: every CPU that forwards the client shares
/// the entry's cache line, so a write per packet would bounce it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientEntry {
    pub server: u32,
    /// nat mode: the edge source port this client's traffic leaves with,
    /// chosen by user space and unique per edge address. 0 in dsr mode.
    pub nat_port_be: u16,
    /// `CLIENT_*` bits.
    pub flags: u16,
    /// CLOCK_MONOTONIC (coarse) of the client's last packet, to within
    /// `LAST_SEEN_GRANULARITY_NS` (see `stamps_last_seen`); user space
    /// removes entries idle too long.
    pub last_seen_ns: u64,
    /// With `CLIENT_CHECKS_REGISTER` or `CLIENT_SHARED`: the
    /// `aor::aor_hash` of the AOR the entry was installed for, whose
    /// requests (`aor::request_aor`) may take it.
    pub aor_hash: u64,
    /// User space's key of the AOR the entry was last installed for (0 for
    /// clients pinned in the config): a daemon adopting pinned maps after a
    /// restart finds each entry's AOR by it. The program never reads it.
    pub owner: u64,
    /// The client's index in `LOADS`, where the program counts its packets
    /// (the rebalancer's load estimate): handed out by user space, one per
    /// client address, and zeroed before it is handed out again.
    pub load_slot: u32,
    pub _pad: u32,
}

/// A `load_slot` beyond any `LOADS`: the client's packets are not counted
/// (user space had no slot free for it).
pub const NO_LOAD_SLOT: u32 = u32::MAX;

/// How stale a client's `last_seen_ns` may get while it sends: idle expiry
/// sees its clients to within this.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// Whether a hit at `now` stamps an entry last stamped at `last_seen`
/// (a stamp a little ahead of the coarse clock, written by user space from
/// the fine one, is not stale).
pub const fn stamps_last_seen(now: u64, last_seen: u64) -> bool {
    now.saturating_sub(last_seen) >= LAST_SEEN_GRANULARITY_NS
}

/// `ClientEntry::flags`, nat mode: the client's request that put it on the
/// fast path had no `rport` in its Via, so the program adds one to its
/// requests (see `via`). Clients that ask for rport skip the Via scan.
pub const CLIENT_ADDS_RPORT: u16 = 1;

/// `ClientEntry::flags`: a REGISTER from this socket whose `To` AOR hashes
/// to anything but `aor_hash` goes up to the daemon (see `aor`).
pub const CLIENT_CHECKS_REGISTER: u16 = 2;

/// `ClientEntry::flags`: the socket carries several AORs (a multi-line
/// phone, an IP-PBX): any request from it whose AOR (`To` of a REGISTER,
/// `From` of the others) hashes to anything but `aor_hash` goes up to the
/// daemon, which routes it by its AOR (see `aor`). Responses take the entry.
pub const CLIENT_SHARED: u16 = 4;

/// `AORS[aor_hash(canonical AOR)]`: the home server an assigned AOR's
/// requests go to when they come through another proxy (more than one
/// Via, dsr mode) or from a shared socket as its other line (dsr; nat by
/// the line's own edge port; see `xdp/mod.rs`). Written by the daemon, in
/// step with its assignments: rewritten in place after a move's commit,
/// removed when the AOR expires. The program writes only `last_seen_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AorRoute {
    /// The home server's slot in `SERVERS`, as `ClientEntry::server`.
    pub server: u32,
    /// nat: the edge port (network order) the line's datagrams leave from,
    /// whose `NAT_REPLIES` entry names the one socket that may use it and
    /// this home; 0 in dsr, and for a line the kernel does not send (nat).
    pub nat_port_be: u16,
    pub _pad: u16,
    /// When the program last routed a request by this entry
    /// (`bpf_ktime_get_coarse_ns`), at most once a second as
    /// `ClientEntry::last_seen_ns`; 0 until it does. Requests routed here
    /// reach no other sighting, so expiry reads it (`stamps_last_seen`).
    pub last_seen_ns: u64,
}

/// `FLOOR[source]`: the Ethernet addresses the floor program writes, in
/// the order of an Ethernet header's first 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FloorHop {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// `HOPS[server_hop(..)]`: how to reach a home server without asking the
/// FIB, as the daemon learned it from the kernel's route and neighbour
/// tables. The program uses it only while it is fresh (`HopState::fresh`)
/// and the packet fits `mtu`; otherwise it asks the FIB, as it did before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// The egress device.
    pub ifindex: u32,
    /// The largest IP packet the route takes (what the FIB checks `tot_len`
    /// against).
    pub mtu: u32,
    /// The `HopState` generation this entry was computed for.
    pub generation: u32,
    /// The neighbour's MAC then the egress device's: an Ethernet header's
    /// first 12 bytes.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The address the hop was computed for (`Endpoint::addr`'s form): a
    /// slot whose server changed address is stale until recomputed.
    pub addr: [u8; 16],
}

/// `HOP_STATE[0]`, written by the daemon's hop keeper alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HopState {
    /// Bumped when the kernel's tables changed in a way the hops do not yet
    /// reflect: every entry of another generation is stale.
    pub generation: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (coarse) until which the keeper vouches for the
    /// hops; it renews the lease while it runs, so hops left by a daemon
    /// that died are not followed for long.
    pub lease_until_ns: u64,
}

impl HopState {
    /// Whether home server hop `hop` may be followed to `addr` at `now_ns`.
    pub fn fresh(&self, hop: &NextHop, addr: &[u8; 16], now_ns: u64) -> bool {
        self.vouches(hop, now_ns) && hop.addr == *addr
    }

    /// Whether `hop` may be followed at `now_ns`, whatever address in its
    /// prefix it serves (a `REPLY_HOPS` entry: `addr` is its gateway or
    /// on-link client, not each destination).
    pub fn vouches(&self, hop: &NextHop, now_ns: u64) -> bool {
        hop.generation == self.generation && hop.ifindex != 0 && now_ns < self.lease_until_ns
    }
}

/// `NAT_REPLIES` key: the edge port a home server's reply is addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NatKey {
    pub edge_port_be: u16,
    pub family: u8,
    pub _pad: u8,
}

/// `NAT_REPLIES` value: how to rewrite a reply back to the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatEntry {
    pub client: Endpoint,
    /// The service address and port the client talked to: the reply's source.
    pub service: Endpoint,
    /// Only replies from this server's address and port are rewritten.
    pub server: u32,
}

/// `SERVER_STATS[index]` (per CPU): what the fast path sent to a home server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServerStats {
    pub packets: u64,
    pub bytes: u64,
}

/// What an `EVENTS` record reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A client's packet found a route but no resolved neighbour towards its
    /// home server `server`: user space should make the kernel resolve it
    /// now rather than at the next health check.
    FibMiss = 1,
}

/// One `EVENTS` record: something the program saw that user space must act on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    pub kind: u32,
    pub server: u32,
    /// `FAMILY_V4` or `FAMILY_V6`: which of the server's addresses.
    pub family: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// Compiles only for bytemuck's `Pod`.
    const fn assert_pod<T: Pod>() {}

    macro_rules! aya_pod {
        ($($map_type:ty),*) => {$(
            const _: () = assert_pod::<$map_type>();
            // SAFETY: bytemuck's Pod, asserted above, makes the same promise:
            // #[repr(C)], no padding, any bit pattern valid.
            unsafe impl aya::Pod for $map_type {}
        )*};
    }

    aya_pod!(
        Endpoint,
        Config,
        Server,
        ClientEntry,
        AorRoute,
        FloorHop,
        NextHop,
        HopState,
        NatKey,
        NatEntry,
        ServerStats,
        crate::Throttle,
        crate::probe::ProbeConfig
    );
}
