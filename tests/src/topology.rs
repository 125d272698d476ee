//! A small SIP pool in network namespaces: a client, an edge and home
//! servers on one bridge (itself in a namespace, so the host is untouched).
//!
//! ```text
//!  client 10.77.0.2   fd00:77::2  ─┐
//!  edge   10.77.0.1   fd00:77::1  ─┼─ br0 (namespace "lan")
//!  homeN  10.77.0.1N  fd00:77::1N ─┘
//!  service 192.0.2.10:5060 and [2001:db8::10]:5060 (on the edge's and homes' lo)
//! ```
//! Every host has both families; the edge's config uses those of
//! `Topology::families` (IPv4 unless a test asks otherwise). The edge runs
//! `redirector run` on `e0`; in dsr mode each home runs `redirector decap`
//! on its interface, with the service addresses on lo.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

pub const SERVICE: &str = "192.0.2.10:5060";
pub const EDGE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The IPv6 service address (documentation prefix) and the bridge's ULA
/// prefix, fd00:77::/64, numbered as the IPv4 hosts are.
pub const SERVICE_V6: &str = "[2001:db8::10]:5060";
pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x2);

/// An address family of the pool: which service address, edge, client and
/// home addresses a config or a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn service(self) -> SocketAddr {
        match self {
            Family::V4 => SERVICE,
            Family::V6 => SERVICE_V6,
        }
        .parse()
        .expect("a service socket address")
    }

    pub fn edge(self) -> IpAddr {
        match self {
            Family::V4 => EDGE.into(),
            Family::V6 => EDGE_V6.into(),
        }
    }

    pub fn client(self) -> IpAddr {
        match self {
            Family::V4 => CLIENT.into(),
            Family::V6 => CLIENT_V6.into(),
        }
    }

    /// A pool of this family alone, as `Topology::families` takes it.
    pub fn only(self) -> &'static [Family] {
        match self {
            Family::V4 => &[Family::V4],
            Family::V6 => &[Family::V6],
        }
    }

    pub fn home(self, index: usize) -> IpAddr {
        match self {
            Family::V4 => home_address(index).into(),
            Family::V6 => home_address_v6(index).into(),
        }
    }

    /// The config key of an address of this family (`[edge]`, `[[servers]]`).
    fn config_key(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// The host prefix length of the family, for addresses on lo.
    pub(crate) fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Where a home server listens for clients of `family`: the service
/// address in dsr mode (packets arrive addressed to it and replies must come
/// from it), any address in nat mode (the edge rewrites the destination to
/// the home's own address).
pub fn home_listen_address(mode: &str, family: Family) -> String {
    let any = match family {
        Family::V4 => "0.0.0.0:5060",
        Family::V6 => "[::]:5060",
    };
    if mode == "dsr" { family.service().to_string() } else { any.to_owned() }
}

/// The index of the home server named `name` (`homeN`, as `config` names
/// them).
pub fn home_index(name: &str) -> usize {
    name.strip_prefix("home").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no home server {name:?}"))
}

pub fn home_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + index as u8)
}

pub fn home_address_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x11 + index as u16)
}

/// A host on the bridge: its interface's MAC ends in `mac_tail`.
#[derive(Clone, Copy)]
pub(crate) struct Station {
    pub(crate) v4: Ipv4Addr,
    pub(crate) v6: Ipv6Addr,
    pub(crate) mac_tail: u8,
}

impl Station {
    pub(crate) fn address(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.v4.into(),
            Family::V6 => self.v6.into(),
        }
    }
}

const EDGE_STATION: Station = Station { v4: EDGE, v6: EDGE_V6, mac_tail: 0x01 };
pub(crate) const CLIENT_STATION: Station = Station { v4: CLIENT, v6: CLIENT_V6, mac_tail: 0x02 };

pub(crate) fn home_station(index: usize) -> Station {
    Station { v4: home_address(index), v6: home_address_v6(index), mac_tail: 0x11 + index as u8 }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    Native,
    Skb,
}

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Attach::Native => "native",
            Attach::Skb => "skb",
        }
    }
}

