//! End to end in network namespaces: the real `redirector run` attached to
//! the edge (native and skb), real datagrams from a client to the service
//! address, real sockets on the home server and the edge.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{
    Array, Map, MapData, MapInfo,
    lpm_trie::{Key, LpmTrie},
};
use redirector::{
    kernel::{fast_path::monotonic_ns, loader::endpoint},
    ops::api::Route,
};
use redirector_ebpf::{
    FAMILY_V4, HOP_STATE_MAP, HOPS_MAP, HopState, NextHop, REPLY_HOPS_MAP, ReplyKey, address_bits, reply_key,
    reply_prefix_bits, server_hop,
};
use redirector_tests::{
    netns::NetNs,
    privileged,
    topology::{
        Attach, CLIENT, Family, SERVICE, Topology, echo, echo_while, home_listen_address, mac, receive, socket_in,
    },
};

const DATAGRAMS: usize = 200;
const WAIT: Duration = Duration::from_secs(15);

/// A pinned client of `family` sends DATAGRAMS to that family's service
/// address (the edge configured for that family alone); all reach home 0
/// (not the edge's own socket) and every echo comes back to the client from
/// the service address. Then SIGTERM detaches the program cleanly.
/// Request `i` of a client that asks for rport: nat forwards it unchanged.
fn request(client: SocketAddr, i: usize) -> String {
    format!("OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP {client};branch=z9hG4bK{i};rport\r\n\r\n")
}

fn pinned_client_reaches_its_home_server(mode: &'static str, attach: Attach, family: Family) {
    let mut topology = Topology::new(mode, attach, 2);
    topology.families = family.only();
    let client_address = SocketAddr::new(family.client(), 5060);
    let home_socket = socket_in(&topology.homes[0], &home_listen_address(mode, family));
    let other_home_socket = socket_in(&topology.homes[1], &home_listen_address(mode, family));
    let client = socket_in(&topology.client, &client_address.to_string());
    topology.start(&[(client_address, 0)]);
    let service = family.service();

    let echoes = echo(home_socket, DATAGRAMS, WAIT);
    for i in 0..DATAGRAMS {
        client.send_to(request(client_address, i).as_bytes(), service).unwrap();
    }
    let replies = receive(&client, DATAGRAMS, WAIT);
    let answered = echoes.join().unwrap();
    if answered != DATAGRAMS {
        let stats = topology.homes[0].exec("nstat", &["-az", "UdpRcvbufErrors", "UdpInCsumErrors", "UdpInErrors"]);
        eprintln!("home UDP stats: {}", String::from_utf8_lossy(&stats.stdout));
    }
    assert_eq!(answered, DATAGRAMS, "{mode}/{attach:?}/{family:?}: datagrams answered by the home server");
    assert_eq!(replies.len(), DATAGRAMS, "{mode}/{attach:?}/{family:?}: replies back at the client");
    assert!(replies.iter().all(|(from, _)| *from == service), "replies come from the service address");
    let mut payloads: Vec<String> = replies.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect();
    payloads.sort();
    let mut sent: Vec<String> = (0..DATAGRAMS).map(|i| format!("echo:{}", request(client_address, i))).collect();
    sent.sort();
    assert_eq!(payloads, sent, "every datagram arrived once, unchanged");
    assert!(receive(&other_home_socket, 1, Duration::from_millis(100)).is_empty(), "nothing went to another home");

    let (exited_cleanly, attached) = topology.stop_edge();
    assert!(exited_cleanly, "redirector run exits 0 on SIGTERM");
    assert!(attached, "the kernel keeps forwarding without the daemon");
    let (detached, gone) = topology.detach_edge();
    assert!(detached && gone, "redirector detach leaves no XDP program on e0 and nothing pinned");
}

#[test]
fn dsr_native_forwards_to_the_home_server_which_answers_directly() {
    if privileged() {
        pinned_client_reaches_its_home_server("dsr", Attach::Native, Family::V4);
    }
}

#[test]
fn ipv6_dsr_native_forwards_to_the_home_server_which_answers_directly() {
    if privileged() {
        pinned_client_reaches_its_home_server("dsr", Attach::Native, Family::V6);
    }
}

