//! The fast path's batched map writes (BPF_MAP_UPDATE_BATCH and
//! BPF_MAP_DELETE_BATCH, which aya lacks): a move rewrites every entry in
//! place as one write at a time would, and a withdrawal skips entries the
//! kernel no longer holds; a batch that stops part way says how far it got, and a
//! map type without batches is written one entry at a time.

use std::{net::SocketAddr, os::fd::AsFd};

use aya::maps::{HashMap, IterableMap, Map, MapData, xdp::DevMap};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_DEVMAP;
use redirector::{
    kernel::{
        batch,
        fast_path::{FastPath, Installed},
        loader::{DataPlane, endpoint},
    },
    model::Origin,
    sip::Aor,
};
use redirector_ebpf::{CLIENT_CHECKS_REGISTER, CLIENT_SHARED, ClientEntry, NatEntry, aor::aor_hash};
use redirector_tests::{
    population::{aor, client, config, service},
    privileged,
};

const CLIENTS: u32 = 3000;

/// A move repoints entries in place, in one batched update: a moved
/// client's entry keeps every field but its server (and its last-seen
/// stamp, written anew), its reply entry follows it, one the LRU evicted
/// is written again, and the clients not moved keep their entries to the
/// byte. A withdrawal then removes entries in one batched delete, stepping
/// over the ones the kernel no longer holds.
#[test]
fn a_move_repoints_entries_in_place_and_a_withdrawal_removes_them() {
    if !privileged() {
        return;
    }
    let config = config("nat");
    let mut dataplane = DataPlane::load_with_client_capacity(8192).expect("loading the XDP object");
    dataplane.configure(&config).unwrap();
    let mut fast_path = FastPath::new(dataplane, &config).unwrap();
    let service = service();
    for i in 0..CLIENTS {
        fast_path.install(&aor(i), origin(i, service), 0).unwrap();
    }
    let key = |i: u32| endpoint(client(i).ip(), client(i).port());
    let before: Vec<ClientEntry> =
        (0..CLIENTS).map(|i| fast_path.dataplane().client(key(i)).unwrap().unwrap()).collect();
    assert!(before.iter().all(|entry| u16::from_be(entry.nat_port_be) >= 20000), "every client has its nat port");
    // Entries the LRU (or anyone) removed meanwhile must not stop the batch.
    let evicted = [0, 1, 1500, CLIENTS - 2];
    for i in evicted {
        fast_path.dataplane().remove_client(key(i)).unwrap();
    }
    let aors: Vec<Aor> = (0..CLIENTS).map(aor).collect();
    let moved = |i: u32| i.is_multiple_of(2);
    let repoints: Vec<(&Aor, u32)> = aors.iter().step_by(2).map(|aor| (aor, 1)).collect();
    fast_path.repoint_many(&repoints).unwrap();

    let replies: std::collections::HashMap<u16, NatEntry> = fast_path
        .dataplane()
        .all_nat_replies()
        .unwrap()
        .into_iter()
        .map(|(reply, entry)| (u16::from_be(reply.edge_port_be), entry))
        .collect();
    for i in 0..CLIENTS {
        let was = before[i as usize];
        let entry = fast_path.dataplane().client(key(i)).unwrap();
        let reply = replies[&u16::from_be(was.nat_port_be)];
        if !moved(i) {
            let expected = (!evicted.contains(&i)).then_some(was);
            assert_eq!(entry, expected, "client {i}, not moved, is untouched");
            assert_eq!(reply.server, 0, "client {i}'s replies still come from its server");
            continue;
        }
        let entry = entry.unwrap_or_else(|| panic!("client {i} repointed"));
        assert_eq!(
            ClientEntry { server: 0, last_seen_ns: was.last_seen_ns, ..entry },
            was,
            "client {i} keeps its fields"
        );
        assert_eq!(entry.server, 1, "client {i} points at its new server");
        assert_eq!((reply.client, reply.server), (key(i), 1), "client {i}'s replies come from its new server");
        assert_eq!(fast_path.shared().get(client(i)).map(|route| route.server), Some(1), "first contact's copy");
        assert_eq!(fast_path.installed(&aor(i)), [key(i)]);
    }

    let withdrawn = fast_path.withdraw_many(&aors[..CLIENTS as usize / 2]).unwrap();
    assert_eq!(withdrawn.len(), CLIENTS as usize / 2, "every recorded client withdrawn");
    for i in 0..CLIENTS {
        let held = fast_path.dataplane().client(key(i)).unwrap().is_some();
        let gone = i < CLIENTS / 2 || (evicted.contains(&i) && !moved(i));
        assert_eq!(held, !gone, "client {i}");
        assert_eq!(fast_path.shared().get(client(i)).is_some(), !gone, "client {i} in first contact's copy");
    }
}

