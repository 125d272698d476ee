//! The fast path's batched map writes (BPF_MAP_UPDATE_BATCH and
//! BPF_MAP_DELETE_BATCH, which aya lacks): every entry lands as one write
//! at a time would put it, and a withdrawal skips entries the kernel no
//! longer holds.

use std::net::{Ipv4Addr, SocketAddr};

use redirector::{
    config::Config,
    kernel::{
        fast_path::FastPath,
        loader::{DataPlane, endpoint},
    },
    sip::Aor,
};
use redirector_tests::privileged;

const CONFIG: &str = r#"
interface = "lo"
mode = "nat"
[service]
addresses = ["192.0.2.10"]
[edge]
ipv4 = "10.77.0.1"
[[servers]]
name = "home0"
ipv4 = "10.77.0.11"
[[servers]]
name = "home1"
ipv4 = "10.77.0.12"
"#;

const CLIENTS: u32 = 3000;

fn aor(i: u32) -> Aor {
    Aor::from_canonical(format!("sip:u{i}@batch.example"))
}

fn client(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0x0a00_0001 + i).into(), 5060)
}

#[test]
fn batched_moves_write_and_remove_every_entry() {
    if !privileged() {
        return;
    }
    let config = Config::parse(CONFIG).unwrap();
    let mut dataplane = DataPlane::load_with_client_capacity(8192).expect("loading the XDP object");
    dataplane.configure(&config).unwrap();
    let mut fast_path = FastPath::new(dataplane, &config).unwrap();
    let service: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    for i in 0..CLIENTS {
        fast_path.install(&aor(i), client(i), 0, service).unwrap();
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
        assert_eq!(fast_path.installed(&aor(i)), [key]);
    }
}

/// The nat port of client `i`'s kernel entry (0 without one).
fn nat_port(fast_path: &mut FastPath, i: u32) -> u16 {
    let key = endpoint(client(i).ip(), client(i).port());
    fast_path.dataplane().client(key).unwrap().map_or(0, |entry| u16::from_be(entry.nat_port_be))
}