#[test]
fn dsr_skb_forwards_to_the_home_server_which_answers_directly() {
    if privileged() {
        pinned_client_reaches_its_home_server("dsr", Attach::Skb, Family::V4);
    }
}

#[test]
fn ipv6_dsr_skb_forwards_to_the_home_server_which_answers_directly() {
    if privileged() {
        pinned_client_reaches_its_home_server("dsr", Attach::Skb, Family::V6);
    }
}

#[test]
fn nat_native_forwards_and_rewrites_replies_back() {
    if privileged() {
        pinned_client_reaches_its_home_server("nat", Attach::Native, Family::V4);
    }
}

#[test]
fn ipv6_nat_native_forwards_and_rewrites_replies_back() {
    if privileged() {
        pinned_client_reaches_its_home_server("nat", Attach::Native, Family::V6);
    }
}

#[test]
fn nat_skb_forwards_and_rewrites_replies_back() {
    if privileged() {
        pinned_client_reaches_its_home_server("nat", Attach::Skb, Family::V4);
    }
}

#[test]
fn ipv6_nat_skb_forwards_and_rewrites_replies_back() {
    if privileged() {
        pinned_client_reaches_its_home_server("nat", Attach::Skb, Family::V6);
    }
}

/// The assignment table of the running edge, as `redirector routes --json` gives it.
fn routes(topology: &Topology) -> Vec<Route> {
    let output = topology.cli(&["routes", "--json"]);
    assert!(output.status.success(), "routes --json: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("routes --json")
}

/// The `host:port` of a 302's `Contact: <sip:HOST:PORT>` (read here, not
/// with the library's scanner under test).
fn contact_target(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let contact = text.lines().find_map(|l| l.strip_prefix("Contact:")).unwrap_or_else(|| panic!("no Contact: {text}"));
    let uri = contact.trim().trim_start_matches('<').split(['>', ';']).next().unwrap();
    uri.strip_prefix("sip:").unwrap_or_else(|| panic!("a sip: URI: {uri}")).to_owned()
}

/// An unknown client's REGISTER reaches `redirector run`, which answers
/// from the service address with a 302 whose Contact is the home server it
/// stored for the AOR; nothing reaches a home server.
#[test]
fn unknown_client_reaches_the_edge_daemon_which_redirects_it() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    let home_sockets: Vec<_> = topology.homes.iter().map(|home| socket_in(home, SERVICE)).collect();
    let client = socket_in(&topology.client, &format!("{CLIENT}:5099"));
    topology.start(&[(format!("{CLIENT}:5060").parse().unwrap(), 0)]);
    let register = format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:5099;branch=z9hG4bK1\r\n\
         To: <sip:new@example.net>\r\nFrom: <sip:new@example.net>;tag=1\r\nCall-ID: u@c\r\nCSeq: 1 REGISTER\r\n\r\n"
    );
    client.send_to(register.as_bytes(), SERVICE).unwrap();
    let answers = receive(&client, 1, WAIT);
    assert_eq!(answers.len(), 1, "the daemon answered the first contact");
    let (from, answer) = &answers[0];
    assert_eq!(*from, SERVICE.parse::<SocketAddr>().unwrap());
    assert!(String::from_utf8_lossy(answer).starts_with("SIP/2.0 302 Moved Temporarily\r\n"));
    let routes = routes(&topology);
    let route = routes.iter().find(|r| r.aor == "sip:new@example.net").expect("the AOR was assigned");
    let home = route.address.expect("the home server has an address");
    assert_eq!(contact_target(answer), home.to_string(), "the 302 names {}, the stored home server", route.server);
    for socket in &home_sockets {
        assert!(receive(socket, 1, Duration::from_millis(300)).is_empty(), "nothing reached a home server");
    }
}