pub struct Topology {
    /// The edge's daemon and files (first, so dropped first: its daemon
    /// killed and its bpffs unmounted before the namespaces and `workdir` go).
    pub(crate) edge_host: EdgeHost,
    pub lan: NetNs,
    pub client: NetNs,
    pub edge: NetNs,
    pub homes: Vec<NetNs>,
    pub mode: &'static str,
    pub attach: Attach,
    /// The families of the edge's config (service addresses, edge and home
    /// server addresses) and of the registrars' sockets: set it before
    /// starting them.
    pub families: &'static [Family],
    /// Extra sections appended to the edge config.
    pub extra_config: String,
    /// Extra arguments of each home's `redirector decap` (by home index;
    /// none for homes past its end).
    pub decap_args: Vec<Vec<String>>,
    /// The registrar process of each home, when one runs.
    registrars: Vec<Option<Child>>,
    /// The `state` every home server is configured with.
    pub server_state: &'static str,
    /// How many of the last homes the config leaves out (for `servers add`).
    pub unlisted_homes: usize,
    /// `[sip] first_contact`: the design's 302 by Via, which most tests here
    /// exercise; `None` runs the daemon's default.
    pub first_contact: Option<&'static str>,
    /// Edges besides `edge` on the bridge, whose tunnels dsr homes accept too.
    pub(crate) other_edges: Vec<Station>,
    /// Decapsulators and pass programs; killed on drop if still running.
    daemons: Vec<Child>,
    /// Environment the edge daemon is started with (besides RUST_LOG).
    pub edge_env: Vec<(&'static str, String)>,
    workdir: tempdir::Dir,
    /// Held while the topology lives (declared last, so released last).
    _serial: File,
}

/// The edge config's health section unless `extra_config` brings one:
/// checks far apart (one round at start, which resolves the neighbours),
/// so a test that is not about health checks has no hidden time limit
/// after which home servers without a registrar are marked down.
const HEALTH_CHECKS_OFF: &str = "[health]\ninterval = 3600\n";

/// Takes the lock every end-to-end topology holds, so they run one at a
/// time. Cargo runs test binaries one after another but the tests inside a
/// binary in parallel; on two cores, namespaces full of daemons, SIPp and
/// Kamailio competing with each other turn every wait into a race. A file
/// lock (flock(2), per open file) also serialises against a second test
/// process on the machine.
pub fn serial() -> File {
    let path = std::env::temp_dir().join("redirector-e2e.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock(2) on a descriptor we own; it blocks until the lock is ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    file
}

impl Topology {
    /// Builds the namespaces and links, with static neighbour entries;
    /// nothing is attached yet.
    pub fn new(mode: &'static str, attach: Attach, homes: usize) -> Self {
        Self::build(mode, attach, homes, true)
    }

    /// As `new`, but every host resolves its neighbours itself (ARP).
    pub fn with_dynamic_neighbours(mode: &'static str, attach: Attach, homes: usize) -> Self {
        Self::build(mode, attach, homes, false)
    }

    fn build(mode: &'static str, attach: Attach, homes: usize, static_neighbours: bool) -> Self {
        let serial = serial();
        let lan = NetNs::new("rdr-lan");
        lan.ip("link add br0 type bridge");
        lan.ip("link set br0 up");
        let client = host(&lan, "rdr-client", "c", CLIENT_STATION);
        let edge = edge_namespace(&lan, "e", EDGE_STATION);
        for family in [Family::V4, Family::V6] {
            let service = family.service().ip();
            client.ip(&format!("route add {service}/{} via {}", family.host_prefix(), family.edge()));
        }
        let homes: Vec<NetNs> = (0..homes)
            .map(|i| {
                let home = host(&lan, "rdr-home", &format!("h{i}"), home_station(i));
                add_service_addresses(&home);
                // Decapsulated packets arrive on h0 from a client address.
                home.sysctl("net.ipv4.conf.all.rp_filter=0");
                home.sysctl(&format!("net.ipv4.conf.h{i}0.rp_filter=0"));
                home
            })
            .collect();
        // Static neighbours (the default): a burst sent before ARP resolves
        // would overflow the kernel's unresolved queue (~90 packets).
        if static_neighbours {
            let edge_neighbours: Vec<Station> =
                std::iter::once(CLIENT_STATION).chain((0..homes.len()).map(home_station)).collect();
            add_neighbours(&edge, "e0", &edge_neighbours);
            add_neighbours(&client, "c0", &[EDGE_STATION]);
            for (i, home) in homes.iter().enumerate() {
                add_neighbours(home, &format!("h{i}0"), &[EDGE_STATION, CLIENT_STATION]);
            }
        }
        let workdir = tempdir::Dir::new();
        Self {
            edge_host: EdgeHost::new("e0", EDGE_STATION, workdir.path()),
            lan,
            client,
            edge,
            homes,
            mode,
            attach,
            families: &[Family::V4],
            extra_config: String::new(),
            decap_args: Vec::new(),
            registrars: Vec::new(),
            server_state: "active",
            unlisted_homes: 0,
            first_contact: Some("by-via"),
            other_edges: Vec::new(),
            edge_env: Vec::new(),
            daemons: Vec::new(),
            workdir,
            _serial: serial,
        }
    }

    /// The edge config: every home server, and each client pinned to the
    /// home server of the given index. Health checks are off
    /// (`HEALTH_CHECKS_OFF`) unless `extra_config` has a `[health]` section.
    pub fn config(&self, clients: &[(SocketAddr, usize)]) -> String {
        self.config_of(&self.edge_host, clients)
    }

    /// `config` for the edge `host`: its interface, addresses and files.
    pub(crate) fn config_of(&self, host: &EdgeHost, clients: &[(SocketAddr, usize)]) -> String {
        let services: Vec<String> = self.families.iter().map(|f| format!("\"{}\"", f.service().ip())).collect();
        let mut text = format!(
            "interface = \"{}\"\nmode = \"{}\"\nattach = \"{}\"\n[service]\naddresses = [{}]\nports = [5060]\n[edge]\n{}",
            host.interface,
            self.mode,
            self.attach.name(),
            services.join(", "),
            self.addresses(|family| host.station.address(family))
        );
        for i in 0..self.homes.len() - self.unlisted_homes {
            text += &format!(
                "[[servers]]\nname = \"home{i}\"\n{}state = \"{}\"\n",
                self.addresses(|family| family.home(i)),
                self.server_state
            );
        }
        for (client, home) in clients {
            text += &format!("[[clients]]\naddress = \"{client}\"\nserver = \"home{home}\"\n");
        }
        text += &format!("[control]\nsocket = \"{}\"\n", host.control_socket().display());
        text += &format!("[sip]\ndatabase = \"{}\"\n", host.dir.join("assignments.redb").display());
        if let Some(policy) = self.first_contact {
            text += &format!("first_contact = \"{policy}\"\n");
        }
        if !self.extra_config.contains("[health]") {
            text += HEALTH_CHECKS_OFF;
        }
        // The edge pins its state in the topology's own bpffs.
        let bpffs = format!("[fast_path]\nbpffs = \"{}\"\n", host.bpffs().display());
        if self.extra_config.contains("[fast_path]\n") {
            text += &self.extra_config.replace("[fast_path]\n", &bpffs);
        } else {
            text += &self.extra_config;
            text += &bpffs;
        }
        text
    }

    /// A host's config lines `ipv4 = "…"` / `ipv6 = "…"`, one per family.
    fn addresses(&self, address: impl Fn(Family) -> IpAddr) -> String {
        self.families.iter().map(|&family| format!("{} = \"{}\"\n", family.config_key(), address(family))).collect()
    }

    /// Starts `redirector run` on the edge (after `prepare_edge`) and waits
    /// until the program is attached.
    pub fn start(&mut self, clients: &[(SocketAddr, usize)]) {
        self.prepare_edge();
        std::fs::write(self.config_path(), self.config(clients)).expect("writing the edge config");
        self.run_edge();
    }

    /// Where `start` writes the edge's config.
    pub fn config_path(&self) -> PathBuf {
        self.edge_host.config_path()
    }

    /// Starts `redirector run` on the edge (again, after `stop_edge` or
    /// `kill_edge`: with the config as it is now on disk), and waits until
    /// it answers on its control socket, which it binds before attaching.
    /// (A previous daemon's program may still be attached through its
    /// pinned link, and its control socket file still there.)
    pub fn run_edge(&mut self) {
        self.edge_host.run(&self.edge, &self.edge_env);
    }

    /// The edge daemon's process id, while it runs.
    pub fn edge_pid(&self) -> Option<u32> {
        self.edge_host.pid()
    }

    /// Sends `signal` to the edge daemon started by `start`.
    pub fn signal_edge(&self, signal: libc::c_int) {
        self.edge_host.signal(signal);
    }

    /// What the edge needs besides its daemon: pass programs on the bridge
    /// ports in native mode, decapsulators on the homes in dsr mode. Each
    /// takes a second or so to load and verify its object: they are all
    /// started, then waited for (each is in `daemons` before any wait, so
    /// a failed wait leaves none running).
    pub fn prepare_edge(&mut self) {
        let mut attaching = Vec::new();
        if self.attach == Attach::Native {
            // Native XDP_TX on a veth delivers only if the peer runs XDP too.
            attaching.extend(self.start_lan_pass_programs());
        }
        if self.mode == "dsr" {
            attaching.extend(self.start_decapsulators());
        }
        for (home, interface) in attaching {
            let ns = home.map_or(&self.lan, |i| &self.homes[i]);
            wait_for_xdp(ns, &interface);
        }
    }

    /// Starts `redirector decap` on every home: (home, interface) of each.
    fn start_decapsulators(&mut self) -> Vec<(Option<usize>, String)> {
        let mut started = Vec::new();
        for i in 0..self.homes.len() {
            let interface = format!("h{i}0");
            let mut args = vec!["decap", "--interface", &interface, "--attach", self.attach.name()];
            // Tunnels from every edge on the bridge, to the home's own addresses.
            let edges: Vec<Station> = std::iter::once(EDGE_STATION).chain(self.other_edges.iter().copied()).collect();
            let mut tunnel_ends = Vec::new();
            for &family in self.families {
                tunnel_ends.push(("--address", family.home(i).to_string()));
                tunnel_ends.extend(edges.iter().map(|edge| ("--edge", edge.address(family).to_string())));
            }
            for (flag, address) in &tunnel_ends {
                args.extend([*flag, address.as_str()]);
            }
            args.extend(self.decap_args.get(i).into_iter().flatten().map(String::as_str));
            let decap = spawn(&self.homes[i], &args);
            self.daemons.push(decap);
            started.push((Some(i), interface));
        }
        started
    }

    /// Starts `redirector ARGS` in home `index`'s namespace.
    pub fn spawn_in_home(&self, index: usize, args: &[String]) -> Child {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn(&self.homes[index], &args)
    }

    /// Records home `index`'s registrar process (replacing a stopped one).
    pub fn set_registrar(&mut self, index: usize, child: Child) {
        if self.registrars.len() <= index {
            self.registrars.resize_with(index + 1, || None);
        }
        self.registrars[index] = Some(child);
    }

    /// Kills home `index`'s registrar, as a crashed server process would go.
    pub fn stop_registrar(&mut self, index: usize) {
        let mut child = self.registrars[index].take().expect("a registrar runs on that home");
        kill_group(&mut child);
    }

    /// Keeps a process to be killed when the topology goes.
    pub fn adopt(&mut self, child: Child) {
        self.daemons.push(child);
    }

    /// The edge daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.edge_host.control_socket()
    }

    /// Runs the `redirector` CLI against the edge daemon's control socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.edge_host.cli(args)
    }

