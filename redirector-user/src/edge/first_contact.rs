//! What the daemon does with a datagram the fast path passed up: the
//! client's first contact. Pure decisions returning `Action`s; sockets and
//! maps are the caller's (see `daemon`).
//!
//! * A request straight from its client (one Via value) is answered with a
//!   `302` naming the client's home server; a request already forwarded by
//!   another proxy (more Via values) is proxied statelessly (RFC 3261
//!   §16.11). `Policy` can force either.
//! * The client is its address of record: the `To` URI of a REGISTER, the
//!   `From` URI of any other request — except SUBSCRIBE, whose `To` names
//!   the watched client: it is always proxied to that client's home server
//!   (a redirect would hide the dialog from the edge), its sender is never
//!   installed, and its dialog is recorded (`Action::Watch`) so the watcher
//!   can be told when the client moves (see `watchers`). With configuration
//!   documents on, a SUBSCRIBE for the `ua-profile` package is a client
//!   asking for its own document instead: the edge is its notifier, and
//!   the state owner answers it (`Action::Profile`, see `profiles`).
//! * A request from a home server is for a client of another home (the
//!   terminating leg of a call): it is proxied by its Request-URI, never
//!   back to its sender, and never redirected (see `from_homes`).
//! * A client that talked to us directly has its source address put on the
//!   fast path. A forwarded request's source is the upstream proxy, which
//!   speaks for many clients, so it is never installed; its address is
//!   recorded instead (`Action::RecordProxy`), for the kernel to read its
//!   misses and send its requests of known AORs home itself (dsr).
//! * A datagram from a client already on the fast path is no first contact:
//!   the program passed it up only because it was an IP fragment (the
//!   kernel reassembled it) or too big for the egress MTU once forwarded.
//!   It goes on to the client's home server as the kernel sends the
//!   client's small datagrams (`Action::Encapsulate`, `Action::Translate`);
//!   in nat mode a home server's reply to a client's edge port that came
//!   as fragments is relayed to the client as the program relays small ones.

use std::{
    collections::HashMap,
    fmt::Write,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use redirector_ebpf::{
    aor::{RequestAor, message_aor, request_aor},
    via::VIA_SCAN,
};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::{
    counters::bump,
    edge::{
        admission::Refused,
        assignments::Assigned,
        notifier::NOTIFY_BRANCH_PREFIX,
        pool::{Pool, PoolView},
        profiles::{self, ProfileCounters, ProfileRequest, Unreadable},
        watchers::{DialogId, Subscription},
    },
    kernel::{
        aor_routes::hash_of,
        installed::{InstalledClients, KernelRoute, NatReply},
    },
    model::{HomeServer, Origin, Policy, ServerState},
    probe::Keys,
    sip::{
        Aor, Header, HeaderKind, Message, NameAddr, ParseError, StartLine, Via,
        response::{self, Basis},
        socket_address, split_list, tag, unfold,
    },
    store::{Cache, Cached, StoreError, unix_seconds},
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    /// `Expires` of a 302.
    pub redirect_expires: u32,
    /// `Retry-After` of a 503.
    pub retry_after: u32,
    /// Where proxied requests leave from and responses come back to: one
    /// address per family the edge serves.
    pub proxies: Vec<SocketAddr>,
    /// The service addresses: with `proxy`, what a Route naming this edge
    /// names (RFC 3261 §16.4).
    pub services: Vec<SocketAddr>,
    /// With probes on: the keys a REGISTER's cookie is checked with.
    pub probe: Option<Keys>,
    /// With configuration documents on (`[documents] template`): where
    /// ua-profile SUBSCRIBEs answered here are counted. Off, they are
    /// proxied to the client's home like any SUBSCRIBE.
    pub profiles: Option<Arc<ProfileCounters>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send from the socket the datagram arrived on.
    Reply { to: SocketAddr, bytes: Vec<u8> },
    /// Send from the proxy socket.
    Forward { to: SocketAddr, bytes: Vec<u8> },
    /// A relayed response: send from the service socket at `from`, where
    /// the request it answers arrived (any of `to`'s family when unknown).
    Relay { to: SocketAddr, bytes: Vec<u8>, from: Option<SocketAddr> },
    /// Put `client` on the fast path to the server in slot `server`, if
    /// `aor`'s assignment still has `generation` (a move may have happened
    /// since this was decided); `service` is where it sent to (the source
    /// of nat replies).
    Install { origin: Origin, server: u32, aor: Aor, generation: u64 },
    /// A request came through `source`, an upstream proxy (more than one
    /// Via value): in dsr, the kernel is to read its misses' Vias, to send
    /// its requests of known AORs home itself (`PROXIES`).
    RecordProxy { source: IpAddr },
    /// The server in slot `server` answered health ping `sequence`.
    PingAnswered { server: u32, sequence: u32 },
    /// A SUBSCRIBE is being proxied: record its dialog, routed by the
    /// watched client's assignment `generation` (if it moved since, the
    /// watcher is to be told once the old home server confirms).
    Watch { subscription: Box<Subscription>, expires: Option<u32>, generation: u64 },
    /// The notifier's answer to a SUBSCRIBE, relayed to the watcher.
    SubscribeAnswered { id: DialogId, code: u16, notifier_tag: Option<String> },
    /// A watcher's or a subscriber's answer to one of our NOTIFYs.
    NotifyAnswered { branch: String, code: u16, from: SocketAddr },
    /// A client's ua-profile SUBSCRIBE, for the owner to answer (the
    /// response leaves from the socket it arrived on, then its NOTIFY).
    Profile(Box<ProfileRequest>),
    /// dsr, for a client on the fast path: `bytes` as a UDP datagram from
    /// `client` to `service`, through the tunnel to `home`, fragmented to
    /// fit (the home reassembles it and answers the client directly).
    Encapsulate { client: SocketAddr, service: SocketAddr, home: IpAddr, bytes: Vec<u8> },
    /// nat, for a client on the fast path: `bytes` as a UDP datagram from
    /// the edge address of `home`'s family and the client's `edge_port` to
    /// `home` (its answer comes back to that port, as to the kernel's).
    Translate { edge_port: u16, home: SocketAddr, bytes: Vec<u8> },
}

crate::counters::counters! {
    Counters, "What first contact did, since start.",
    /// Requests that reached first contact at all.
    requests,
    /// 302 sent.
    redirected,
    /// Requests proxied to a home server.
    proxied,
    /// Home servers' responses relayed back.
    relayed,
    /// 400: the request was malformed.
    bad_request,
    /// 483: Max-Forwards reached zero.
    too_many_hops,
    /// 503: no active home server.
    unavailable,
    /// 503: a new client whose source prefix brought in new clients too
    /// fast (`[limits] new_clients_per_prefix`).
    rate_limited,
    /// 503: a new client past `[limits] max_assignments`.
    over_capacity,
    /// Source prefixes (re)throttled in the kernel after being refused
    /// for their rate (`[limits] throttle_for`).
    prefixes_throttled,
    /// 500: the assignment database failed.
    server_error,
    /// 503: a new client while the shared store (etcd) is out of reach.
    store_unavailable,
    /// ACKs for our own answers (or unroutable ones), absorbed: an ACK is
    /// never answered.
    absorbed_acks,
    /// CANCELs of redirected INVITEs, answered 200.
    cancels_answered,
    /// Datagrams that were not SIP, or responses not ours to relay.
    dropped,
    /// New assignments stored.
    assigned,
    /// Clients of a down server given a new one at their next first contact.
    reassigned,
    /// Client addresses put on the fast path (by the state owner).
    installed,
    /// dsr: upstream proxies' addresses written to the kernel's `PROXIES`
    /// (by the state owner), whose misses the program reads for an AOR to
    /// route by: a proxy's first request that comes up, and again one a
    /// minute or more later if its requests still come up.
    proxies_recorded,
    /// Reachability pings (OPTIONS) sent to home servers; they are also the
    /// health checks.
    pings_sent,
    /// Answers to them.
    pings_answered,
    /// Of the pings, those sent at once because the fast path reported a
    /// FIB miss towards the server (an unresolved neighbour).
    resolution_pings,
    /// SUBSCRIBEs proxied to the watched client's home server.
    subscribes_proxied,
    /// Of those, not recorded: a header a NOTIFY needs was missing.
    subscribes_unrecordable,
    /// Datagrams from clients on the fast path that the program passed up
    /// (IP fragments, or too big once forwarded), sent on to their home
    /// servers as the kernel would have; not counted in `requests`.
    forwarded_for_fast_path,
    /// nat: home servers' replies to a client's edge port that the program
    /// passed up (IP fragments), relayed to the client as it would have.
    nat_replies_relayed,
    /// Requests from home servers proxied to their target's home (the
    /// terminating leg of a call between homes; see `from_homes`).
    proxied_for_homes,
    /// Requests from home servers answered 404 or 480: their target has no
    /// assignment, or is the sender's own client, or its home is down.
    unroutable_for_homes,
    /// OPTIONS from home servers to the edge itself (no user part: a
    /// `dispatcher` set's keepalive pings), answered 200.
    pings_from_homes_answered,
    /// REGISTERs of new AORs whose cookie (`Redirector-Cookie`) named a home
    /// taking new clients: the AOR is assigned there.
    cookies_honoured,
    /// Cookies ignored (the normal policy applied): malformed, expired,
    /// forged or another client's, naming no home (the edge's own) or one
    /// not taking new clients, or for an AOR that already has a home.
    cookies_ignored,
}

#[derive(Clone)]
pub struct FirstContact {
    settings: Settings,
    pool: PoolView,
    cache: Arc<Cache>,
    installed: Arc<InstalledClients>,
    pub counters: Arc<Counters>,
}

/// Service datagrams read and parsed once, waiting for the assignments of
/// the clients that have no usable one yet (`Batch::unassigned`).
pub struct Batch<'a> {
    items: Vec<Item<'a>>,
}