/// With dynamic neighbours and health checks far apart: after the edge
/// forgets the home server's neighbour entry, a client's packet is a FIB
/// miss that the program passes up and reports; the daemon sends that
/// packet on as the kernel would (it is not lost) and pings the server at
/// once, so the client's next packets take the fast path again within
/// moments, not at the next health check.
#[test]
fn a_fib_miss_makes_the_daemon_resolve_the_neighbour_at_once() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::with_dynamic_neighbours("dsr", Attach::Skb, 1);
    topology.extra_config = "[health]\ninterval = 60\n[stats]\ninterval = 0.1\n".into();
    let client_address: SocketAddr = format!("{CLIENT}:5060").parse().unwrap();
    let client = socket_in(&topology.client, &client_address.to_string());
    topology.start(&[(client_address, 0)]);
    until_echoed(&topology, &client);
    let before = topology.stats_when(|_| true);
    topology.edge.ip("neigh flush all");
    // The daemon's kept hop (whose MAC is still right) serves until its
    // keeper has seen the flush; then the FIB is asked, and misses.
    let flushed = Instant::now();
    while kept_hop(&topology, 0).is_some() {
        assert!(flushed.elapsed() < WAIT, "the kept hop outlived the neighbour flush");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(until_echoed(&topology, &client), 1, "the first datagram after the flush reached the home");
    let misses = before.verdicts["fib_miss"];
    let stats = topology.stats_when(|stats| stats.verdicts["fib_miss"] > misses);
    let sent_on = stats.first_contact["forwarded_for_fast_path"] - before.first_contact["forwarded_for_fast_path"];
    assert!(sent_on >= 1, "the FIB miss was sent on by the daemon: {stats:?}");
    assert_eq!(stats.first_contact["pings_sent"], 1 + stats.first_contact["resolution_pings"], "one health round");
    assert!(stats.first_contact["resolution_pings"] >= 1, "the daemon pinged on the event: {stats:?}");
    let forwarded = stats.verdicts["forwarded"];
    until_echoed(&topology, &client);
    topology.stats_when(|stats| stats.verdicts["forwarded"] > forwarded);
}

/// Sends numbered datagrams, one every 100 ms, until the home server's echo
/// of one comes back (bounded by 50 datagrams and WAIT for the last);
/// returns the number of the first datagram echoed, however late its echo.
/// Datagrams the fast path cannot forward go to the daemon, which sends
/// them on as the kernel would (the client is on the fast path).
fn until_echoed(topology: &Topology, client: &std::net::UdpSocket) -> usize {
    let home = socket_in(&topology.homes[0], &home_listen_address("dsr", Family::V4));
    let echoes = echo(home, 1, WAIT + Duration::from_secs(5));
    let mut echoed = Vec::new();
    for sent in 1..=50 {
        client.send_to(format!("ping {sent}").as_bytes(), SERVICE).unwrap();
        echoed = receive(client, 1, Duration::from_millis(100));
        if !echoed.is_empty() {
            break;
        }
    }
    if echoed.is_empty() {
        echoed = receive(client, 1, WAIT);
    }
    assert_eq!(echoed.len(), 1, "not forwarded after 50 datagrams: {:?}", topology.edge.exec("ip", &["neigh"]));
    assert_eq!(echoes.join().unwrap(), 1);
    let payload = String::from_utf8_lossy(&echoed[0].1).into_owned();
    payload.strip_prefix("echo:ping ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("an echo: {payload}"))
}

/// The edge daemon keeps its home servers' next hops in step with the
/// kernel: a home's new MAC (`ip neigh replace`), then a new route to it
/// (through home 1 as a gateway), is in the daemon's kept hop, and on the
/// frames the fast path sends, within a second of the change.
#[test]
fn kept_next_hops_follow_neighbour_and_route_changes() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    let client_address: SocketAddr = format!("{CLIENT}:5060").parse().unwrap();
    let client = socket_in(&topology.client, &client_address.to_string());
    topology.start(&[(client_address, 0)]);
    let capture = Capture::open(&topology.lan, "e0-br");
    let home = redirector_tests::topology::home_address(0);
    if let Err(last) = sent_by_kept_hop(&topology, &client, &capture, &mac(0x11), "start", WAIT) {
        panic!("the daemon's kept hop to home 0 never carried its frames: {last}");
    }
    let gateway = redirector_tests::topology::home_address(1);
    for (change, mac) in [
        (format!("neigh replace {home} lladdr 02:00:00:00:00:a1 dev e0 nud permanent"), "02:00:00:00:00:a1".into()),
        (format!("route replace {home}/32 via {gateway} dev e0"), mac(0x12)),
    ] {
        topology.edge.ip(&change);
        let followed = sent_by_kept_hop(&topology, &client, &capture, &mac, &change, Duration::from_secs(2));
        let followed =
            followed.unwrap_or_else(|last| panic!("after `ip {change}`: never sent to {mac} by a kept hop: {last}"));
        assert!(followed <= Duration::from_secs(1), "after `ip {change}`: followed in {followed:?}, not within 1 s");
    }
}

