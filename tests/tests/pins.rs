//! Pinned state (`redirector::kernel::pins`), without a daemon: bpffs is
//! mounted where it is missing, a second load adopts the first one's maps
//! (and `FastPath::adopting` what in them its store still assigns, and
//! `FastPath::sync_aors` the AOR routes), and
//! pins the program could not use (another map layout, another
//! `max_clients`) are refused with an error that says to detach. A
//! throttle not lifted is looked up by the next daemon's program too.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use aya::programs::{TestRun, TestRunOptions};
use redirector::{
    config::Config,
    kernel::{
        aor_routes::hash_of,
        fast_path::{Adopted, FastPath, monotonic_ns, owner_of},
        loader::{DataPlane, DataPlaneError, endpoint},
        pins::{PinError, Pins, is_bpffs},
    },
    model::Origin,
    sip::Aor,
};
use redirector_ebpf::{CLIENT_SHARED, ClientEntry, Endpoint, REDIRECTOR_PROGRAM, Throttle, source_prefix};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Scratch, config_text},
    packets::{Datagram, ethernet},
    privileged,
};

const CLIENTS: u32 = 1024;

#[test]
fn bpffs_is_mounted_where_missing_and_a_second_load_adopts_the_maps() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("adopt");
    assert!(!is_bpffs(&scratch.0));
    let pins = Pins::new(&scratch.0, "eth9");
    let client = endpoint("10.9.0.2".parse().unwrap(), 5060);
    {
        let mut first = DataPlane::load_pinned(&pins, CLIENTS).expect("a first load");
        assert!(is_bpffs(&scratch.0), "mounted by the load");
        assert!(!first.adopted());
        first.install_client(client, ClientEntry { server: 3, owner: 7, ..Default::default() }).unwrap();
    }
    let mut second = DataPlane::load_pinned(&pins, CLIENTS).expect("a second load");
    assert!(second.adopted());
    assert_eq!(second.client(client).unwrap().map(|e| (e.server, e.owner)), Some((3, 7)), "the first one's entry");
    assert!(pins.remove().unwrap());
    assert!(!pins.directory().exists());
}

#[test]
fn pins_of_another_layout_or_size_are_refused_with_what_to_do() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("refuse");
    let pins = Pins::new(&scratch.0, "eth9");
    drop(DataPlane::load_pinned(&pins, CLIENTS).expect("a first load"));

    let error = DataPlane::load_pinned(&pins, 2 * CLIENTS).err().expect("another max_clients is refused");
    let text = error.to_string();
    assert!(matches!(error, DataPlaneError::Pins(PinError::Mismatch { .. })), "{text}");
    assert!(text.contains("max_clients") && text.contains("redirector detach --interface eth9"), "{text}");

    std::fs::create_dir(pins.directory().join("layout-0")).unwrap();
    let error = DataPlane::load_pinned(&pins, CLIENTS).err().expect("another layout is refused");
    let text = error.to_string();
    assert!(matches!(error, DataPlaneError::Pins(PinError::OtherLayout { .. })), "{text}");
    assert!(text.contains("layout-0") && text.contains("redirector detach --interface eth9"), "{text}");
}

