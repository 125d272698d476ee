//! The entry points: `redirector` (edge), `redirector_decap` (home servers
//! in dsr mode) and `redirector_pass` (veth peers, benchmark baseline).

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use redirector_ebpf::{
    CLIENT_ADDS_RPORT, CLIENT_CHECKS_REGISTER, CLIENT_SHARED, CONFIG_HAS_EDGE_V4, CONFIG_HAS_EDGE_V6,
    CONFIG_KNOWS_PROXIES, CONFIG_THROTTLING, ClientEntry, Config, Counter, Endpoint, EventKind, FAMILY_V4, Mode,
    NatKey, NextHop, SERVER_HAS_V4, SERVER_HAS_V6, SERVICE_PROBE, Server, ServerState, proxy_key, server_hop,
    source_prefix, stamps_last_seen,
};

use super::{
    aor, decap, encap,
    maps::{
        AORS, CLIENTS, CONFIG, DECAP_ADDRESSES, NAT_REPLIES, OTHER_LINES, PROBE, PROXIES, SERVERS, SERVICES, THROTTLED,
        count, count_load, count_server, report,
    },
    nat,
    packet::{self, Datagram, parse_udp, udp_header_ok},
    probe, route, rport,
    scratch::{self, Ends},
};

/// An XDP action and the counter it is accounted to, in one register:
/// BPF subprograms cannot return aggregates.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Verdict(u64);

impl Verdict {
    const fn new(action: u32, counter: Counter) -> Self {
        Self(((action as u64) << 32) | counter as u64)
    }

    const fn action(self) -> u32 {
        (self.0 >> 32) as u32
    }

    const fn counter(self) -> u32 {
        self.0 as u32
    }
}

/// What a hit needs of its client's entry, in one register (passing
/// the entry by reference would cost the combined stack a copy of it).
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Hit(u64);

impl Hit {
    fn of(client: &ClientEntry) -> Self {
        Self::new(client.server, client.flags, client.nat_port_be)
    }

    const fn new(server: u32, flags: u16, nat_port_be: u16) -> Self {
        Self(((nat_port_be as u64) << 48) | ((flags as u64) << 32) | server as u64)
    }

    const fn server(self) -> u32 {
        self.0 as u32
    }

    const fn adds_rport(self) -> bool {
        (self.0 >> 32) as u16 & CLIENT_ADDS_RPORT != 0
    }

    const fn nat_port_be(self) -> u16 {
        (self.0 >> 48) as u16
    }
}

const PASS_MISS: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::PassMiss);
const PASS_SUBSCRIBE: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::PassSubscribe);
const PASS_OTHER_AOR: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::PassOtherAor);
const PASS_AOR_UNSEEN: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::PassAorUnseen);
const PASS_VIAS_UNSEEN: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::PassViasUnseen);
const PASS_SERVER_DOWN: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::PassServerDown);
const DROP_THROTTLED: Verdict = Verdict::new(xdp_action::XDP_DROP, Counter::DropThrottled);
const NOT_SERVICE: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::NotService);
const NO_ADDRESS: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::NoAddressForFamily);
const FIB_MISS: Verdict = Verdict::new(xdp_action::XDP_PASS, Counter::FibMiss);
const MALFORMED_OURS: Verdict = Verdict::new(xdp_action::XDP_DROP, Counter::Malformed);
/// Reached only if a bounds check fails after the frame was changed.
const BROKEN: Verdict = Verdict::new(xdp_action::XDP_DROP, Counter::Malformed);

#[xdp]
pub fn redirector(ctx: XdpContext) -> u32 {
    #[cfg(feature = "variant")]
    // SAFETY: a read of a local; the `variant` build differs by it alone.
    unsafe {
        core::ptr::read_volatile(&0u8)
    };
    let verdict = match parse_udp(&ctx) {
        Ok(datagram) => route_datagram(&ctx, &datagram),
        Err(counter) => Verdict::new(xdp_action::XDP_PASS, counter),
    };
    count(verdict.counter());
    verdict.action()
}

#[xdp]
pub fn redirector_decap(ctx: XdpContext) -> u32 {
    let verdict = match parse_udp(&ctx) {
        Ok(datagram) if is_home_probe(&datagram) => answer_probe(&ctx, &datagram, true),
        _ => Verdict::new(xdp_action::XDP_PASS, decap::strip_tunnel(&ctx)),
    };
    count(verdict.counter());
    verdict.action()
}

