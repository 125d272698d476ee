//! Every XDP behaviour pinned by BPF_PROG_TEST_RUN, as tables in the style
//! of Katran's `KatranTestFixtures`: per case, the input frame, verdict,
//! exact output bytes (built independently with etherparse), the one counter
//! it moves, and the server stats and events it leaves. One runner per mode
//! runs its table and names every failing case.

use std::time::Duration;

use redirector::{
    kernel::{
        fast_path::{Install, Installed, monotonic_ns},
        hops::{Destination, HopMaps},
        loader::endpoint,
        miss_lookups::LIFT_MARGIN_NS,
        netlink::Prefix,
    },
    model::Origin,
    sip::Aor,
};
use redirector_ebpf::{
    AorRoute, CLIENT_ADDS_RPORT, CLIENT_CHECKS_REGISTER, CLIENT_SHARED, ClientEntry, Counter, DECAP_PROGRAM, Event,
    EventKind, FAMILY_V4, FAMILY_V6, FLOOR_PROGRAM, FloorHop, HopState, LAST_SEEN_GRANULARITY_NS, LIMIT_PROGRAM,
    NatEntry, NatKey, NextHop, Throttle, aor::aor_hash, server_hop, source_prefix, via::VIA_SCAN,
};
use redirector_tests::{
    fixture::{CLIENT_MAC, Case, EDGE_MAC, Fixture, HOME1_MAC, HOME2_MAC, HOME5_MAC, OTHER_EDGE_MAC, Outcome},
    packets::{Datagram, Mac, ethernet, ipip, ipv4_fragment},
    privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP4: &str = "192.0.2.10:5060";
const VIP6: &str = "[2001:db8::10]:5060";

/// Server slots, in the fixture config's order.
const HOME1: u32 = 0;
const HOME2: u32 = 1;
const HOME3: u32 = 2;
const HOME4: u32 = 3;
const HOME5: u32 = 4;

#[test]
fn dsr_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    // home5 has no IPv6 address; an IPv6 client pinned to it has no way there.
    let client = endpoint("fd00::2".parse().unwrap(), 5070);
    fx.dataplane().install_client(client, ClientEntry { server: HOME5, ..Default::default() }).unwrap();
    install_line_socket(&mut fx);
    route_proxied_aors(&mut fx);
    route_other_lines(&mut fx);
    for (edge, home) in [("10.0.0.1", "10.0.0.11"), ("fd00::1", "fd00::11")] {
        fx.dataplane().add_decap_address(home.parse().unwrap()).unwrap();
        fx.dataplane().add_decap_source(edge.parse().unwrap()).unwrap();
    }
    let cases = [
        unknown_clients(),
        subscribes(),
        dsr_hits(),
        server_states(),
        register_checks(),
        shared_socket_checks(),
        routed_by_aor(),
        fib_miss(),
        fragments(),
        truncations(),
        inconsistent_ip_headers(),
        ip_lengths_into_the_udp_header(),
        udp_length_lies_v4(),
        decapsulation(),
    ];
    run_table(&mut fx, "dsr", cases);
    // Expiry's only sighting of an AOR whose requests come through a proxy.
    assert_ne!(aor_route_stamp(&mut fx, "proxied1"), 0, "a request routed by AOR stamps its route");
    assert_eq!(aor_route_stamp(&mut fx, "proxied3"), 0, "one its down home did not take leaves it");
    assert_ne!(aor_route_stamp(&mut fx, "line2"), 0, "a shared socket's other line routed by AOR stamps its route");
    let own = fx.dataplane().client_packets(SHARED_LOAD_SLOT).unwrap();
    assert_eq!(own, 5, "only its own line's datagrams (and keepalives) count as the shared socket's load");
}

#[test]
fn nat_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    // A client whose first contact asked for rport: its requests are not scanned.
    let asked = ClientEntry { server: HOME1, nat_port_be: 20050u16.to_be(), ..Default::default() };
    let client = endpoint("10.0.0.2".parse().unwrap(), 5066);
    fx.dataplane().install_client(client, asked).unwrap();
    let shared = ClientEntry {
        flags: CLIENT_CHECKS_REGISTER | CLIENT_SHARED | CLIENT_ADDS_RPORT,
        aor_hash: aor_hash(b"sip:line1@x"),
        nat_port_be: SHARED_SOCKET_NAT_PORT.to_be(),
        ..asked
    };
    fx.dataplane().install_client(endpoint("10.0.0.2".parse().unwrap(), SHARED_SOCKET_PORT), shared).unwrap();
    route_proxied_aors(&mut fx);
    route_other_lines(&mut fx);
    route_line_ports(&mut fx);
    let cases = [
        unknown_clients(),
        not_routed_by_aor_in_nat(),
        other_lines_in_nat(),
        nat_hits(),
        rport_added(),
        rport_not_added(),
        nat_replies(),
        fib_miss(),
        not_ours(),
        udp_lies_v6_and_nat_reply(),
    ];
    run_table(&mut fx, "nat", cases);
    assert_eq!(aor_route_stamp(&mut fx, "proxied1"), 0, "nat routes no proxied request by AOR");
    assert_ne!(aor_route_stamp(&mut fx, "line2"), 0, "a shared socket's other line sent by its port stamps its route");
    // Sent up, the datagram keeps this socket's line from looking busy.
    for line in ["line5", "line6", "line7"] {
        assert_eq!(aor_route_stamp(&mut fx, line), 0, "{line}: a route whose port check sent it up is not stamped");
    }
    // Adding `;rport` rescans the frame into the scratch that held the
    // line's hash: the route is stamped all the same.
    route_line_ports(&mut fx);
    assert_eq!(aor_route_stamp(&mut fx, "line2"), 0, "line2's route written again, unstamped");
    let rport_added = other_lines_in_nat().into_iter().filter(|case| case.name.contains(";rport added")).collect();
    run_table(&mut fx, "nat", [rport_added]);
    assert_ne!(aor_route_stamp(&mut fx, "line2"), 0, "a line's request sent with ;rport added stamps its route");
}

/// Source prefixes the daemon throttled: their unknown clients' datagrams
/// past the allowance are dropped, their clients on the fast path are not.
#[test]
fn throttle_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    install_line_socket(&mut fx);
    route_proxied_aors(&mut fx);
    fx.dataplane().add_proxy(THROTTLED_PROXY.parse::<std::net::SocketAddr>().unwrap().ip()).unwrap();
    let hour_from_now = monotonic_ns() + 3_600_000_000_000;
    for (address, throttle) in [
        ("10.0.0.77", Throttle::new(hour_from_now, 0)),
        ("10.0.5.77", Throttle::new(hour_from_now, 1)),
        ("10.0.6.77", Throttle::new(hour_from_now, 1)),
        ("10.0.7.77", Throttle::new(1, 0)),
        ("fd00::77", Throttle::new(hour_from_now, 0)),
    ] {
        let prefix = source_prefix(&endpoint(address.parse().unwrap(), 0));
        fx.dataplane().throttle(&[prefix], throttle).unwrap();
    }
    let throttled = |name: &str, src: &str, dst: &str| {
        Case::untouched(name, from_client(&Datagram::new(src, dst)), XDP_DROP, Counter::DropThrottled)
    };
    let unknown =
        |name: &str, src: &str, dst: &str| passed(name, from_client(&Datagram::new(src, dst)), Counter::PassMiss);
    let cases = vec![
        throttled("unknown v4 client of a throttled /24 dropped", "10.0.0.2:7777", VIP4),
        throttled("another host of that /24 dropped", "10.0.0.200:5060", VIP4),
        dsr_to_home1("a fast-path client of a throttled /24 forwarded", &Datagram::new("10.0.0.2:5060", VIP4)),
        dsr_to_home1("a REGISTER for its socket's own AOR forwarded", &from_line_socket(line_register("line1"))),
        Case::untouched(
            "a REGISTER for another AOR from a throttled /24 dropped",
            from_client(&from_line_socket(line_register("line2"))),
            XDP_DROP,
            Counter::DropThrottled,
        ),
        Case::untouched(
            "a throttled proxy's REGISTER of a routed AOR dropped unread",
            from_client(&from_proxy(proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>"))),
            XDP_DROP,
            Counter::DropThrottled,
        ),
        routed_to("a throttled proxy's request within the allowance is read and routed", &throttled_proxy(), HOME1),
        Case::untouched(
            "the next, past the allowance, dropped unread",
            from_client(&throttled_proxy()),
            XDP_DROP,
            Counter::DropThrottled,
        ),
        unknown("the allowance of a window passed up", "10.0.6.2:5060", VIP4),
        throttled("past the allowance in the same window dropped", "10.0.6.3:5060", VIP4),
        unknown("a throttle that has lifted passes", "10.0.7.2:5060", VIP4),
        unknown("an unthrottled /24 passes", "10.0.8.2:5060", VIP4),
        throttled("unknown v6 client of a throttled /64 dropped", "[fd00::2:0:0:9]:7777", VIP6),
        unknown("another /64 passes", "[fd00:0:0:1::2]:7777", VIP6),
        Case::untouched(
            "a SUBSCRIBE from a throttled /24 dropped",
            from_client(&with_payload("10.0.0.2:5060", VIP4, b"SUBSCRIBE sip:b@x SIP/2.0\r\n")),
            XDP_DROP,
            Counter::DropThrottled,
        ),
        passed(
            "a SUBSCRIBE from another /24 passed up",
            from_client(&with_payload("10.0.8.2:5060", VIP4, b"SUBSCRIBE sip:b@x SIP/2.0\r\n")),
            Counter::PassSubscribe,
        ),
    ];
    run_table(&mut fx, "throttle", [cases]);
}

/// A miss looks `THROTTLED` and `PROXIES` up only while `CONFIG` says they
/// may hold something (`CONFIG_THROTTLING`, `CONFIG_KNOWS_PROXIES`, which
/// `DataPlane` sets before it writes the first entry of each): with
/// neither set, a client's miss and a proxy's request for a routed AOR go
/// up alike; once the proxy is recorded its request is routed by AOR, and
/// a throttle holds from its write; once the daemon has lifted the
/// throttling (the flag cleared, the entry still in the map, as only a
/// lifted throttle's is), that prefix's first contacts go up unchecked.
#[test]
fn a_miss_looks_up_only_what_config_flags() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    route_aors_of_proxied(&mut fx);
    let proxied1 = || from_proxy(proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>"));
    let miss = |name: &str, src: &str| passed(name, from_client(&Datagram::new(src, VIP4)), Counter::PassMiss);
    let nothing_flagged = vec![
        miss("nothing throttled, no proxy known: a client's miss goes up", "10.0.6.2:7777"),
        passed(
            "no proxy known: a proxy's request for a routed AOR goes up unread",
            from_client(&proxied1()),
            Counter::PassMiss,
        ),
    ];
    run_table(&mut fx, "nothing flagged", [nothing_flagged]);

    record_proxies(&mut fx);
    let hour_from_now = monotonic_ns() + 3_600_000_000_000;
    let prefix = source_prefix(&endpoint("10.0.6.77".parse().unwrap(), 0));
    fx.dataplane().throttle(&[prefix], Throttle::new(hour_from_now, 0)).unwrap();
    let flagged = vec![
        routed_to("a proxy known: its request is routed by AOR", &proxied1(), HOME1),
        Case::untouched(
            "a prefix throttled: its client's miss is dropped",
            from_client(&Datagram::new("10.0.6.2:7777", VIP4)),
            XDP_DROP,
            Counter::DropThrottled,
        ),
        miss("a prefix throttled: another's miss goes up", "10.0.8.2:7777"),
    ];
    run_table(&mut fx, "flagged", [flagged]);

    fx.dataplane().lift_throttles(hour_from_now + LIFT_MARGIN_NS).unwrap();
    let lifted = vec![miss("the throttling lifted: the prefix's miss goes up unchecked", "10.0.6.2:7777")];
    run_table(&mut fx, "lifted", [lifted]);
}

/// An upstream proxy in a /24 throttled with an allowance of one datagram.
const THROTTLED_PROXY: &str = "10.0.5.9:5060";

fn throttled_proxy() -> Datagram {
    with_payload(THROTTLED_PROXY, VIP4, &proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>"))
}

/// The benchmark's floor program: the one IPv4 source it knows gets that
/// entry's MACs and `XDP_TX`, with every other byte as it came; anything
/// else is passed untouched.
#[test]
fn floor_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let hop = FloorHop { dst_mac: HOME1_MAC, src_mac: EDGE_MAC };
    fx.dataplane().load_floor(endpoint("10.0.0.2".parse().unwrap(), 5060), hop).unwrap();
    let known = Datagram::new("10.0.0.2:5060", VIP4);
    let sent = ethernet(EDGE_MAC, HOME1_MAC, None, known.ethertype(), &known.ip_packet());
    assert_eq!(fx.run_program(FLOOR_PROGRAM, &from_client(&known)), Outcome { action: XDP_TX, frame: sent });
    for (what, src, dst) in
        [("another port", "10.0.0.2:5061", VIP4), ("the same port over IPv6", "[fd00::2]:5060", VIP6)]
    {
        let frame = from_client(&Datagram::new(src, dst));
        let outcome = fx.run_program(FLOOR_PROGRAM, &frame);
        assert_eq!(outcome, Outcome { action: XDP_PASS, frame }, "{what} is passed untouched");
    }
}

/// The benchmark's limit program: every IPv4 frame, whoever sent it to
/// wherever, gets the one entry's MACs and `XDP_TX`, every other byte as it
/// came; anything else is passed untouched.
#[test]
fn limit_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    fx.dataplane().load_limit(FloorHop { dst_mac: HOME1_MAC, src_mac: EDGE_MAC }).unwrap();
    for (src, dst) in [("10.0.0.2:5060", VIP4), ("10.9.9.9:1", "10.8.8.8:2")] {
        let datagram = Datagram::new(src, dst);
        let sent = ethernet(EDGE_MAC, HOME1_MAC, None, datagram.ethertype(), &datagram.ip_packet());
        let outcome = fx.run_program(LIMIT_PROGRAM, &from_client(&datagram));
        assert_eq!(outcome, Outcome { action: XDP_TX, frame: sent }, "{src} to {dst} is sent on");
    }
    let v6 = from_client(&Datagram::new("[fd00::2]:5060", VIP6));
    assert_eq!(fx.run_program(LIMIT_PROGRAM, &v6), Outcome { action: XDP_PASS, frame: v6 }, "IPv6 is passed");
}

