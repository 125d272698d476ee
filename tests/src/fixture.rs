//! BPF_PROG_TEST_RUN fixtures: the real program, loaded and configured the
//! way `redirector run` does it, run on one frame at a time inside a
//! namespace whose FIB and neighbour table are fixed, so the next hop and
//! hence every output byte is known in advance.
//!
//! Topology (namespace `rdr-fx-*`):
//! * `fx0` (MAC `EDGE_MAC`): 10.0.0.1/24, fd00::1/64 — the edge interface.
//!   Permanent neighbours: client 10.0.0.2 / fd00::2 (`CLIENT_MAC`), home1
//!   10.0.0.11 / fd00::11 (`HOME1_MAC`), home2 10.0.0.12, home3 10.0.0.13.
//!   home4 10.0.0.99 has a route but no neighbour (a FIB miss).
//! * `fx2` (MAC `OTHER_EDGE_MAC`): 10.1.0.1/24 with home5 10.1.0.5
//!   (`HOME5_MAC`) behind it — reached by `XDP_REDIRECT`.

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use std::time::Duration;

use redirector::{
    config::Config,
    kernel::{
        fast_path::{Adopted, FastPath, owner_of},
        hops::{Destination, Keeper, Sources},
        loader::{DataPlane, decode_event},
        netlink::Tables,
        pins::Pins,
    },
    sip::Aor,
};
use redirector_ebpf::{Counter, Event, MAX_SERVERS, REDIRECTOR_PROGRAM};

use crate::{netns::NetNs, packets::Mac};

pub const EDGE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const OTHER_EDGE_MAC: Mac = [0x02, 0, 0, 0, 0, 0xf2];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const HOME1_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
pub const HOME2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x12];
pub const HOME5_MAC: Mac = [0x02, 0, 0, 0, 0, 0x15];

/// Room in the client maps: the fixtures pin a handful of clients, and the
/// full `MAX_CLIENTS` would take hundreds of MB of kernel memory per load.
const CLIENT_CAPACITY: u32 = 1024;

/// Clients and the home server each is pinned to.
const CLIENTS: &str = r#"
[[clients]]
address = "10.0.0.2:5060"
server = "home1"
[[clients]]
address = "[fd00::2]:5060"
server = "home1"
[[clients]]
address = "10.0.0.2:5062"
server = "home2"
[[clients]]
address = "10.0.0.2:5063"
server = "home3"
[[clients]]
address = "10.0.0.2:5064"
server = "home4"
[[clients]]
address = "10.0.0.2:5065"
server = "home5"
"#;

pub fn config_text(mode: &str) -> String {
    format!(
        r#"
interface = "fx0"
mode = "{mode}"
[service]
addresses = ["192.0.2.10", "2001:db8::10"]
ports = [5060]
[edge]
ipv4 = "10.0.0.1"
ipv6 = "fd00::1"
[[servers]]
name = "home1"
ipv4 = "10.0.0.11"
ipv6 = "fd00::11"
[[servers]]
name = "home2"
ipv4 = "10.0.0.12"
state = "draining"
[[servers]]
name = "home3"
ipv4 = "10.0.0.13"
state = "down"
[[servers]]
name = "home4"
ipv4 = "10.0.0.99"
[[servers]]
name = "home5"
ipv4 = "10.1.0.5"
{CLIENTS}"#
    )
}

pub struct Fixture {
    pub ns: NetNs,
    pub fast_path: FastPath,
    pub ifindex: u32,
    /// Every address of every home server in the config, in its slot.
    pub destinations: Vec<Destination>,
    sources: Sources,
    /// The program's event ring, once a table has taken it.
    events: Option<RingBuf<MapData>>,
}

/// A scratch directory for pins (bpffs is mounted there by the first
/// pinned load), with whatever is mounted on it unmounted on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("redirector-pins-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the program did with one frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
}

impl Fixture {
    /// `mode` is "dsr" or "nat".
    pub fn new(mode: &str) -> Self {
        Self::with_config(&config_text(mode))
    }

    /// A fixture whose edge has the config `text` (`config_text` and more).
    pub fn with_config(text: &str) -> Self {
        let dataplane = DataPlane::load_with_client_capacity(CLIENT_CAPACITY).expect("loading the XDP object");
        Self::with_dataplane(text, dataplane)
    }

    /// As `new`, its maps pinned under `pins`, for `restart` to adopt.
    pub fn pinned(mode: &str, pins: &Pins) -> Self {
        let dataplane = DataPlane::load_pinned(pins, CLIENT_CAPACITY).expect("loading the XDP object, pinned");
        Self::with_dataplane(&config_text(mode), dataplane)
    }