/// UDP to one of this home's addresses at the probe port.
#[inline(always)]
fn is_home_probe(datagram: &Datagram) -> bool {
    let Some(config) = PROBE.get(0) else {
        return false;
    };
    let home = Endpoint { port_be: 0, ..datagram.dst };
    // SAFETY: only presence is read; no reference outlives the call.
    config.port_be != 0 && datagram.dst.port_be == config.port_be && unsafe { DECAP_ADDRESSES.get(home) }.is_some()
}

/// Answers a probe (`probe::respond`) with `XDP_TX`, or drops it; at a
/// home (`at_home`), passes an edge's state message up to `decap`.
#[inline(always)]
fn answer_probe(ctx: &XdpContext, datagram: &Datagram, at_home: bool) -> Verdict {
    let Some(config) = PROBE.get(0) else {
        return Verdict::new(xdp_action::XDP_DROP, Counter::ProbeSilent);
    };
    match probe::respond(ctx, datagram, config, at_home) {
        Counter::ProbeAnswered => Verdict::new(xdp_action::XDP_TX, Counter::ProbeAnswered),
        Counter::ProbeState => Verdict::new(xdp_action::XDP_PASS, Counter::ProbeState),
        counter => Verdict::new(xdp_action::XDP_DROP, counter),
    }
}

#[xdp]
pub fn redirector_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// A datagram of another AOR than its socket's entry, tail-called by
/// `redirector` once `aor::check` read its AOR (the hash still in this
/// CPU's scratch). A shared socket's: to that line's home as `AORS` names
/// it, if that home forwards (nat: from the line's own edge port, whose
/// reply entry names this socket and that home), the entry untouched;
/// anything else goes up (rule 6).
#[xdp]
pub fn redirector_other_line(ctx: XdpContext) -> u32 {
    let verdict = match (parse_udp(&ctx), CONFIG.get(0)) {
        (Ok(datagram), Some(config)) => route_other_line(&ctx, config, &datagram),
        (Err(counter), _) => Verdict::new(xdp_action::XDP_PASS, counter),
        (Ok(_), None) => NOT_SERVICE,
    };
    count(verdict.counter());
    verdict.action()
}

#[inline(always)]
fn route_other_line(ctx: &XdpContext, config: &Config, datagram: &Datagram) -> Verdict {
    let answer = other_line_answer(config, datagram);
    match answer.home() {
        Some(home) => {
            let hit = Hit::new(home, answer.flags(), answer.nat_port_be());
            // The endpoints in this CPU's scratch, not on the stack: the
            // parse's and the forward's frames leave no room for them
            // within the verifier's 512 bytes.
            let Some(ends) = scratch::ends() else { return PASS_OTHER_AOR };
            // Taken before the forward: adding `;rport` rescans the frame
            // into the scratch that holds it.
            let line = aor::hashed();
            let verdict = forward_to(ctx, config, datagram, hit, ends);
            if verdict.counter() == Counter::Forwarded as u32 {
                stamp_route(line);
            }
            forwarded_as(verdict, Counter::ForwardedOtherAor)
        }
        None => answer.verdict(),
    }
}

/// Where a shared socket's other line goes: the home `AORS` names (nat:
/// with the route's port, if `is_line_port`, and the socket's flags, for
/// `;rport`), or the verdict it goes up with (within the throttle).
// A separate BPF subprogram: its stack is not added to the forward's.
#[inline(never)]
fn other_line_answer(config: &Config, datagram: &Datagram) -> AorAnswer {
    // SAFETY: the flags are copied out; no reference outlives the call.
    let flags = unsafe { CLIENTS.get(datagram.src) }.map_or(0, |client| client.flags);
    let answer = if flags & CLIENT_SHARED == 0 { AorAnswer::up(PASS_OTHER_AOR) } else { route_hashed(PASS_OTHER_AOR) };
    let Some(home) = answer.home() else {
        return AorAnswer::up(to_first_contact(datagram, answer.verdict()));
    };
    if config.mode == Mode::Dsr as u8 {
        return answer;
    }
    if !is_line_port(datagram, home, answer.nat_port_be()) {
        // No port of this socket's for the line (the AOR is routed from
        // another socket, or its port is being rewritten for a move).
        return AorAnswer::up(to_first_contact(datagram, PASS_OTHER_AOR));
    }
    AorAnswer::home_at(home, answer.nat_port_be(), flags)
}