/// A nat edge's learned clients as a second daemon adopts them: one whose
/// AOR still has its home is kept as it was (edge port, reply entry,
/// first contact's copy), one whose AOR moved while no daemon ran is
/// repointed on the same port (still shared with another line), one whose
/// AOR is gone is removed with its reply entry, and the static clients
/// keep their ports; every kept client keeps its load slot and the packets
/// counted there. A client installed afterwards gets a port and a slot
/// nobody holds.
#[test]
fn a_second_daemon_adopts_what_its_store_still_assigns_and_removes_the_rest() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("nat");
    let pins = Pins::new(&scratch.0, "fx0");
    let config = Config::parse(&config_text("nat")).expect("the fixture config");
    let servers = config.home_servers();
    let service: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let origin =
        |port: u16| Origin { client: SocketAddr::new("10.0.0.2".parse().unwrap(), port), service, asks_rport: true };
    let (alice, bob, carol) = (aor("alice"), aor("bob"), aor("carol"));
    let before = {
        let mut dataplane = DataPlane::load_pinned(&pins, CLIENTS).unwrap();
        dataplane.configure_edge(&config).unwrap();
        let mut fast_path = FastPath::with_servers(dataplane, &config, &servers).unwrap();
        for (aor, port) in [(&alice, 7001), (&bob, 7002), (&carol, 7003)] {
            fast_path.install(aor, origin(port), 0).unwrap();
        }
        for port in [7001, 7001, 7002, 7003] {
            hit(fast_path.dataplane(), port);
        }
        // Another line on bob's socket: it stays bob's, shared.
        fast_path.install(&aor("erin"), origin(7002), 0).unwrap();
        entries(&mut fast_path)
    };

    let mut dataplane = DataPlane::load_pinned(&pins, CLIENTS).unwrap();
    assert!(dataplane.adopted());
    dataplane.configure_edge(&config).unwrap();
    let homes: HashMap<u64, (Aor, u32)> =
        [(&alice, 0), (&bob, 1)].into_iter().map(|(aor, slot)| (owner_of(aor), (aor.clone(), slot))).collect();
    let (mut fast_path, adopted) = FastPath::adopting(dataplane, &config, &servers, &homes).unwrap();
    assert_eq!(adopted, Adopted { kept: 1, repointed: 1, removed: 1 });
    // As the daemon does next: erin's AOR is gone, so is her line's port.
    fast_path.sync_aors(&[(&alice, 0), (&bob, 1)]).unwrap();
    let after = entries(&mut fast_path);
    let client = |port: u16| endpoint("10.0.0.2".parse().unwrap(), port);
    assert_eq!(after[&client(7001)], before[&client(7001)], "alice's entry as it was");
    assert_eq!(after[&client(7002)].server, 1, "bob's entry follows his move");
    assert_eq!(after[&client(7002)].nat_port_be, before[&client(7002)].nat_port_be, "on the same edge port");
    assert_eq!(after[&client(7002)].load_slot, before[&client(7002)].load_slot, "and the same load slot");
    assert_ne!(after[&client(7002)].flags & CLIENT_SHARED, 0, "and still shared with erin");
    for (port, packets) in [(7001, 2), (7002, 1)] {
        let counted = fast_path.dataplane().client_packets(after[&client(port)].load_slot).unwrap();
        assert_eq!(counted, packets, "the packets counted before the restart, for the client of port {port}");
    }
    assert!(!after.contains_key(&client(7003)), "carol's AOR is gone, and so is her entry");
    let statics = [5060, 5062, 5063, 5064, 5065].map(client);
    for key in statics {
        assert_eq!(after[&key].nat_port_be, before[&key].nat_port_be, "a static client keeps its port");
    }
    let replies = fast_path.dataplane().all_nat_replies().unwrap();
    let reply_clients: HashSet<Endpoint> = replies.iter().map(|(_, reply)| reply.client).collect();
    assert!(!reply_clients.contains(&client(7003)), "carol's reply entry went with her");
    assert_eq!(replies.len(), after.len(), "a reply entry for each client, none left over");
    let shared = fast_path.shared();
    assert_eq!(shared.get(SocketAddr::new("10.0.0.2".parse().unwrap(), 7002)).map(|r| r.server), Some(1));

    fast_path.install(&aor("dave"), origin(7004), 0).unwrap();
    let ports: Vec<u16> = entries(&mut fast_path).values().map(|e| e.nat_port_be).collect();
    let unique: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len(), "every client its own edge port: {ports:?}");
    let slots: Vec<u32> = entries(&mut fast_path).values().map(|e| e.load_slot).collect();
    let unique: HashSet<u32> = slots.iter().copied().collect();
    assert_eq!(unique.len(), slots.len(), "every client its own load slot: {slots:?}");
    let dave = entries(&mut fast_path)[&client(7004)].load_slot;
    assert_eq!(dave, before[&client(7003)].load_slot, "dave gets the slot carol's removal freed");
    assert_eq!(fast_path.dataplane().client_packets(dave).unwrap(), 0, "without carol's packet");
}