enum Item<'a> {
    /// Answered without an assignment (or not at all).
    Done(Vec<Action>),
    /// A request whose client's home decides the answer.
    Request(Box<Request<'a>>),
}

struct Request<'a> {
    message: Message<'a>,
    basis: Basis<'a>,
    source: SocketAddr,
    local: SocketAddr,
    redirect: bool,
    aor: Aor,
    /// Straight from its client, and not a SUBSCRIBE: the client goes on
    /// the fast path.
    installable: bool,
    /// Its top Via asked for `rport` (in nat mode, the kernel adds it to
    /// the requests of clients that do not).
    asks_rport: bool,
    /// The client's usable assignment from the cache, if it has one.
    known: Option<Cached>,
    /// The home a new AOR's REGISTER asked for with a valid cookie.
    cookie_home: Option<String>,
}

/// A client without a usable assignment, for the owner to assign; the
/// addresses it came straight from (client, service) go on the fast path
/// in the same step, before any answer leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClient {
    pub aor: Aor,
    /// Where its first request came from (new clients are admitted per
    /// source prefix).
    pub source: std::net::IpAddr,
    /// Whether a request of its came straight from its client (one Via):
    /// only then is `source` the client's own, which the kernel may
    /// throttle; a proxy speaks for many.
    pub direct: bool,
    pub installs: Vec<Origin>,
    /// The home its REGISTER's valid cookie names (see `probe`).
    pub cookie_home: Option<String>,
}

impl Request<'_> {
    fn origin(&self) -> Origin {
        Origin { client: self.source, service: self.local, asks_rport: self.asks_rport }
    }

    /// A known client that moved while its batch waited: its new home.
    fn refresh(&mut self, cache: &Cache) {
        let Some(known) = &self.known else { return };
        if let Some(now) = cache.get(&self.aor).filter(|c| c.generation > known.generation) {
            self.known = Some(now);
        }
    }
}

/// What the kernel reads of `datagram`'s AOR (`redirector_ebpf::aor`),
/// on the same bytes: a frame's first `VIA_SCAN`, after the Ethernet, IP
/// and UDP headers of a plain frame of `source`'s family. A shared
/// socket's datagram is read as the program reads it (`message_aor`: a
/// response by its `To`), any other's as a request (`request_aor`).
fn kernel_aor_of(datagram: &[u8], source: SocketAddr, shared: bool) -> RequestAor {
    let start = if source.is_ipv4() { 14 + 20 + 8 } else { 14 + 40 + 8 };
    let mut frame = [0u8; VIA_SCAN];
    let len = datagram.len().min(VIA_SCAN - start);
    frame[start..start + len].copy_from_slice(&datagram[..len]);
    let read = if shared { message_aor } else { request_aor };
    read(&frame, start, start + len)
}