/// A hit writes nothing to its client's shared entry but `last_seen_ns`,
/// and that only once the stamp is a second old; it counts the packet in
/// the client's own load slot (per CPU) and no other. dsr and nat, IPv4
/// and IPv6, on the static clients `FastPath` installed.
#[test]
fn a_hit_counts_in_its_load_slot_and_stamps_last_seen_at_most_once_a_second() {
    if !privileged() {
        return;
    }
    for mode in ["dsr", "nat"] {
        let mut fx = Fixture::new(mode);
        let other = fx.dataplane().client(endpoint("10.0.0.2".parse().unwrap(), 5062)).unwrap().unwrap();
        for (src, dst) in [("10.0.0.2:5060", VIP4), ("[fd00::2]:5060", VIP6)] {
            let case = format!("{mode} {src}");
            let address: std::net::SocketAddr = src.parse().unwrap();
            let client = endpoint(address.ip(), address.port());
            let frame = from_client(&Datagram::new(src, dst));
            let installed = fx.dataplane().client(client).unwrap().expect("a static client");
            assert_ne!(installed.load_slot, other.load_slot, "{case}: each client its own slot");
            let loads = |fx: &mut Fixture| {
                (
                    fx.dataplane().client_packets(installed.load_slot).unwrap(),
                    fx.dataplane().client_packets(other.load_slot).unwrap(),
                )
            };

            // Ahead of the program's clock however slow the machine is:
            // within a second of it for the whole test.
            let recent = ClientEntry { last_seen_ns: monotonic_ns() + 5 * LAST_SEEN_GRANULARITY_NS, ..installed };
            fx.dataplane().install_client(client, recent).unwrap();
            let before = loads(&mut fx);
            assert_eq!(fx.run(&frame).action, XDP_TX, "{case}: a hit");
            let read_back = fx.dataplane().client(client).unwrap();
            assert_eq!(
                read_back,
                Some(recent),
                "{case}: a hit within a second of the stamp writes no byte of the entry"
            );
            assert_eq!(loads(&mut fx), (before.0 + 1, before.1), "{case}: counted in its slot, and only there");

            // The program reads the coarse clock, up to a tick (at most
            // 10 ms) behind the one user space stamps with.
            let second_ago = monotonic_ns() - LAST_SEEN_GRANULARITY_NS - 20_000_000;
            let stale = ClientEntry { last_seen_ns: second_ago, ..installed };
            fx.dataplane().install_client(client, stale).unwrap();
            assert_eq!(fx.run(&frame).action, XDP_TX, "{case}: a hit");
            let stamped = fx.dataplane().client(client).unwrap().expect("the entry");
            let waited = stamped.last_seen_ns.saturating_sub(stale.last_seen_ns);
            // The program's clock is the coarse one, a tick behind at most.
            assert!(
                waited > LAST_SEEN_GRANULARITY_NS * 9 / 10,
                "{case}: a stamp a second old is renewed ({waited} ns)"
            );
            assert!(stamped.last_seen_ns <= monotonic_ns(), "{case}: with the time of the hit");
            assert_eq!(ClientEntry { last_seen_ns: stale.last_seen_ns, ..stamped }, stale, "{case}: and nothing else");
            assert_eq!(loads(&mut fx), (before.0 + 2, before.1), "{case}: counted again");
        }
    }
}

/// A load slot freed by one client and handed to the next starts from
/// zero (the rebalancer must not see the first one's packets as the
/// second one's burst); the scan reads each client's packets from its
/// slot.
#[test]
fn a_load_slot_handed_out_again_starts_from_zero() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let (alice, bob) = (aor("alice"), aor("bob"));
    let alice_slot = installed_with_three_hits(&mut fx, &alice, 7001);
    let slot = |fx: &mut Fixture, port| fx.dataplane().client(port_key(port)).unwrap();
    let readings = fx.fast_path.scan(Duration::from_secs(60), 100).unwrap().readings;
    let packets: Vec<(String, u64)> = readings.iter().map(|r| (r.aor.to_string(), r.packets)).collect();
    assert_eq!(packets, [(alice.to_string(), 3)], "the scan reads alice's packets from her slot");

    fx.fast_path.forget_many(std::slice::from_ref(&alice)).unwrap();
    fx.fast_path.install(&bob, port_origin(7002), HOME1).unwrap();
    let bob_slot = slot(&mut fx, 7002).expect("bob's entry").load_slot;
    assert_eq!(bob_slot, alice_slot, "the freed slot is handed out first");
    assert_eq!(fx.dataplane().client_packets(bob_slot).unwrap(), 0, "bob does not start with alice's packets");
}

/// A round's installs are written together (`install_many`): each client
/// gets its entry and a slot of its own, a slot a counted client freed
/// starts from zero for the client of the round it is handed to, and a
/// socket an earlier install of the same round took for another AOR is
/// marked shared in the kernel, as installs one at a time would leave it.
#[test]
fn a_round_of_installs_is_written_together_with_fresh_slots_zeroed() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let (alice, bob, carol, dave) = (aor("alice"), aor("bob"), aor("carol"), aor("dave"));
    let alice_slot = installed_with_three_hits(&mut fx, &alice, 7001);
    assert_eq!(fx.dataplane().client_packets(alice_slot).unwrap(), 3);
    fx.fast_path.forget_many(std::slice::from_ref(&alice)).unwrap();
    let (origin, key) = (port_origin, port_key);

    let round = [
        Install { aor: &bob, origin: origin(7002), server: HOME1 },
        Install { aor: &carol, origin: origin(7003), server: HOME1 },
        Install { aor: &dave, origin: origin(7002), server: HOME1 },
    ];
    let results: Vec<Installed> = fx.fast_path.install_many(&round).into_iter().map(Result::unwrap).collect();
    assert_eq!(results, [Installed::ForAor, Installed::ForAor, Installed::Shared]);
    let bob_entry = fx.dataplane().client(key(7002)).unwrap().expect("bob's entry");
    let carol_entry = fx.dataplane().client(key(7003)).unwrap().expect("carol's entry");
    assert_eq!(bob_entry.load_slot, alice_slot, "the freed slot is handed out first");
    assert_ne!(carol_entry.load_slot, bob_entry.load_slot, "each client its own slot");
    assert_eq!(
        fx.dataplane().client_packets(bob_entry.load_slot).unwrap(),
        0,
        "bob does not start with alice's packets"
    );
    assert_eq!(bob_entry.aor_hash, aor_hash(bob.as_str().as_bytes()), "the socket stays bob's");
    assert_ne!(bob_entry.flags & CLIENT_SHARED, 0, "dave's install from bob's socket marked it shared");
    assert_eq!(fx.fast_path.installed(&bob), [key(7002)]);
    assert_eq!(fx.fast_path.installed(&carol), [key(7003)]);
    assert_eq!(fx.fast_path.installed(&dave), [], "not dave's");
}