    /// `redirector assign AOR SERVER`, as an operator moves a client.
    pub fn assign(&self, aor: &str, server: &str) -> Result<(), String> {
        let output = self.cli(&["assign", aor, server]);
        if output.status.success() {
            return Ok(());
        }
        Err(format!("assign {aor} {server}: {}", String::from_utf8_lossy(&output.stderr)))
    }

    /// Polls `redirector stats --json` (bounded) until a reading satisfies
    /// `wanted`: the stats stream publishes once per `[stats] interval`.
    pub fn stats_when(&self, wanted: impl Fn(&redirector::ops::api::Stats) -> bool) -> redirector::ops::api::Stats {
        let start = Instant::now();
        loop {
            let output = self.cli(&["stats", "--json"]);
            assert!(output.status.success(), "stats --json: {}", String::from_utf8_lossy(&output.stderr));
            let stats = serde_json::from_slice(&output.stdout).expect("stats --json");
            if wanted(&stats) {
                return stats;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no such reading in 30 s; the last: {stats:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the edge pins its state (`[fast_path] bpffs`).
    pub fn bpffs(&self) -> &Path {
        self.edge_host.bpffs()
    }

    /// A path in the topology's scratch directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.workdir.path().join(name)
    }

    /// Stops the edge daemon with SIGTERM; returns whether it exited 0 and
    /// whether e0 still runs its XDP program afterwards.
    pub fn stop_edge(&mut self) -> (bool, bool) {
        let status = self.edge_host.stop();
        (status, has_xdp(&self.edge, "e0"))
    }

    /// `redirector detach` for e0 (the daemon stopped); returns whether it
    /// succeeded, and whether e0 is free of XDP and nothing is pinned
    /// afterwards.
    pub fn detach_edge(&self) -> (bool, bool) {
        let bpffs = self.bpffs().to_str().expect("a UTF-8 path");
        let output = self.cli(&["detach", "--interface", "e0", "--bpffs", bpffs]);
        let nothing_pinned =
            std::fs::read_dir(self.bpffs().join("redirector")).map_or(true, |mut d| d.next().is_none());
        (output.status.success(), !has_xdp(&self.edge, "e0") && nothing_pinned)
    }

    /// Kills the edge daemon with SIGKILL, as a crash would.
    pub fn kill_edge(&mut self) {
        self.edge_host.kill();
    }

    /// Starts `redirector pass` on every bridge port (every host's, edges
    /// added beside `edge` too): (no home, port) of each.
    fn start_lan_pass_programs(&mut self) -> Vec<(Option<usize>, String)> {
        let listing = self.lan.exec("ip", &["-json", "link", "show", "master", "br0"]);
        let links: Vec<serde_json::Value> = serde_json::from_slice(&listing.stdout).expect("ip -json link");
        let ports: Vec<String> = links.iter().filter_map(|link| Some(link["ifname"].as_str()?.to_owned())).collect();
        for port in &ports {
            let child = spawn(&self.lan, &["pass", "--interface", port]);
            self.daemons.push(child);
        }
        ports.into_iter().map(|port| (None, port)).collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let registrars = self.registrars.iter_mut().flatten();
        for daemon in self.daemons.iter_mut().chain(registrars) {
            kill_group(daemon);
        }
    }
}

/// An edge host's `redirector run` and its own files in `dir`: config,
/// control socket, database and bpffs. The daemon is killed on drop.
pub struct EdgeHost {
    /// The interface its program attaches to (`interface` in its config).
    pub interface: &'static str,
    station: Station,
    dir: PathBuf,
    daemon: Option<Child>,
    bpffs: tempdir::Bpffs,
}

impl EdgeHost {
    /// An edge on `interface` with the addresses of `station`, keeping its
    /// files in `dir` (which must outlive it).
    pub(crate) fn new(interface: &'static str, station: Station, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("creating the edge's directory");
        let bpffs = tempdir::Bpffs::mount(&dir.join("bpf"));
        Self { interface, station, dir: dir.to_owned(), daemon: None, bpffs }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("edge.toml")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Where the edge pins its state (`[fast_path] bpffs`).
    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    /// Starts `redirector run` in `ns` with the config on disk and `env`,
    /// and waits until it answers on its control socket, which it binds
    /// before attaching, and its program is attached.
    pub fn run(&mut self, ns: &NetNs, env: &[(&'static str, String)]) {
        assert!(self.daemon.is_none(), "the edge daemon was stopped first");
        let path = self.config_path();
        let mut command = command(ns, &["run", "--config", path.to_str().unwrap()]);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        self.daemon = Some(command.spawn().unwrap_or_else(|e| panic!("starting redirector run: {e}")));
        let start = Instant::now();
        while !self.cli(&["servers", "--json"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(30), "the edge daemon in {} never answered", ns.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for_xdp(ns, self.interface);
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        let run = self.daemon.as_ref().expect("the edge daemon was started");
        // SAFETY: plain kill(2) on our own child, not yet reaped.
        let rc = unsafe { libc::kill(run.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Stops the daemon with SIGTERM; whether it exited 0 within 10 s.
    pub fn stop(&mut self) -> bool {
        self.signal(libc::SIGTERM);
        let mut run = self.daemon.take().expect("the edge daemon was started");
        wait_bounded(&mut run, Duration::from_secs(10))
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        kill_group(&mut self.daemon.take().expect("the edge daemon was started"));
    }

    /// Runs the `redirector` CLI against the daemon's control socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(redirector_binary())
            .args(args)
            .arg("--socket")
            .arg(self.control_socket())
            .output()
            .expect("running the redirector CLI")
    }
}

impl Drop for EdgeHost {
    fn drop(&mut self) {
        if let Some(daemon) = &mut self.daemon {
            kill_group(daemon);
        }
    }
}

/// An edge's namespace on the bridge, its interface `{name}0`: the service
/// addresses on lo, and forwarding on (the fast path's FIB lookups need it).
pub(crate) fn edge_namespace(lan: &NetNs, name: &str, station: Station) -> NetNs {
    let edge = host(lan, "rdr-edge", name, station);
    add_service_addresses(&edge);
    for family in ["ipv4", "ipv6"] {
        for scope in ["all".to_owned(), format!("{name}0")] {
            edge.sysctl(&format!("net.{family}.conf.{scope}.forwarding=1"));
        }
    }
    edge
}

/// A namespace `{prefix}` with veth `{name}0` whose peer `{name}0-br` is on
/// br0, with the station's addresses of both families.
fn host(lan: &NetNs, prefix: &str, name: &str, station: Station) -> NetNs {
    let ns = NetNs::new(prefix);
    let inner = format!("{name}0");
    let outer = format!("{name}0-br");
    let mac = mac(station.mac_tail);
    lan.ip(&format!("link add {outer} type veth peer name {inner} address {mac} netns {}", ns.name));
    lan.ip(&format!("link set {outer} master br0 up"));
    ns.ip(&format!("addr add {}/24 dev {inner}", station.v4));
    // nodad: usable at once, not after duplicate address detection's delay.
    ns.ip(&format!("addr add {}/64 dev {inner} nodad", station.v6));
    ns.ip(&format!("link set {inner} up"));
    // veth leaves UDP checksums to "offload"; a frame that then crosses a
    // native XDP program loses that note and arrives with a bad checksum.
    // Real NICs deliver complete checksums, so the hosts compute them.
    ns.exec("ethtool", &["-K", &inner, "tx", "off"]);
    ns
}

/// Both service addresses on lo, as the edge and dsr homes own them.
fn add_service_addresses(ns: &NetNs) {
    for family in [Family::V4, Family::V6] {
        ns.ip(&format!("addr add {}/{} dev lo", family.service().ip(), family.host_prefix()));
    }
}

pub(crate) fn add_neighbours(ns: &NetNs, interface: &str, neighbours: &[Station]) {
    for station in neighbours {
        let mac = mac(station.mac_tail);
        for address in [IpAddr::from(station.v4), station.v6.into()] {
            ns.ip(&format!("neigh replace {address} lladdr {mac} dev {interface} nud permanent"));
        }
    }
}

pub fn mac(tail: u8) -> String {
    mac_octets(tail).map(|octet| format!("{octet:02x}")).join(":")
}

fn mac_octets(tail: u8) -> crate::packets::Mac {
    [0x02, 0, 0, 0, 0, tail]
}

/// The edge interface's MAC (`e0`).
pub fn edge_mac() -> crate::packets::Mac {
    mac_octets(EDGE_STATION.mac_tail)
}

/// Home `index`'s interface's MAC.
pub fn home_mac(index: usize) -> crate::packets::Mac {
    mac_octets(home_station(index).mac_tail)
}

/// The `redirector` binary built beside the test executables.
pub fn redirector_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join("redirector"), dir.parent().expect("target dir").join("redirector")];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!(
            "no redirector binary beside {}: run `cargo build -p redirector-user` (cargo xtask test does)",
            exe.display()
        )
    })
}

/// Starts `redirector ARGS` in `ns`, in a process group of its own (see `kill_group`).
/// Their warnings and errors show (logs go to stderr); info stays out of
/// the test output unless RUST_LOG asks for it.
fn spawn(ns: &NetNs, args: &[&str]) -> Child {
    command(ns, args).spawn().unwrap_or_else(|e| panic!("starting redirector {args:?}: {e}"))
}

/// `redirector ARGS` in `ns`, in a process group of its own.
fn command(ns: &NetNs, args: &[&str]) -> Command {
    let binary = redirector_binary();
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let mut command = ns.command(binary.to_str().unwrap(), args);
    command.env("RUST_LOG", level).process_group(0).stdout(Stdio::null()).stderr(Stdio::inherit());
    command
}

/// SIGKILLs a process started in a group of its own (`process_group(0)`),
/// with every process it forked (Kamailio's workers outlive a killed main
/// process), and reaps it. Falls back to the process alone otherwise.
pub fn kill_group(child: &mut Child) {
    // SAFETY: plain syscall; the group id is the child's pid, which cannot
    // be reused before the child is reaped below.
    if unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) } != 0 {
        let _ = child.kill();
    }
    let _ = child.wait();
}

pub fn has_xdp(ns: &NetNs, interface: &str) -> bool {
    let out = ns.exec("ip", &["-d", "link", "show", "dev", interface]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// The XDP program attached to `interface`, if any: its id and its tag
/// (a hash of its instructions).
pub fn xdp_program(ns: &NetNs, interface: &str) -> Option<(u64, String)> {
    let out = ns.exec("ip", &["-json", "-details", "link", "show", "dev", interface]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &links[0]["xdp"];
    let program = if xdp["prog"].is_object() { &xdp["prog"] } else { &xdp["attached"][0]["prog"] };
    Some((program["id"].as_u64()?, program["tag"].as_str()?.to_owned()))
}

fn wait_for_xdp(ns: &NetNs, interface: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_xdp(ns, interface) {
        assert!(Instant::now() < deadline, "no XDP program attached to {interface} in {} after 20 s", ns.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for redirector") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A UDP socket bound inside `ns` (it stays in that namespace).
pub fn socket_in(ns: &NetNs, address: &str) -> UdpSocket {
    let _inside = ns.enter();
    let socket = UdpSocket::bind(address).unwrap_or_else(|e| panic!("binding {address} in {}: {e}", ns.name));
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // A burst must not overflow the default ~200 KiB buffer before it is read.
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt on an open socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    socket
}

/// The edge daemon's reachability pings (OPTIONS to every home server's
/// own address), which raw test sockets on a home server also see.
pub fn is_edge_ping(datagram: &[u8]) -> bool {
    datagram.starts_with(b"OPTIONS ") && datagram.windows(17).any(|w| w == b"z9hG4bK-rdr-ping-")
}

/// Receives until `expected` datagrams (not counting edge pings) arrived or
/// `limit` passed.
pub fn receive(socket: &UdpSocket, expected: usize, limit: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < expected && Instant::now() < deadline {
        if let Ok((len, from)) = socket.recv_from(&mut buf)
            && !is_edge_ping(&buf[..len])
        {
            got.push((from, buf[..len].to_vec()));
        }
    }
    got
}

/// Answers every datagram but edge pings with "echo:" + payload, `count`
/// times at most.
pub fn echo(socket: UdpSocket, count: usize, limit: Duration) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || echo_while(&socket, limit, |answered| answered < count))
}

/// Echoes every datagram but edge pings back to its sender, prefixed
/// `echo:`, while `go_on(answered so far)` holds and `limit` has not passed;
/// how many it answered.
pub fn echo_while(socket: &UdpSocket, limit: Duration, go_on: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + limit;
    let mut answered = 0;
    let mut buf = [0u8; 2048];
    while go_on(answered) && Instant::now() < deadline {
        if let Ok((len, from)) = socket.recv_from(&mut buf)
            && !is_edge_ping(&buf[..len])
        {
            let reply = [b"echo:".as_slice(), &buf[..len]].concat();
            socket.send_to(&reply, from).expect("echo reply");
            answered += 1;
        }
    }
    answered
}

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("redirector-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("creating a temp dir");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Default for Dir {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A bpffs instance of its own, mounted on a directory (in the test's
    /// mount namespace, so what a daemon under `ip netns exec` pins there
    /// outlives it), unmounted on drop, which drops whatever is pinned.
    pub struct Bpffs(PathBuf);

    impl Bpffs {
        pub fn mount(path: &Path) -> Self {
            std::fs::create_dir_all(path).expect("creating the bpffs mount point");
            let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
            // SAFETY: NUL-terminated strings that outlive the call; no data argument.
            let mounted =
                unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
            assert_eq!(mounted, 0, "mounting bpffs at {}: {}", path.display(), std::io::Error::last_os_error());
            Self(path.to_owned())
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Bpffs {
        fn drop(&mut self) {
            if let Ok(target) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
                // SAFETY: a NUL-terminated path that outlives the call.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