/// Sends the client's datagrams, one every 50 ms or so, until one leaves
/// the edge for `mac` while the daemon's fresh kept hop to home 0 says
/// `mac` too: how long that took, or (past `limit`) what was seen last.
fn sent_by_kept_hop(
    topology: &Topology,
    client: &std::net::UdpSocket,
    capture: &Capture,
    mac: &str,
    label: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let leg = Leg { seen: |marker: &[u8]| marker.to_vec(), kept: || kept_hop(topology, 0) };
    sent_by_kept(client, capture, mac, label, limit, leg)
}

/// Which frame of a client's datagram the test watches, and the daemon's
/// kept hop that should carry it.
struct Leg<S, K> {
    /// The bytes that frame carries, given the datagram's.
    seen: S,
    /// The destination MAC of the daemon's fresh kept hop for it.
    kept: K,
}

/// `sent_by_kept_hop` for any leg: until the leg's frame of a datagram
/// leaves the edge for `mac` while its kept hop says `mac` too.
fn sent_by_kept(
    client: &std::net::UdpSocket,
    capture: &Capture,
    mac: &str,
    label: &str,
    limit: Duration,
    leg: Leg<impl Fn(&[u8]) -> Vec<u8>, impl Fn() -> Option<String>>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::from("nothing");
    for i in 0.. {
        if start.elapsed() >= limit {
            break;
        }
        let marker = format!("datagram {i} after {label}");
        client.send_to(marker.as_bytes(), SERVICE).unwrap();
        let sent_to = capture.destination_of(&(leg.seen)(marker.as_bytes()), Duration::from_millis(50));
        let kept = (leg.kept)();
        if sent_to.as_deref() == Some(mac) && kept.as_deref() == Some(mac) {
            return Ok(start.elapsed());
        }
        last = format!("datagram {i} sent to {sent_to:?}, kept hop {kept:?}");
    }
    Err(last)
}

/// The nat edge keeps its clients' reply hops in step with the kernel: the
/// client's new MAC (`ip neigh replace`), then a new route to it (through
/// home 1 as a gateway), is in the daemon's kept reply hop (`REPLY_HOPS`),
/// and on the replies the fast path rewrites back to the client, within a
/// second of the change.
#[test]
fn kept_reply_hops_follow_neighbour_and_route_changes() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("nat", Attach::Native, 2);
    let client_address: SocketAddr = format!("{CLIENT}:5060").parse().unwrap();
    let client = socket_in(&topology.client, &client_address.to_string());
    let home_socket = socket_in(&topology.homes[0], &home_listen_address("nat", Family::V4));
    topology.start(&[(client_address, 0)]);
    let capture = Capture::open(&topology.lan, "e0-br");
    let testing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| echo_while(&home_socket, Duration::from_secs(30), |_| testing.load(Ordering::Relaxed)));
        replies_follow_hop_changes(&topology, &client, &capture);
        testing.store(false, Ordering::Relaxed);
    });
}

/// The client's replies leave by its kept reply hop, then follow a new
/// neighbour MAC and a new route within a second each.
fn replies_follow_hop_changes(topology: &Topology, client: &std::net::UdpSocket, capture: &Capture) {
    let reply = |marker: &[u8]| [b"echo:".as_slice(), marker].concat();
    let leg = || Leg { seen: reply, kept: || kept_reply_hop(topology) };
    if let Err(last) = sent_by_kept(client, capture, &mac(0x02), "start", WAIT, leg()) {
        panic!("the daemon's kept reply hop to the client never carried its replies: {last}");
    }
    let gateway = redirector_tests::topology::home_address(1);
    for (change, mac) in [
        (format!("neigh replace {CLIENT} lladdr 02:00:00:00:00:b1 dev e0 nud permanent"), "02:00:00:00:00:b1".into()),
        (format!("route replace {CLIENT}/32 via {gateway} dev e0"), mac(0x12)),
    ] {
        topology.edge.ip(&change);
        let followed = sent_by_kept(client, capture, &mac, &change, Duration::from_secs(2), leg());
        let followed =
            followed.unwrap_or_else(|last| panic!("after `ip {change}`: no reply sent to {mac} by a kept hop: {last}"));
        assert!(followed <= Duration::from_secs(1), "after `ip {change}`: followed in {followed:?}, not within 1 s");
    }
}