/// The program's REGISTER test (`xdp/packet.rs` `is_register`): any case.
fn is_register_any_case(datagram: &[u8]) -> bool {
    datagram.get(..9).is_some_and(|head| head.eq_ignore_ascii_case(b"REGISTER "))
}

/// The header's value continues on a following line (RFC 3261 §7.3.1).
fn is_folded(header: Option<&Header<'_>>) -> bool {
    header.is_some_and(|h| h.value.contains('\n'))
}

impl Batch<'_> {
    /// The clients (once each, by AOR) that need the owner's assignment.
    pub fn unassigned(&self) -> Vec<NewClient> {
        let mut clients: Vec<NewClient> = Vec::new();
        for item in &self.items {
            let Item::Request(request) = item else { continue };
            if request.known.is_some() {
                continue;
            }
            let index = match clients.iter().position(|c| c.aor == request.aor) {
                Some(index) => index,
                None => {
                    let (aor, source) = (request.aor.clone(), request.source.ip());
                    let cookie_home = request.cookie_home.clone();
                    clients.push(NewClient { aor, source, direct: false, installs: Vec::new(), cookie_home });
                    clients.len() - 1
                }
            };
            clients[index].direct |= request.basis.vias.len() == 1;
            let install = request.origin();
            if request.installable && !clients[index].installs.contains(&install) {
                clients[index].installs.push(install);
            }
        }
        clients
    }
}

/// What the owner made of `Batch::unassigned`: each AOR's usable
/// assignment or why it has none, or the store's failure.
pub type Assignments<'a> = Result<&'a HashMap<Aor, Result<Assigned, Refused>>, &'a StoreError>;

impl FirstContact {
    /// `installed` is the fast path's record of the clients the kernel
    /// forwards (see `kernel::installed`).
    pub fn new(
        settings: Settings,
        pool: PoolView,
        cache: Arc<Cache>,
        installed: Arc<InstalledClients>,
        counters: Arc<Counters>,
    ) -> Self {
        Self { settings, pool, cache, installed, counters }
    }

