//! End to end in network namespaces: the real `redirector run` attached to
//! the edge (native and skb), real datagrams from a client to the service
//! address, real sockets on the home server and the edge.

use std::{net::SocketAddr, time::Duration};

use redirector::ops::api::Route;
use redirector_tests::{
    privileged,
    topology::{Attach, CLIENT, Family, SERVICE, Topology, echo, home_listen_address, receive, socket_in},
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
