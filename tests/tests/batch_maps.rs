//! The fast path's batched map writes (BPF_MAP_UPDATE_BATCH and
//! BPF_MAP_DELETE_BATCH, which aya lacks): every entry lands as one write
//! at a time would put it, and a withdrawal skips entries the kernel no
//! longer holds.

use std::net::SocketAddr;

use redirector::{
    kernel::{
        fast_path::FastPath,
        loader::{DataPlane, endpoint},
    },
    model::Origin,
    sip::Aor,
};
use redirector_ebpf::{CLIENT_ADDS_RPORT, CLIENT_CHECKS_REGISTER};
use redirector_tests::{
    population::{aor, client, config, service},
    privileged,
};

const CLIENTS: u32 = 3000;

#[test]
fn batched_moves_write_and_remove_every_entry() {
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
    let aors: Vec<Aor> = (0..CLIENTS).map(aor).collect();
    let ports: Vec<u16> = (0..CLIENTS).map(|i| nat_port(&mut fast_path, i)).collect();
    assert!(ports.iter().all(|port| *port >= 20000), "every client has its nat port");
    // Entries the LRU (or anyone) removed meanwhile must not stop the batch.
    for i in [0, 1, 1500, CLIENTS - 1] {
        fast_path.dataplane().remove_client(endpoint(client(i).ip(), client(i).port())).unwrap();
    }
    let withdrawn = fast_path.withdraw_many(&aors).unwrap();
    for i in (0..CLIENTS).step_by(97) {
        let key = endpoint(client(i).ip(), client(i).port());
        assert_eq!(fast_path.dataplane().client(key).unwrap(), None, "client {i} withdrawn");
    }
    fast_path.restore_many(withdrawn.into_iter().map(|w| (w, 1)).collect()).unwrap();
    for i in 0..CLIENTS {
        let key = endpoint(client(i).ip(), client(i).port());
        let entry = fast_path.dataplane().client(key).unwrap().unwrap_or_else(|| panic!("client {i} restored"));
        assert_eq!(entry.server, 1, "client {i} points at its new server");
        assert_eq!(u16::from_be(entry.nat_port_be), ports[i as usize], "client {i} keeps its nat port");
        let adds_rport = entry.flags & CLIENT_ADDS_RPORT != 0;
        assert_eq!(adds_rport, !origin(i, service).asks_rport, "client {i} keeps whether the kernel adds rport");
        assert_eq!(fast_path.installed(&aor(i)), [key]);
    }
}

/// Client `i`, whose Via asks for rport when `i` is even.
fn origin(i: u32, service: SocketAddr) -> Origin {
    Origin { client: client(i), service, asks_rport: i.is_multiple_of(2), aor_hash: 0 }
}

/// The nat port of client `i`'s kernel entry (0 without one).
fn nat_port(fast_path: &mut FastPath, i: u32) -> u16 {
    let key = endpoint(client(i).ip(), client(i).port());
    fast_path.dataplane().client(key).unwrap().map_or(0, |entry| u16::from_be(entry.nat_port_be))
}

/// A socket with two lines follows the last one installed; a move of the
/// other line restores neither that line's home nor its REGISTER hash onto
/// it, while a move of the line it is on keeps the line's hash.
#[test]
fn a_move_restores_a_shared_socket_only_for_the_line_it_is_on() {
    if !privileged() {
        return;
    }
    let config = config("dsr");
    let mut dataplane = DataPlane::load_with_client_capacity(1024).expect("loading the XDP object");
    dataplane.configure(&config).unwrap();
    let mut fast_path = FastPath::new(dataplane, &config).unwrap();
    let socket = Origin { client: client(0), service: service(), asks_rport: true, aor_hash: 0 };
    let (line1, line2) = (aor(1), aor(2));
    fast_path.install(&line1, Origin { aor_hash: 11, ..socket }, 0).unwrap();
    fast_path.install(&line2, Origin { aor_hash: 22, ..socket }, 1).unwrap();
    let key = endpoint(client(0).ip(), client(0).port());
    let entry = |fast_path: &mut FastPath| fast_path.dataplane().client(key).unwrap();

    let withdrawn = fast_path.withdraw_many(std::slice::from_ref(&line1)).unwrap();
    fast_path.restore_many(withdrawn.into_iter().map(|w| (w, 2)).collect()).unwrap();
    assert_eq!(entry(&mut fast_path), None, "line1's move leaves line2's socket off the fast path");

    fast_path.install(&line2, Origin { aor_hash: 22, ..socket }, 1).unwrap();
    let withdrawn = fast_path.withdraw_many(std::slice::from_ref(&line2)).unwrap();
    fast_path.restore_many(withdrawn.into_iter().map(|w| (w, 2)).collect()).unwrap();
    let entry = entry(&mut fast_path).expect("line2's move puts its socket back");
    assert_eq!((entry.server, entry.aor_hash), (2, 22), "at line2's new home, with line2's hash");
    assert_ne!(entry.flags & CLIENT_CHECKS_REGISTER, 0, "still checking REGISTERs");
}
