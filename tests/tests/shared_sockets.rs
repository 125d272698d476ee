//! A socket that carries several lines (a multi-line phone, an IP-PBX),
//! through `FastPath` and the program (BPF_PROG_TEST_RUN, dsr and nat):
//! each line reaches its own home, and withdrawing, moving, expiring or restoring
//! one line changes where no other line goes.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use redirector::{
    kernel::{
        aor_routes::hash_of,
        fast_path::{Adopted, FastPath, Installed},
        installed::LineRoute,
        loader::endpoint,
        pins::Pins,
    },
    model::Origin,
    sip::Aor,
};
use redirector_ebpf::{CLIENT_SHARED, ClientEntry, Counter, FAMILY_V4, NatKey, aor::aor_hash};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture, HOME2_MAC, Outcome, Scratch},
    packets::{Datagram, ethernet},
    privileged,
};

/// Server slots, in the fixture config's order (home3 is down, home4 has
/// no neighbour; home5 is on another link).
const HOME1: u32 = 0;
const HOME2: u32 = 1;
const HOME5: u32 = 4;

const SOCKET: &str = "10.0.0.2:7002";

fn aor(user: &str) -> Aor {
    Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
}

fn origin() -> Origin {
    Origin { client: SOCKET.parse().unwrap(), service: "192.0.2.10:5060".parse().unwrap(), asks_rport: true }
}

fn socket_entry(fast_path: &mut FastPath) -> Option<ClientEntry> {
    let socket: SocketAddr = SOCKET.parse().unwrap();
    fast_path.dataplane().client(endpoint(socket.ip(), socket.port())).unwrap()
}

/// The home address `user`'s OPTIONS from the socket is tunnelled to, and
/// the counter it moved; `None` if it went up.
fn sent(fx: &mut Fixture, user: &str) -> (Option<Ipv4Addr>, Counter) {
    let before = fx.counters();
    let outcome = fx.run(&options_of(user));
    let moved: Vec<Counter> = before.iter().zip(fx.counters()).filter(|(b, a)| a.1 != b.1).map(|(b, _)| b.0).collect();
    assert_eq!(moved.len(), 1, "{user}: exactly one counter moves: {moved:?}");
    // XDP_TX, or XDP_REDIRECT to home5's link.
    let home =
        matches!(outcome.action, 3 | 4).then(|| Ipv4Addr::from(<[u8; 4]>::try_from(&outcome.frame[30..34]).unwrap()));
    (home, moved[0])
}

/// `user`'s OPTIONS from the socket, as a frame to the edge.
fn options_of(user: &str) -> Vec<u8> {
    let payload = format!(
        "OPTIONS sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:7002;rport;branch=z9hG4bK1\r\n\
         From: <sip:{user}@example.net>;tag=1\r\nTo: <sip:{user}@example.net>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
    );
    let datagram = Datagram::new(SOCKET, "192.0.2.10:5060").with(|d| d.payload = payload.into_bytes());
    ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet())
}

const AT_HOME1: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 0, 0, 11));
const AT_HOME2: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 0, 0, 12));
const AT_HOME5: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 1, 0, 5));