/// nat: whether edge port `port_be` is this socket's for a line homed at
/// `home`: its reply entry names the datagram's source and service and
/// that home, so the home's replies come back to this very socket and a
/// datagram never leaves with another socket's translation.
#[inline(always)]
fn is_line_port(datagram: &Datagram, home: u32, port_be: u16) -> bool {
    let key = NatKey { edge_port_be: port_be, family: datagram.ip.family, _pad: 0 };
    // SAFETY: the entry is read in place once; no reference outlives the call.
    port_be != 0
        && unsafe { NAT_REPLIES.get(key) }
            .is_some_and(|entry| entry.server == home && entry.client == datagram.src && entry.service == datagram.dst)
}

#[inline(always)]
fn route_datagram(ctx: &XdpContext, datagram: &Datagram) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return NOT_SERVICE;
    };
    // SAFETY: the value is copied out; no reference outlives the call.
    let service = unsafe { SERVICES.get(datagram.dst) }.copied();
    if service == Some(SERVICE_PROBE) {
        return answer_probe(ctx, datagram, false);
    }
    if service.is_some() {
        if !udp_header_ok(ctx, &datagram.ip) {
            return MALFORMED_OURS;
        }
        if packet::is_subscribe(ctx, &datagram.ip) {
            return to_first_contact(datagram, PASS_SUBSCRIBE);
        }
        return route_client(ctx, config, datagram);
    }
    if config.mode == Mode::Nat as u8 && is_edge_address(config, &datagram.dst) {
        return route_nat_reply(ctx, datagram);
    }
    NOT_SERVICE
}

#[inline(always)]
fn route_client(ctx: &XdpContext, config: &Config, datagram: &Datagram) -> Verdict {
    let Some(entry) = CLIENTS.get_ptr_mut(datagram.src) else {
        return route_miss(ctx, config, datagram);
    };
    // SAFETY: a live map value (RCU keeps it mapped for this run), copied out.
    let client: ClientEntry = unsafe { *entry };
    // A shared socket's every datagram is read; another's REGISTERs only.
    let checked = client.flags & CLIENT_SHARED != 0
        || (client.flags & CLIENT_CHECKS_REGISTER != 0 && packet::is_register(ctx, &datagram.ip));
    if checked {
        match aor::check(ctx, &datagram.ip, client.aor_hash) {
            aor::TAKES => {}
            aor::OTHER_AOR => {
                // Another line's: `redirector_other_line` decides, in a
                // program of its own (this one's verification has no room
                // left for it). Not there, it goes up.
                // SAFETY: `ctx` is this program's; on success the call does
                // not return, on failure nothing was changed.
                unsafe { OTHER_LINES.tail_call(ctx, 0) };
                return to_first_contact(datagram, PASS_OTHER_AOR);
            }
            _ => return to_first_contact(datagram, PASS_AOR_UNSEEN),
        }
    }
    // Only what takes the entry is its client's: another line's datagram
    // neither keeps it from going idle nor counts as its load.
    // SAFETY: as above.
    unsafe { stamp_last_seen(&raw mut (*entry).last_seen_ns) };
    count_load(client.load_slot);
    forward_to(ctx, config, datagram, Hit::of(&client), &mut Ends::default())
}

/// Sends the datagram to the hit's home server, dsr or nat as configured,
/// and counts it there; passes it up if that server does not forward.
#[inline(always)]
fn forward_to(ctx: &XdpContext, config: &Config, datagram: &Datagram, hit: Hit, ends: &mut Ends) -> Verdict {
    let index = hit.server();
    let Some(server) = SERVERS.get(index) else {
        return PASS_MISS;
    };
    if !ServerState::forwards(server.state) {
        return PASS_SERVER_DOWN;
    }
    let (Some(edge), Some(server_addr)) =
        (edge_endpoint(config, datagram.ip.family, hit.nat_port_be()), server_endpoint(server, datagram.ip.family))
    else {
        return NO_ADDRESS;
    };
    ends.edge = edge;
    ends.server = server_addr;
    let received_bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = if config.mode == Mode::Nat as u8 {
        forward_nat(ctx, datagram, &ends.edge, &ends.server, hit)
    } else {
        forward_dsr(ctx, datagram, &ends.edge, &ends.server, index)
    };
    if verdict.counter() == Counter::Forwarded as u32 {
        count_server(index, received_bytes);
    }
    verdict
}