    /// Reads a batch of datagrams that arrived on the service socket at
    /// `local`; `answer` completes it.
    pub fn read<'a>(
        &self,
        datagrams: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
        local: SocketAddr,
    ) -> Batch<'a> {
        let items = datagrams.into_iter().map(|(datagram, source)| self.read_one(datagram, source, local)).collect();
        Batch { items }
    }

    /// The answers to a batch, given the owner's assignments for its
    /// unassigned clients (unused when there were none).
    pub fn answer(&self, batch: Batch<'_>, assigned: Assignments<'_>) -> Vec<Action> {
        let pool = self.pool.load();
        // Only a batch with new clients waited for the owner, during which a
        // known one may have moved.
        let waited = batch.items.iter().any(|item| matches!(item, Item::Request(r) if r.known.is_none()));
        let mut actions = Vec::new();
        for item in batch.items {
            match item {
                Item::Done(done) => actions.extend(done),
                Item::Request(mut request) => {
                    if waited {
                        request.refresh(&self.cache);
                    }
                    actions.extend(self.proxy_to_record(&request));
                    actions.extend(self.answer_request(&mut request, assigned, &pool));
                }
            }
        }
        actions
    }

    fn read_one<'a>(&self, datagram: &'a [u8], source: SocketAddr, local: SocketAddr) -> Item<'a> {
        if let Some(route) = self.kernel_route(datagram, source, local) {
            return Item::Done(self.forward_as_kernel(datagram, source, local, route));
        }
        match Message::parse(datagram) {
            Ok(message) if message.is_request() => {
                bump(&self.counters.requests);
                self.classify(message, source, local)
            }
            Ok(message) => Item::Done(notify_answer(&message, source).map_or_else(|| self.drop(), |a| vec![a])),
            Err(_) if datagram.starts_with(b"ACK ") => Item::Done(self.absorb_ack()),
            Err(error) if response::looks_like_request(datagram) => {
                bump(&self.counters.requests);
                let mut basis = Basis::salvage(datagram);
                Item::Done(self.reject(&mut basis, source, 400, &error.to_string(), &self.counters.bad_request))
            }
            Err(_) => Item::Done(self.drop()),
        }
    }

    /// Where the kernel sends `source`'s datagrams, if it forwards this one:
    /// the program's rules 5 and 6 (`redirector_ebpf` `xdp/mod.rs`).
    fn kernel_route(&self, datagram: &[u8], source: SocketAddr, local: SocketAddr) -> Option<KernelRoute> {
        // Every SUBSCRIBE is first contact's, whoever sends it.
        if datagram.starts_with(b"SUBSCRIBE ") {
            return None;
        }
        let mut route = self.installed.get(source)?;
        // A request for another AOR than the socket's, or one whose AOR the
        // program cannot read, is first contact's (rule 6's AOR check):
        // REGISTERs from a socket not shared, and a shared socket's requests
        // of a line the program would not route (`shared_request_route`).
        // A shared socket's response of another line goes to that line's
        // home, or by the entry (`shared_response_route`).
        if let Some(hash) = route.aor_hash
            && (route.shared || is_register_any_case(datagram))
        {
            let read = kernel_aor_of(datagram, source, route.shared);
            if !read.takes(hash) {
                let ends = (source, local);
                route = match (route.shared, read) {
                    (true, _) if datagram.starts_with(b"SIP/") => self.shared_response_route(datagram, ends, route),
                    (true, RequestAor::Hash(line)) => self.shared_request_route(datagram, line, ends, route)?,
                    _ => return None,
                };
            }
        }
        let forwards =
            self.pool.load().by_index(route.server).is_some_and(|home| home.effective_state() != ServerState::Down);
        forwards.then_some(route)
    }

    /// Where a shared socket's response that is not its entry's line's
    /// goes: to its `To` line's route (`other_line_route`) when there is
    /// one; otherwise (a number the socket's PBX serves, a `To` not read,
    /// a line not assigned, in nat a line without a port of its own on
    /// this socket) by the entry, as before lines were routed.
    fn shared_response_route(
        &self,
        datagram: &[u8],
        ends: (SocketAddr, SocketAddr),
        entry: KernelRoute,
    ) -> KernelRoute {
        let line = Message::parse(datagram).ok().and_then(|message| header_aor(&message, HeaderKind::To, "To").ok());
        line.and_then(|line| self.other_line_route(&line, ends, entry)).unwrap_or(entry)
    }

    /// A shared socket's request of another line, whose AOR the program
    /// reads as hashing to `line_hash`, that came up whole only because it
    /// could not take the fast path as it was (IP fragments, too big once
    /// forwarded): it goes where the program sends that line's small
    /// requests (`other_line_route`), not to first contact, which would
    /// answer a request its home expects with a 302. None (first contact)
    /// where the program would pass it up too.
    fn shared_request_route(
        &self,
        datagram: &[u8],
        line_hash: u64,
        ends: (SocketAddr, SocketAddr),
        entry: KernelRoute,
    ) -> Option<KernelRoute> {
        let line = identity(&Message::parse(datagram).ok()?).ok()?;
        // The daemon's reading must be the program's, or it is not the
        // program's choice (`sip_scan_properties` shows they agree).
        (hash_of(&line) == line_hash).then_some(())?;
        // Seen, as the program's stamp of the line's route would record
        // it; a line held while it moves is first contact's.
        self.cache.sighted(&line, unix_seconds())?;
        self.other_line_route(&line, ends, entry)
    }

    /// Where the program sends a shared socket's datagram of `line`, not
    /// its entry's (`redirector_other_line`): in dsr to the home `AORS`
    /// routes the line to (the daemon's assignment); in nat to that home
    /// from the line's own edge port, when its reply entry names this
    /// socket and that home (`line_route`). None where it passes it up.
    fn other_line_route(&self, line: &Aor, ends: (SocketAddr, SocketAddr), entry: KernelRoute) -> Option<KernelRoute> {
        if entry.nat_port.is_some() {
            return self.line_route(line, ends, entry);
        }
        let cached = self.cache.current(line)?;
        let server = self.pool.load().server(&cached.server)?.index;
        Some(KernelRoute { server, ..entry })
    }

    /// nat: the route of `line`, another line of the shared socket
    /// `source` (which sent to `local`), by the line's own edge port, if
    /// `AORS` has one whose reply entry names this socket, service and the
    /// route's home.
    fn line_route(
        &self,
        line: &Aor,
        (source, local): (SocketAddr, SocketAddr),
        entry: KernelRoute,
    ) -> Option<KernelRoute> {
        let route = self.installed.line_route(hash_of(line))?;
        let reply = self.installed.nat_reply(source.is_ipv4(), route.nat_port)?;
        let same = |a: SocketAddr, b: SocketAddr| a.ip() == b.ip() && a.port() == b.port();
        (same(reply.client, source) && same(reply.service, local) && reply.server == route.server)
            .then_some(KernelRoute { server: route.server, nat_port: Some(route.nat_port), ..entry })
    }

    /// A datagram from a client on the fast path, sent on as the kernel
    /// sends its small ones: dsr from the client's own address through the
    /// tunnel, nat from its edge port, with `;rport` added to a request's
    /// top Via for a client the program adds it for (`redirector_ebpf::via`).
    fn forward_as_kernel(
        &self,
        datagram: &[u8],
        source: SocketAddr,
        local: SocketAddr,
        route: KernelRoute,
    ) -> Vec<Action> {
        let pool = self.pool.load();
        let Some(home) = pool.by_index(route.server).and_then(|home| home.address_for(source)) else {
            return self.drop();
        };
        bump(&self.counters.forwarded_for_fast_path);
        let bytes = datagram.to_vec();
        vec![match route.nat_port {
            None => Action::Encapsulate { client: source, service: local, home: home.ip(), bytes },
            Some(edge_port) if route.adds_rport => Action::Translate { edge_port, home, bytes: with_rport(bytes) },
            Some(edge_port) => Action::Translate { edge_port, home, bytes },
        }]
    }

    /// nat: a datagram to the client's `edge_port` that the program passed
    /// up (it came as IP fragments), relayed to the client from the service
    /// address it talked to, as the program rewrites small ones (its rule
    /// 7): only from that client's home server, else anyone could send
    /// through the edge to its clients.
    pub fn on_nat_reply(&self, datagram: &[u8], from: SocketAddr, edge_port: u16) -> Vec<Action> {
        let Some(NatReply { client, service, server }) = self.installed.nat_reply(from.is_ipv4(), edge_port) else {
            return self.drop();
        };
        if self.pool.load().by_index(server).and_then(|home| home.address_for(from)) != Some(from) {
            return self.drop();
        }
        bump(&self.counters.nat_replies_relayed);
        vec![Action::Relay { to: client, bytes: datagram.to_vec(), from: Some(service) }]
    }

    /// A datagram on the proxy socket: a home server's response to relay,
    /// a home server's request for a client of another home, or a
    /// watcher's answer to a NOTIFY. Only home servers may have their
    /// responses relayed: anything else would make the edge a relay to
    /// whatever a forged Via names, or fake a health answer.
    pub fn on_proxy_datagram(&self, datagram: &[u8], source: SocketAddr) -> Vec<Action> {
        let Ok(message) = Message::parse(datagram) else {
            return self.drop();
        };
        let StartLine::Response { code, .. } = message.start else {
            return self.on_proxy_request(&message, source);
        };
        if let Some(answer) = notify_answer(&message, source) {
            return vec![answer];
        }
        if !self.pool.load().is_home(source.ip()) {
            return self.drop();
        }
        let vias: Vec<String> = message.via_values().map(|v| v.into_owned()).collect();
        let top = vias.first().and_then(|top| Via::parse(top).ok());
        let ping = top.filter(|top| self.is_our_via(top)).and_then(|top| parse_ping_branch(top.branch()?));
        if let Some((sequence, server)) = ping {
            bump(&self.counters.pings_answered);
            return vec![Action::PingAnswered { server, sequence }];
        }
        let Some(ours) = top.filter(|top| self.is_our_via(top)) else {
            return self.drop();
        };
        let Some(to) = vias.get(1).and_then(|v| Via::parse(v).ok()?.response_address()) else {
            return self.drop();
        };
        let from =
            ours.param(SERVICE_PARAM).and_then(|i| self.settings.services.get(i.parse::<usize>().ok()?)).copied();
        bump(&self.counters.relayed);
        let bytes = rewrite(&message, &vias[1..], None, false);
        // A dsr home owns the service address: from it, the answer would
        // look to the home like its own packet, which Linux drops.
        let relay = if self.pool.load().is_home(to.ip()) {
            Action::Forward { to, bytes }
        } else {
            Action::Relay { to, bytes, from }
        };
        let mut actions = vec![relay];
        if message.cseq().is_ok_and(|(_, method)| method == "SUBSCRIBE") {
            actions.extend(subscribe_answer(&message, code));
        }
        actions
    }

    /// A request on the proxy socket: only home servers send the edge
    /// requests there (see `from_homes`).
    fn on_proxy_request(&self, message: &Message<'_>, source: SocketAddr) -> Vec<Action> {
        let Some(local) = self.proxy_for(source).filter(|_| self.pool.load().is_home(source.ip())) else {
            return self.drop();
        };
        bump(&self.counters.requests);
        self.route_home_request(message, source, local)
    }

    /// Everything decided before the client's home is known.
    fn classify<'a>(&self, message: Message<'a>, source: SocketAddr, local: SocketAddr) -> Item<'a> {
        // A home's request is routed by its target, never by its sender.
        if self.pool.load().is_home(source.ip()) {
            return Item::Done(self.route_home_request(&message, source, local));
        }
        let mut basis = Basis::of(&message);
        let direct = basis.vias.len() == 1;
        let redirect = self.redirects(&message, direct);
        match message.method() {
            // Nothing ever answers an ACK (RFC 3261 §17): it acknowledges our
            // own final answer, or goes where its INVITE was proxied.
            Some("ACK") if redirect => return Item::Done(self.absorb_ack()),
            Some("ACK") => return Item::Done(self.proxy_ack(&message, source, local)),
            // The INVITE it cancels was already answered (302): the CANCEL
            // itself gets 200 (§9.2), statelessly, and nothing is installed.
            Some("CANCEL") if redirect => {
                bump(&self.counters.cancels_answered);
                let to = basis.stamp_top_via(source);
                let bytes = response::build(&basis, 200, "OK", &to_tag(&basis), &[]);
                return Item::Done(vec![Action::Reply { to, bytes }]);
            }
            _ => {}
        }
        if message.max_forwards().ok().flatten() == Some(0) {
            return Item::Done(self.reject(&mut basis, source, 483, "Too Many Hops", &self.counters.too_many_hops));
        }
        if let Some(counters) = &self.settings.profiles
            && message.method() == Some("SUBSCRIBE")
            && profiles::is_profile_event(&message)
        {
            return Item::Done(self.profile(&message, &mut basis, source, local, counters));
        }
        let aor = match identity(&message) {
            Ok(aor) => aor,
            Err(error) => {
                let reason = error.to_string();
                return Item::Done(self.reject(&mut basis, source, 400, &reason, &self.counters.bad_request));
            }
        };
        // A known client's first contact is a sighting: it keeps its
        // assignment from expiring (new clients are seen as they are
        // assigned). One lookup serves both.
        let known = self.cache.sighted(&aor, unix_seconds()).filter(|cached| self.pool.load().usable(&cached.server));
        let asks_rport =
            basis.vias.first().and_then(|top| Via::parse(top).ok()).is_some_and(|via| via.param("rport").is_some());
        // The kernel reads a Via line by line: it would add rport to a
        // folded one's first line, so such a client stays with the daemon.
        let installable = basis.vias.len() == 1
            && message.method() != Some("SUBSCRIBE")
            && (asks_rport || !is_folded(message.header(HeaderKind::Via)));
        let cookie_home = self.cookie_home(&message, &aor, source);
        let request =
            Request { message, basis, source, local, redirect, aor, installable, asks_rport, known, cookie_home };
        Item::Request(Box::new(request))
    }

    /// The home a REGISTER's cookie asks for (`probe`): only for an AOR
    /// without a home, a cookie issued to this source address, unexpired,
    /// naming a home that takes new clients. Any other cookie is counted
    /// and ignored, and the normal policy applies.
    fn cookie_home(&self, message: &Message<'_>, aor: &Aor, source: SocketAddr) -> Option<String> {
        let keys = self.settings.probe.as_ref()?;
        let cookie = message.header(HeaderKind::RedirectorCookie)?;
        if message.method() != Some("REGISTER") {
            return None;
        }
        let pool = self.pool.load();
        let home = keys.verify(cookie.value, source.ip(), unix_seconds()).map_err(|e| e.to_string()).and_then(|ip| {
            if self.cache.get(aor).is_some() {
                return Err("its AOR already has a home".to_owned());
            }
            let home = pool.servers().iter().find(|s| s.has_address(ip)).ok_or(format!("{ip} is no home server"))?;
            home.accepts_new().then(|| home.name.clone()).ok_or(format!("{} takes no new clients", home.name))
        });
        match home {
            Ok(name) => {
                bump(&self.counters.cookies_honoured);
                Some(name)
            }
            Err(why) => {
                bump(&self.counters.cookies_ignored);
                tracing::debug!(%aor, %source, why, "cookie ignored");
                None
            }
        }
    }

    /// A request that came through an upstream proxy (more than one Via
    /// value) has its source recorded, unless it was lately.
    fn proxy_to_record(&self, request: &Request<'_>) -> Option<Action> {
        let source = request.source.ip();
        (request.basis.vias.len() > 1 && self.installed.proxy_unwritten(source, Instant::now()))
            .then_some(Action::RecordProxy { source })
    }

    fn answer_request(&self, request: &mut Request<'_>, assigned: Assignments<'_>, pool: &Pool) -> Vec<Action> {
        let (server, generation): (&str, u64) = match (&request.known, assigned) {
            (Some(known), _) => (&known.server, known.generation),
            (None, Ok(assigned)) => match assigned.get(&request.aor) {
                Some(Ok(assigned)) => (&assigned.assignment.server, assigned.assignment.generation),
                Some(Err(refused)) => return self.refuse(&mut request.basis, request.source, *refused),
                None => return self.refuse(&mut request.basis, request.source, Refused::NoServer),
            },
            (None, Err(error)) if error.is_unavailable() => {
                tracing::warn!(aor = %request.aor, %error, "the shared store is out of reach: a new client is told to retry");
                let counter = &self.counters.store_unavailable;
                return self.retry_later(&mut request.basis, request.source, "Assignment Store Unreachable", counter);
            }
            (None, Err(error)) => {
                tracing::error!(aor = %request.aor, %error, "assignment database failed");
                let counter = &self.counters.server_error;
                return self.reject(&mut request.basis, request.source, 500, "Assignment Database Failed", counter);
            }
        };
        let Some(home) = pool.server(server) else {
            tracing::warn!(aor = %request.aor, server, "assigned to a server no longer configured");
            return self.unavailable(&mut request.basis, request.source, "Service Unavailable");
        };
        self.route(request, home, generation)
    }

    /// Redirects or proxies to `home`, then records what the request asks
    /// of the owner (a watcher's dialog, or the client's fast-path entry).
    fn route(&self, request: &mut Request<'_>, home: &HomeServer, generation: u64) -> Vec<Action> {
        let source = request.source;
        let Some(home_address) = home.address_for(source) else {
            return self.unavailable(&mut request.basis, source, "No Home Server Of This Family");
        };
        let mut actions = if request.redirect {
            self.redirect(&request.message, &mut request.basis, source, home_address)
        } else {
            match self.proxy(&request.message, source, home_address, request.local) {
                Some(proxied) => proxied,
                None => return self.unavailable(&mut request.basis, source, "No Proxy Address Of This Family"),
            }
        };
        if request.message.method() == Some("SUBSCRIBE") {
            actions.extend(self.watch(&request.message, request.aor.clone(), source, generation));
        } else if request.installable && request.known.is_some() && home.effective_state() != ServerState::Down {
            // (A new client was put on the fast path with its assignment.)
            let (origin, aor) = (request.origin(), request.aor.clone());
            actions.push(Action::Install { origin, server: home.index, aor, generation });
        }
        actions
    }

    /// The dialog of a SUBSCRIBE being proxied, to record.
    fn watch(&self, message: &Message<'_>, presentity: Aor, source: SocketAddr, generation: u64) -> Option<Action> {
        bump(&self.counters.subscribes_proxied);
        match Subscription::from_request(message, presentity, source) {
            Ok((subscription, expires)) => {
                Some(Action::Watch { subscription: Box::new(subscription), expires, generation })
            }
            Err(error) => {
                bump(&self.counters.subscribes_unrecordable);
                tracing::debug!(%source, %error, "SUBSCRIBE proxied but not recorded");
                None
            }
        }
    }

    /// A ua-profile SUBSCRIBE: for the owner to answer, unless it cannot be
    /// read (`400`, `406`) or asks for a profile other than the user's (`404`).
    fn profile(
        &self,
        message: &Message<'_>,
        basis: &mut Basis,
        source: SocketAddr,
        local: SocketAddr,
        counters: &ProfileCounters,
    ) -> Vec<Action> {
        let (code, reason, counter) = match ProfileRequest::parse(message, source, local) {
            Ok(request) => return vec![Action::Profile(Box::new(request))],
            Err(Unreadable::Malformed(reason)) => (400, reason, &counters.malformed),
            Err(Unreadable::NotAcceptable) => {
                (406, "Not Acceptable: Documents Are application/xml".into(), &counters.not_acceptable)
            }
            Err(Unreadable::NotUser) => (404, "Only profile-type=user Here".into(), &counters.not_found),
        };
        tracing::debug!(%source, code, reason, "ua-profile SUBSCRIBE refused");
        let accept = [("Accept", profiles::CONTENT_TYPE.to_owned())];
        let extra: &[(&str, String)] = if code == 406 { &accept } else { &[] };
        self.reject_with(basis, source, code, &reason, extra, counter)
    }

    /// Whether a request is answered with a redirect rather than proxied.
    fn redirects(&self, message: &Message<'_>, direct: bool) -> bool {
        match self.settings.policy {
            _ if message.method() == Some("SUBSCRIBE") => false,
            Policy::Auto => direct && message.method() != Some("REGISTER"),
            Policy::ByVia => direct,
            Policy::Redirect => true,
            Policy::Proxy => false,
        }
    }

    fn absorb_ack(&self) -> Vec<Action> {
        bump(&self.counters.absorbed_acks);
        Vec::new()
    }

    /// An ACK for a proxied INVITE's non-2xx answer follows the INVITE (same
    /// branch, see `branch`); without an assignment there was no INVITE.
    fn proxy_ack(&self, message: &Message<'_>, source: SocketAddr, local: SocketAddr) -> Vec<Action> {
        let pool = self.pool.load();
        let home = identity(message)
            .ok()
            .and_then(|aor| self.cache.get(&aor))
            .and_then(|cached| pool.server(&cached.server))
            .and_then(|home| home.address_for(source));
        match (home, message.max_forwards().ok().flatten()) {
            (Some(home), max_forwards) if max_forwards != Some(0) => {
                self.proxy(message, source, home, local).unwrap_or_else(|| self.absorb_ack())
            }
            _ => self.absorb_ack(),
        }
    }

    fn redirect(&self, message: &Message<'_>, basis: &mut Basis, source: SocketAddr, home: SocketAddr) -> Vec<Action> {
        let StartLine::Request { uri, .. } = message.start else { unreachable!("only requests are redirected") };
        let contact = redirect_contact(uri, home);
        let extra = [("Contact", contact), ("Expires", self.settings.redirect_expires.to_string())];
        bump(&self.counters.redirected);
        let to = basis.stamp_top_via(source);
        vec![Action::Reply { to, bytes: response::build(basis, 302, "Moved Temporarily", &to_tag(basis), &extra) }]
    }

    /// Proxies a request that arrived at the service address `local`, which
    /// our Via names by index (`rdr-svc`) so the response leaves from it.
    /// `None` when the edge has no proxy address of `home`'s family.
    fn proxy(
        &self,
        message: &Message<'_>,
        source: SocketAddr,
        home: SocketAddr,
        local: SocketAddr,
    ) -> Option<Vec<Action>> {
        let proxy = self.proxy_for(home)?;
        let mut vias: Vec<String> = message.via_values().map(|v| v.into_owned()).collect();
        if let Some(top) = vias.first_mut()
            && let Ok(via) = Via::parse(top)
        {
            *top = via.stamped(source);
        }
        let mut ours = format!("SIP/2.0/UDP {proxy};branch={}", branch(message));
        if let Some(index) = self.settings.services.iter().position(|s| *s == local) {
            ours += &format!(";{SERVICE_PARAM}={index}");
        }
        vias.insert(0, ours);
        let max_forwards = message.max_forwards().ok().flatten().map_or(70, |n| n.saturating_sub(1));
        let pop_route = self.first_route_is_ours(message);
        bump(&self.counters.proxied);
        Some(vec![Action::Forward { to: home, bytes: rewrite(message, &vias, Some(max_forwards), pop_route) }])
    }

    /// The proxy address of `peer`'s family.
    fn proxy_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.settings.proxies.iter().copied().find(|proxy| proxy.is_ipv4() == peer.is_ipv4())
    }

    /// The request's first Route value names this edge (§16.4: it is to be
    /// removed before forwarding, or the next hop would send it back here).
    fn first_route_is_ours(&self, message: &Message<'_>) -> bool {
        let Some(route) = message.headers.iter().find(|h| h.name.eq_ignore_ascii_case("Route")) else {
            return false;
        };
        let first = split_list(route.value).next().map(unfold).unwrap_or_default();
        let named = NameAddr::parse(&first, "Route").ok().and_then(|value| socket_address(value.uri));
        named.is_some_and(|address| {
            self.settings.proxies.contains(&address) || self.settings.services.contains(&address)
        })
    }

    /// OPTIONS to every home server, from the proxy address of each family
    /// it has an address of (a server answering in either family is up).
    /// Sending them makes the kernel resolve and refresh each server's
    /// neighbour entries, which the fast path's FIB lookups need: in dsr mode
    /// the edge sends the servers nothing else.
    pub fn pings(&self, sequence: u32) -> Vec<Action> {
        let pool = self.pool.load();
        let servers = pool.servers();
        let each_family = servers.iter().flat_map(|server| self.settings.proxies.iter().map(move |p| (server, *p)));
        each_family.filter_map(|(server, proxy)| self.ping(server, sequence, proxy)).collect()
    }

    /// An OPTIONS to the server in slot `index`, over IPv4 or IPv6, outside
    /// the health rounds (sequence 0, which no round uses), for the kernel
    /// to resolve its neighbour now: the fast path reported a FIB miss.
    pub fn resolution_ping(&self, index: u32, ipv4: bool) -> Option<Action> {
        let server = self.pool.load().by_index(index)?.clone();
        let proxy = self.settings.proxies.iter().copied().find(|p| p.is_ipv4() == ipv4)?;
        let ping = self.ping(&server, 0, proxy)?;
        bump(&self.counters.resolution_pings);
        Some(ping)
    }

    fn ping(&self, server: &HomeServer, sequence: u32, proxy: SocketAddr) -> Option<Action> {
        let (to, index) = (server.address_for(proxy)?, server.index);
        bump(&self.counters.pings_sent);
        let bytes = format!(
            "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {proxy};branch={PING_PREFIX}{sequence:x}-{index}\r\n\
             Max-Forwards: 70\r\nTo: <sip:{to}>\r\nFrom: <sip:redirector@{proxy}>;tag=rdr-ping\r\n\
             Call-ID: rdr-ping-{sequence:x}-{index}@{proxy}\r\nCSeq: {sequence} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        Some(Action::Forward { to, bytes: bytes.into_bytes() })
    }

    fn is_our_via(&self, via: &Via<'_>) -> bool {
        let sent_by = match via.port {
            Some(port) => format!("{}:{port}", via.host),
            None => via.host.to_owned(),
        };
        let ours = self.settings.proxies.iter().any(|proxy| proxy.to_string() == sent_by);
        ours && via.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX))
    }

    /// 503 with Retry-After for a client the owner did not assign.
    fn refuse(&self, basis: &mut Basis, source: SocketAddr, refused: Refused) -> Vec<Action> {
        let (reason, counter) = match refused {
            Refused::NoServer => ("Service Unavailable", &self.counters.unavailable),
            Refused::RateLimited => ("Too Many New Clients From Your Network", &self.counters.rate_limited),
            Refused::AtCapacity => ("Assignment Capacity Reached", &self.counters.over_capacity),
        };
        self.retry_later(basis, source, reason, counter)
    }

    /// 503 with Retry-After.
    fn unavailable(&self, basis: &mut Basis, source: SocketAddr, reason: &str) -> Vec<Action> {
        self.retry_later(basis, source, reason, &self.counters.unavailable)
    }

    fn retry_later(&self, basis: &mut Basis, source: SocketAddr, reason: &str, counter: &AtomicU64) -> Vec<Action> {
        let retry = [("Retry-After", self.settings.retry_after.to_string())];
        self.reject_with(basis, source, 503, reason, &retry, counter)
    }

    fn reject(
        &self,
        basis: &mut Basis,
        source: SocketAddr,
        code: u16,
        reason: &str,
        counter: &AtomicU64,
    ) -> Vec<Action> {
        self.reject_with(basis, source, code, reason, &[], counter)
    }

    fn reject_with(
        &self,
        basis: &mut Basis,
        source: SocketAddr,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
        counter: &AtomicU64,
    ) -> Vec<Action> {
        bump(counter);
        let to = basis.stamp_top_via(source);
        vec![Action::Reply { to, bytes: response::build(basis, code, reason, &to_tag(basis), extra) }]
    }

    fn drop(&self) -> Vec<Action> {
        bump(&self.counters.dropped);
        Vec::new()
    }
}