/// Installs `aor` from 10.0.0.2:`port` and sends three of its packets
/// through the fast path; its load slot.
fn installed_with_three_hits(fx: &mut Fixture, aor: &Aor, port: u16) -> u32 {
    fx.fast_path.install(aor, port_origin(port), HOME1).unwrap();
    // Not a REGISTER: the socket takes only REGISTERs of its own `To`.
    let source = format!("10.0.0.2:{port}");
    let frame = from_client(&with_payload(&source, VIP4, b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
    for _ in 0..3 {
        assert_eq!(fx.run(&frame).action, XDP_TX, "{aor}'s hit");
    }
    fx.dataplane().client(port_key(port)).unwrap().expect("its entry").load_slot
}

/// A client at 10.0.0.2:`port` talking to the IPv4 service address.
fn port_origin(port: u16) -> Origin {
    Origin {
        client: std::net::SocketAddr::new("10.0.0.2".parse().unwrap(), port),
        service: VIP4.parse().unwrap(),
        asks_rport: true,
    }
}

fn port_key(port: u16) -> redirector_ebpf::Endpoint {
    endpoint("10.0.0.2".parse().unwrap(), port)
}

fn aor(user: &str) -> Aor {
    Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
}

/// MACs no neighbour table in the fixture holds: a frame sent with them
/// took the kept hop, not the FIB.
const KEPT_DST: Mac = [0x02, 0, 0, 0, 0, 0xa1];
const KEPT_SRC: Mac = [0x02, 0, 0, 0, 0, 0xa0];
const GENERATION: u32 = 7;

/// Kept next hops: a fresh one is followed without the FIB (its MACs, not
/// the neighbour table's); one of another generation, for another address,
/// too small for the packet, or past the keeper's lease is not, and the FIB
/// routes the packet as before. Both modes, both families.
#[test]
fn kept_hop_fixtures() {
    if !privileged() {
        return;
    }
    for mode in ["dsr", "nat"] {
        let mut fx = Fixture::new(mode);
        let mut hops = fx.dataplane().take_hops().unwrap();
        let ifindex = fx.ifindex;
        let kept = |address: &str| NextHop {
            ifindex,
            mtu: 1500,
            generation: GENERATION,
            dst_mac: KEPT_DST,
            src_mac: KEPT_SRC,
            addr: endpoint(address.parse().unwrap(), 0).addr,
        };
        hops.set(server_hop(HOME1, FAMILY_V4), kept("10.0.0.11")).unwrap();
        hops.set(server_hop(HOME1, FAMILY_V6), kept("fd00::11")).unwrap();
        hops.set(server_hop(HOME2, FAMILY_V4), NextHop { generation: GENERATION - 1, ..kept("10.0.0.12") }).unwrap();
        hops.set(server_hop(HOME5, FAMILY_V4), kept("10.1.0.99")).unwrap();
        lease(&mut hops, monotonic_ns() + 3_600_000_000_000);
        let v4 = Datagram::new("10.0.0.2:5060", VIP4);
        let v6 = Datagram::new("[fd00::2]:5060", VIP6);
        let via_kept = |name: &str, d: &Datagram, nat_port| to_home(mode, name, d, (KEPT_SRC, KEPT_DST), nat_port);
        let via_fib = |name: &str, d: &Datagram, macs, nat_port| to_home(mode, name, d, macs, nat_port);
        let home2 = Datagram::new("10.0.0.2:5062", VIP4);
        let home5 = Datagram::new("10.0.0.2:5065", VIP4);
        let mut to_home5 =
            via_fib("a kept hop for another address: the FIB", &home5, (OTHER_EDGE_MAC, HOME5_MAC), 20005);
        to_home5.verdict = XDP_REDIRECT;
        let fresh = vec![
            via_kept("v4 hit follows its fresh kept hop", &v4, 20000),
            via_kept("v6 hit follows its fresh kept hop", &v6, 20001),
            via_fib("a kept hop of another generation: the FIB", &home2, (EDGE_MAC, HOME2_MAC), 20002),
            to_home5,
            passed(
                "no kept hop, no neighbour: a reported FIB miss",
                from_client(&Datagram::new("10.0.0.2:5064", VIP4)),
                Counter::FibMiss,
            )
            .reporting(Event {
                kind: EventKind::FibMiss as u32,
                server: HOME4,
                family: FAMILY_V4,
                _pad: [0; 3],
            }),
        ];
        run_table(&mut fx, mode, [fresh]);
        let leaving = via_kept("v4 hit of exactly the kept hop's MTU follows it", &v4, 20000).output.len() - 14;
        hops.set(server_hop(HOME1, FAMILY_V4), NextHop { mtu: leaving as u32, ..kept("10.0.0.11") }).unwrap();
        run_table(&mut fx, mode, [vec![via_kept("v4 hit of exactly the kept hop's MTU follows it", &v4, 20000)]]);
        hops.set(server_hop(HOME1, FAMILY_V4), NextHop { mtu: leaving as u32 - 1, ..kept("10.0.0.11") }).unwrap();
        let too_big = via_fib("v4 hit too big for the kept hop's MTU: the FIB", &v4, (EDGE_MAC, HOME1_MAC), 20000);
        run_table(&mut fx, mode, [vec![too_big]]);
        lease(&mut hops, 1);
        let lapsed = via_fib("v6 hit past the keeper's lease: the FIB", &v6, (EDGE_MAC, HOME1_MAC), 20001);
        run_table(&mut fx, mode, [vec![lapsed]]);
    }
}

/// The keeper resolves each home server's hop from the kernel's tables as
/// the FIB would (egress device, MTU, both MACs), leaves a server without a
/// resolved neighbour to the FIB, and a hit then leaves by the kept hop.
#[test]
fn keeper_resolves_hops_from_the_kernel_tables() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    fx.ns.ip("route add 10.0.0.13/32 dev fx0 mtu 1400");
    // home2 over ECMP: the FIB spreads flows over both gateways.
    fx.ns.ip("route add 10.0.0.12/32 nexthop via 10.0.0.11 dev fx0 nexthop via 10.0.0.13 dev fx0");
    let keeper = fx.keep_hops(Duration::from_secs(3600));
    let fx2 = fx.ns.ifindex("fx2");
    let hop = |slot, address: &str| {
        let destination = Destination { slot, address: address.parse().unwrap() };
        let hop = keeper.hop(destination).unwrap();
        (hop.ifindex, hop.mtu, hop.dst_mac, hop.src_mac, hop.addr == endpoint(destination.address, 0).addr)
    };
    assert_eq!(hop(HOME1, "10.0.0.11"), (fx.ifindex, 1500, HOME1_MAC, EDGE_MAC, true));
    assert_eq!(hop(HOME1, "fd00::11"), (fx.ifindex, 1500, HOME1_MAC, EDGE_MAC, true));
    assert_eq!(hop(HOME3, "10.0.0.13"), (fx.ifindex, 1400, [0x02, 0, 0, 0, 0, 0x13], EDGE_MAC, true), "a route's MTU");
    assert_eq!(hop(HOME5, "10.1.0.5"), (fx2, 1500, HOME5_MAC, OTHER_EDGE_MAC, true), "another interface");
    let unkept = |slot, address: &str| keeper.hop(Destination { slot, address: address.parse().unwrap() }).unwrap();
    assert_eq!(unkept(HOME4, "10.0.0.99"), NextHop::default(), "no neighbour: left to the FIB");
    assert_eq!(unkept(HOME2, "10.0.0.12"), NextHop::default(), "a multipath route: left to the FIB");
    let v4 = Datagram::new("10.0.0.2:5060", VIP4);
    run_table(
        &mut fx,
        "dsr",
        [vec![to_home("dsr", "v4 hit by the hop the keeper resolved", &v4, (EDGE_MAC, HOME1_MAC), 0)]],
    );
}

/// Kept reply hops (nat): the `REPLY_HOPS` entry of the longest prefix
/// holding the client is followed while fresh, whatever address it was
/// computed for (a gateway's serves every client behind it), with its MACs,
/// which no neighbour table holds. One of another generation (even under a
/// fresh shorter prefix), too small for the reply, or past the keeper's
/// lease is not, and the FIB routes the reply as before.
#[test]
fn kept_reply_hop_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    let mut hops = fx.dataplane().take_hops().unwrap();
    let gateway = endpoint("10.0.0.254".parse().unwrap(), 0).addr;
    let kept = NextHop {
        ifindex: fx.ifindex,
        mtu: 1500,
        generation: GENERATION,
        dst_mac: KEPT_DST,
        src_mac: KEPT_SRC,
        addr: gateway,
    };
    hops.set_reply(prefix("10.0.0.0/24"), kept).unwrap();
    hops.set_reply(prefix("fd00::/64"), kept).unwrap();
    lease(&mut hops, monotonic_ns() + 3_600_000_000_000);
    let via_kept = |name, v6| reply_to_client(name, v6, (KEPT_SRC, KEPT_DST));
    let via_fib = |name, v6| reply_to_client(name, v6, (EDGE_MAC, CLIENT_MAC));
    run_table(
        &mut fx,
        "nat",
        [vec![
            via_kept("v4 reply follows the fresh kept hop of its client's prefix", false),
            via_kept("v6 reply follows the fresh kept hop of its client's prefix", true),
        ]],
    );
    hops.set_reply(prefix("10.0.0.2/32"), NextHop { generation: GENERATION - 1, ..kept }).unwrap();
    run_table(&mut fx, "nat", [vec![via_fib("v4 reply whose longest prefix's hop is stale: the FIB", false)]]);
    hops.remove_reply(prefix("10.0.0.2/32")).unwrap();
    let leaving = via_kept("v4 reply of exactly the kept hop's MTU follows it", false).output.len() - 14;
    hops.set_reply(prefix("10.0.0.0/24"), NextHop { mtu: leaving as u32, ..kept }).unwrap();
    run_table(&mut fx, "nat", [vec![via_kept("v4 reply of exactly the kept hop's MTU follows it", false)]]);
    hops.set_reply(prefix("10.0.0.0/24"), NextHop { mtu: leaving as u32 - 1, ..kept }).unwrap();
    run_table(&mut fx, "nat", [vec![via_fib("v4 reply too big for the kept hop's MTU: the FIB", false)]]);
    lease(&mut hops, 1);
    run_table(&mut fx, "nat", [vec![via_fib("v6 reply past the keeper's lease: the FIB", true)]]);
}