/// Three lines on one socket, line1 first (the entry's), line2 and line3
/// routed by `AORS`: a move of line2 moves line2 alone; withdrawing line1
/// hands the socket to line2, so line2 and line3 stay on the fast path
/// and line1 goes up; restoring line1 leaves the entry line2's; expiring
/// line2 hands it on to a line still routed; the last line's expiry takes
/// it off the fast path.
#[test]
fn each_line_of_a_shared_socket_is_withdrawn_moved_and_restored_alone() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let (line1, line2, line3) = (aor("line1"), aor("line2"), aor("line3"));
    // As first contact's assignments do: each line routed, then installed.
    fx.fast_path.route_aors(&[(&line1, HOME1)]).unwrap();
    assert_eq!(fx.fast_path.install(&line1, origin(), HOME1).unwrap(), Installed::ForAor);
    for (line, home) in [(&line2, HOME2), (&line3, HOME5)] {
        assert_eq!(fx.fast_path.install(line, origin(), home).unwrap(), Installed::Shared);
    }
    let entry = socket_entry(&mut fx.fast_path).expect("the socket's entry");
    assert_eq!((entry.server, entry.aor_hash), (HOME1, aor_hash(b"sip:line1@example.net")), "line1's");
    assert_ne!(entry.flags & CLIENT_SHARED, 0, "shared");
    assert_eq!(sent(&mut fx, "line1"), (AT_HOME1, Counter::Forwarded));
    assert_eq!(sent(&mut fx, "line2"), (AT_HOME2, Counter::ForwardedOtherAor));
    assert_eq!(sent(&mut fx, "line3"), (AT_HOME5, Counter::ForwardedOtherAor));

    fx.fast_path.repoint_many(&[(&line2, HOME5)]).unwrap();
    assert_eq!(sent(&mut fx, "line2"), (AT_HOME5, Counter::ForwardedOtherAor), "line2 moved");
    assert_eq!(sent(&mut fx, "line1"), (AT_HOME1, Counter::Forwarded), "line1 stays");
    assert_eq!(socket_entry(&mut fx.fast_path).map(|e| e.server), Some(HOME1), "the entry stays line1's");
    fx.fast_path.repoint_many(&[(&line2, HOME2)]).unwrap();

    withdrawing_line1_hands_the_socket_to_line2(&mut fx, &line1);

    // First contact answers line1 again, at a new home.
    fx.fast_path.route_aors(&[(&line1, HOME5)]).unwrap();
    assert_eq!(fx.fast_path.install(&line1, origin(), HOME5).unwrap(), Installed::Shared);
    assert_eq!(
        socket_entry(&mut fx.fast_path).map(|e| e.server),
        Some(HOME2),
        "line2's entry is not pointed at line1's home"
    );
    assert_eq!(sent(&mut fx, "line1"), (AT_HOME5, Counter::ForwardedOtherAor));
    assert_eq!(sent(&mut fx, "line2"), (AT_HOME2, Counter::Forwarded));

    fx.fast_path.forget_many(std::slice::from_ref(&line2)).unwrap();
    let entry = socket_entry(&mut fx.fast_path).expect("the socket's entry, kept");
    let (hash1, hash3) = (aor_hash(b"sip:line1@example.net"), aor_hash(b"sip:line3@example.net"));
    assert!(entry.aor_hash == hash1 || entry.aor_hash == hash3, "handed on to a line still routed");
    assert_eq!(entry.server, HOME5, "at that line's home");
    assert_eq!(sent(&mut fx, "line2"), (None, Counter::PassOtherAor), "an expired line goes up");
    for (line, hash) in [("line1", hash1), ("line3", hash3)] {
        let by = if entry.aor_hash == hash { Counter::Forwarded } else { Counter::ForwardedOtherAor };
        assert_eq!(sent(&mut fx, line), (AT_HOME5, by), "{line}");
    }

    // The last line withdrawn takes the socket off the fast path.
    fx.fast_path.forget_many(&[line1, line3]).unwrap();
    assert_eq!(socket_entry(&mut fx.fast_path), None, "no line left: the entry is gone");
}

/// The idle sweep: a shared socket whose own line went quiet while
/// another line kept using it is handed to that line (line3, stamped),
/// not to one that did not (line2, listed first) and not taken off the
/// fast path; once no line used it lately, it goes, though line2 is
/// still routed.
#[test]
fn an_idle_shared_socket_is_handed_to_a_line_still_busy() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let (line1, line2, line3) = (aor("line1"), aor("line2"), aor("line3"));
    fx.fast_path.route_aors(&[(&line1, HOME1), (&line2, HOME2), (&line3, HOME5)]).unwrap();
    assert_eq!(fx.fast_path.install(&line1, origin(), HOME1).unwrap(), Installed::ForAor);
    for (line, home) in [(&line2, HOME2), (&line3, HOME5)] {
        assert_eq!(fx.fast_path.install(line, origin(), home).unwrap(), Installed::Shared);
    }
    let idle = Duration::from_millis(300);
    std::thread::sleep(idle * 2);
    // line3 speaks (its route stamped); line1 and line2 stay quiet.
    assert_eq!(sent(&mut fx, "line3"), (AT_HOME5, Counter::ForwardedOtherAor));
    let scanned = fx.fast_path.scan(idle, 100).unwrap();
    assert_eq!(scanned.removed, 0, "nothing taken off the fast path");
    let entry = socket_entry(&mut fx.fast_path).expect("the socket's entry, kept");
    assert_eq!((entry.server, entry.aor_hash), (HOME5, aor_hash(b"sip:line3@example.net")), "handed to line3");
    assert_eq!(sent(&mut fx, "line3"), (AT_HOME5, Counter::Forwarded), "line3's now");

    std::thread::sleep(idle * 2);
    fx.fast_path.scan(idle, 100).unwrap();
    assert_eq!(socket_entry(&mut fx.fast_path), None, "no line used it lately (line2 routed, quiet): gone");
}