    /// A daemon restart on a `pinned` fixture: a second `FastPath` adopts
    /// the pinned maps as the daemon does (`adopting`, then `sync_aors`),
    /// with the store assigning `homes` (AOR, server slot), and takes the
    /// first one's place.
    pub fn restart(&mut self, mode: &str, pins: &Pins, homes: &[(&Aor, u32)]) -> Adopted {
        let config = Config::parse(&config_text(mode)).expect("fixture config");
        let mut dataplane = DataPlane::load_pinned(pins, CLIENT_CAPACITY).expect("adopting the pinned maps");
        assert!(dataplane.adopted(), "the first fast path's maps");
        dataplane.configure(&config).expect("configuring maps");
        let by_owner = homes.iter().map(|&(aor, slot)| (owner_of(aor), (aor.clone(), slot))).collect();
        let (mut fast_path, adopted) =
            FastPath::adopting(dataplane, &config, &config.home_servers(), &by_owner).expect("adopting");
        fast_path.sync_aors(homes).expect("syncing the AOR routes");
        self.fast_path = fast_path;
        adopted
    }

    fn with_dataplane(text: &str, mut dataplane: DataPlane) -> Self {
        let ns = NetNs::new("rdr-fx");
        ns.ip("link add fx0 address 02:00:00:00:00:01 type veth peer name fx1");
        ns.ip("link add fx2 address 02:00:00:00:00:f2 type veth peer name fx3");
        for link in ["fx0", "fx1", "fx2", "fx3"] {
            ns.ip(&format!("link set {link} up"));
        }
        ns.ip("addr add 10.0.0.1/24 dev fx0");
        ns.ip("addr add fd00::1/64 dev fx0 nodad");
        ns.ip("addr add 10.1.0.1/24 dev fx2");
        for (addr, mac) in [
            ("10.0.0.2", CLIENT_MAC),
            ("fd00::2", CLIENT_MAC),
            ("10.0.0.11", HOME1_MAC),
            ("fd00::11", HOME1_MAC),
            ("10.0.0.12", HOME2_MAC),
            ("10.0.0.13", [0x02, 0, 0, 0, 0, 0x13]),
        ] {
            ns.ip(&format!("neigh replace {addr} lladdr {} dev fx0 nud permanent", mac_text(mac)));
        }
        ns.ip(&format!("neigh replace 10.1.0.5 lladdr {} dev fx2 nud permanent", mac_text(HOME5_MAC)));
        ns.ip("route add 10.0.0.99/32 dev fx0");
        for setting in ["net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1"] {
            ns.sysctl(setting);
        }
        let config = Config::parse(text).expect("fixture config");
        dataplane.configure(&config).expect("configuring maps");
        let fast_path = FastPath::new(dataplane, &config).expect("installing static clients");
        let ifindex = ns.ifindex("fx0");
        let destinations = Destination::of_servers(&config.home_servers());
        let sources = Sources { v4: config.edge.ipv4, v6: config.edge.ipv6 };
        Self { ns, fast_path, ifindex, destinations, sources, events: None }
    }

    /// Takes the program's kept next hops and fills them as the daemon's
    /// keeper does in nat mode (home servers' and replies'), from this
    /// namespace's tables, vouched for `lease`.
    pub fn keep_hops(&mut self, lease: Duration) -> Keeper {
        let maps = self.dataplane().take_hops().expect("taking the hop maps");
        let tables = {
            let _inside = self.ns.enter();
            Tables::open().expect("an rtnetlink socket")
        };
        let mut keeper = Keeper::new(maps, tables, self.sources, lease).keeping_replies();
        keeper.recompute(&self.destinations).expect("resolving next hops");
        keeper.renew().expect("publishing the hop state");
        keeper
    }

    /// Runs `frame` through the redirector program as if it arrived on fx0.
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        self.run_program(REDIRECTOR_PROGRAM, frame)
    }

    pub fn run_program(&mut self, program: &'static str, frame: &[u8]) -> Outcome {
        let ctx_bytes = self.xdp_md(frame);
        let mut out = vec![0u8; frame.len() + 256];
        let _inside = self.ns.enter();
        let program = self.fast_path.dataplane().program(program).expect("program");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_bytes),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        Outcome { action: result.return_value, frame: out }
    }

    pub fn dataplane(&mut self) -> &mut DataPlane {
        self.fast_path.dataplane()
    }

    /// The `xdp_md` context BPF_PROG_TEST_RUN wants: the frame arriving on fx0.
    pub fn xdp_md(&self, frame: &[u8]) -> Vec<u8> {
        // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let ctx = [0, frame.len() as u32, 0, self.ifindex, 0, 0];
        ctx.iter().flat_map(|word| word.to_ne_bytes()).collect()
    }

    pub fn counter(&mut self, counter: Counter) -> u64 {
        self.fast_path.dataplane().counter(counter).expect("reading counters")
    }

    /// Every counter's value, to check that exactly one moved.
    pub fn counters(&mut self) -> Vec<(Counter, u64)> {
        self.fast_path.dataplane().counters().expect("reading counters")
    }
}