/// The client's AOR: To of a REGISTER or SUBSCRIBE (the watched client),
/// From of anything else.
pub fn identity(message: &Message<'_>) -> Result<Aor, ParseError> {
    let (kind, name) = match message.method() {
        Some("REGISTER" | "SUBSCRIBE") => (HeaderKind::To, "To"),
        _ => (HeaderKind::From, "From"),
    };
    header_aor(message, kind, name)
}

/// The AOR of the URI in `message`'s `kind` header (`name` in errors).
fn header_aor(message: &Message<'_>, kind: HeaderKind, name: &'static str) -> Result<Aor, ParseError> {
    let value = message.value(kind).ok_or(ParseError::Missing(name))?;
    Aor::from_uri(NameAddr::parse(&value, name)?.uri, name)
}

/// A request with `;rport` added to its top Via if that has none (RFC
/// 3581), where `redirector_ebpf::via::top_via` has the program add it: at
/// the end of the top Via value. Anything else is unchanged.
fn with_rport(mut datagram: Vec<u8>) -> Vec<u8> {
    let Some(at) = rport_offset(&datagram) else { return datagram };
    datagram.splice(at..at, redirector_ebpf::via::RPORT);
    datagram
}

/// Where a request's top Via without `rport` ends, as an offset into `datagram`.
fn rport_offset(datagram: &[u8]) -> Option<usize> {
    let message = Message::parse(datagram).ok().filter(Message::is_request)?;
    let value = message.header(HeaderKind::Via)?.value;
    // Up to its first comma, as the program reads it.
    let top = &value[..value.find(',').unwrap_or(value.len())];
    if Via::parse(unfold(top).trim()).is_ok_and(|via| via.param("rport").is_some()) {
        return None;
    }
    // `top` borrows from `datagram`: its end is an offset into it.
    Some(top.as_ptr() as usize - datagram.as_ptr() as usize + top.len())
}