/// line1 (home1, the entry's) withdrawn, with line2 (home2) and line3
/// (home5) routed: the socket stays on the fast path, handed to line2;
/// line1 goes up, line2 takes the entry, line3 keeps its route.
fn withdrawing_line1_hands_the_socket_to_line2(fx: &mut Fixture, line1: &Aor) {
    let withdrawn = fx.fast_path.withdraw_many(std::slice::from_ref(line1)).unwrap();
    assert!(withdrawn.is_empty(), "the socket stays on the fast path: {withdrawn:?}");
    let entry = socket_entry(&mut fx.fast_path).expect("the socket's entry, kept");
    assert_eq!((entry.server, entry.aor_hash), (HOME2, aor_hash(b"sip:line2@example.net")), "handed to line2");
    assert_eq!(sent(fx, "line1"), (None, Counter::PassOtherAor), "line1 goes up to first contact");
    assert_eq!(sent(fx, "line2"), (AT_HOME2, Counter::Forwarded));
    assert_eq!(sent(fx, "line3"), (AT_HOME5, Counter::ForwardedOtherAor), "line3 keeps the kernel path");
}

/// The edge port `user`'s OPTIONS left from (nat).
fn source_port(fx: &mut Fixture, user: &str) -> u16 {
    let outcome = fx.run(&options_of(user));
    assert!(matches!(outcome.action, 3 | 4), "{user}: sent");
    u16::from_be_bytes([outcome.frame[34], outcome.frame[35]])
}

/// The reply entries that name the socket, by edge port.
fn socket_replies(fx: &mut Fixture) -> Vec<(u16, u32)> {
    let socket: SocketAddr = SOCKET.parse().unwrap();
    let socket = endpoint(socket.ip(), socket.port());
    let mut replies: Vec<(u16, u32)> = (fx.fast_path.dataplane().all_nat_replies().unwrap().into_iter())
        .filter(|(_, reply)| reply.client == socket)
        .map(|(key, reply)| (u16::from_be(key.edge_port_be), reply.server))
        .collect();
    replies.sort();
    replies
}