pub fn mac_text(mac: Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One row of a fixture table, as in Katran's `KatranTestFixtures`: a frame
/// in, the verdict and exact frame out, and the one counter it moves.
pub struct Case {
    pub name: String,
    pub program: &'static str,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
    pub counter: Counter,
    /// The home server slot whose stats move, by one packet of the input's
    /// length; no slot moves when `None`.
    pub server: Option<u32>,
    /// The one event reported; none when `None`.
    pub event: Option<Event>,
}

impl Case {
    pub fn new(name: impl Into<String>, input: Vec<u8>, verdict: u32, output: Vec<u8>, counter: Counter) -> Self {
        let name = name.into();
        Self { name, program: REDIRECTOR_PROGRAM, input, verdict, output, counter, server: None, event: None }
    }

    /// The frame leaves as it came, with `verdict`.
    pub fn untouched(name: impl Into<String>, input: Vec<u8>, verdict: u32, counter: Counter) -> Self {
        let output = input.clone();
        Self::new(name, input, verdict, output, counter)
    }

    pub fn forwarded_to(self, slot: u32) -> Self {
        Self { server: Some(slot), ..self }
    }

    pub fn reporting(self, event: Event) -> Self {
        Self { event: Some(event), ..self }
    }

    pub fn on_program(self, program: &'static str) -> Self {
        Self { program, ..self }
    }
}

impl Fixture {
    /// Runs every case in order; one line per failed case, naming it and
    /// each check it failed.
    pub fn run_table(&mut self, cases: &[Case]) -> Vec<String> {
        let mut events = match self.events.take() {
            Some(events) => events,
            None => self.dataplane().take_events().expect("taking the event ring"),
        };
        let failures = cases.iter().filter_map(|case| self.run_case(case, &mut events)).collect();
        self.events = Some(events);
        failures
    }

    fn run_case(&mut self, case: &Case, events: &mut RingBuf<MapData>) -> Option<String> {
        let (counters, stats) = (self.counters(), self.all_server_stats());
        let outcome = self.run_program(case.program, &case.input);
        let mut failures = Vec::new();
        if outcome.action != case.verdict {
            failures.push(format!("verdict {} (expected {})", outcome.action, case.verdict));
        }
        failures.extend(frame_difference(&outcome.frame, &case.output));
        failures.extend(counter_moves(&counters, &self.counters(), case.counter));
        let expected_stats = case.server.map(|slot| (slot, case.input.len() as u64));
        failures.extend(server_stats_moves(&stats, &self.all_server_stats(), expected_stats));
        failures.extend(event_difference(events, case.event));
        (!failures.is_empty()).then(|| format!("{}: {}", case.name, failures.join("; ")))
    }

    /// Every server slot's (packets, bytes).
    fn all_server_stats(&mut self) -> Vec<(u64, u64)> {
        (0..MAX_SERVERS)
            .map(|slot| {
                let stats = self.dataplane().server_stats(slot).expect("reading server stats");
                (stats.packets, stats.bytes)
            })
            .collect()
    }
}

/// Where the output first differs from the expected frame, if it does.
fn frame_difference(got: &[u8], expected: &[u8]) -> Option<String> {
    if got == expected {
        return None;
    }
    let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
    Some(format!(
        "output differs at byte {at} (got {:02x?}, expected {:02x?}; lengths {} and {})",
        got.get(at),
        expected.get(at),
        got.len(),
        expected.len()
    ))
}

/// What the program reported, if it is not exactly `expected`.
fn event_difference(events: &mut RingBuf<MapData>, expected: Option<Event>) -> Option<String> {
    let reported: Vec<_> = std::iter::from_fn(|| events.next().map(|item| decode_event(&item))).collect();
    let wanted: Vec<_> = expected.into_iter().map(Some).collect();
    (reported != wanted).then(|| format!("events {reported:?} (expected {wanted:?})"))
}

/// Every counter that did not move as expected: `counter` by one, the rest not at all.
fn counter_moves(before: &[(Counter, u64)], after: &[(Counter, u64)], counter: Counter) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .filter(|((name, was), (_, now))| now - was != u64::from(*name == counter))
        .map(|((name, was), (_, now))| {
            format!(
                "counter {} moved by {} (expected only {} to move, by one)",
                name.label(),
                now - was,
                counter.label()
            )
        })
        .collect()
}

/// Every server slot whose stats did not move as expected: `expected`'s
/// slot by one packet of its bytes, the rest not at all.
fn server_stats_moves(before: &[(u64, u64)], after: &[(u64, u64)], expected: Option<(u32, u64)>) -> Vec<String> {
    (0..before.len())
        .filter_map(|slot| {
            let moved = (after[slot].0 - before[slot].0, after[slot].1 - before[slot].1);
            let wanted = match expected {
                Some((expected_slot, bytes)) if expected_slot as usize == slot => (1, bytes),
                _ => (0, 0),
            };
            (moved != wanted).then(|| format!("server slot {slot} moved by {moved:?} (expected {wanted:?})"))
        })
        .collect()
}