/// Client `i`, whose Via asks for rport when `i` is even.
/// More assigned AORs than `AORS` holds (the store outgrew
/// `max_clients`): the daemon still starts and routes what fits, a move
/// rewrites a held route in place although the map is full, and an AOR
/// whose route the kernel refused has none, never another home's.
#[test]
fn a_full_aor_map_routes_what_fits_and_names_no_stale_home() {
    if !privileged() {
        return;
    }
    const CAPACITY: u32 = 64;
    let dsr = config("dsr");
    let mut dataplane = DataPlane::load_with_client_capacity(CAPACITY).expect("loading the XDP object");
    dataplane.configure(&dsr).unwrap();
    let mut fast_path = FastPath::new(dataplane, &dsr).unwrap();
    let aors: Vec<Aor> = (0..CAPACITY * 2).map(aor).collect();
    let routes: Vec<(&Aor, u32)> = aors.iter().map(|aor| (aor, 0)).collect();
    fast_path.sync_aors(&routes).expect("a full map is no reason not to start");
    let held = aor_routes(&mut fast_path);
    assert_eq!(held.len(), CAPACITY as usize, "as many routes as the map holds");
    assert!(held.values().all(|&server| server == 0));
    let routed = aors.iter().find(|aor| held.contains_key(&hash_of(aor))).unwrap();
    let refused = aors.iter().find(|aor| !held.contains_key(&hash_of(aor))).unwrap();
    fast_path.repoint_many(&[(routed, 1), (refused, 1)]).unwrap();
    let after = aor_routes(&mut fast_path);
    assert_eq!(after.get(&hash_of(routed)), Some(&1), "a held route follows its move in the full map");
    assert_eq!(after.get(&hash_of(refused)), None, "a refused route stays out");
    assert_eq!(after.len(), CAPACITY as usize);

    let mut nat = DataPlane::load_with_client_capacity(CAPACITY).expect("loading the XDP object");
    let nat_config = config("nat");
    nat.configure(&nat_config).unwrap();
    let mut fast_path = FastPath::new(nat, &nat_config).unwrap();
    fast_path.sync_aors(&routes).unwrap();
    assert!(aor_routes(&mut fast_path).is_empty(), "nat never reads AORS, so nothing is written to it");
}

fn hash_of(aor: &Aor) -> u64 {
    aor_hash(aor.as_str().as_bytes())
}

/// The kernel's AOR routes: hash → home slot.
fn aor_routes(fast_path: &mut FastPath) -> std::collections::HashMap<u64, u32> {
    fast_path.dataplane().all_aor_routes().unwrap().into_iter().map(|(hash, route)| (hash, route.server)).collect()
}

fn origin(i: u32, service: SocketAddr) -> Origin {
    Origin { client: client(i), service, asks_rport: i.is_multiple_of(2) }
}