/// The destination MAC of the edge daemon's fresh kept hop for home server
/// slot `slot` (at its IPv4 address), read from its `HOPS` and
/// `HOP_STATE` maps.
fn kept_hop(topology: &Topology, slot: u32) -> Option<String> {
    let pid = topology.edge_pid().expect("the edge daemon runs");
    let hops: Array<MapData, NextHop> = Array::try_from(Map::Array(daemon_map(pid, HOPS_MAP)?)).ok()?;
    let state: Array<MapData, HopState> = Array::try_from(Map::Array(daemon_map(pid, HOP_STATE_MAP)?)).ok()?;
    let (hop, state) = (hops.get(&server_hop(slot, FAMILY_V4), 0).ok()?, state.get(&0, 0).ok()?);
    let home = endpoint(redirector_tests::topology::home_address(slot as usize).into(), 0);
    state.fresh(&hop, &home.addr, monotonic_ns()).then(|| hop.dst_mac.map(|b| format!("{b:02x}")).join(":"))
}

/// The destination MAC of the nat edge daemon's fresh kept reply hop for
/// the client (its longest `REPLY_HOPS` prefix), read from its maps.
fn kept_reply_hop(topology: &Topology) -> Option<String> {
    let pid = topology.edge_pid().expect("the edge daemon runs");
    let hops: LpmTrie<MapData, ReplyKey, NextHop> =
        LpmTrie::try_from(Map::LpmTrie(daemon_map(pid, REPLY_HOPS_MAP)?)).ok()?;
    let state: Array<MapData, HopState> = Array::try_from(Map::Array(daemon_map(pid, HOP_STATE_MAP)?)).ok()?;
    let client = endpoint(CLIENT.into(), 0);
    let key = Key::new(reply_prefix_bits(address_bits(FAMILY_V4)), reply_key(FAMILY_V4, &client.addr));
    let (hop, state) = (hops.get(&key, 0).ok()?, state.get(&0, 0).ok()?);
    state.vouches(&hop, monotonic_ns()).then(|| hop.dst_mac.map(|b| format!("{b:02x}")).join(":"))
}

/// The map called `name` among those process `pid` holds.
fn daemon_map(pid: u32, name: &str) -> Option<MapData> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|id| id.trim().parse().ok()))
        .find(|&id| MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(name)))
        .and_then(|id| MapData::from_id(id).ok())
}

/// An AF_PACKET socket on one interface: every frame that crosses it (a
/// bridge port sees frames to any MAC).
struct Capture(OwnedFd);

impl Capture {
    fn open(ns: &NetNs, interface: &str) -> Self {
        let ifindex = ns.ifindex(interface);
        let _inside = ns.enter();
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is its neutral value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = all;
        address.sll_ifindex = ifindex as i32;
        let size = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: a valid sockaddr_ll of `size` bytes for the call's duration.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), size) };
        assert_eq!(rc, 0, "binding AF_PACKET to {interface}: {}", std::io::Error::last_os_error());
        Self(fd)
    }

    /// The destination MAC of the first frame carrying `marker` within `limit`.
    fn destination_of(&self, marker: &[u8], limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut frame = [0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut poll = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the call's duration.
            if unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) } <= 0 {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data; zero is its neutral value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_size = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom(2) into a buffer of its length and a sockaddr_ll of `from_size` bytes.
            let size = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_size,
                )
            };
            let frame = &frame[..usize::try_from(size).ok()?];
            // Frames the bridge sends towards the edge are not the edge's.
            let from_edge = from.sll_pkttype != libc::PACKET_OUTGOING;
            if from_edge && frame.windows(marker.len()).any(|w| w == marker) {
                return Some(frame[..6].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
            }
        }
        None
    }
}