/// A dsr edge's AOR routes (`AORS`, read by the program for requests
/// from upstream proxies) are pinned with the clients; a second daemon
/// keeps exactly the routes its store has, a move rewrites a route in
/// place, a withdrawal or an expiry removes it. A nat edge routes only a
/// shared socket's other lines (`shared_sockets.rs`).
#[test]
fn aor_routes_are_pinned_and_kept_as_the_store_has_them() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("dsr");
    let pins = Pins::new(&scratch.0, "fx0");
    let config = Config::parse(&config_text("dsr")).expect("the fixture config");
    let servers = config.home_servers();
    let (alice, bob, carol) = (aor("alice"), aor("bob"), aor("carol"));
    {
        let mut dataplane = DataPlane::load_pinned(&pins, CLIENTS).unwrap();
        dataplane.configure_edge(&config).unwrap();
        let mut fast_path = FastPath::with_servers(dataplane, &config, &servers).unwrap();
        fast_path.route_aors(&[(&alice, 0), (&bob, 0), (&carol, 0)]).unwrap();
    }
    let mut dataplane = DataPlane::load_pinned(&pins, CLIENTS).unwrap();
    assert!(dataplane.adopted());
    dataplane.configure_edge(&config).unwrap();
    let (mut fast_path, _) = FastPath::adopting(dataplane, &config, &servers, &HashMap::new()).unwrap();
    assert_eq!(aor_routes(&mut fast_path).len(), 3, "the AOR routes were pinned");
    fast_path.sync_aors(&[(&alice, 0), (&bob, 1)]).unwrap();
    assert_eq!(
        aor_routes(&mut fast_path),
        HashMap::from([(hash_of(&alice), 0), (hash_of(&bob), 1)]),
        "as the store has them"
    );
    fast_path.repoint_many(&[(&bob, 0)]).unwrap();
    assert_eq!(aor_routes(&mut fast_path).get(&hash_of(&bob)), Some(&0), "a moved AOR's route follows it in place");
    fast_path.withdraw_many(std::slice::from_ref(&bob)).unwrap();
    assert_eq!(aor_routes(&mut fast_path).get(&hash_of(&bob)), None, "a withdrawn AOR's route is gone");
    fast_path.forget_many(std::slice::from_ref(&alice)).unwrap();
    assert_eq!(aor_routes(&mut fast_path).get(&hash_of(&alice)), None, "an expired AOR's route is removed");
}

/// A throttle outlives its daemon: the next one, adopting the pinned
/// `THROTTLED`, has the program look first contacts up there again
/// (`CONFIG_THROTTLING`) while the throttle has not lifted.
#[test]
fn a_second_daemon_keeps_a_throttle_that_has_not_lifted() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("throttle");
    let pins = Pins::new(&scratch.0, "fx0");
    let config = Config::parse(&config_text("dsr")).expect("the fixture config");
    {
        let mut dataplane = DataPlane::load_pinned(&pins, CLIENTS).unwrap();
        dataplane.configure_edge(&config).unwrap();
        assert_eq!(first_contact(&mut dataplane), XDP_PASS, "nothing throttled yet");
        let prefix = source_prefix(&endpoint("10.0.0.2".parse().unwrap(), 0));
        let hour_from_now = monotonic_ns() + 3_600_000_000_000;
        dataplane.throttle(&[prefix], Throttle::new(hour_from_now, 0)).unwrap();
        assert_eq!(first_contact(&mut dataplane), XDP_DROP, "throttled");
    }
    let mut dataplane = DataPlane::load_pinned(&pins, CLIENTS).unwrap();
    assert!(dataplane.adopted());
    dataplane.configure_edge(&config).unwrap();
    assert_eq!(first_contact(&mut dataplane), XDP_DROP, "the adopted throttle still holds");
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The verdict on a datagram from an unknown client of 10.0.0.2's /24.
fn first_contact(dataplane: &mut DataPlane) -> u32 {
    run(dataplane, &Datagram::new("10.0.0.2:7777", "192.0.2.10:5060"))
}

/// One datagram from 10.0.0.2:`port` to the service through the program
/// (BPF_PROG_TEST_RUN): a hit counts in the client's load slot before any
/// route is looked up, so no namespace is needed. A response, which the
/// program never reads: the entry takes it whatever AOR it was installed
/// for.
fn hit(dataplane: &mut DataPlane, port: u16) {
    let response = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
    run(dataplane, &Datagram::new(&format!("10.0.0.2:{port}"), "192.0.2.10:5060").with(|d| d.payload = response));
}

/// `datagram` from the client's MAC through the program; its verdict.
fn run(dataplane: &mut DataPlane, datagram: &Datagram) -> u32 {
    let frame = ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet());
    let options = TestRunOptions { data_in: Some(&frame), ..Default::default() };
    dataplane.program(REDIRECTOR_PROGRAM).unwrap().test_run(options).expect("BPF_PROG_TEST_RUN").return_value
}

fn aor(user: &str) -> Aor {
    Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
}

fn entries(fast_path: &mut FastPath) -> HashMap<Endpoint, ClientEntry> {
    fast_path.dataplane().all_clients().unwrap().into_iter().collect()
}

/// The kernel's AOR routes: hash → home slot.
fn aor_routes(fast_path: &mut FastPath) -> HashMap<u64, u32> {
    fast_path.dataplane().all_aor_routes().unwrap().into_iter().map(|(hash, route)| (hash, route.server)).collect()
}