/// A socket installed for line1 that sends a request of line2 stays
/// line1's, marked shared: line2 never gets it (nor does its move touch
/// it), and a move of line1 carries the mark along.
#[test]
fn a_socket_shared_by_two_lines_stays_with_the_first_and_moves_with_it() {
    if !privileged() {
        return;
    }
    let config = config("dsr");
    let mut dataplane = DataPlane::load_with_client_capacity(1024).expect("loading the XDP object");
    dataplane.configure(&config).unwrap();
    let mut fast_path = FastPath::new(dataplane, &config).unwrap();
    let socket = Origin { client: client(0), service: service(), asks_rport: true };
    let (line1, line2) = (aor(1), aor(2));
    assert_eq!(fast_path.install(&line1, socket, 0).unwrap(), Installed::ForAor);
    assert_eq!(fast_path.install(&line2, socket, 1).unwrap(), Installed::Shared);
    let key = endpoint(client(0).ip(), client(0).port());
    let entry = |fast_path: &mut FastPath| fast_path.dataplane().client(key).unwrap().expect("the socket's entry");
    let line1_hash = aor_hash(line1.as_str().as_bytes());
    let shared = entry(&mut fast_path);
    assert_eq!((shared.server, shared.aor_hash), (0, line1_hash), "still at line1's home, with line1's hash");
    assert_eq!(shared.flags & (CLIENT_CHECKS_REGISTER | CLIENT_SHARED), CLIENT_CHECKS_REGISTER | CLIENT_SHARED);
    assert_eq!(fast_path.installed(&line2), [], "not line2's");
    assert_eq!(
        fast_path.shared().get(client(0)).map(|route| (route.aor_hash, route.shared)),
        Some((Some(line1_hash), true))
    );

    fast_path.repoint_many(&[(&line2, 2)]).unwrap();
    assert_eq!(entry(&mut fast_path).server, 0, "line2's move leaves the socket alone");

    fast_path.repoint_many(&[(&line1, 2)]).unwrap();
    let moved = entry(&mut fast_path);
    assert_eq!((moved.server, moved.aor_hash), (2, line1_hash), "at line1's new home, with line1's hash");
    assert_ne!(moved.flags & CLIENT_SHARED, 0, "still shared");
}

/// A hash map of 4 entries asked to take 6: the batch stops at the fifth
/// (the map is full) and says so, and exactly the first four are in the
/// map. A delete skips a key the map does not hold and removes the rest.
#[test]
fn a_batch_that_stops_part_way_says_how_far_it_got() {
    if !privileged() {
        return;
    }
    let map: HashMap<MapData, u32, u64> = HashMap::create(4, 0).expect("creating a hash map");
    let fd = map.map().fd().as_fd();
    let keys: Vec<u32> = (0..6).collect();
    let values: Vec<u64> = keys.iter().map(|key| u64::from(*key) * 10).collect();
    // SAFETY: the map's key and value types, u32 and u64.
    let error = unsafe { batch::update(fd, &keys, &values) }.expect_err("a full map refuses the fifth entry");
    assert_eq!((error.done, error.source.raw_os_error()), (4, Some(libc::E2BIG)), "{error}");
    assert_eq!(entries(&map), [(0, 0), (1, 10), (2, 20), (3, 30)]);
    // SAFETY: the map's key type, u32.
    unsafe { batch::delete(fd, &[1u32, 9, 3]) }.expect("deleting, 9 absent");
    assert_eq!(entries(&map), [(0, 0), (2, 20)]);
}

/// A device map has no batched update or delete (the kernel answers
/// ENOTSUPP): each entry is written or deleted with a call of its own,
/// to the same effect, and a write that stops part way (an index past the
/// map's end) says how far it got.
#[test]
fn a_map_without_batches_is_written_one_entry_at_a_time() {
    if !privileged() {
        return;
    }
    let definition = aya_obj::Map::new_from_params(BPF_MAP_TYPE_DEVMAP as u32, 4, 8, 4, 0);
    let data = MapData::create(definition, "batch_devmap", None).expect("creating a device map");
    let fd = data.fd().as_fd();
    // `struct bpf_devmap_val`: the loopback device's ifindex, no program.
    let loopback = [1u32, 0];
    // SAFETY: a device map's key and value types, u32 (index) and bpf_devmap_val.
    unsafe { batch::update(fd, &[0u32, 2, 3], &[loopback; 3]) }.expect("writing one entry at a time");
    // SAFETY: as above.
    let error = unsafe { batch::update(fd, &[1u32, 7], &[loopback; 2]) }.expect_err("index 7 is past the end");
    assert_eq!((error.done, error.source.raw_os_error()), (1, Some(libc::E2BIG)), "{error}");
    // SAFETY: the map's key type, u32.
    unsafe { batch::delete(fd, &[2u32]) }.expect("deleting one entry at a time");
    let map = DevMap::try_from(Map::DevMap(data)).expect("a device map");
    let held: Vec<u32> = (0..4).filter(|&index| map.get(index, 0).is_ok()).collect();
    assert_eq!(held, [0, 1, 3]);
}

/// The map's entries, sorted, as aya reads them (one call per entry).
fn entries(map: &HashMap<MapData, u32, u64>) -> Vec<(u32, u64)> {
    let mut entries: Vec<_> = map.iter().map(|entry| entry.expect("reading the map")).collect();
    entries.sort_unstable();
    entries
}