/// A source not on the fast path: first contact's, within the throttle,
/// its payload unread; in dsr, an upstream proxy's request (its address in
/// `PROXIES`) may first be routed by its AOR. The throttle comes first: a
/// throttled prefix's flood costs no read of its Vias.
#[inline(always)]
fn route_miss(ctx: &XdpContext, config: &Config, datagram: &Datagram) -> Verdict {
    if !admitted(datagram) {
        return DROP_THROTTLED;
    }
    if config.mode != Mode::Dsr as u8 || !is_known_proxy(config, &datagram.src) {
        return PASS_MISS;
    }
    let answer = route_by_aor(ctx, datagram);
    match answer.home() {
        Some(home) => by_aor(forward_to(ctx, config, datagram, Hit(home as u64), &mut Ends::default())),
        None => answer.verdict(),
    }
}

/// Whether `source` is in `PROXIES`, looked up only while the daemon says
/// the map may hold one.
#[inline(always)]
fn is_known_proxy(config: &Config, source: &Endpoint) -> bool {
    // SAFETY: only presence is read; no reference outlives the call.
    config.flags & CONFIG_KNOWS_PROXIES != 0 && unsafe { PROXIES.get(proxy_key(source)) }.is_some()
}

/// A forwarded request of another proxy's is counted as routed by its AOR.
#[inline(always)]
fn by_aor(verdict: Verdict) -> Verdict {
    forwarded_as(verdict, Counter::ForwardedByAor)
}

/// A forwarded datagram is counted as `counter`, anything else as it was.
#[inline(always)]
fn forwarded_as(verdict: Verdict, counter: Counter) -> Verdict {
    if verdict.counter() == Counter::Forwarded as u32 {
        return Verdict::new(verdict.action(), counter);
    }
    verdict
}

/// What `route_by_aor` found, in one register: the home server slot to
/// send the datagram to (with the route's nat port and, for a shared
/// socket's other line in nat, the socket's flags), or the verdict it goes
/// up with.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct AorAnswer(u64);

impl AorAnswer {
    /// Set in a slot's answer; a verdict's action never reaches it.
    const HOME: u64 = 1 << 63;

    /// Client flags kept: what fits below `HOME` (all there are).
    const FLAGS: u16 = 0x7fff;

    const fn home_at(slot: u32, nat_port_be: u16, flags: u16) -> Self {
        Self(Self::HOME | (((flags & Self::FLAGS) as u64) << 48) | ((nat_port_be as u64) << 32) | slot as u64)
    }

    const fn up(verdict: Verdict) -> Self {
        Self(verdict.0)
    }

    fn home(self) -> Option<u32> {
        (self.0 & Self::HOME != 0).then_some(self.0 as u32)
    }

    const fn flags(self) -> u16 {
        (self.0 >> 48) as u16 & Self::FLAGS
    }

    /// The route's nat port (network order), 0 if it has none.
    const fn nat_port_be(self) -> u16 {
        (self.0 >> 32) as u16
    }

    const fn verdict(self) -> Verdict {
        Verdict(self.0)
    }
}

/// dsr: a request from an upstream proxy that came through it (more than
/// one Via value) goes to its AOR's home as `AORS` names it, if that home
/// forwards; anything else goes up as a first contact (rule 6), already
/// admitted by the throttle.
// A separate BPF subprogram: its stack does not add to its siblings'.
#[inline(never)]
fn route_by_aor(ctx: &XdpContext, datagram: &Datagram) -> AorAnswer {
    // The Vias first: a client's own request is read no further than its
    // top Via's next line.
    match aor::vias(ctx, &datagram.ip) {
        aor::SEVERAL_VIAS => {}
        aor::NOT_SEVERAL_VIAS => return AorAnswer::up(PASS_MISS),
        _ => return AorAnswer::up(PASS_VIAS_UNSEEN),
    }
    if aor::reread() != aor::HASHED {
        return AorAnswer::up(PASS_MISS);
    }
    let answer = route_hashed(PASS_MISS);
    if answer.home().is_some() {
        stamp_route(aor::hashed());
    }
    answer
}