/// The keeper mirrors the prefixes the kernel routes replies by: off-link
/// clients get their route's gateway hop (with the route's MTU), on-link
/// clients with a neighbour their own, and what one hop cannot stand for
/// (an on-link prefix as such, a multipath route, a route without a
/// neighbour, the edge's own addresses) an entry left to the FIB; a reply
/// to the on-link client then leaves by its kept hop. Under a family's
/// policy routing, none of that family's is kept.
#[test]
fn keeper_resolves_reply_hops_from_the_kernel_tables() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    fx.ns.ip("route add 198.51.100.0/24 via 10.0.0.13 mtu 1400");
    fx.ns.ip("route add 203.0.113.0/24 nexthop via 10.0.0.11 dev fx0 nexthop via 10.0.0.13 dev fx0");
    fx.ns.ip("-6 route add default via fd00::11");
    let keeper = fx.keep_hops(Duration::from_secs(3600));
    let ifindex = fx.ifindex;
    let hop = |text: &str| keeper.reply_hop(prefix(text)).unwrap().expect(text);
    let kept = |mtu, dst_mac, via: &str| NextHop {
        ifindex,
        mtu,
        generation: hop("10.0.0.2/32").generation,
        dst_mac,
        src_mac: EDGE_MAC,
        addr: endpoint(via.parse().unwrap(), 0).addr,
    };
    assert_eq!(hop("198.51.100.0/24"), kept(1400, [0x02, 0, 0, 0, 0, 0x13], "10.0.0.13"), "off-link: the gateway's");
    assert_eq!(hop("::/0"), kept(1500, HOME1_MAC, "fd00::11"), "the default route's gateway");
    assert_eq!(hop("10.0.0.2/32"), kept(1500, CLIENT_MAC, "10.0.0.2"), "an on-link client: its own");
    assert_eq!(hop("fd00::2/128"), kept(1500, CLIENT_MAC, "fd00::2"), "an on-link client: its own");
    for (text, why) in [
        ("10.0.0.0/24", "an on-link prefix"),
        ("203.0.113.0/24", "a multipath route"),
        ("10.0.0.99/32", "a route without a neighbour"),
        ("10.0.0.1/32", "the edge's own address"),
    ] {
        assert_eq!(hop(text), NextHop::default(), "{why}: left to the FIB");
    }
    let reply = reply_to_client("v4 reply by the hop the keeper resolved", false, (EDGE_MAC, CLIENT_MAC));
    run_table(&mut fx, "nat", [vec![reply]]);

    // Policy routing: a reply's route may depend on more than its client's
    // address, so no prefix stands for its addresses any more.
    let mut keeper = keeper;
    fx.ns.ip("rule add from 10.9.0.0/16 table 100");
    keeper.recompute(&fx.destinations).unwrap();
    for text in ["198.51.100.0/24", "10.0.0.2/32", "10.0.0.0/24"] {
        assert_eq!(keeper.reply_hop(prefix(text)).unwrap(), None, "{text}: no entry under IPv4 policy routing");
    }
    assert!(keeper.reply_hop(prefix("::/0")).unwrap().is_some_and(|hop| hop.ifindex == ifindex), "IPv6's kept");
}

fn prefix(text: &str) -> Prefix {
    let (address, len) = text.split_once('/').expect("address/length");
    Prefix { address: address.parse().unwrap(), len: len.parse().unwrap() }
}

/// Home1's reply to the nat fixture's static client (IPv6 if `v6`), from
/// its edge port, rewritten back to it with Ethernet addresses `(src, dst)`.
fn reply_to_client(name: &str, v6: bool, (src, dst): (Mac, Mac)) -> Case {
    let (reply, back) = if v6 {
        (Datagram::new("[fd00::11]:5060", "[fd00::1]:20001"), Datagram::new(VIP6, "[fd00::2]:5060"))
    } else {
        let ok = b"SIP/2.0 200 OK\r\n\r\n";
        (with_payload("10.0.0.11:5060", "10.0.0.1:20000", ok), with_payload(VIP4, "10.0.0.2:5060", ok))
    };
    let input = ethernet(HOME1_MAC, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet());
    let output = ethernet(src, dst, None, back.ethertype(), &back.ip_packet());
    Case::new(name, input, XDP_TX, output, Counter::NatReply)
}

fn lease(hops: &mut HopMaps, until_ns: u64) {
    hops.publish(HopState { generation: GENERATION, _pad: 0, lease_until_ns: until_ns }).unwrap();
}

/// A client's `datagram` forwarded to its home in `mode` with Ethernet
/// addresses `(src, dst)`: tunnelled in dsr; in nat, from the edge's
/// `nat_port`. Its home is the fixture's server of the client's port.
fn to_home(mode: &str, name: &str, datagram: &Datagram, (src, dst): (Mac, Mac), nat_port: u16) -> Case {
    let v4 = datagram.src.is_ipv4();
    let edge = if v4 { "10.0.0.1" } else { "fd00::1" };
    let (slot, home) = match (datagram.src.port(), v4) {
        (5062, _) => (HOME2, "10.0.0.12"),
        (5065, _) => (HOME5, "10.1.0.5"),
        (_, true) => (HOME1, "10.0.0.11"),
        (_, false) => (HOME1, "fd00::11"),
    };
    let expected = if mode == "dsr" {
        tunnelled(datagram, src, dst, None, edge, home)
    } else {
        let [from, to] = [(edge, nat_port), (home, 5060)].map(|(ip, port)| match ip.parse() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{ip}:{port}"),
        });
        let rewritten = Datagram::new(&from, &to).with(|d| d.payload = datagram.payload.clone());
        ethernet(src, dst, None, rewritten.ethertype(), &rewritten.ip_packet())
    };
    Case::new(format!("{mode}: {name}"), from_client(datagram), XDP_TX, expected, Counter::Forwarded).forwarded_to(slot)
}

/// Runs every case, then fails once, naming each case that failed.
fn run_table<const GROUPS: usize>(fx: &mut Fixture, mode: &str, groups: [Vec<Case>; GROUPS]) {
    let cases: Vec<Case> = groups.into_iter().flatten().collect();
    let mut names: Vec<_> = cases.iter().map(|case| &case.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "{mode}: case names must be unique");
    let failures = fx.run_table(&cases);
    assert!(failures.is_empty(), "{} of {} {mode} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn from_client(datagram: &Datagram) -> Vec<u8> {
    ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet())
}

/// `datagram` as the edge sends it in dsr mode: tunnelled from `edge` to `home`.
fn tunnelled(datagram: &Datagram, src: Mac, dst: Mac, vlan: Option<u16>, edge: &str, home: &str) -> Vec<u8> {
    tunnelled_packet(&datagram.ip_packet(), src, dst, vlan, edge, home)
}

fn tunnelled_packet(inner: &[u8], src: Mac, dst: Mac, vlan: Option<u16>, edge: &str, home: &str) -> Vec<u8> {
    let outer = ipip(edge.parse().unwrap(), home.parse().unwrap(), inner);
    let ethertype = if edge.contains(':') { etherparse::EtherType::IPV6 } else { etherparse::EtherType::IPV4 };
    ethernet(src, dst, vlan, ethertype, &outer)
}

/// A client's frame tunnelled to home1 over IPv4, as forwarded in dsr mode.
fn dsr_to_home1(name: &str, datagram: &Datagram) -> Case {
    let expected = tunnelled(datagram, EDGE_MAC, HOME1_MAC, None, "10.0.0.1", "10.0.0.11");
    Case::new(name, from_client(datagram), XDP_TX, expected, Counter::Forwarded).forwarded_to(HOME1)
}

fn passed(name: impl Into<String>, frame: Vec<u8>, counter: Counter) -> Case {
    Case::untouched(name, frame, XDP_PASS, counter)
}

fn dropped(name: &str, frame: Vec<u8>) -> Case {
    Case::untouched(name, frame, XDP_DROP, Counter::Malformed)
}

fn with_payload(src: &str, dst: &str, payload: &[u8]) -> Datagram {
    Datagram::new(src, dst).with(|d| d.payload = payload.to_vec())
}

fn unknown_clients() -> Vec<Case> {
    vec![
        passed("unknown v4 client passed up", from_client(&Datagram::new("10.0.0.2:7777", VIP4)), Counter::PassMiss),
        passed("unknown v6 client passed up", from_client(&Datagram::new("[fd00::2]:7777", VIP6)), Counter::PassMiss),
    ]
}

fn subscribes() -> Vec<Case> {
    let subscribe = b"SUBSCRIBE sip:bob@example.net SIP/2.0\r\n\r\n";
    let subscribe_from = |src| from_client(&with_payload(src, VIP4, subscribe));
    let v6 = from_client(&with_payload("[fd00::2]:5060", VIP6, b"SUBSCRIBE sip:b@x SIP/2.0\r\n"));
    vec![
        passed("SUBSCRIBE from a known client passed up", subscribe_from("10.0.0.2:5060"), Counter::PassSubscribe),
        passed("SUBSCRIBE from an unknown client passed up", subscribe_from("10.0.0.2:7777"), Counter::PassSubscribe),
        passed("SUBSCRIBE from a known v6 client passed up", v6, Counter::PassSubscribe),
        // Only the exact method: anything else from a known client stays on the fast path.
        dsr_to_home1("payload SUBSCRIB (no space) forwarded", &with_payload("10.0.0.2:5060", VIP4, b"SUBSCRIB")),
        dsr_to_home1(
            "lower-case subscribe forwarded",
            &with_payload("10.0.0.2:5060", VIP4, b"subscribe sip:b@x SIP/2.0\r\n"),
        ),
        dsr_to_home1("NOTIFY forwarded", &with_payload("10.0.0.2:5060", VIP4, b"NOTIFY sip:b@x SIP/2.0\r\n")),
    ]
}

/// Two sockets first contact put on the fast path for line1 (installed
/// for `sip:line1@x`): one that carries line1 alone (its REGISTERs are
/// checked), one line1 shares with other lines (every request is).
fn install_line_socket(fx: &mut Fixture) {
    let line1 = ClientEntry {
        server: HOME1,
        flags: CLIENT_CHECKS_REGISTER,
        aor_hash: aor_hash(b"sip:line1@x"),
        ..Default::default()
    };
    // A load slot of its own: what counts as its load is checked.
    let shared = ClientEntry { flags: CLIENT_CHECKS_REGISTER | CLIENT_SHARED, load_slot: SHARED_LOAD_SLOT, ..line1 };
    fx.dataplane().reset_loads(&[SHARED_LOAD_SLOT]).unwrap();
    for (port, entry) in [(LINE_SOCKET_PORT, line1), (SHARED_SOCKET_PORT, shared)] {
        fx.dataplane().install_client(endpoint("10.0.0.2".parse().unwrap(), port), entry).unwrap();
    }
}

const LINE_SOCKET_PORT: u16 = 5080;
const SHARED_SOCKET_PORT: u16 = 5081;
const SHARED_LOAD_SLOT: u32 = 77;

