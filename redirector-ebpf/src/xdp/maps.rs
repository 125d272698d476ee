//! The maps, declared once; names match `redirector_ebpf::*_MAP`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use redirector_ebpf::{
    AorRoute, COUNTER_COUNT, ClientEntry, Config, EVENTS_BYTES, Endpoint, Event, EventKind, FloorHop, HopState,
    MAX_CLIENTS, MAX_DECAP_ADDRESSES, MAX_FLOOR_HOPS, MAX_HOPS, MAX_PROXIES, MAX_REPLY_HOPS, MAX_SERVERS, MAX_SERVICES,
    MAX_THROTTLED, NatEntry, NatKey, NextHop, ReplyKey, Server, ServerStats, Throttle, probe::ProbeConfig,
};

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Service endpoints (VIP and port); the value says what they are for
/// (`SERVICE_SIP`, `SERVICE_PROBE`).
#[map]
pub static SERVICES: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// What probes are answered with (`probe`): one entry.
#[map]
pub static PROBE: Array<ProbeConfig> = Array::with_max_entries(1, 0);

#[map]
pub static SERVERS: Array<Server> = Array::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static CLIENTS: LruHashMap<Endpoint, ClientEntry> = LruHashMap::with_max_entries(MAX_CLIENTS, 0);

/// Assigned AORs' homes by `aor_hash`, for requests that come through
/// another proxy (`AorRoute`). A plain hash, sized with `CLIENTS`: the
/// daemon alone adds and removes entries, and one it cannot add (full)
/// leaves the AOR's requests to user space, as before.
#[map]
pub static AORS: HashMap<u64, AorRoute> = HashMap::with_max_entries(MAX_CLIENTS, 0);

/// `redirector_other_line` at 0, which `redirector` tail-calls for a shared
/// socket's datagram of another line. Set by the daemon when it
/// loads `redirector`, and pinned, so it outlives the daemon with the link.
#[map]
pub static OTHER_LINES: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// Upstream proxies' addresses (`redirector_ebpf::proxy_key`): in dsr,
/// the only sources whose misses have their Vias read. The value is
/// unused. LRU: a proxy that sends nothing more gives way to new ones.
#[map]
pub static PROXIES: LruHashMap<Endpoint, u8> = LruHashMap::with_max_entries(MAX_PROXIES, 0);

/// Packets of each client on the fast path, by `ClientEntry::load_slot`
/// (per CPU: a hit adds to its own CPU's copy, no shared line, no hash).
/// 8 bytes per client per CPU, sized with `CLIENTS`.
#[map]
pub static LOADS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_CLIENTS, 0);

#[map]
pub static NAT_REPLIES: LruHashMap<NatKey, NatEntry> = LruHashMap::with_max_entries(MAX_CLIENTS, 0);

/// Source prefixes whose first contact is throttled (see `throttle`).
#[map]
pub static THROTTLED: LruHashMap<Endpoint, Throttle> = LruHashMap::with_max_entries(MAX_THROTTLED, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
pub static SERVER_STATS: PerCpuArray<ServerStats> = PerCpuArray::with_max_entries(MAX_SERVERS, 0);

/// Next hops the daemon keeps, by `redirector_ebpf::server_hop`.
#[map]
pub static HOPS: Array<NextHop> = Array::with_max_entries(MAX_HOPS, 0);

/// Next hops the daemon keeps for nat replies, by the prefix the kernel
/// routes the client by (`redirector_ebpf::reply_key`).
#[map]
pub static REPLY_HOPS: LpmTrie<ReplyKey, NextHop> = LpmTrie::with_max_entries(MAX_REPLY_HOPS, 0);

/// Which `HOPS` and `REPLY_HOPS` are fresh: one entry.
#[map]
pub static HOP_STATE: Array<HopState> = Array::with_max_entries(1, 0);

/// Outer destinations redirector_decap strips (port 0); the value is unused.
#[map]
pub static DECAP_ADDRESSES: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRESSES, 0);

/// Outer sources redirector_decap accepts: the dsr edges (port 0).
#[map]
pub static DECAP_SOURCES: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRESSES, 0);

/// The floor program's next hops by source (`floor.rs`): a plain hash, as
/// the least a forwarder looks up.
#[map]
pub static FLOOR: HashMap<Endpoint, FloorHop> = HashMap::with_max_entries(MAX_FLOOR_HOPS, 0);

/// The limit program's one next hop (`floor.rs`).
#[map]
pub static LIMIT: Array<FloorHop> = Array::with_max_entries(1, 0);

/// Events for user space. A full buffer drops the event: each is a hint
/// that a periodic mechanism (the health pings) also covers.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[inline(always)]
pub fn report(kind: EventKind, server: u32, family: u8) {
    let _ = EVENTS.output::<Event>(Event { kind: kind as u32, server, family, _pad: [0; 3] }, 0);
}

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Counts a packet of the client in `LOADS` slot `slot`.
#[inline(always)]
pub fn count_load(slot: u32) {
    if let Some(packets) = LOADS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *packets += 1 };
    }
}

#[inline(always)]
pub fn count_server(index: u32, bytes: u64) {
    if let Some(stats) = SERVER_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}