/// A redirect's Contact, `<sip:user@home>`: the request URI's user at the
/// home server.
fn redirect_contact(request_uri: &str, home: SocketAddr) -> String {
    let rest = request_uri.split_once(':').map_or("", |(_, rest)| rest);
    let rest = rest.split([';', '?']).next().unwrap_or("");
    let mut contact = String::with_capacity(rest.len() + 56);
    contact.push_str("<sip:");
    if let Some((user, _)) = rest.rsplit_once('@') {
        contact.push_str(user);
        contact.push('@');
    }
    // Writing to a String cannot fail.
    let _ = write!(contact, "{home}>");
    contact
}

const BRANCH_PREFIX: &str = "z9hG4bK-rdr-";
/// Our Via's parameter naming (by index) the service address a proxied
/// request arrived at.
const SERVICE_PARAM: &str = "rdr-svc";
const PING_PREFIX: &str = "z9hG4bK-rdr-ping-";

/// The branch of our Via on a proxied request (RFC 3261 §16.11): the same
/// for a retransmission, and for the CANCEL and non-2xx ACK of an INVITE, so
/// the home server matches them to its transaction. An RFC 3261 branch on
/// the incoming top Via already is unique per transaction and shared by
/// those, so it alone is hashed; older requests hash the fields that
/// identify the transaction (the CSeq number, not its method).
fn branch(message: &Message<'_>) -> String {
    let top = message.via_values().next().unwrap_or_default();
    let incoming =
        Via::parse(&top).ok().and_then(|via| via.branch()).filter(|b| b.starts_with("z9hG4bK")).map(str::to_owned);
    let key = incoming.unwrap_or_else(|| {
        let uri = match message.start {
            StartLine::Request { uri, .. } => uri,
            StartLine::Response { .. } => "",
        };
        let header = |kind| message.value(kind).unwrap_or_default().into_owned();
        let cseq_number = message.cseq().map_or(0, |(number, _)| number);
        format!(
            "{:?}\n{:?}\n{}\n{cseq_number}\n{uri}\n{top}",
            tag(&header(HeaderKind::To)),
            tag(&header(HeaderKind::From)),
            header(HeaderKind::CallId)
        )
    });
    format!("{BRANCH_PREFIX}{:016x}", xxh3_64(key.as_bytes()))
}

