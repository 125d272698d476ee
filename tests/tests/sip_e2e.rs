//! First contact end to end: SIPp clients, the edge daemon (in this process,
//! so its counters can be read) and real registrars as home servers, in
//! network namespaces.

use std::time::{Duration, Instant};

use redirector::ops::api::Route;
use redirector_ebpf::Counter;
use redirector_tests::{
    privileged,
    sip_pool::{
        BackgroundSipp, InProcessEdge, Registrar, sipp, sipp_clients, sipp_over, sipp_over_without_rport,
        sipp_with_keys_without_rport, start_registrars,
    },
    topology::{Attach, CLIENT, CLIENT_V6, Family, SERVICE, Topology, receive, socket_in},
};

fn pool(mode: &'static str, attach: Attach, registrar: Registrar) -> Topology {
    let mut topology = Topology::new(mode, attach, 3);
    start_registrars(&mut topology, registrar);
    topology
}

fn assert_sipp_ok(topology: &Topology, scenario: &str, calls: u32, port: u16) {
    let output = sipp(topology, scenario, calls, port);
    assert!(output.status.success(), "sipp {scenario}: {}", String::from_utf8_lossy(&output.stdout));
}

fn clients_spread_over_homes(edge: &InProcessEdge, expected: usize) {
    let assignments = edge.routes();
    assert_eq!(assignments.len(), expected);
    let homes: std::collections::HashSet<&str> = assignments.iter().map(|a| a.server.as_str()).collect();
    assert!(homes.len() > 1, "rendezvous hashing spread {expected} AORs over more than one home: {homes:?}");
}