/// nat: a shared socket's other lines leave from edge ports of their own,
/// each reply entry naming the socket and the line's home: a move of
/// line2 moves line2 alone (route and reply entry), withdrawing line1
/// hands the socket to line2 and the others keep the kernel path, and a
/// line's port is freed when it is withdrawn or its socket goes idle,
/// so that coming and going over and over holds no more ports.
#[test]
fn each_line_of_a_shared_socket_in_nat_mode_has_an_edge_port_of_its_own() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let (line1, line2, line3) = (aor("line1"), aor("line2"), aor("line3"));
    assert_eq!(fx.fast_path.install(&line1, origin(), HOME1).unwrap(), Installed::ForAor);
    for (line, home) in [(&line2, HOME2), (&line3, HOME5)] {
        assert_eq!(fx.fast_path.install(line, origin(), home).unwrap(), Installed::Shared);
    }
    let own = u16::from_be(socket_entry(&mut fx.fast_path).expect("the socket's entry").nat_port_be);
    let (port2, port3) = (fx.fast_path.line_port(&line2).unwrap(), fx.fast_path.line_port(&line3).unwrap());
    assert_eq!(socket_replies(&mut fx), [(own, HOME1), (port2, HOME2), (port3, HOME5)], "one port per line");
    assert_eq!(sent(&mut fx, "line1"), (AT_HOME1, Counter::Forwarded));
    assert_eq!(sent(&mut fx, "line2"), (AT_HOME2, Counter::ForwardedOtherAor));
    assert_eq!(sent(&mut fx, "line3"), (AT_HOME5, Counter::ForwardedOtherAor));
    for (line, port) in [("line1", own), ("line2", port2), ("line3", port3)] {
        assert_eq!(source_port(&mut fx, line), port, "{line} leaves from its own port");
    }

    fx.fast_path.repoint_many(&[(&line2, HOME5)]).unwrap();
    assert_eq!(sent(&mut fx, "line2"), (AT_HOME5, Counter::ForwardedOtherAor), "line2 moved");
    assert_eq!(sent(&mut fx, "line1"), (AT_HOME1, Counter::Forwarded), "line1 stays");
    assert_eq!(socket_replies(&mut fx), [(own, HOME1), (port2, HOME5), (port3, HOME5)], "line2's replies from HOME5");
    fx.fast_path.repoint_many(&[(&line2, HOME2)]).unwrap();

    withdrawing_line1_hands_the_socket_to_line2(&mut fx, &line1);

    // line1 comes back as another line and goes again, over and over: its
    // port is freed each time, so the socket never holds more, and none is
    // handed out again while the range has ports never used (its home may
    // still hold a binding of the last).
    let mut ports = std::collections::HashSet::new();
    for _ in 0..20 {
        assert_eq!(fx.fast_path.install(&line1, origin(), HOME1).unwrap(), Installed::Shared);
        ports.insert(fx.fast_path.line_port(&line1).expect("line1's own port"));
        assert_eq!(sent(&mut fx, "line1"), (AT_HOME1, Counter::ForwardedOtherAor));
        fx.fast_path.withdraw_many(std::slice::from_ref(&line1)).unwrap();
        assert_eq!(fx.fast_path.line_port(&line1), None, "freed");
    }
    assert_eq!(ports.len(), 20, "a port never used each time: {ports:?}");
    assert_eq!(socket_replies(&mut fx), [(own, HOME2), (port2, HOME2), (port3, HOME5)], "nothing left of line1's");

    // Idle: the socket leaves the fast path, and its lines' ports with it.
    let idle = Duration::from_millis(300);
    std::thread::sleep(idle * 2);
    fx.fast_path.scan(idle, 100).unwrap();
    assert_eq!(socket_entry(&mut fx.fast_path), None, "gone");
    assert_eq!(socket_replies(&mut fx), [], "no reply entry of the socket's is left");
    assert_eq!((fx.fast_path.line_port(&line2), fx.fast_path.line_port(&line3)), (None, None));
    assert_eq!(sent(&mut fx, "line3"), (None, Counter::PassMiss), "up, as any unknown socket");
}

/// Home2's reply to edge port `port`, and what the program sends the
/// socket when it rewrites it back (rule 7).
fn home2_reply_to(port: u16) -> (Vec<u8>, Vec<u8>) {
    let ok = b"SIP/2.0 200 OK\r\n\r\n".to_vec();
    let reply = Datagram::new("10.0.0.12:5060", &format!("10.0.0.1:{port}")).with(|d| d.payload = ok.clone());
    let back = Datagram::new("192.0.2.10:5060", SOCKET).with(|d| d.payload = ok);
    (
        ethernet(HOME2_MAC, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet()),
        ethernet(EDGE_MAC, CLIENT_MAC, None, back.ethertype(), &back.ip_packet()),
    )
}