/// The home `AORS` names for the AOR `aor::hashed` holds, if that home
/// forwards; else the verdict the datagram goes up with, `unrouted` if
/// `AORS` lacks the AOR.
// A separate BPF subprogram: its stack does not add to its siblings'.
#[inline(never)]
fn route_hashed(unrouted: Verdict) -> AorAnswer {
    // SAFETY: the fields are copied out; no reference outlives the call.
    let Some((home, nat_port_be)) = unsafe { AORS.get(aor::hashed()) }.map(|route| (route.server, route.nat_port_be))
    else {
        return AorAnswer::up(unrouted);
    };
    let passed = match SERVERS.get(home) {
        Some(server) if ServerState::forwards(server.state) => return AorAnswer::home_at(home, nat_port_be, 0),
        Some(_) => PASS_SERVER_DOWN,
        None => unrouted,
    };
    AorAnswer::up(passed)
}

/// Stamps the `last_seen_ns` of the route of AOR hash `line`: the AOR's
/// only sighting, its datagram taking no client entry. Called once the
/// datagram is sent by the route (a shared socket's other line: once
/// forwarded, so that a datagram the line's port check or the FIB sends
/// up keeps no socket looking busy).
// A separate BPF subprogram: its stack does not add to its caller's frame.
#[inline(never)]
fn stamp_route(line: u64) {
    if let Some(route) = AORS.get_ptr_mut(line) {
        // SAFETY: a live map value (RCU keeps it mapped for this run).
        unsafe { stamp_last_seen(&raw mut (*route).last_seen_ns) };
    }
}

/// Stamps a map value's `last_seen` with now, at most once a second.
///
/// # Safety
/// `last_seen` points into a live map value (RCU keeps it mapped for this
/// run). The one write races only with its like on another CPU: both store
/// a time of now.
#[inline(always)]
unsafe fn stamp_last_seen(last_seen: *mut u64) {
    // SAFETY: the clock helper has no preconditions; the pointer is the
    // caller's.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        if stamps_last_seen(now, *last_seen) {
            *last_seen = now;
        }
    }
}

/// A datagram for first contact (an unknown client's, a request for
/// another AOR or one whose AOR is unread, a SUBSCRIBE) goes up as
/// `passed`, unless its source prefix is throttled and has used its
/// allowance.
#[inline(always)]
fn to_first_contact(datagram: &Datagram, passed: Verdict) -> Verdict {
    if admitted(datagram) { passed } else { DROP_THROTTLED }
}

/// Whether a datagram for first contact may go on: its source prefix is
/// not throttled, or has allowance left (which this one uses). `THROTTLED`
/// is looked up only while the daemon says it may hold a throttle.
#[inline(always)]
fn admitted(datagram: &Datagram) -> bool {
    // `CONFIG` read here, not passed down: an array lookup the verifier
    // inlines, and the callers' signatures stay as they are.
    let throttling = CONFIG.get(0).is_some_and(|config| config.flags & CONFIG_THROTTLING != 0);
    if !throttling {
        return true;
    }
    let Some(throttle) = THROTTLED.get_ptr_mut(source_prefix(&datagram.src)) else {
        return true;
    };
    // SAFETY: a live map value, updated without atomics (see `Throttle::admits`).
    unsafe { (*throttle).admits(bpf_ktime_get_coarse_ns()) }
}

// A separate BPF subprogram: its stack does not add to its siblings'.
#[inline(never)]
fn forward_dsr(ctx: &XdpContext, datagram: &Datagram, edge: &Endpoint, server: &Endpoint, index: u32) -> Verdict {
    let ip = &datagram.ip;
    let mut hop = NextHop::default();
    let len = ip.len + encap::overhead(ip.family);
    let found = route::resolve(ctx, edge, server, len, server_hop(index, ip.family), &mut hop);
    if found != route::FOUND {
        return fib_miss(found, index, ip.family);
    }
    let len_before = ctx.data_end() - ctx.data();
    if encap::encapsulate(ctx, ip, edge, server).is_none() {
        let unchanged = ctx.data_end() - ctx.data() == len_before;
        return if unchanged { Verdict::new(xdp_action::XDP_PASS, Counter::NoHeadroom) } else { BROKEN };
    }
    transmit(ctx, &hop, ip.vlan)
}