/// The assignment table, as `redirector routes --json` gives it.
fn routes(topology: &Topology) -> Vec<Route> {
    let output = topology.cli(&["routes", "--json"]);
    assert!(output.status.success(), "routes --json: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("routes --json")
}

/// One SIPp client (AOR prefix `prefix`, from `port`) follows its 302 and
/// registers there; returns its AOR and the 302's Contact, as it logged them.
fn follow_redirect(topology: &Topology, port: u16, prefix: &str) -> (String, String) {
    let sipp = BackgroundSipp::spawn_as(topology, "register_follow_redirect.xml", port, prefix);
    let log = sipp.wait().unwrap_or_else(|e| panic!("sipp client {prefix}: {e}"));
    let line =
        log.lines().find_map(|l| l.trim().strip_prefix("redirected ")).unwrap_or_else(|| panic!("no 302 in {log}"));
    let (aor, contact) = line.split_once(" to ").unwrap_or_else(|| panic!("a log line {line:?}"));
    (aor.to_owned(), contact.to_owned())
}

/// Each client's 302 names the home server the daemon stored for its AOR
/// (its address in `routes --json`), and the client registered there.
#[test]
fn sipp_client_follows_the_302_to_its_home_server() {
    if !privileged() {
        return;
    }
    let mut topology = pool("dsr", Attach::Native, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let redirected: Vec<(String, String)> =
        (0..20u16).map(|i| follow_redirect(&topology, 6000 + i, &format!("user{i}-"))).collect();
    assert_eq!(edge.first_contact("redirected"), 20);
    assert_eq!(edge.first_contact("assigned"), 20);
    let routes = routes(&topology);
    for (aor, contact) in &redirected {
        let route = routes.iter().find(|r| &r.aor == aor).unwrap_or_else(|| panic!("{aor} not in {routes:?}"));
        let home = route.address.unwrap_or_else(|| panic!("{route:?} has an address"));
        assert_eq!(contact, &home.to_string(), "{aor}: the 302 names its home server {}", route.server);
    }
    clients_spread_over_homes(&edge, 20);
}

#[test]
fn kamailio_home_servers_take_redirected_and_fast_path_registrations() {
    if !privileged() {
        return;
    }
    let mut topology = pool("dsr", Attach::Native, Registrar::Kamailio);
    let edge = InProcessEdge::start(&mut topology, &[]);
    assert!(sipp_clients(&topology, "register_follow_redirect.xml", 10, 6000, "user"));
    assert_sipp_ok(&topology, "reregister_fast_path.xml", 1, 5071);
    assert_eq!(edge.first_contact("redirected"), 11);
    assert!(edge.kernel(Counter::Forwarded) >= 1, "the re-REGISTER went through XDP");
}

/// Rewrites the client's UDP source port `from` to `to` on the way out, in
/// both families, statelessly (nftables in the client's namespace), as a NAT
/// in front of a client that does not send rport would.
fn rewrite_source_port(topology: &Topology, from: u16, to: u16) {
    let rule = format!("udp sport {from} udp sport set {to}");
    for command in [
        vec!["add", "table", "inet", "portmap"],
        vec!["add", "chain", "inet", "portmap", "out", "{ type filter hook output priority 0; }"],
        vec!["add", "rule", "inet", "portmap", "out", &rule],
    ] {
        let output = topology.client.exec("nft", &command);
        assert!(output.status.success(), "nft {command:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

/// A client of `family` without rport whose Via port (SIPp's socket, 5090)
/// is not its packets' source port (6090), at a dsr edge configured for
/// that family: the edge's 302 and Kamailio's 200s, the last one to a
/// REGISTER on the fast path, all reach the Via's port (RFC 3261 §18.2.2),
/// and the fast path learned the source, not the Via.
fn replies_go_to_the_via_port_without_rport(family: Family) {
    let mut topology = Topology::new("dsr", Attach::Native, 3);
    topology.families = family.only();
    start_registrars(&mut topology, Registrar::Kamailio);
    rewrite_source_port(&topology, 5090, 6090);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let output = sipp_over(&topology, family, "register_no_rport.xml", 1, 5090, "user");
    assert!(output.status.success(), "{family:?}: sipp: {}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(edge.first_contact("redirected"), 1, "{family:?}");
    assert_eq!(edge.first_contact("requests"), 1, "{family:?}: the third REGISTER took the fast path");
    assert!(edge.kernel(Counter::Forwarded) >= 1, "{family:?}: the kernel forwarded it");
    let installed: Vec<std::net::SocketAddr> = edge.entries("sip:user1@example.net").iter().map(|e| e.client).collect();
    assert_eq!(installed, [(family.client(), 6090).into()], "{family:?}: the fast path keys on the packets' source");
}

#[test]
fn replies_go_to_the_via_port_when_it_is_not_the_source_port_and_there_is_no_rport() {
    if privileged() {
        replies_go_to_the_via_port_without_rport(Family::V4);
    }
}

#[test]
fn ipv6_replies_go_to_the_via_port_when_it_is_not_the_source_port_and_there_is_no_rport() {
    if privileged() {
        replies_go_to_the_via_port_without_rport(Family::V6);
    }
}

/// IPv6 end to end, under each first-contact policy: a SIPp client with
/// rport at the IPv6 service address of an edge configured for IPv6 only,
/// stock Kamailio registrars as homes. Its first REGISTER is first contact
/// (by-via: the edge's 302; the default: proxied, Kamailio's 200 relayed);
/// the client is then on the fast path under its IPv6 socket, and Kamailio
/// answers its refreshes through the kernel, which forwards each (dsr:
/// IPv6-in-IPv6 to the home, which answers directly; nat: rewritten to the
/// home, its answers rewritten back). The scenario needs four 200s with the
/// binding, which only a registrar sends.
fn ipv6_client_registers_then_refreshes_on_the_fast_path(mode: &'static str) {
    const FAST_PATH_REGISTERS: u64 = 3;
    for (policy, first_contact) in [(Some("by-via"), "redirected"), (None, "proxied")] {
        let mut topology = Topology::new(mode, Attach::Native, 2);
        topology.families = &[Family::V6];
        topology.first_contact = policy;
        start_registrars(&mut topology, Registrar::Kamailio);
        let edge = InProcessEdge::start(&mut topology, &[]);
        let output = sipp_over(&topology, Family::V6, "register_then_refresh.xml", 1, 5070, "user");
        let case = format!("{mode}/{}", policy.unwrap_or("default"));
        assert!(output.status.success(), "{case}: sipp: {}", String::from_utf8_lossy(&output.stdout));
        assert_eq!(edge.first_contact(first_contact), 1, "{case}: the first REGISTER");
        assert_eq!(edge.first_contact("requests"), 1, "{case}: no refresh reached the daemon");
        let entries = edge.entries("sip:user1@example.net");
        let clients: Vec<std::net::SocketAddr> = entries.iter().map(|e| e.client).collect();
        assert_eq!(clients, [(CLIENT_V6, 5070).into()], "{case}: the IPv6 socket is on the fast path");
        assert!(entries[0].packets >= FAST_PATH_REGISTERS, "{case}: its packets, as the kernel counted them");
        assert!(edge.kernel(Counter::Forwarded) >= FAST_PATH_REGISTERS, "{case}: the kernel forwarded the refreshes");
        if mode == "nat" {
            let replies = edge.kernel(Counter::NatReply);
            assert!(replies >= FAST_PATH_REGISTERS, "{case}: Kamailio's 200s rewritten back by the kernel: {replies}");
        }
    }
}

#[test]
fn ipv6_client_registers_through_a_dsr_edge_and_refreshes_on_the_fast_path() {
    if privileged() {
        ipv6_client_registers_then_refreshes_on_the_fast_path("dsr");
    }
}

#[test]
fn ipv6_client_registers_through_a_nat_edge_and_refreshes_on_the_fast_path() {
    if privileged() {
        ipv6_client_registers_then_refreshes_on_the_fast_path("nat");
    }
}

/// The setup users run: a nat edge with the default configuration, stock
/// Kamailio registrars (`save("location")`, no `force_rport()`), a client
/// whose Via has no `rport`. Kamailio answers a request at the Via's port
/// unless it asks for rport (RFC 3261 §18.2.2); in nat mode that port is
/// the client's at the edge's address, where nothing maps it back. The
/// kernel adds `;rport` to each refresh, so Kamailio answers the edge port
/// the refresh left by, and the kernel rewrites the answer to the client.
fn nat_client_without_rport_has_every_refresh_answered(family: Family, attach: Attach) {
    const FAST_PATH_REGISTERS: u64 = 3;
    let mut topology = Topology::new("nat", attach, 2);
    topology.families = if family == Family::V4 { &[Family::V4] } else { &[Family::V6] };
    topology.first_contact = None;
    start_registrars(&mut topology, Registrar::Kamailio);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let output = sipp_over_without_rport(&topology, family, "register_then_refresh.xml", 5070);
    assert!(output.status.success(), "{family:?}: sipp: {}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(edge.first_contact("proxied"), 1, "{family:?}: the first REGISTER, proxied");
    assert_eq!(edge.first_contact("requests"), 1, "{family:?}: no refresh reached the daemon");
    assert!(edge.kernel(Counter::Forwarded) >= FAST_PATH_REGISTERS, "{family:?}: the kernel forwarded the refreshes");
    let replies = edge.kernel(Counter::NatReply);
    assert!(replies >= FAST_PATH_REGISTERS, "{family:?}: Kamailio answered the edge port, rewritten back: {replies}");
}

#[test]
fn nat_client_without_rport_has_every_refresh_answered_by_stock_kamailio() {
    if privileged() {
        nat_client_without_rport_has_every_refresh_answered(Family::V4, Attach::Skb);
    }
}

#[test]
fn ipv6_nat_client_without_rport_has_every_refresh_answered_by_stock_kamailio() {
    if privileged() {
        nat_client_without_rport_has_every_refresh_answered(Family::V6, Attach::Native);
    }
}

/// A REGISTER for `line` with a binding, as a multi-line phone sends it.
fn register_line(line: usize, port: u16, seq: u32) -> String {
    format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{port};branch=z9hG4bKline{line}x{seq};rport\r\n\
         Max-Forwards: 70\r\nTo: <sip:line{line}@example.net>\r\nFrom: <sip:line{line}@example.net>;tag=l{line}\r\n\
         Call-ID: line{line}@pbx\r\nCSeq: {seq} REGISTER\r\nContact: <sip:line{line}@{CLIENT}:{port}>\r\n\
         Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    )
}

/// One socket registering six lines, as an IP-PBX or a multi-line phone
/// does, with the default configuration and stock Kamailio homes. The
/// socket goes on the fast path for the first line; the kernel passes up
/// the first REGISTER of any other line (its `To` is not the socket's, and
/// `AORS` has no route for it yet), so the daemon assigns each line a home
/// of its own and registers it there, and `routes` lists all six. Twice
/// round: every REGISTER is answered 200 by a registrar, with the line's
/// binding. Round two no longer meets first contact: line1's REGISTER takes
/// the socket's entry, every other line's goes to its own home by `AORS`
/// (`forwarded_other_aor`; before the kernel routed shared sockets by AOR,
/// round two went up as round one did). In nat mode each other line
/// leaves from an edge port of its own, through which its home's answers
/// come back (`nat_reply`).
fn one_socket_registering_six_lines_registers_each_at_its_own_home(mode: &'static str) {
    let (_topology, edge, socket) = six_line_pool(mode, "");
    register_lines(&socket, 1);
    let routes = edge.routes();
    let mut lines: Vec<&str> = routes.iter().map(|r| r.aor.as_str()).collect();
    lines.sort();
    let expected: Vec<String> = (1..=LINES).map(|line| format!("sip:line{line}@example.net")).collect();
    assert_eq!(lines, expected, "every line is assigned");
    let homes: std::collections::HashSet<&str> = routes.iter().map(|r| r.server.as_str()).collect();
    assert!(homes.len() > 1, "the lines are spread over the homes: {homes:?}");
    assert!(edge.kernel(Counter::PassOtherAor) >= LINES as u64 - 1, "the kernel passed up the other lines");
    // Each line's first REGISTER went by the daemon's proxy, which sends it
    // to the home the line is assigned (first_contact_tests pin that).
    assert!(edge.first_contact("proxied") >= LINES as u64, "every line proxied to its own home");

    let (requests, others) = (edge.first_contact("requests"), edge.kernel(Counter::ForwardedOtherAor));
    let replies = edge.kernel(Counter::NatReply);
    register_lines(&socket, 2);
    assert_eq!(edge.first_contact("requests"), requests, "{mode}: round two's REGISTERs went up");
    assert_eq!(edge.kernel(Counter::ForwardedOtherAor) - others, LINES as u64 - 1, "{mode}: the other lines by AORS");
    if mode == "nat" {
        let replies = edge.kernel(Counter::NatReply) - replies;
        assert_eq!(replies, LINES as u64, "nat: every line's 200 came back through the kernel");
    }

    // The socket stays line1's (its first REGISTER), shared with the others.
    let owner = edge.entries("sip:line1@example.net");
    assert_eq!(owner.len(), 1, "the socket is on the fast path for line1: {owner:?}");
    for line in 2..=LINES {
        assert_eq!(edge.entries(&format!("sip:line{line}@example.net")), [], "line{line} does not take the socket");
    }
    each_line_reaches_its_own_home(&edge, &socket, &routes, 1);
    a_big_request_of_another_line_reaches_its_home(&edge, &socket, &routes, mode);

    // Moving one line moves it alone: the others keep their homes, the
    // socket its entry.
    let moved = "sip:line2@example.net";
    let from = edge.home_of(moved).expect("line2 is assigned");
    let to = edge.servers().into_iter().map(|s| s.name).find(|name| *name != from).expect("another home");
    edge.assign(moved, &to);
    let after = edge.routes();
    for route in &after {
        let before = routes.iter().find(|r| r.aor == route.aor).expect("assigned before");
        let expected = if route.aor == moved { &to } else { &before.server };
        assert_eq!(&route.server, expected, "{}'s home after moving line2", route.aor);
    }
    let entry = edge.entries("sip:line1@example.net");
    assert_eq!(
        entry.iter().map(|e| (e.client, e.server)).collect::<Vec<_>>(),
        owner.iter().map(|e| (e.client, e.server)).collect::<Vec<_>>(),
        "the socket's entry as it was"
    );
    each_line_reaches_its_own_home(&edge, &socket, &after, 2);
}

#[test]
fn one_socket_registering_six_lines_through_a_dsr_edge_registers_each_at_its_own_home() {
    if privileged() {
        one_socket_registering_six_lines_registers_each_at_its_own_home("dsr");
    }
}

#[test]
fn one_socket_registering_six_lines_through_a_nat_edge_registers_each_at_its_own_home() {
    if privileged() {
        one_socket_registering_six_lines_registers_each_at_its_own_home("nat");
    }
}

const LINES: usize = 6;

/// An edge of `mode` with the config's `extra` and three stock Kamailio
/// homes, and the client socket the lines register from.
fn six_line_pool(mode: &'static str, extra: &str) -> (Topology, InProcessEdge, std::net::UdpSocket) {
    let mut topology = Topology::new(mode, Attach::Native, 3);
    topology.first_contact = None;
    topology.extra_config = extra.to_owned();
    start_registrars(&mut topology, Registrar::Kamailio);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let socket = socket_in(&topology.client, &format!("{CLIENT}:5080"));
    (topology, edge, socket)
}

/// Round `seq` of REGISTERs for every line from `socket`: each answered
/// 200 by a registrar, with the line's binding.
fn register_lines(socket: &std::net::UdpSocket, seq: u32) {
    for line in 1..=LINES {
        socket.send_to(register_line(line, 5080, seq).as_bytes(), SERVICE).expect("sending a REGISTER");
        let answers = receive(socket, 1, Duration::from_secs(5));
        let answer = answers.first().map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned());
        let answer = answer.unwrap_or_else(|| panic!("line{line}, round {seq}: no answer"));
        assert!(answer.starts_with("SIP/2.0 200"), "line{line}, round {seq}: {answer}");
        let binding = format!("<sip:line{line}@{CLIENT}:5080>;expires=");
        assert!(answer.contains(&binding), "line{line}, round {seq}: the registrar's binding in {answer}");
    }
}

/// `line`'s OPTIONS (From and To the line) from the six-line socket, and
/// the answer.
fn options_of(socket: &std::net::UdpSocket, line: usize, round: u32) -> String {
    padded_options_of(socket, line, round, "")
}

/// As `options_of`, with `pad` in a header of its own (none if empty).
fn padded_options_of(socket: &std::net::UdpSocket, line: usize, round: u32, pad: &str) -> String {
    let pad = if pad.is_empty() { String::new() } else { format!("X-Pad: {pad}\r\n") };
    let options = format!(
        "OPTIONS sip:line{line}@example.net SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CLIENT}:5080;branch=z9hG4bKopt{line}x{round};rport\r\nMax-Forwards: 70\r\n\
         To: <sip:line{line}@example.net>\r\nFrom: <sip:line{line}@example.net>;tag=o{line}\r\n\
         Call-ID: opt{line}x{round}@pbx\r\nCSeq: 1 OPTIONS\r\n{pad}Content-Length: 0\r\n\r\n"
    );
    socket.send_to(options.as_bytes(), SERVICE).expect("sending an OPTIONS");
    let answers = receive(socket, 1, Duration::from_secs(5));
    answers.first().map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned()).unwrap_or_default()
}

/// The fast path's packets to each home, by name.
fn sent_to_homes(edge: &InProcessEdge) -> std::collections::BTreeMap<String, u64> {
    edge.servers().into_iter().map(|s| (s.name, s.packets)).collect()
}

/// A request from each line of the six-line socket (an OPTIONS): the
/// kernel sends every line's to that line's home, whose Kamailio answers
/// it, and first contact never sees it: line1's, the socket's own, by the
/// socket's entry (`forwarded`), any other line's by `AORS`
/// (`forwarded_other_aor`). Before the kernel routed shared sockets by
/// AOR, the other lines' went up and first contact answered them with a
/// 302 naming their homes.
fn each_line_reaches_its_own_home(edge: &InProcessEdge, socket: &std::net::UdpSocket, routes: &[Route], round: u32) {
    for line in 1..=LINES {
        let aor = format!("sip:line{line}@example.net");
        let home = &routes.iter().find(|r| r.aor == aor).expect("the line's route").server;
        let counter = if line == 1 { Counter::Forwarded } else { Counter::ForwardedOtherAor };
        let (requests, forwarded, sent) = (edge.first_contact("requests"), edge.kernel(counter), sent_to_homes(edge));
        let answer = options_of(socket, line, round);
        assert!(answer.starts_with("SIP/2.0 200"), "round {round}, line{line}: its home answered: {answer:?}");
        assert!(answer.contains(&format!("X-Home: {home}\r\n")), "round {round}, line{line}: not {home}: {answer:?}");
        assert_eq!(edge.first_contact("requests"), requests, "round {round}: line{line}'s OPTIONS went up");
        assert_eq!(edge.kernel(counter) - forwarded, 1, "round {round}, line{line}: {}", counter.label());
        let now = sent_to_homes(edge);
        for (name, packets) in &now {
            let expected = sent[name] + u64::from(name == home);
            assert_eq!(*packets, expected, "round {round}, line{line} (at {home}): what the kernel sent {name}");
        }
    }
}

/// line3's OPTIONS padded past one frame comes up as IP fragments: the
/// daemon sends it on as the kernel sends line3's small ones (dsr: through
/// the tunnel to line3's home; nat: from line3's own edge port, so the
/// home's 200 comes back through the kernel's rule 7, which takes it from
/// line3's home alone), not to first contact, whose answer was a 302.
fn a_big_request_of_another_line_reaches_its_home(
    edge: &InProcessEdge,
    socket: &std::net::UdpSocket,
    routes: &[Route],
    mode: &str,
) {
    let home = &routes.iter().find(|r| r.aor == "sip:line3@example.net").expect("line3's route").server;
    let (requests, sent_on) = (edge.first_contact("requests"), edge.first_contact("forwarded_for_fast_path"));
    let (fragments, replies) = (edge.kernel(Counter::Fragment), edge.kernel(Counter::NatReply));
    let answer = padded_options_of(socket, 3, 99, &"x".repeat(2000));
    assert!(answer.starts_with("SIP/2.0 200"), "{mode}: line3's big OPTIONS answered by a home: {answer:?}");
    assert!(answer.contains(&format!("X-Home: {home}\r\n")), "{mode}: answered by line3's home {home}: {answer:?}");
    assert_eq!(edge.first_contact("requests"), requests, "{mode}: line3's big OPTIONS met first contact");
    let sent_on = edge.first_contact("forwarded_for_fast_path") - sent_on;
    assert_eq!(sent_on, 1, "{mode}: line3's big OPTIONS sent on as the kernel sends its small ones");
    let fragments = edge.kernel(Counter::Fragment) - fragments;
    assert!(fragments >= 2, "{mode}: line3's big OPTIONS came as IP fragments: {fragments}");
    if mode == "nat" {
        assert_eq!(edge.kernel(Counter::NatReply) - replies, 1, "nat: the 200 came back by line3's port");
    }
}

/// Expiring the line a shared socket was put on the fast path for (it
/// fell silent) takes the fast path from none of the others: the socket's
/// entry is handed to another line, whose requests and the third line's
/// still reach their homes through the kernel, and the expired line's
/// next request goes up to first contact.
#[test]
fn expiring_a_shared_sockets_first_line_leaves_the_others_on_the_fast_path() {
    if !privileged() {
        return;
    }
    let (_topology, edge, socket) = six_line_pool("dsr", "[store]\nexpire_after = 3\n");
    register_lines(&socket, 1);
    let line1 = "sip:line1@example.net";
    assert_eq!(edge.entries(line1).len(), 1, "the socket is line1's");
    // Every line but line1 keeps talking (through the kernel) until line1
    // expires.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 10;
    while edge.home_of(line1).is_some() {
        assert!(Instant::now() < deadline, "line1 never expired");
        for line in 2..=LINES {
            assert!(options_of(&socket, line, round).starts_with("SIP/2.0 200"), "line{line} answered");
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let routes = edge.routes();
    assert_eq!(routes.len(), LINES - 1, "only line1 expired: {routes:?}");
    let owners: Vec<String> =
        routes.iter().filter(|r| !edge.entries(&r.aor).is_empty()).map(|r| r.aor.clone()).collect();
    assert_eq!(owners.len(), 1, "the socket was handed to one other line: {owners:?}");
    for line in 2..=LINES {
        let aor = format!("sip:line{line}@example.net");
        let home = &routes.iter().find(|r| r.aor == aor).expect("the line's route").server;
        let counter = if owners[0] == aor { Counter::Forwarded } else { Counter::ForwardedOtherAor };
        let (requests, forwarded, sent) = (edge.first_contact("requests"), edge.kernel(counter), sent_to_homes(&edge));
        assert!(options_of(&socket, line, 99).starts_with("SIP/2.0 200"), "line{line} answered");
        assert_eq!(edge.first_contact("requests"), requests, "line{line} went up");
        assert_eq!(edge.kernel(counter) - forwarded, 1, "line{line}: {}", counter.label());
        assert_eq!(sent_to_homes(&edge)[home] - sent[home], 1, "line{line}: to its own home {home}");
    }
    let (requests, other) = (edge.first_contact("requests"), edge.kernel(Counter::PassOtherAor));
    options_of(&socket, 1, 99);
    assert_eq!(edge.kernel(Counter::PassOtherAor) - other, 1, "the expired line goes up");
    assert_eq!(edge.first_contact("requests") - requests, 1, "to first contact");
}

/// How a fast-path client's request comes to be passed up by the program.
#[derive(Clone, Copy, Debug)]
enum TooBig {
    /// About 3,000 bytes (a big header, a big body): IP fragments over the
    /// 1,500-byte veth MTU.
    Fragmented,
    /// About 1,400 bytes, one frame from the client, but the edge's route
    /// to the homes has an MTU of 1,280 (locked: only a locked route MTU
    /// binds forwarding): the FIB would have to fragment it.
    OverRouteMtu,
}

/// `count` Contact values of about 215 bytes at the client's socket, as a
/// phone with many bindings sends them; the last one's user starts
/// `binding-last`.
fn many_contacts(family: Family, count: usize) -> String {
    let at = std::net::SocketAddr::new(family.client(), 5070);
    let user = |i: usize| if i + 1 == count { "binding-last".to_owned() } else { format!("binding{i}") };
    let contact = |i| format!("<sip:{}-{}@{at}>", user(i), "x".repeat(180));
    (0..count).map(contact).collect::<Vec<_>>().join(", ")
}

/// A client on the fast path sends a big REGISTER (many Contacts) and
/// INVITE (a big body), which the program passes up (`TooBig`). The daemon
/// sends each on as the kernel sends the client's small datagrams (dsr:
/// from the client's own socket through the tunnel; nat: from its edge
/// port, `;rport` added, as this client sends none), so stock Kamailio
/// answers them itself: 200 listing every binding, and 404 where the
/// edge's first contact would send 302. In nat, the 200 to the 3,000-byte
/// REGISTER is as big and reaches the edge as fragments: the daemon relays
/// it to the client as the program relays small replies.
fn big_requests_from_a_fast_path_client_reach_its_home(mode: &'static str, family: Family, size: TooBig) {
    let case = format!("{mode}/{family:?}/{size:?}");
    let mut topology = Topology::new(mode, Attach::Native, 2);
    topology.families = family.only();
    topology.first_contact = None;
    start_registrars(&mut topology, Registrar::Kamailio);
    // (INVITE body, Contacts): about 3,000-byte requests, or 1,400-byte ones.
    let (body, bindings) = match size {
        TooBig::Fragmented => (2700, 13),
        TooBig::OverRouteMtu => {
            for home in 0..topology.homes.len() {
                topology.edge.ip(&format!("route replace {} dev e0 mtu lock 1280", family.home(home)));
            }
            (1050, 5)
        }
    };
    let edge = InProcessEdge::start(&mut topology, &[]);
    let (pad, contacts) = ("x".repeat(body), many_contacts(family, bindings));
    let keys = [("pad", pad.as_str()), ("contacts", contacts.as_str())];
    let output = sipp_with_keys_without_rport(&topology, family, "big_requests.xml", 5070, &keys);
    assert!(output.status.success(), "{case}: sipp: {}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(edge.first_contact("proxied"), 1, "{case}: only the small REGISTER met first contact");
    assert_eq!(edge.first_contact("requests"), 1, "{case}: the big ones were no first contact");
    assert_eq!(edge.first_contact("redirected"), 0, "{case}: no 302");
    let forwarded = edge.first_contact("forwarded_for_fast_path");
    assert!(forwarded >= 2, "{case}: the big REGISTER and INVITE sent on for the fast path: {forwarded}");
    let (fragments, fib_misses) = (edge.kernel(Counter::Fragment), edge.kernel(Counter::FibMiss));
    match size {
        TooBig::Fragmented => {
            assert!(fragments >= 4, "{case}: each came as IP fragments: {fragments}");
            if mode == "nat" {
                let relayed = edge.first_contact("nat_replies_relayed");
                assert!(relayed >= 1, "{case}: Kamailio's fragmented 200, relayed to the client: {relayed}");
            }
        }
        // Only a whole frame meets the FIB (Kamailio's 200 listing every
        // binding may still come back as fragments).
        TooBig::OverRouteMtu => assert!(fib_misses >= 2, "{case}: each was too big for the route: {fib_misses}"),
    }
}

#[test]
fn big_requests_from_a_fast_path_client_reach_its_home_through_a_dsr_edge() {
    if privileged() {
        big_requests_from_a_fast_path_client_reach_its_home("dsr", Family::V4, TooBig::Fragmented);
    }
}

#[test]
fn big_requests_from_a_fast_path_client_reach_its_home_through_a_nat_edge() {
    if privileged() {
        big_requests_from_a_fast_path_client_reach_its_home("nat", Family::V4, TooBig::Fragmented);
    }
}

#[test]
fn ipv6_big_requests_from_a_fast_path_client_reach_its_home_through_a_dsr_edge() {
    if privileged() {
        big_requests_from_a_fast_path_client_reach_its_home("dsr", Family::V6, TooBig::Fragmented);
    }
}

#[test]
fn ipv6_big_requests_from_a_fast_path_client_reach_its_home_through_a_nat_edge() {
    if privileged() {
        big_requests_from_a_fast_path_client_reach_its_home("nat", Family::V6, TooBig::Fragmented);
    }
}

#[test]
fn requests_the_fib_would_fragment_reach_the_home_through_a_dsr_edge_over_both_families() {
    if privileged() {
        for family in [Family::V4, Family::V6] {
            big_requests_from_a_fast_path_client_reach_its_home("dsr", family, TooBig::OverRouteMtu);
        }
    }
}

#[test]
fn requests_the_fib_would_fragment_reach_the_home_through_a_nat_edge_over_both_families() {
    if privileged() {
        for family in [Family::V4, Family::V6] {
            big_requests_from_a_fast_path_client_reach_its_home("nat", family, TooBig::OverRouteMtu);
        }
    }
}

#[test]
fn register_through_an_upstream_proxy_is_proxied_and_the_200_relayed() {
    if !privileged() {
        return;
    }
    for (mode, attach) in [("dsr", Attach::Native), ("nat", Attach::Skb)] {
        let mut topology = pool(mode, attach, Registrar::Own);
        let edge = InProcessEdge::start(&mut topology, &[]);
        assert_sipp_ok(&topology, "register_via_upstream_proxy.xml", 10, 5070);
        assert_eq!(edge.first_contact("proxied"), 10, "{mode}");
        assert_eq!(edge.first_contact("relayed"), 10, "{mode}");
        assert_eq!(edge.first_contact("installed"), 0, "an upstream proxy is never put on the fast path");
    }
}

#[test]
fn after_first_contact_the_client_takes_the_fast_path() {
    if !privileged() {
        return;
    }
    for (mode, attach) in [("dsr", Attach::Native), ("nat", Attach::Native), ("dsr", Attach::Skb)] {
        let mut topology = pool(mode, attach, Registrar::Own);
        let edge = InProcessEdge::start(&mut topology, &[]);
        let forwarded_before = edge.kernel(Counter::Forwarded);
        assert_sipp_ok(&topology, "reregister_fast_path.xml", 1, 5070);
        assert_eq!(edge.first_contact("requests"), 1, "{mode}/{attach:?}: only the first REGISTER reached the daemon");
        assert_eq!(edge.first_contact("installed"), 1);
        assert!(
            edge.kernel(Counter::Forwarded) > forwarded_before,
            "{mode}/{attach:?}: the kernel forwarded the re-REGISTER"
        );
    }
}

#[test]
fn reachability_pings_resolve_home_servers_so_the_fast_path_works_without_static_neighbours() {
    if !privileged() {
        return;
    }
    for mode in ["dsr", "nat"] {
        let mut topology = Topology::with_dynamic_neighbours(mode, Attach::Skb, 2);
        start_registrars(&mut topology, Registrar::Own);
        let edge = InProcessEdge::start(&mut topology, &[]);
        assert_sipp_ok(&topology, "reregister_fast_path.xml", 1, 5070);
        assert_eq!(edge.first_contact("requests"), 1, "{mode}: the re-REGISTER was not a FIB miss");
        assert!(edge.kernel(Counter::Forwarded) >= 1, "{mode}");
        assert_eq!(edge.kernel(Counter::FibMiss), 0, "{mode}");
        assert!(edge.first_contact("pings_answered") >= 1, "{mode}: home servers answered the pings");
    }
}

#[test]
fn compact_folded_comma_listed_malformed_and_hop_limited_requests() {
    if !privileged() {
        return;
    }
    let mut topology = pool("dsr", Attach::Native, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    // Each from its own port: a redirected client's port is on the fast path.
    for (scenario, port) in [
        ("compact_headers.xml", 5071),
        ("comma_vias.xml", 5072),
        ("malformed_max_forwards.xml", 5073),
        ("max_forwards_zero.xml", 5074),
    ] {
        assert_sipp_ok(&topology, scenario, 1, port);
    }
    // SIPp cannot send a folded line (it trims every scenario line), so:
    let client = socket_in(&topology.client, &format!("{CLIENT}:5075"));
    let folded = format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:5075\r\n ;branch=z9hG4bKfold;rport\r\n\
         To: Folded\r\n\t<sip:folded@example.net>\r\nFrom: <sip:folded@example.net>;tag=f\r\nCall-ID: fold@c\r\n\
         CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(folded.as_bytes(), SERVICE).unwrap();
    let answer = receive(&client, 1, Duration::from_secs(15));
    assert_eq!(answer.len(), 1, "the folded REGISTER was answered");
    let answer = String::from_utf8_lossy(&answer[0].1).into_owned();
    assert!(answer.starts_with("SIP/2.0 302 Moved Temporarily\r\n"), "{answer}");
    assert!(answer.contains("To: Folded <sip:folded@example.net>;tag="), "unfolded in the answer: {answer}");
    for (counter, expected) in
        [("redirected", 2), ("proxied", 1), ("relayed", 1), ("bad_request", 1), ("too_many_hops", 1)]
    {
        assert_eq!(edge.first_contact(counter), expected, "{counter}");
    }
}

#[test]
fn no_active_home_server_gets_503() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.server_state = "down";
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    assert_sipp_ok(&topology, "register_unavailable.xml", 3, 5070);
    assert_eq!(edge.first_contact("unavailable"), 3);
    assert!(edge.routes().is_empty());
}

#[test]
fn the_same_aor_keeps_its_home_server_across_restarts() {
    if !privileged() {
        return;
    }
    let mut topology = pool("nat", Attach::Skb, Registrar::Own);
    let before = {
        let edge = InProcessEdge::start(&mut topology, &[]);
        assert!(sipp_clients(&topology, "register_follow_redirect.xml", 8, 6000, "user"));
        assert_eq!(edge.first_contact("assigned"), 8);
        edge.routes()
    };
    let edge = InProcessEdge::start(&mut topology, &[]);
    // The same AORs from new addresses: the old ones are on the fast path.
    assert!(sipp_clients(&topology, "register_follow_redirect.xml", 8, 7000, "user"));
    assert_eq!(edge.first_contact("redirected"), 8);
    assert_eq!(edge.first_contact("assigned"), 0, "every AOR was found in the database");
    assert_eq!(edge.routes(), before);
}

/// A REGISTER for `user` from `port`, as a client re-registering sends it.
fn register(user: &str, port: u16, seq: u32) -> String {
    format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{port};branch=z9hG4bKidle{seq};rport\r\n\
         To: <sip:{user}@example.net>\r\nFrom: <sip:{user}@example.net>;tag=idle\r\nCall-ID: idle@c\r\n\
         CSeq: {seq} REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Re-REGISTERs `user` from `port` every 0.2 s for `period`: a socket in
/// this process, not SIPp launches, whose start-up time on a loaded
/// machine could exceed the idle timeout by itself.
fn keep_registering(topology: &Topology, user: &str, port: u16, period: Duration) {
    let client = socket_in(&topology.client, &format!("{CLIENT}:{port}"));
    let start = Instant::now();
    for seq in 2.. {
        if start.elapsed() >= period {
            return;
        }
        client.send_to(register(user, port, seq).as_bytes(), SERVICE).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn idle_clients_leave_the_fast_path_and_active_ones_stay() {
    if !privileged() {
        return;
    }
    const IDLE_TIMEOUT: f64 = 3.0;
    let mut topology = pool("nat", Attach::Skb, Registrar::Own);
    topology.extra_config = format!("[fast_path]\nidle_timeout = {IDLE_TIMEOUT}\n");
    let edge = InProcessEdge::start(&mut topology, &[]);
    let aor = "sip:user1@example.net";
    assert_sipp_ok(&topology, "reregister_fast_path.xml", 1, 5070);
    assert_eq!(edge.entries(aor).len(), 1, "on the fast path");

    // Active for three timeouts: every REGISTER went through the fast path.
    let forwarded = edge.kernel(Counter::Forwarded);
    keep_registering(&topology, "user1", 5070, Duration::from_secs_f64(3.0 * IDLE_TIMEOUT));
    assert_eq!(edge.first_contact("requests"), 1, "the active client never fell back to first contact");
    assert!(edge.kernel(Counter::Forwarded) >= forwarded + 10, "the kernel forwarded its REGISTERs");
    assert_eq!(edge.entries(aor).len(), 1, "still on the fast path");

    // Idle: gone within a few sweeps (a quarter of the timeout each).
    let idle_since = Instant::now();
    while !edge.entries(aor).is_empty() {
        assert!(idle_since.elapsed() < Duration::from_secs(30), "the idle client never left the fast path");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its kernel entry is gone too: its next REGISTER is a first contact
    // again (302, then 200 via XDP).
    assert_sipp_ok(&topology, "reregister_fast_path.xml", 1, 5070);
    assert_eq!(edge.first_contact("requests"), 2);
}