fn line_register(line: &str) -> Vec<u8> {
    format!("REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;rport\r\nTo: <sip:{line}@x>\r\nCSeq: 1 REGISTER\r\n\r\n")
        .into_bytes()
}

/// A request of `method` from `from` (a To / From value) to line9.
fn line_request(method: &str, from: &str) -> Vec<u8> {
    format!(
        "{method} sip:line9@x SIP/2.0\r\nVia: SIP/2.0/UDP h;rport\r\nFrom: {from}\r\nTo: <sip:line9@x>\r\n\
         CSeq: 1 {method}\r\n\r\n"
    )
    .into_bytes()
}

fn from_line_socket(payload: Vec<u8>) -> Datagram {
    with_payload(&format!("10.0.0.2:{LINE_SOCKET_PORT}"), VIP4, &payload)
}

fn from_shared_socket(payload: Vec<u8>) -> Datagram {
    with_payload(&format!("10.0.0.2:{SHARED_SOCKET_PORT}"), VIP4, &payload)
}

/// A socket put on the fast path for one AOR takes REGISTERs for that AOR
/// only, however its `To` writes it: another line's goes up to the
/// daemon, as does one whose AOR the program cannot read. Other requests
/// are not looked at.
fn register_checks() -> Vec<Case> {
    let late_to = format!("REGISTER sip:x SIP/2.0\r\nSubject: {}\r\nTo: <sip:line1@x>\r\n\r\n", "s".repeat(VIA_SCAN));
    let line1_as = |to: &str| String::from_utf8(line_register("line1")).unwrap().replace("To: <sip:line1@x>", to);
    let mut cases: Vec<Case> = [
        "To: <sip:line1@x>",
        "To: \"Line One\" <sip:line1@x>",
        "To: Line <sip:line1@X>;tag=9",
        "t: <SIPS:line1@x:5061;transport=udp>",
        "TO : sip:line1@x;tag=9",
    ]
    .into_iter()
    .map(|to| {
        let name = format!("a REGISTER for the socket's own AOR takes the fast path ({to})");
        dsr_to_home1(&name, &from_line_socket(line1_as(to).into_bytes()))
    })
    .collect();
    cases.extend([
        dsr_to_home1(
            "other requests from the socket take the fast path unread",
            &from_line_socket(line_request("INVITE", "<sip:line2@x>;tag=1")),
        ),
        passed(
            "a REGISTER for another AOR from the socket goes up",
            from_client(&from_line_socket(line_register("line2"))),
            Counter::PassOtherAor,
        ),
        passed(
            "a REGISTER in lower case goes up unread (the daemon's method is exact)",
            from_client(&from_line_socket(
                String::from_utf8(line_register("line1")).unwrap().to_lowercase().into_bytes(),
            )),
            Counter::PassAorUnseen,
        ),
        passed(
            "a REGISTER whose To comes too late goes up",
            from_client(&from_line_socket(late_to.into_bytes())),
            Counter::PassAorUnseen,
        ),
    ]);
    cases
}

/// The AORs `AORS` routes: `proxied1` to home1 (active), `proxied2` to
/// home2 (draining), `proxied3` to home3 (down); and the upstream proxies
/// whose misses the program reads (`PROXIES`): `PROXY4`'s and `PROXY6`'s
/// addresses.
fn route_proxied_aors(fx: &mut Fixture) {
    route_aors_of_proxied(fx);
    record_proxies(fx);
}

/// `AORS`' routes of `route_proxied_aors`, no proxy recorded.
fn route_aors_of_proxied(fx: &mut Fixture) {
    let routes = [("proxied1", HOME1), ("proxied2", HOME2), ("proxied3", HOME3)];
    let hashes: Vec<u64> = routes.iter().map(|(user, _)| aor_hash(format!("sip:{user}@x").as_bytes())).collect();
    let values: Vec<AorRoute> = routes.iter().map(|&(_, server)| AorRoute { server, ..AorRoute::default() }).collect();
    fx.dataplane().route_aors(&hashes, &values).unwrap();
}

/// The upstream proxies of `route_proxied_aors`, recorded in `PROXIES`.
fn record_proxies(fx: &mut Fixture) {
    for proxy in [PROXY4, PROXY6] {
        fx.dataplane().add_proxy(proxy.parse::<std::net::SocketAddr>().unwrap().ip()).unwrap();
    }
}

/// The `last_seen_ns` of `user`'s route in `AORS`.
fn aor_route_stamp(fx: &mut Fixture, user: &str) -> u64 {
    let hash = aor_hash(format!("sip:{user}@x").as_bytes());
    let routes = fx.dataplane().all_aor_routes().unwrap();
    routes.into_iter().find(|(key, _)| *key == hash).expect("a route written by route_proxied_aors").1.last_seen_ns
}

/// An upstream proxy's address: on no fast path.
const PROXY4: &str = "10.0.0.9:5060";
const PROXY6: &str = "[fd00::9]:5060";

const TWO_VIAS: &str =
    "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP 10.9.0.1:5070;rport;branch=z9hG4bKc\r\n";