// A separate BPF subprogram: its stack does not add to its siblings'.
#[inline(never)]
fn forward_nat(ctx: &XdpContext, datagram: &Datagram, edge: &Endpoint, server: &Endpoint, hit: Hit) -> Verdict {
    if edge.port_be == 0 {
        return PASS_MISS;
    }
    let add_rport = hit.adds_rport()
        && match rport::inspect(ctx, &datagram.ip) {
            rport::Needed::Nothing => false,
            rport::Needed::Rport => true,
            rport::Needed::Unknown => return Verdict::new(xdp_action::XDP_PASS, Counter::PassViaUnseen),
        };
    let index = hit.server();
    let len = datagram.ip.len + if add_rport { rport::GROWTH } else { 0 };
    let mut hop = NextHop::default();
    let found = route::resolve(ctx, edge, server, len, server_hop(index, datagram.ip.family), &mut hop);
    if found != route::FOUND {
        return fib_miss(found, index, datagram.ip.family);
    }
    if add_rport {
        let mut grown = false;
        if rport::insert(ctx, &datagram.ip, &mut grown).is_none() {
            return if grown { BROKEN } else { Verdict::new(xdp_action::XDP_PASS, Counter::NoHeadroom) };
        }
    }
    if nat::rewrite(ctx, &datagram.ip, edge, server).is_none() {
        return BROKEN;
    }
    transmit(ctx, &hop, datagram.ip.vlan)
}

// A separate BPF subprogram: its stack does not add to its siblings'.
#[inline(never)]
fn route_nat_reply(ctx: &XdpContext, datagram: &Datagram) -> Verdict {
    let key = NatKey { edge_port_be: datagram.dst.port_be, family: datagram.ip.family, _pad: 0 };
    // SAFETY: the entry stays mapped for this run (RCU). The daemon replacing
    // it meanwhile could only show this one packet a stale copy, whose
    // source is still checked against the entry's server.
    let Some(entry) = (unsafe { NAT_REPLIES.get(key) }) else {
        return NOT_SERVICE;
    };
    let Some(server) = SERVERS.get(entry.server) else {
        return NOT_SERVICE;
    };
    if server_endpoint(server, datagram.ip.family) != Some(datagram.src) {
        return NOT_SERVICE;
    }
    if !udp_header_ok(ctx, &datagram.ip) {
        return MALFORMED_OURS;
    }
    // Read in place, not copied: the combined stack of the reply path and
    // its FIB lookup stays within the verifier's 512 bytes.
    let (service, client) = (&entry.service, &entry.client);
    let mut hop = NextHop::default();
    if route::resolve_reply(ctx, service, client, datagram.ip.len, &mut hop) != route::FOUND {
        return FIB_MISS;
    }
    if nat::rewrite(ctx, &datagram.ip, service, client).is_none() {
        return BROKEN;
    }
    match route::send(ctx, &hop, datagram.ip.vlan) {
        Some(action) => Verdict::new(action, Counter::NatReply),
        None => BROKEN,
    }
}

/// A client's packet the FIB cannot route to home server `index` yet; an
/// unresolved neighbour is reported, for user space to resolve it (a ping
/// cannot fix a missing route or a packet too big).
#[inline(always)]
fn fib_miss(found: u32, index: u32, family: u8) -> Verdict {
    if found == route::NO_NEIGHBOUR {
        report(EventKind::FibMiss, index, family);
    }
    FIB_MISS
}

#[inline(always)]
fn transmit(ctx: &XdpContext, hop: &NextHop, vlan: bool) -> Verdict {
    match route::send(ctx, hop, vlan) {
        Some(action) => Verdict::new(action, Counter::Forwarded),
        None => BROKEN,
    }
}

#[inline(always)]
fn is_edge_address(config: &Config, dst: &Endpoint) -> bool {
    edge_endpoint(config, dst.family, 0).is_some_and(|edge| edge.addr == dst.addr)
}

/// The edge's own address of `family` with `port_be`, if configured.
#[inline(always)]
fn edge_endpoint(config: &Config, family: u8, port_be: u16) -> Option<Endpoint> {
    if family == FAMILY_V4 {
        (config.flags & CONFIG_HAS_EDGE_V4 != 0).then(|| Endpoint::v4(config.edge_v4, port_be))
    } else {
        (config.flags & CONFIG_HAS_EDGE_V6 != 0).then(|| Endpoint::v6(config.edge_v6, port_be))
    }
}

/// The home server's address of `family` and SIP port, if it has one.
#[inline(always)]
fn server_endpoint(server: &Server, family: u8) -> Option<Endpoint> {
    if family == FAMILY_V4 {
        (server.flags & SERVER_HAS_V4 != 0).then(|| Endpoint::v4(server.v4, server.port_be))
    } else {
        (server.flags & SERVER_HAS_V6 != 0).then(|| Endpoint::v6(server.v6, server.port_be))
    }
}