/// nat: a daemon restart keeps each other line of a shared socket on its
/// own edge port (the home holds the line's binding there until the line
/// registers again): the home's replies to the port still come back to
/// the socket, the line's requests still leave from it, the port is
/// still the line's and no client installed afterwards gets it. A line
/// the store moved while no daemon ran keeps its port, pointed at its
/// new home; a line the store no longer assigns, or whose reply entry
/// names another home than its route, loses its route, reply entry and
/// port.
#[test]
fn a_restarted_daemon_keeps_each_line_of_a_shared_socket_on_its_own_edge_port() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("lines");
    let pins = Pins::new(&scratch.0, "fx0");
    let mut fx = Fixture::pinned("nat", &pins);
    let (line1, line2, line3, line4, line5) = (aor("line1"), aor("line2"), aor("line3"), aor("line4"), aor("line5"));
    assert_eq!(fx.fast_path.install(&line1, origin(), HOME1).unwrap(), Installed::ForAor);
    for (line, home) in [(&line2, HOME2), (&line3, HOME5), (&line4, HOME2), (&line5, HOME2)] {
        assert_eq!(fx.fast_path.install(line, origin(), home).unwrap(), Installed::Shared);
    }
    let own = u16::from_be(socket_entry(&mut fx.fast_path).expect("the socket's entry").nat_port_be);
    let port_of = |fx: &Fixture, line: &Aor| fx.fast_path.line_port(line).expect("a port of its own");
    let (port2, port3, port4, port5) =
        (port_of(&fx, &line2), port_of(&fx, &line3), port_of(&fx, &line4), port_of(&fx, &line5));
    // A daemon stopped between line5's two writes of a move: its reply
    // entry names home1, its route still home2.
    let key5 = NatKey { edge_port_be: port5.to_be(), family: FAMILY_V4, _pad: 0 };
    let mut reply5 = fx.dataplane().all_nat_replies().unwrap().into_iter().find(|(key, _)| *key == key5).unwrap().1;
    reply5.server = HOME1;
    fx.dataplane().install_nat_replies(&[key5], &[reply5]).unwrap();

    // line3 moves to home1 and line4 expires while no daemon runs.
    let homes = [(&line1, HOME1), (&line2, HOME2), (&line3, HOME1), (&line5, HOME1)];
    let adopted = fx.restart("nat", &pins, &homes);
    assert_eq!(adopted, Adopted { kept: 1, repointed: 0, removed: 0 }, "the socket's entry");
    assert_eq!((fx.fast_path.line_port(&line2), fx.fast_path.line_port(&line3)), (Some(port2), Some(port3)));
    assert_eq!(fx.fast_path.line_port(&line4), None, "line4's AOR is gone, and so is its port");
    assert_eq!(fx.fast_path.line_port(&line5), None, "line5's route and reply entry disagree");
    let mut lines = fx.fast_path.lines(endpoint(SOCKET.parse::<SocketAddr>().unwrap().ip(), 7002));
    lines.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(lines, [line2.clone(), line3.clone()], "the socket's other lines");
    assert_eq!(
        socket_replies(&mut fx),
        [(own, HOME1), (port2, HOME2), (port3, HOME1)],
        "line3's reply entry follows its move; line4's and line5's are removed"
    );

    let (reply, back) = home2_reply_to(port2);
    let replies = fx.counter(Counter::NatReply);
    assert_eq!(fx.run(&reply), Outcome { action: 3, frame: back }, "home2's reply to line2's port: XDP_TX, rewritten");
    assert_eq!(fx.counter(Counter::NatReply), replies + 1);
    assert_eq!(sent(&mut fx, "line2"), (AT_HOME2, Counter::ForwardedOtherAor));
    assert_eq!(source_port(&mut fx, "line2"), port2, "line2 leaves from its port still");
    assert_eq!(sent(&mut fx, "line3"), (AT_HOME1, Counter::ForwardedOtherAor), "line3 to its new home");
    assert_eq!(source_port(&mut fx, "line3"), port3, "from its port still");
    for line in ["line4", "line5"] {
        assert_eq!(sent(&mut fx, line), (None, Counter::PassOtherAor), "{line} goes up to first contact");
    }

    // First contact reads what the kernel has.
    let shared = fx.fast_path.shared();
    for (line, port, home) in [(&line2, port2, HOME2), (&line3, port3, HOME1)] {
        assert_eq!(shared.line_route(hash_of(line)), Some(LineRoute { server: home, nat_port: port }));
        assert_eq!(
            shared.nat_reply(true, port).map(|reply| (reply.client, reply.server)),
            Some((SOCKET.parse().unwrap(), home))
        );
    }
    assert_eq!((shared.nat_reply(true, port4), shared.nat_reply(true, port5)), (None, None));

    // Ports handed out afterwards are none of the kept lines'.
    let other = Origin { client: "10.0.0.2:7010".parse().unwrap(), ..origin() };
    assert_eq!(fx.fast_path.install(&aor("fresh"), other, HOME1).unwrap(), Installed::ForAor);
    assert_eq!(fx.fast_path.install(&line4, origin(), HOME2).unwrap(), Installed::Shared);
    let fresh = fx.dataplane().client(endpoint(other.client.ip(), other.client.port())).unwrap().unwrap();
    let taken = [u16::from_be(fresh.nat_port_be), port_of(&fx, &line4)];
    for port in taken {
        assert!(![own, port2, port3].contains(&port), "{port} is held by a line kept across the restart");
    }
}