/// A response to one of our NOTIFYs (by its top Via's branch).
fn notify_answer(message: &Message<'_>, from: SocketAddr) -> Option<Action> {
    let StartLine::Response { code, .. } = message.start else { return None };
    let top = message.via_values().next()?;
    let branch = Via::parse(&top).ok()?.branch()?.to_owned();
    branch.starts_with(NOTIFY_BRANCH_PREFIX).then_some(Action::NotifyAnswered { branch, code, from })
}

/// What a relayed response to a SUBSCRIBE tells the watchers' registry.
fn subscribe_answer(message: &Message<'_>, code: u16) -> Option<Action> {
    let call_id = message.value(HeaderKind::CallId)?.trim().to_owned();
    let watcher_tag = tag(&message.value(HeaderKind::From)?)?.to_owned();
    let notifier_tag = message.value(HeaderKind::To).and_then(|to| tag(&to).map(str::to_owned));
    (code >= 200).then_some(Action::SubscribeAnswered { id: DialogId { call_id, watcher_tag }, code, notifier_tag })
}

/// (sequence, server slot) from a ping's branch.
fn parse_ping_branch(branch: &str) -> Option<(u32, u32)> {
    let (sequence, server) = branch.strip_prefix(PING_PREFIX)?.split_once('-')?;
    Some((u32::from_str_radix(sequence, 16).ok()?, server.parse().ok()?))
}