/// A request of `method` as an upstream proxy forwards it, with `vias`
/// (header lines) and `aor` as its To (REGISTER) or From (the others).
fn proxied(method: &str, vias: &str, aor: &str) -> Vec<u8> {
    let (from, to) = if method == "REGISTER" { ("<sip:proxy@x>", aor) } else { (aor, "<sip:line9@x>") };
    format!(
        "{method} sip:x SIP/2.0\r\n{vias}Max-Forwards: 69\r\nFrom: {from};tag=1\r\nTo: {to}\r\nCall-ID: c1\r\n\
         CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn from_proxy(payload: Vec<u8>) -> Datagram {
    with_payload(PROXY4, VIP4, &payload)
}

/// `datagram` from the proxy, tunnelled to the home of `slot` as its
/// AOR's route says.
fn routed_to(name: &str, datagram: &Datagram, slot: u32) -> Case {
    tunnelled_to(name, datagram, slot, Counter::ForwardedByAor)
}

/// `datagram` tunnelled to the home of `slot` (home1 or home2), counted
/// as `counter`.
fn tunnelled_to(name: &str, datagram: &Datagram, slot: u32, counter: Counter) -> Case {
    let v4 = datagram.src.is_ipv4();
    let (mac, edge, home) = match (slot, v4) {
        (HOME2, _) => (HOME2_MAC, "10.0.0.1", "10.0.0.12"),
        (_, true) => (HOME1_MAC, "10.0.0.1", "10.0.0.11"),
        (_, false) => (HOME1_MAC, "fd00::1", "fd00::11"),
    };
    let expected = tunnelled(datagram, EDGE_MAC, mac, None, edge, home);
    Case::new(name, from_client(datagram), XDP_TX, expected, counter).forwarded_to(slot)
}

/// The shared socket's other lines `AORS` routes: `line2` to home2
/// (draining), `line3` to home3 (down); `line4` it lacks.
fn route_other_lines(fx: &mut Fixture) {
    let routes = [("line2", HOME2), ("line3", HOME3)];
    let hashes: Vec<u64> = routes.iter().map(|(user, _)| aor_hash(format!("sip:{user}@x").as_bytes())).collect();
    let values: Vec<AorRoute> = routes.iter().map(|&(_, server)| AorRoute { server, ..AorRoute::default() }).collect();
    fx.dataplane().route_aors(&hashes, &values).unwrap();
}

/// dsr: a request from an upstream proxy (its address in `PROXIES`, on no
/// fast path) with more than one Via value goes to its AOR's home as
/// `AORS` routes it; one the program cannot be sure of goes up, and so
/// does every request from another source, unread.
fn routed_by_aor() -> Vec<Case> {
    let folded_via = "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp\r\n ,SIP/2.0/UDP 10.9.0.1;branch=z9hG4bKc\r\n";
    let quoted_via = "Via: SIP/2.0/UDP 10.0.0.9;x=\"a,b\";branch=z9hG4bKp\r\n";
    let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a\r\nVia: SIP/2.0/UDP b\r\nTo: <sip:proxied1@x>\r\n\r\n";
    let subscribe = proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>");
    let subscribe = [b"SUBSCRIBE".as_slice(), &subscribe[8..]].concat();
    let pass = |name: &str, payload: Vec<u8>, counter| passed(name, from_client(&from_proxy(payload)), counter);
    vec![
        routed_to(
            "a proxied REGISTER goes to its To AOR's home",
            &from_proxy(proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>")),
            HOME1,
        ),
        routed_to(
            "a proxied INVITE goes to its From AOR's home",
            &from_proxy(proxied("INVITE", TWO_VIAS, "\"P\" <sip:proxied1@X>")),
            HOME1,
        ),
        routed_to(
            "compact Vias, two values in one header, count",
            &from_proxy(proxied(
                "REGISTER",
                "v: SIP/2.0/UDP 10.0.0.9;branch=1 , SIP/2.0/UDP c;branch=2\r\n",
                "<sip:proxied1@x>",
            )),
            HOME1,
        ),
        routed_to(
            "an AOR of a draining home goes there",
            &from_proxy(proxied("REGISTER", TWO_VIAS, "sip:proxied2@x")),
            HOME2,
        ),
        routed_to(
            "an IPv6 proxy's request goes to the home's IPv6 address",
            &with_payload(PROXY6, VIP6, &proxied("MESSAGE", TWO_VIAS, "<sip:proxied1@x>")),
            HOME1,
        ),
        routed_to(
            "a proxy's request from another port of its address goes there too",
            &with_payload("10.0.0.9:5999", VIP4, &proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>")),
            HOME1,
        ),
        passed(
            "a proxied REGISTER of a routed AOR from a source not in PROXIES goes up unread",
            from_client(&with_payload("10.0.0.8:5060", VIP4, &proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>"))),
            Counter::PassMiss,
        ),
        passed(
            "the same from an IPv6 source not in PROXIES",
            from_client(&with_payload("[fd00::8]:5060", VIP6, &proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>"))),
            Counter::PassMiss,
        ),
        passed(
            "a folded Via from a source not in PROXIES goes up as a plain miss: not read",
            from_client(&with_payload("10.0.0.8:5060", VIP4, &proxied("REGISTER", folded_via, "<sip:proxied1@x>"))),
            Counter::PassMiss,
        ),
        pass(
            "one Via goes up (first contact redirects)",
            proxied("REGISTER", "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp\r\n", "<sip:proxied1@x>"),
            Counter::PassMiss,
        ),
        pass("an AOR AORS lacks goes up", proxied("REGISTER", TWO_VIAS, "<sip:stranger@x>"), Counter::PassMiss),
        pass(
            "an AOR the program cannot read goes up",
            proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>\r\n ;x=1"),
            Counter::PassMiss,
        ),
        pass(
            "an AOR of a down home goes up",
            proxied("REGISTER", TWO_VIAS, "<sip:proxied3@x>"),
            Counter::PassServerDown,
        ),
        pass(
            "a folded Via goes up: its values cannot be counted",
            proxied("REGISTER", folded_via, "<sip:proxied1@x>"),
            Counter::PassViasUnseen,
        ),
        pass(
            "a comma in a quoted Via parameter goes up: cannot be counted",
            proxied("REGISTER", quoted_via, "<sip:proxied1@x>"),
            Counter::PassViasUnseen,
        ),
        pass("a proxied SUBSCRIBE goes up", subscribe, Counter::PassSubscribe),
        pass("a response from the proxy goes up", response.to_vec(), Counter::PassMiss),
    ]
}

/// nat: a proxied request whose AOR `AORS` routes goes up, as any miss,
/// though its source is in `PROXIES` (nat reads no miss).
fn not_routed_by_aor_in_nat() -> Vec<Case> {
    let register = from_client(&from_proxy(proxied("REGISTER", TWO_VIAS, "<sip:proxied1@x>")));
    vec![passed("nat: a proxied REGISTER of a routed AOR goes up", register, Counter::PassMiss)]
}

/// The shared socket's nat port (its entry's, for line1 at home1).
const SHARED_SOCKET_NAT_PORT: u16 = 20051;
/// line2's own edge port on the shared socket.
const LINE2_NAT_PORT: u16 = 20062;

/// nat: the shared socket's other lines' own edge ports, as the daemon
/// writes them (a reply entry, then the route naming its port): line2's
/// (home2) and line3's (home3, down) name the socket; line5's reply entry
/// names another socket (the AOR is routed from there), line6's another
/// home than its route (a move between the two writes); line7 is routed
/// with no port.
fn route_line_ports(fx: &mut Fixture) {
    let socket = endpoint("10.0.0.2".parse().unwrap(), SHARED_SOCKET_PORT);
    let elsewhere = endpoint("10.0.0.2".parse().unwrap(), 5090);
    let service = endpoint("192.0.2.10".parse().unwrap(), 5060);
    let lines = [
        ("line2", HOME2, LINE2_NAT_PORT, socket, HOME2),
        ("line3", HOME3, 20063, socket, HOME3),
        ("line5", HOME2, 20065, elsewhere, HOME2),
        ("line6", HOME2, 20066, socket, HOME1),
    ];
    let keys: Vec<NatKey> = lines
        .iter()
        .map(|&(.., port, _, _)| NatKey { edge_port_be: port.to_be(), family: FAMILY_V4, _pad: 0 })
        .collect();
    let entries: Vec<NatEntry> =
        lines.iter().map(|&(.., client, server)| NatEntry { client, service, server }).collect();
    fx.dataplane().install_nat_replies(&keys, &entries).unwrap();
    let mut routes: Vec<(&str, AorRoute)> = lines
        .iter()
        .map(|&(user, server, port, ..)| (user, AorRoute { server, nat_port_be: port.to_be(), ..AorRoute::default() }))
        .collect();
    routes.push(("line7", AorRoute { server: HOME2, ..AorRoute::default() }));
    let hashes: Vec<u64> = routes.iter().map(|(user, _)| aor_hash(format!("sip:{user}@x").as_bytes())).collect();
    let values: Vec<AorRoute> = routes.iter().map(|&(_, route)| route).collect();
    fx.dataplane().route_aors(&hashes, &values).unwrap();
}

/// nat: a shared socket's other line leaves from that line's own edge
/// port for its home (`;rport` added as for the entry), and its home's
/// replies to that port come back to the socket; a route whose port is
/// not this socket's for that home, or has none, goes up, as does a line
/// whose home is down; the socket's own line takes its entry's port.
fn other_lines_in_nat() -> Vec<Case> {
    let to_home2 = |name: &str, payload: Vec<u8>, sent: Vec<u8>| {
        let rewritten = with_payload(&format!("10.0.0.1:{LINE2_NAT_PORT}"), "10.0.0.12:5060", &sent);
        let expected = ethernet(EDGE_MAC, HOME2_MAC, None, rewritten.ethertype(), &rewritten.ip_packet());
        let input = from_client(&from_shared_socket(payload));
        Case::new(format!("nat: {name}"), input, XDP_TX, expected, Counter::ForwardedOtherAor).forwarded_to(HOME2)
    };
    let message = line_request("MESSAGE", "<sip:line2@x>;tag=1");
    let without_rport = String::from_utf8(message.clone()).unwrap().replace("h;rport", "h").into_bytes();
    let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:line9@x>;tag=1\r\nTo: <sip:line2@x>\r\n\r\n";
    let up = |name: &str, from: &str, counter| {
        passed(format!("nat: {name}"), from_client(&from_shared_socket(line_request("MESSAGE", from))), counter)
    };
    let own = line_request("MESSAGE", "<sip:line1@x>;tag=1");
    let own_sent = with_payload(&format!("10.0.0.1:{SHARED_SOCKET_NAT_PORT}"), "10.0.0.11:5060", &own);
    let ok = b"SIP/2.0 200 OK\r\n\r\n";
    let from_home = |src: &str, mac| {
        let reply = with_payload(src, &format!("10.0.0.1:{LINE2_NAT_PORT}"), ok);
        ethernet(mac, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet())
    };
    let back = with_payload(VIP4, &format!("10.0.0.2:{SHARED_SOCKET_PORT}"), ok);
    vec![
        to_home2("another line's request leaves from its own port for its home", message.clone(), message),
        to_home2(
            "another line's request gets ;rport added as its socket's",
            without_rport.clone(),
            with_rport_before(&without_rport, "\r\nFrom"),
        ),
        to_home2("another line's REGISTER goes to its home", line_register("line2"), line_register("line2")),
        to_home2("a response of another line goes to that line's home", response.to_vec(), response.to_vec()),
        Case::new(
            "nat: the line's home's reply to the line's port comes back to the socket",
            from_home("10.0.0.12:5060", HOME2_MAC),
            XDP_TX,
            ethernet(EDGE_MAC, CLIENT_MAC, None, back.ethertype(), &back.ip_packet()),
            Counter::NatReply,
        ),
        passed(
            "nat: another home's reply to the line's port is not rewritten",
            from_home("10.0.0.11:5060", HOME1_MAC),
            Counter::NotService,
        ),
        up("a line whose port is another socket's goes up", "<sip:line5@x>;tag=1", Counter::PassOtherAor),
        up("a line whose port names another home goes up", "<sip:line6@x>;tag=1", Counter::PassOtherAor),
        up("a line routed with no port goes up", "<sip:line7@x>;tag=1", Counter::PassOtherAor),
        up("a line AORS lacks goes up", "<sip:line4@x>;tag=1", Counter::PassOtherAor),
        up("a line whose home is down goes up", "<sip:line3@x>;tag=1", Counter::PassServerDown),
        nat_to_home1(
            "nat: the socket's own line takes its entry's port",
            from_client(&from_shared_socket(own)),
            &own_sent,
            None,
        ),
    ]
}

/// A STUN binding request (RFC 5389 §6), as phones send to keep NAT
/// bindings open: no SIP request line.
const STUN_BINDING: [u8; 20] = [0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// A socket shared by several lines (dsr) takes its own line's requests
/// (From, To for a REGISTER) and responses (To: the line that answered),
/// and whatever is no SIP message (keepalives, STUN); another line's goes
/// to that line's home as `AORS` routes it, without touching the entry,
/// or up if its home is down or `AORS` lacks it (first contact sends
/// such a response by the entry); one the program cannot read with
/// certainty goes up.
fn shared_socket_checks() -> Vec<Case> {
    let late_from = String::from_utf8(line_request("MESSAGE", "<sip:line1@x>;tag=1"))
        .unwrap()
        .replace("Via:", &format!("Subject: {}\r\nVia:", "s".repeat(VIA_SCAN)));
    let response = |to: &str| {
        format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:line9@x>;tag=1\r\nTo: {to}\r\n\r\n").into_bytes()
    };
    let other_line = |name: &str, payload: Vec<u8>| {
        tunnelled_to(name, &from_shared_socket(payload), HOME2, Counter::ForwardedOtherAor)
    };
    let up = |name: &str, payload: Vec<u8>, counter| passed(name, from_client(&from_shared_socket(payload)), counter);
    let subscribe = [b"SUBSCRIBE".as_slice(), &line_register("line1")[8..]].concat();
    vec![
        dsr_to_home1(
            "a request from the shared socket's own line takes the fast path",
            &from_shared_socket(line_request("INVITE", "\"One\" <sip:line1@X>;tag=1")),
        ),
        dsr_to_home1("a REGISTER of its own line too", &from_shared_socket(line_register("line1"))),
        dsr_to_home1("a response of its own line (To) too", &from_shared_socket(response("<sip:line1@x>;tag=2"))),
        dsr_to_home1("a CRLF keepalive takes the fast path unread", &from_shared_socket(b"\r\n\r\n".to_vec())),
        dsr_to_home1("a STUN binding request takes the fast path unread", &from_shared_socket(STUN_BINDING.to_vec())),
        other_line("another line's request goes to that line's home", line_request("MESSAGE", "<sip:line2@x>;tag=1")),
        other_line("another line's REGISTER goes to that line's home", line_register("line2")),
        other_line("another line's response (To) goes to that line's home", response("Two <sip:line2@x>;tag=2")),
        up(
            "a response whose To is no line AORS routes (a number the PBX serves) goes up",
            response("<sip:4912345@x>;tag=2"),
            Counter::PassOtherAor,
        ),
        up("a response of a line whose home is down goes up", response("<sip:line3@x>;tag=2"), Counter::PassServerDown),
        up("another line AORS lacks goes up", line_request("MESSAGE", "<sip:line4@x>;tag=1"), Counter::PassOtherAor),
        up("a REGISTER of a line AORS lacks goes up", line_register("line4"), Counter::PassOtherAor),
        up(
            "another line whose home is down goes up",
            line_request("OPTIONS", "<sip:line3@x>;tag=1"),
            Counter::PassServerDown,
        ),
        up("a SUBSCRIBE of its own line goes up", subscribe, Counter::PassSubscribe),
        up("a folded From goes up unread", line_request("OPTIONS", "<sip:line1@x>\r\n ;tag=1"), Counter::PassAorUnseen),
        up("a From past the bytes read goes up unread", late_from.into_bytes(), Counter::PassAorUnseen),
        up(
            "a response without a To goes up unread",
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n".to_vec(),
            Counter::PassAorUnseen,
        ),
        up(
            "a response of another version goes up unread",
            [&b"SIP/3.0"[..], &response("<sip:line1@x>")[7..]].concat(),
            Counter::PassAorUnseen,
        ),
    ]
}

fn dsr_hits() -> Vec<Case> {
    let v6 = Datagram::new("[fd00::2]:5060", VIP6);
    let dont_fragment = Datagram::new("10.0.0.2:5060", VIP4).with(|d| d.dont_fragment = true);
    let df_case = dsr_to_home1("dsr v4 with DF: the outer header copies DF (RFC 2003)", &dont_fragment);
    assert_eq!(df_case.output[14 + 6] & 0x40, 0x40, "the expected outer header has DF");
    let options = Datagram::new("10.0.0.2:5060", VIP4)
        .with(|d| d.ipv4_options = vec![0x01, 0x01, 0x01, 0x00, 0x94, 0x04, 0x00, 0x00]);
    let tagged = ethernet(CLIENT_MAC, EDGE_MAC, Some(42), options.ethertype(), &options.ip_packet());
    let home5 = Datagram::new("10.0.0.2:5065", VIP4);
    vec![
        dsr_to_home1("dsr v4 hit IPIP-encapsulated to home1", &Datagram::new("10.0.0.2:5060", VIP4)),
        df_case,
        Case::new(
            "dsr v6 hit IPv6-in-IPv6-encapsulated to home1",
            from_client(&v6),
            XDP_TX,
            tunnelled(&v6, EDGE_MAC, HOME1_MAC, None, "fd00::1", "fd00::11"),
            Counter::Forwarded,
        )
        .forwarded_to(HOME1),
        Case::new(
            "dsr keeps the VLAN tag and the IPv4 options",
            tagged,
            XDP_TX,
            tunnelled(&options, EDGE_MAC, HOME1_MAC, Some(42), "10.0.0.1", "10.0.0.11"),
            Counter::Forwarded,
        )
        .forwarded_to(HOME1),
        Case::new(
            "home behind another interface reached by XDP_REDIRECT",
            from_client(&home5),
            XDP_REDIRECT,
            tunnelled(&home5, OTHER_EDGE_MAC, HOME5_MAC, None, "10.0.0.1", "10.1.0.5"),
            Counter::Forwarded,
        )
        .forwarded_to(HOME5),
    ]
}

fn server_states() -> Vec<Case> {
    let draining = Datagram::new("10.0.0.2:5062", VIP4);
    vec![
        Case::new(
            "client of a draining server forwarded",
            from_client(&draining),
            XDP_TX,
            tunnelled(&draining, EDGE_MAC, HOME2_MAC, None, "10.0.0.1", "10.0.0.12"),
            Counter::Forwarded,
        )
        .forwarded_to(HOME2),
        passed(
            "client of a down server passed up",
            from_client(&Datagram::new("10.0.0.2:5063", VIP4)),
            Counter::PassServerDown,
        ),
        passed(
            "v6 client of a server without IPv6 passed up",
            from_client(&Datagram::new("[fd00::2]:5070", VIP6)),
            Counter::NoAddressForFamily,
        ),
    ]
}

/// home4 has a route but no neighbour: passed untouched, reported once with
/// its server. (That an unknown client is no event, every other case shows.)
fn fib_miss() -> Vec<Case> {
    let home4 = Event { kind: EventKind::FibMiss as u32, server: HOME4, family: FAMILY_V4, _pad: [0; 3] };
    let frame = from_client(&Datagram::new("10.0.0.2:5064", VIP4));
    vec![passed("client of an unresolved server is a reported FIB miss", frame, Counter::FibMiss).reporting(home4)]
}

fn fragments() -> Vec<Case> {
    let datagram = Datagram::new("10.0.0.2:5060", VIP4);
    let fragment = |more, offset| {
        ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &ipv4_fragment(&datagram, more, offset))
    };
    // IPv6: a fragment header (44) after the fixed header.
    let mut v6 = Datagram::new("[fd00::2]:5060", VIP6).ip_packet();
    v6[6] = 44;
    vec![
        passed("v4 first fragment passed to the kernel", fragment(true, 0), Counter::Fragment),
        passed("v4 last fragment passed to the kernel", fragment(false, 185), Counter::Fragment),
        passed("v4 middle fragment passed to the kernel", fragment(true, 185), Counter::Fragment),
        passed(
            "v6 fragment passed to the kernel",
            ethernet(CLIENT_MAC, EDGE_MAC, None, etherparse::EtherType::IPV6, &v6),
            Counter::Fragment,
        ),
    ]
}

/// Every cut of a frame short of whole. BPF_PROG_TEST_RUN refuses frames
/// below an Ethernet header (EINVAL), so cuts start there; each is still
/// shorter than the IP length it claims.
fn truncations() -> Vec<Case> {
    let v4 = Datagram::new("10.0.0.2:5060", VIP4);
    let v6 = Datagram::new("[fd00::2]:5060", VIP6);
    let tagged = ethernet(CLIENT_MAC, EDGE_MAC, Some(5), v4.ethertype(), &v4.ip_packet());
    [("v4", from_client(&v4)), ("v6", from_client(&v6)), ("tagged v4", tagged)]
        .into_iter()
        .flat_map(|(what, full)| {
            (14..full.len()).map(move |len| {
                passed(
                    format!("{what} frame cut to {len} bytes is malformed"),
                    full[..len].to_vec(),
                    Counter::Malformed,
                )
            })
        })
        .collect()
}

fn inconsistent_ip_headers() -> Vec<Case> {
    let good = from_client(&Datagram::new("10.0.0.2:5060", VIP4));
    type Edit = (&'static str, fn(&mut Vec<u8>));
    let edits: [Edit; 4] = [
        ("IHL below 5 is malformed", |f| f[14] = 0x44),
        ("version 6 in an IPv4 ethertype is malformed", |f| f[14] = 0x65),
        ("IPv4 total length beyond the frame is malformed", |f| f[17] = f[17].wrapping_add(1)),
        ("IPv4 total length below the header is malformed", |f| {
            f[16] = 0;
            f[17] = 19
        }),
    ];
    edits
        .into_iter()
        .map(|(name, edit)| {
            let mut frame = good.clone();
            edit(&mut frame);
            passed(name, frame, Counter::Malformed)
        })
        .collect()
}

/// The frame keeps every byte; only the IP header's length shrinks into
/// the UDP header.
fn ip_lengths_into_the_udp_header() -> Vec<Case> {
    let v4 = from_client(&Datagram::new("10.0.0.2:5060", VIP4));
    let v6 = from_client(&Datagram::new("[fd00::2]:5060", VIP6));
    let v4_cases = (0..8u16).map(|udp_bytes| {
        let mut frame = v4.clone();
        frame[16..18].copy_from_slice(&(20 + udp_bytes).to_be_bytes());
        let check = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..34]).unwrap().to_header().calc_header_checksum();
        frame[24..26].copy_from_slice(&check.to_be_bytes());
        passed(format!("v4 IP length with {udp_bytes} UDP bytes is malformed"), frame, Counter::Malformed)
    });
    let v6_cases = (0..8u16).map(|udp_bytes| {
        let mut frame = v6.clone();
        frame[18..20].copy_from_slice(&udp_bytes.to_be_bytes());
        passed(format!("v6 IP length with {udp_bytes} UDP bytes is malformed"), frame, Counter::Malformed)
    });
    v4_cases.chain(v6_cases).collect()
}

/// UDP lengths that lie to a service are dropped; a short one is legal.
fn udp_length_lies_v4() -> Vec<Case> {
    let datagram = Datagram::new("10.0.0.2:5060", VIP4);
    let udp_len_at = 14 + 20 + 4;
    let with_udp_len = |len: u16| {
        let mut frame = from_client(&datagram);
        frame[udp_len_at..udp_len_at + 2].copy_from_slice(&len.to_be_bytes());
        frame
    };
    let beyond = (datagram.payload.len() + 9) as u16;
    // UDP length below the IP payload: the rest is padding, carried as is.
    let short = with_udp_len(8);
    let expected = tunnelled_packet(&short[14..], EDGE_MAC, HOME1_MAC, None, "10.0.0.1", "10.0.0.11");
    vec![
        dropped("UDP length 7 to a service dropped", with_udp_len(7)),
        dropped("UDP length 0 to a service dropped", with_udp_len(0)),
        dropped("UDP length beyond the IP payload dropped", with_udp_len(beyond)),
        Case::new("UDP length below the IP payload forwarded as is", short, XDP_TX, expected, Counter::Forwarded)
            .forwarded_to(HOME1),
    ]
}

/// redirector_decap strips tunnels from its edges to its addresses only.
fn decapsulation() -> Vec<Case> {
    let stripped = |client, vip, edge, home| {
        let inner = Datagram::new(client, vip);
        let name = format!("decap strips a tunnel from edge {edge} to {home}");
        let tunnel = tunnelled(&inner, EDGE_MAC, HOME1_MAC, Some(3), edge, home);
        let expected = ethernet(EDGE_MAC, HOME1_MAC, Some(3), inner.ethertype(), &inner.ip_packet());
        Case::new(name, tunnel, XDP_PASS, expected, Counter::Decapsulated).on_program(DECAP_PROGRAM)
    };
    let inner = Datagram::new("10.0.0.2:5060", VIP4);
    let elsewhere = tunnelled(&inner, EDGE_MAC, HOME2_MAC, None, "10.0.0.1", "10.0.0.12");
    let stranger = tunnelled(&inner, EDGE_MAC, HOME1_MAC, None, "10.0.0.66", "10.0.0.11");
    vec![
        stripped("10.0.0.2:5060", VIP4, "10.0.0.1", "10.0.0.11"),
        stripped("[fd00::2]:5060", VIP6, "fd00::1", "fd00::11"),
        passed("decap leaves a tunnel to another address untouched", elsewhere, Counter::NotService)
            .on_program(DECAP_PROGRAM),
        passed("decap leaves a tunnel from a non-edge untouched", stranger, Counter::NotService)
            .on_program(DECAP_PROGRAM),
    ]
}

/// A client's frame rewritten to `rewritten` and sent to home1 in nat mode.
fn nat_to_home1(name: &str, frame: Vec<u8>, rewritten: &Datagram, vlan: Option<u16>) -> Case {
    let expected = ethernet(EDGE_MAC, HOME1_MAC, vlan, rewritten.ethertype(), &rewritten.ip_packet());
    Case::new(name, frame, XDP_TX, expected, Counter::Forwarded).forwarded_to(HOME1)
}

fn nat_hits() -> Vec<Case> {
    let options = vec![0x94, 0x04, 0x00, 0x00];
    let with_options = |d: &mut Datagram| {
        d.ipv4_options = options.clone();
        d.zero_udp_checksum = true;
    };
    let tagged = Datagram::new("10.0.0.2:5060", VIP4).with(with_options);
    let tagged_frame = ethernet(CLIENT_MAC, EDGE_MAC, Some(7), tagged.ethertype(), &tagged.ip_packet());
    // The shortest request with a Via asking for rport.
    let tiny = b"A\nv:x;rport\n";
    let mut padded = from_client(&with_payload("10.0.0.2:5060", VIP4, tiny));
    padded.resize(60, 0);
    let mut padding = nat_to_home1(
        "nat carries Ethernet padding after the IP packet along",
        padded,
        &with_payload("10.0.0.1:20000", "10.0.0.11:5060", tiny),
        None,
    );
    padding.output.resize(60, 0);
    vec![
        nat_to_home1(
            "nat v4 hit rewrites both endpoints with valid checksums",
            from_client(&Datagram::new("10.0.0.2:5060", VIP4)),
            &Datagram::new("10.0.0.1:20000", "10.0.0.11:5060"),
            None,
        ),
        nat_to_home1(
            "nat v4 with options, VLAN tag and zero UDP checksum",
            tagged_frame,
            &Datagram::new("10.0.0.1:20000", "10.0.0.11:5060").with(with_options),
            Some(7),
        ),
        // Static clients get nat ports in config order: fd00::2 is the second.
        nat_to_home1(
            "nat v6 hit rewrites both endpoints with a valid checksum",
            from_client(&Datagram::new("[fd00::2]:5060", VIP6)),
            &Datagram::new("[fd00::1]:20001", "[fd00::11]:5060"),
            None,
        ),
        padding,
    ]
}

/// A request whose top Via is `via` (a whole header line, CRLF included)
/// after `before` (header lines), with a CSeq after it.
fn request(before: &str, via: &str) -> Vec<u8> {
    format!("REGISTER sip:example.net SIP/2.0\r\n{before}{via}CSeq: 1 REGISTER\r\n\r\n").into_bytes()
}

/// `payload` with `;rport` inserted just before the first occurrence of `before`.
fn with_rport_before(payload: &[u8], before: &str) -> Vec<u8> {
    let text = String::from_utf8(payload.to_vec()).unwrap();
    let at = text.find(before).expect("insertion point");
    format!("{};rport{}", &text[..at], &text[at..]).into_bytes()
}

/// nat adds `;rport` at the end of the top Via value (RFC 3581): a home
/// server that follows RFC 3261 §18.2.2 then answers the edge port the
/// request left by, not the client's Via port. Exact bytes from etherparse.
fn rport_added() -> Vec<Case> {
    let plain = request("", "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n");
    let odd = request("", "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK12\r\n");
    let parity = |payload: &[u8]| String::from_utf8_lossy(payload).find("\r\nCSeq").unwrap() % 2;
    assert_ne!(parity(&plain), parity(&odd), "one insertion at an even offset, one at an odd one");
    let added = |name: &str, payload: Vec<u8>, before: &str| {
        let input = from_client(&with_payload("10.0.0.2:5060", VIP4, &payload));
        let output = with_payload("10.0.0.1:20000", "10.0.0.11:5060", &with_rport_before(&payload, before));
        nat_to_home1(name, input, &output, None)
    };
    let options = |d: &mut Datagram| {
        d.ipv4_options = vec![0x94, 0x04, 0x00, 0x00];
        d.zero_udp_checksum = true;
    };
    let tagged = Datagram::new("10.0.0.2:5060", VIP4).with(|d| d.payload = plain.clone()).with(options);
    let tagged_out = with_payload("10.0.0.1:20000", "10.0.0.11:5060", &with_rport_before(&plain, "\r\nCSeq"));
    let v6_out = with_payload("[fd00::1]:20001", "[fd00::11]:5060", &with_rport_before(&plain, "\r\nCSeq"));
    vec![
        added("nat adds ;rport to a top Via without it (even offset)", plain.clone(), "\r\nCSeq"),
        added("nat adds ;rport to a top Via without it (odd offset)", odd, "\r\nCSeq"),
        added(
            "nat adds ;rport to the top Via value of several",
            request("Max-Forwards: 70\r\n", "via : SIP/2.0/UDP 10.0.0.2;branch=a , SIP/2.0/UDP 10.9.9.9;branch=b\r\n"),
            ", SIP",
        ),
        added("nat adds ;rport to a compact v: Via", request("", "v:SIP/2.0/UDP 10.0.0.2\r\n"), "\r\nCSeq"),
        added(
            "nat adds ;rport when a parameter only starts like it",
            request("", "Via: SIP/2.0/UDP 10.0.0.2;rportx;branch=b\r\n"),
            "\r\nCSeq",
        ),
        added(
            "nat looks for the Via header, not a header that starts like it",
            request("Vias: x;rport\r\n", "Via: SIP/2.0/UDP 10.0.0.2;branch=c\r\n"),
            "\r\nCSeq",
        ),
        nat_to_home1(
            "nat adds ;rport with IPv4 options, a VLAN tag and no UDP checksum",
            ethernet(CLIENT_MAC, EDGE_MAC, Some(7), tagged.ethertype(), &tagged.ip_packet()),
            &tagged_out.with(options),
            Some(7),
        ),
        nat_to_home1(
            "nat adds ;rport over IPv6",
            from_client(&with_payload("[fd00::2]:5060", VIP6, &plain)),
            &v6_out,
            None,
        ),
    ]
}

/// What nat leaves as it is, and what it passes to the daemon because it
/// cannot see the top Via.
fn rport_not_added() -> Vec<Case> {
    let unchanged = |name: &str, payload: Vec<u8>| {
        let input = from_client(&with_payload("10.0.0.2:5060", VIP4, &payload));
        nat_to_home1(name, input, &with_payload("10.0.0.1:20000", "10.0.0.11:5060", &payload), None)
    };
    let passed_up = |name: &str, payload: Vec<u8>| {
        passed(name, from_client(&with_payload("10.0.0.2:5060", VIP4, &payload)), Counter::PassViaUnseen)
    };
    let long_header = format!("Subject: {}\r\n", "x".repeat(500));
    let long_branch = format!("Via: SIP/2.0/UDP 10.0.0.2;branch={}\r\n", "b".repeat(500));
    let plain = request("", "Via: SIP/2.0/UDP 10.0.0.2:5066;branch=z9hG4bK1\r\n");
    let from_asking_client = nat_to_home1(
        "nat leaves the requests of a client that asked for rport as they are",
        from_client(&with_payload("10.0.0.2:5066", VIP4, &plain)),
        &with_payload("10.0.0.1:20050", "10.0.0.11:5060", &plain),
        None,
    );
    // A STUN binding request (RFC 5389): type, length, magic cookie, id.
    let stun = [[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42].as_slice(), &[7; 12]].concat();
    vec![
        from_asking_client,
        unchanged("nat forwards a CRLF keepalive as it is (RFC 5626)", b"\r\n\r\n".to_vec()),
        unchanged("nat forwards a STUN keepalive as it is", stun),
        unchanged("nat leaves a Via with RPORT=1234 as it is", request("", "Via: SIP/2.0/UDP 10.0.0.2;RPORT=1234\r\n")),
        unchanged("nat leaves a Via with rport before its branch", request("", "v: SIP/2.0/UDP a;rport;branch=z\r\n")),
        unchanged(
            "nat leaves a response's Vias as they are",
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.11;branch=z\r\n\r\n".to_vec(),
        ),
        passed_up(
            "nat passes up a request without a Via",
            b"OPTIONS sip:x SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n".to_vec(),
        ),
        passed_up("nat passes up a request whose Via comes too late", request(&long_header, "Via: SIP/2.0/UDP a\r\n")),
        passed_up("nat passes up a request whose Via value runs too long", request("", &long_branch)),
    ]
}

fn nat_replies() -> Vec<Case> {
    let from_home =
        |datagram: &Datagram, mac| ethernet(mac, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet());
    let spoofed = |name, src, dst| passed(name, from_home(&Datagram::new(src, dst), HOME2_MAC), Counter::NotService);
    vec![
        reply_to_client("nat v4 reply rewritten back to the client", false, (EDGE_MAC, CLIENT_MAC)),
        reply_to_client("nat v6 reply rewritten back to the client", true, (EDGE_MAC, CLIENT_MAC)),
        spoofed("nat reply from another server not rewritten", "10.0.0.12:5060", "10.0.0.1:20000"),
        spoofed("nat reply from the server's other port not rewritten", "10.0.0.11:5061", "10.0.0.1:20000"),
        spoofed("nat reply to an unknown edge port not rewritten", "10.0.0.11:5060", "10.0.0.1:29999"),
    ]
}

fn not_ours() -> Vec<Case> {
    let mut tcp = Datagram::new("10.0.0.2:5060", VIP4).ip_packet();
    tcp[9] = 6;
    let tcp = ethernet(CLIENT_MAC, EDGE_MAC, None, etherparse::EtherType::IPV4, &tcp);
    let arp = ethernet(CLIENT_MAC, [0xff; 6], None, etherparse::EtherType::ARP, &[0u8; 28]);
    let udp_to = |dst| from_client(&Datagram::new("10.0.0.2:5060", dst));
    vec![
        passed("UDP to another port of the VIP passed untouched", udp_to("192.0.2.10:5061"), Counter::NotService),
        passed("UDP to another address passed untouched", udp_to("192.0.2.11:5060"), Counter::NotService),
        passed("TCP to the service passed untouched", tcp, Counter::NotService),
        passed("ARP passed untouched", arp, Counter::NotService),
        passed("UDP to the edge, not a nat port, passed untouched", udp_to("10.0.0.1:22"), Counter::NotService),
    ]
}

/// Over IPv6, a UDP length lie or a zero checksum to a service is dropped,
/// and so is a UDP length lie on the nat reply path.
fn udp_lies_v6_and_nat_reply() -> Vec<Case> {
    let v6 = || from_client(&Datagram::new("[fd00::2]:5060", VIP6));
    let mut short = v6();
    short[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&4u16.to_be_bytes());
    let mut unchecked = v6();
    unchecked[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
    let reply = Datagram::new("10.0.0.11:5060", "10.0.0.1:20000");
    let mut long_reply = ethernet(HOME1_MAC, EDGE_MAC, None, reply.ethertype(), &reply.ip_packet());
    long_reply[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&9000u16.to_be_bytes());
    vec![
        dropped("v6 UDP length 4 to a service dropped", short),
        dropped("v6 zero UDP checksum to a service dropped", unchecked),
        dropped("nat reply with a UDP length beyond the IP payload dropped", long_reply),
    ]
}