/// A stateless To tag: the same request gets the same tag. Hashed field
/// by field, each with its length (or absence) first, so no two requests'
/// fields run together alike.
fn to_tag(basis: &Basis) -> String {
    let mut hasher = Xxh3::new();
    for field in [basis.call_id.as_deref(), basis.from.as_deref().and_then(tag), basis.cseq.as_deref()] {
        match field {
            Some(field) => {
                hasher.update(&(field.len() as u64).to_le_bytes());
                hasher.update(field.as_bytes());
            }
            None => hasher.update(&u64::MAX.to_le_bytes()),
        }
    }
    format!("rdr{:012x}", hasher.digest() & 0xffff_ffff_ffff)
}

/// The message with its Vias replaced by `vias` (one per line), for a
/// request Max-Forwards set and, with `pop_route`, the first Route value
/// removed; every other header and the body unchanged.
fn rewrite(message: &Message<'_>, vias: &[String], max_forwards: Option<u8>, pop_route: bool) -> Vec<u8> {
    let mut out = match message.start {
        StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0\r\n"),
        StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}\r\n"),
    };
    for via in vias {
        out += &format!("Via: {via}\r\n");
    }
    if let Some(max_forwards) = max_forwards {
        out += &format!("Max-Forwards: {max_forwards}\r\n");
    }
    let mut pop_route = pop_route;
    for header in &message.headers {
        let replaced =
            header.kind == HeaderKind::Via || (max_forwards.is_some() && header.kind == HeaderKind::MaxForwards);
        if replaced {
            continue;
        }
        if pop_route && header.name.eq_ignore_ascii_case("Route") {
            pop_route = false;
            let rest: Vec<_> = split_list(header.value).skip(1).map(|v| unfold(v).trim().to_owned()).collect();
            if !rest.is_empty() {
                out += &format!("{}: {}\r\n", header.name, rest.join(", "));
            }
            continue;
        }
        out += &format!("{}: {}\r\n", header.name, unfold(header.value));
    }
    out += "\r\n";
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(message.body);
    bytes
}

#[path = "from_homes.rs"]
mod from_homes;

#[cfg(test)]
#[path = "first_contact_tests.rs"]
mod tests;
