//! Loading the embedded XDP object, filling its maps, attaching programs and
//! reading counters. Conversions from config to the shared map types are
//! plain functions, tested on the host.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use redirector_ebpf::{
    AORS_MAP, AorRoute, CLIENTS_MAP, CONFIG_HAS_EDGE_V4, CONFIG_HAS_EDGE_V6, CONFIG_MAP, COUNTERS_MAP, ClientEntry,
    Counter, DECAP_ADDRESSES_MAP, DECAP_SOURCES_MAP, EVENTS_MAP, Endpoint, Event, FLOOR_MAP, FLOOR_PROGRAM, FloorHop,
    HOP_STATE_MAP, HOPS_MAP, LIMIT_MAP, LIMIT_PROGRAM, LOADS_MAP, Mode, NAT_REPLIES_MAP, NatEntry, NatKey,
    OTHER_LINE_PROGRAM, OTHER_LINES_MAP, PROBE_MAP, PROXIES_MAP, REDIRECTOR_PROGRAM, REPLY_HOPS_MAP, SERVER_HAS_V4,
    SERVER_HAS_V6, SERVER_STATS_MAP, SERVERS_MAP, SERVICE_PROBE, SERVICE_SIP, SERVICES_MAP, Server, ServerStats,
    THROTTLED_MAP, Throttle, probe::ProbeConfig,
};

use super::{
    fast_path::monotonic_ns,
    miss_lookups::MissLookups,
    pins::{PINNED_MAPS, PinError, Pins},
};
use crate::{
    config::Config,
    model::{AttachMode, ForwardingMode, HomeServer, ServerState},
};

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("loading the XDP object into the kernel failed (redirector needs root or CAP_BPF + CAP_NET_ADMIN): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program `{name}`: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error(
        "attaching `{program}` to interface {interface} in {mode:?} mode failed (does the interface exist? is another XDP program attached?): {source}"
    )]
    Attach { program: &'static str, interface: String, mode: XdpMode, source: ProgramError },
    #[error("BPF map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("BPF map {0} is missing from the XDP object; rebuild it with `cargo xtask build-ebpf`")]
    MissingMap(&'static str),
    #[error("BPF map {name}: a batched {what} {source}")]
    Batch { name: &'static str, what: &'static str, source: super::batch::BatchError },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("reading the XDP object {path} (named by REDIRECTOR_XDP_OBJECT): {source}", path = path.display())]
    Object { path: PathBuf, source: std::io::Error },
    #[error(
        "{what} the pinned XDP link {path}: {source} (bpf links need Linux 5.9; `redirector detach` removes a stale one)",
        path = path.display()
    )]
    Link { what: &'static str, path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
}

type Result<T, E = DataPlaneError> = std::result::Result<T, E>;

impl DataPlaneError {
    /// Of a batched write or delete asked for `asked` entries that ended
    /// in this error: how many were done (the first ones).
    pub fn entries_done(&self, asked: usize) -> usize {
        match self {
            Self::Batch { source, .. } => source.done.min(asked),
            _ => 0,
        }
    }
}

/// The loaded object: maps created (or adopted from pins), each program
/// verified and loaded when first asked for.
pub struct DataPlane {
    ebpf: Ebpf,
    /// Whether the maps were a previous daemon's, adopted from pins.
    adopted: bool,
    /// `CONFIG` as configured, without the lookups' flags.
    edge: redirector_ebpf::Config,
    /// The lookups a miss may need (`CONFIG`'s other flags).
    lookups: MissLookups,
}

impl DataPlane {
    /// Loads the object embedded in this binary: its maps now, each of its
    /// programs when first asked for (`program`).
    pub fn load() -> Result<Self> {
        Self::load_with(EbpfLoader::new())
    }

    /// For `decap` and `pass`, which forward no clients: the client maps get
    /// one entry instead of a million (about 226 MB of kernel memory).
    pub fn load_without_clients() -> Result<Self> {
        Self::load_with_client_capacity(1)
    }

    /// Like `load`, with room for `clients` entries in the client maps
    /// (`CLIENT_MAPS`) instead of `MAX_CLIENTS`.
    pub fn load_with_client_capacity(clients: u32) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        size_client_maps(&mut loader, clients);
        Self::load_with(loader)
    }

    /// Like `load_with_client_capacity`, with the maps of `PINNED_MAPS`
    /// pinned under `pins`: a previous daemon's adopted if they match,
    /// created and pinned if there are none.
    pub fn load_pinned(pins: &Pins, clients: u32) -> Result<Self> {
        let object = object()?;
        pins.prepare()?;
        pins.check_maps(&object, clients)?;
        let adopted = pins.has_maps();
        let paths: Vec<(&'static str, PathBuf)> = PINNED_MAPS.iter().map(|&name| (name, pins.map(name))).collect();
        let mut loader = EbpfLoader::new();
        size_client_maps(&mut loader, clients);
        for (name, path) in &paths {
            loader.map_pin_path(name, path);
        }
        let mut dataplane = Self::load_object(loader, &object)?;
        dataplane.adopted = adopted;
        Ok(dataplane)
    }

    fn load_with(loader: EbpfLoader<'_>) -> Result<Self> {
        Self::load_object(loader, super::PROGRAM)
    }

    /// The maps are created; each program is loaded when first asked for
    /// (`program`).
    fn load_object(mut loader: EbpfLoader<'_>, object: &[u8]) -> Result<Self> {
        Ok(Self {
            ebpf: loader.load(object)?,
            adopted: false,
            edge: Default::default(),
            lookups: MissLookups::default(),
        })
    }

    /// Loads the benchmark's floor program and gives it one next hop, for
    /// datagrams from `source`.
    pub fn load_floor(&mut self, source: Endpoint, hop: FloorHop) -> Result<()> {
        self.program(FLOOR_PROGRAM)?;
        let mut map: HashMap<_, Endpoint, FloorHop> = self.map(FLOOR_MAP)?;
        map.insert(source, hop, 0).map_err(map_error(FLOOR_MAP))
    }

    /// Loads the benchmark's limit program (`LIMIT_PROGRAM`) and gives it
    /// the MACs it writes into every IPv4 frame.
    pub fn load_limit(&mut self, hop: FloorHop) -> Result<()> {
        self.program(LIMIT_PROGRAM)?;
        let mut map: Array<_, FloorHop> = self.map(LIMIT_MAP)?;
        map.set(0, hop, 0).map_err(map_error(LIMIT_MAP))
    }

    /// Whether the maps were a previous daemon's (see `load_pinned`).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Attaches the redirector program through the link pinned under
    /// `pins`: a previous daemon's link is given this program atomically
    /// (the kernel forwards throughout), else a new link is made and
    /// pinned. It stays attached when this process exits, until
    /// `redirector detach`. Whether an existing link was taken over.
    pub fn attach_pinned(&mut self, interface: &str, mode: XdpMode, pins: &Pins) -> Result<bool> {
        let name = REDIRECTOR_PROGRAM;
        let path = pins.link();
        let attach_error = |source| DataPlaneError::Attach { program: name, interface: interface.into(), mode, source };
        let link_error = |what: &'static str| {
            let path = path.clone();
            move |source: Box<dyn std::error::Error + Send + Sync>| DataPlaneError::Link { what, path, source }
        };
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|e| link_error("opening")(e.into()))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_error("taking over")(e.into()))?;
            // A link whose interface is gone (defunct) refuses the update.
            self.program(name)?.attach_to_link(link).map_err(|e| link_error("updating")(e.into()))?;
            self.attached()?;
            return Ok(true);
        }
        let program = self.program(name)?;
        let id = program.attach(interface, mode).map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        let link = FdLink::try_from(link).map_err(|e| link_error("pinning")(e.into()))?;
        // Pinned, the link outlives this process (and this handle).
        link.pin(&path).map_err(|e| link_error("pinning")(e.into()))?;
        self.attached()?;
        Ok(false)
    }

    /// This object's program runs in place of any other: `CONFIG` no
    /// longer speaks for another program's proxies.
    fn attached(&mut self) -> Result<()> {
        self.change_lookups(MissLookups::attached)
    }

    /// Program `name`, loaded; `redirector` with `redirector_other_line`
    /// in its `OTHER_LINES` slot.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        if name == REDIRECTOR_PROGRAM {
            self.link_other_lines()?;
        }
        program(&mut self.ebpf, name)
    }

    /// Puts `redirector_other_line` where `redirector` tail-calls it for a
    /// shared socket's other lines (`OTHER_LINES`, pinned with the maps).
    /// Set before the pinned link is given the new `redirector`, never
    /// after: the other-line program reads the AOR hash its own object's
    /// `redirector` left in that object's scratch, so an old `redirector`
    /// calling the new one finds no hash of its own (zero: nothing routed,
    /// the datagram goes up), where a new `redirector` calling the old one
    /// would find the old program's last hash, another datagram's.
    fn link_other_lines(&mut self) -> Result<()> {
        let name = OTHER_LINE_PROGRAM;
        let fd = program(&mut self.ebpf, name)?.fd().map_err(|source| DataPlaneError::Program { name, source })?;
        let fd = fd.try_clone().map_err(|source| DataPlaneError::Program { name, source: source.into() })?;
        let map = self.ebpf.map_mut(OTHER_LINES_MAP).ok_or(DataPlaneError::MissingMap(OTHER_LINES_MAP))?;
        let mut slots: ProgramArray<_> = ProgramArray::try_from(map).map_err(map_error(OTHER_LINES_MAP))?;
        slots.set(0, &fd, 0).map_err(map_error(OTHER_LINES_MAP))
    }

    /// Attaches a program; it stays attached until this `DataPlane` is dropped.
    pub fn attach(&mut self, name: &'static str, interface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.program(name)?.attach(interface, mode).map_err(|source| DataPlaneError::Attach {
            program: name,
            interface: interface.into(),
            mode,
            source,
        })
    }

    /// Writes mode, edge addresses, services and servers. Clients are
    /// `FastPath`'s business.
    pub fn configure(&mut self, config: &Config) -> Result<()> {
        self.configure_edge(config)?;
        for home in config.home_servers() {
            self.set_server(home.index, server_entry(&home))?;
        }
        Ok(())
    }

    /// Writes mode, edge addresses and services, not the servers (the
    /// daemon writes the pool's, which may differ from the config's).
    pub fn configure_edge(&mut self, config: &Config) -> Result<()> {
        self.edge = edge_config(config);
        self.lookups = self.found_lookups()?;
        self.write_config()?;
        let services: Vec<Endpoint> = service_endpoints(config).collect();
        let probes: Vec<Endpoint> = probe_endpoints(config).collect();
        self.remove_services_but(&[services.as_slice(), probes.as_slice()].concat())?;
        for &service in &services {
            self.add_service(service, SERVICE_SIP)?;
        }
        for &probe in &probes {
            self.add_service(probe, SERVICE_PROBE)?;
        }
        Ok(())
    }

    /// The forwarding mode adopted maps were written for (`None` when
    /// nothing was adopted).
    pub fn adopted_mode(&mut self) -> Result<Option<u8>> {
        if !self.adopted {
            return Ok(None);
        }
        let map: Array<_, redirector_ebpf::Config> = self.map(CONFIG_MAP)?;
        Ok(Some(map.get(&0, 0).map_err(map_error(CONFIG_MAP))?.mode))
    }

    /// Forgets every client and nat reply entry (adopted ones of another
    /// mode, say): their clients come back through first contact.
    pub fn clear_clients(&mut self) -> Result<()> {
        let clients: Vec<Endpoint> = self.all_clients()?.into_iter().map(|(client, _)| client).collect();
        self.remove_clients(&clients)?;
        let replies: Vec<NatKey> = self.all_nat_replies()?.into_iter().map(|(key, _)| key).collect();
        self.remove_nat_replies(&replies)
    }

    /// `CONFIG`'s one writer: the edge as configured, with the lookups'
    /// flags.
    fn write_config(&mut self) -> Result<()> {
        self.write_config_with(self.lookups)
    }

    fn write_config_with(&mut self, lookups: MissLookups) -> Result<()> {
        let value = redirector_ebpf::Config { flags: self.edge.flags | lookups.flags(), ..self.edge };
        let mut map: Array<_, redirector_ebpf::Config> = self.map(CONFIG_MAP)?;
        map.set(0, value, 0).map_err(map_error(CONFIG_MAP))
    }

    /// The lookups the maps need as found (adopted, or new and empty).
    fn found_lookups(&mut self) -> Result<MissLookups> {
        let map: Array<_, redirector_ebpf::Config> = self.map(CONFIG_MAP)?;
        let flags = map.get(&0, 0).map_err(map_error(CONFIG_MAP))?.flags;
        let fd = self.map_fd(THROTTLED_MAP)?;
        // SAFETY: THROTTLED maps Endpoint to Throttle (xdp/maps.rs).
        let throttles: Vec<(Endpoint, Throttle)> =
            unsafe { super::batch::lookup_all(fd) }.map_err(batch_error(THROTTLED_MAP, "lookup"))?;
        Ok(MissLookups::found(flags, throttles.iter().map(|(_, throttle)| throttle.until_ns), monotonic_ns()))
    }

    /// Changes the lookups, writing `CONFIG` if their flags changed. Kept
    /// only once written: after a failed write the next change writes
    /// again, where a flag already taken would leave the program skipping
    /// a map the daemon fills.
    fn change_lookups(&mut self, change: impl FnOnce(&mut MissLookups)) -> Result<()> {
        let mut next = self.lookups;
        change(&mut next);
        if next.flags() != self.lookups.flags() {
            self.write_config_with(next)?;
        }
        self.lookups = next;
        Ok(())
    }

    /// Has the program skip `THROTTLED` once every throttle written has
    /// lifted (`MissLookups::lift`), at `now_ns` (CLOCK_MONOTONIC).
    pub fn lift_throttles(&mut self, now_ns: u64) -> Result<()> {
        self.change_lookups(|lookups| lookups.lift(now_ns))
    }

    /// `kind`: `SERVICE_SIP` or `SERVICE_PROBE`.
    pub fn add_service(&mut self, service: Endpoint, kind: u8) -> Result<()> {
        let mut map: HashMap<_, Endpoint, u8> = self.map(SERVICES_MAP)?;
        map.insert(service, kind, 0).map_err(map_error(SERVICES_MAP))
    }

    /// Marks `source` an upstream proxy, whose misses the program reads
    /// for their Vias (dsr, `PROXIES`).
    pub fn add_proxy(&mut self, source: IpAddr) -> Result<()> {
        // The flag first: the entry is looked up from the moment it is in.
        self.change_lookups(MissLookups::proxy_known)?;
        let mut map: HashMap<_, Endpoint, u8> = self.map(PROXIES_MAP)?;
        map.insert(endpoint(source, 0), 0, 0).map_err(map_error(PROXIES_MAP))
    }

    /// What probes are answered with (`redirector_ebpf::probe`).
    pub fn set_probe(&mut self, value: ProbeConfig) -> Result<()> {
        let mut map: Array<_, ProbeConfig> = self.map(PROBE_MAP)?;
        map.set(0, value, 0).map_err(map_error(PROBE_MAP))
    }

    /// Removes the services an adopted map holds that `kept` does not.
    fn remove_services_but(&mut self, kept: &[Endpoint]) -> Result<()> {
        let mut map: HashMap<_, Endpoint, u8> = self.map(SERVICES_MAP)?;
        let stale: Vec<Endpoint> =
            map.keys().filter_map(|key| key.ok()).filter(|service| !kept.contains(service)).collect();
        stale.iter().try_for_each(|service| map.remove(service).map_err(map_error(SERVICES_MAP)))
    }

    /// Writes every SERVERS slot: each of `servers` in its own, every other
    /// one "unused" (whatever an earlier run left there).
    pub fn set_servers(&mut self, servers: &[HomeServer]) -> Result<()> {
        for slot in 0..redirector_ebpf::MAX_SERVERS {
            let entry = servers.iter().find(|s| s.index == slot).map(server_entry).unwrap_or_default();
            self.set_server(slot, entry)?;
        }
        Ok(())
    }

    pub fn set_server(&mut self, index: u32, server: Server) -> Result<()> {
        let mut map: Array<_, Server> = self.map(SERVERS_MAP)?;
        map.set(index, server, 0).map_err(map_error(SERVERS_MAP))
    }

    /// Writes many client entries in one system call (or a few).
    pub fn install_clients(&mut self, clients: &[Endpoint], entries: &[ClientEntry]) -> Result<()> {
        let fd = self.map_fd(CLIENTS_MAP)?;
        // SAFETY: CLIENTS maps Endpoint to ClientEntry (xdp/maps.rs).
        unsafe { super::batch::update(fd, clients, entries) }.map_err(batch_error(CLIENTS_MAP, "update"))
    }

    /// Removes many client entries in one system call (or a few); absent
    /// ones are fine.
    pub fn remove_clients(&mut self, clients: &[Endpoint]) -> Result<()> {
        let fd = self.map_fd(CLIENTS_MAP)?;
        // SAFETY: CLIENTS is keyed by Endpoint (xdp/maps.rs).
        unsafe { super::batch::delete(fd, clients) }.map_err(batch_error(CLIENTS_MAP, "delete"))
    }

    /// Writes many nat reply entries in one system call (or a few).
    pub fn install_nat_replies(&mut self, keys: &[NatKey], entries: &[NatEntry]) -> Result<()> {
        let fd = self.map_fd(NAT_REPLIES_MAP)?;
        // SAFETY: NAT_REPLIES maps NatKey to NatEntry (xdp/maps.rs).
        unsafe { super::batch::update(fd, keys, entries) }.map_err(batch_error(NAT_REPLIES_MAP, "update"))
    }

    /// Throttles the first contact of many source prefixes (keys from
    /// `redirector_ebpf::source_prefix`), each anew, in one system call.
    pub fn throttle(&mut self, prefixes: &[Endpoint], throttle: Throttle) -> Result<()> {
        // The flag first: each throttle holds from the moment it is in.
        self.change_lookups(|lookups| lookups.throttling(throttle.until_ns))?;
        let fd = self.map_fd(THROTTLED_MAP)?;
        let entries = vec![throttle; prefixes.len()];
        // SAFETY: THROTTLED maps Endpoint to Throttle (xdp/maps.rs).
        unsafe { super::batch::update(fd, prefixes, &entries) }.map_err(batch_error(THROTTLED_MAP, "update"))
    }

    /// Every client entry, read in batches.
    pub fn all_clients(&self) -> Result<Vec<(Endpoint, ClientEntry)>> {
        let fd = self.map_fd(CLIENTS_MAP)?;
        // SAFETY: CLIENTS maps Endpoint to ClientEntry (xdp/maps.rs).
        unsafe { super::batch::lookup_all(fd) }.map_err(batch_error(CLIENTS_MAP, "lookup"))
    }

    /// Routes AORs (keys from `redirector_ebpf::aor::aor_hash`) to home
    /// server slots in one system call (or a few).
    pub fn route_aors(&mut self, hashes: &[u64], routes: &[AorRoute]) -> Result<()> {
        let fd = self.map_fd(AORS_MAP)?;
        // SAFETY: AORS maps u64 to AorRoute (xdp/maps.rs).
        unsafe { super::batch::update(fd, hashes, routes) }.map_err(batch_error(AORS_MAP, "update"))
    }

    /// Removes AOR routes in one system call (or a few); absent ones are fine.
    pub fn unroute_aors(&mut self, hashes: &[u64]) -> Result<()> {
        let fd = self.map_fd(AORS_MAP)?;
        // SAFETY: AORS is keyed by u64 (xdp/maps.rs).
        unsafe { super::batch::delete(fd, hashes) }.map_err(batch_error(AORS_MAP, "delete"))
    }

    /// The AOR route under `hash`, if there is one.
    pub fn aor_route(&self, hash: u64) -> Result<Option<AorRoute>> {
        let map = self.ebpf.map(AORS_MAP).ok_or(DataPlaneError::MissingMap(AORS_MAP))?;
        let map: HashMap<_, u64, AorRoute> = HashMap::try_from(map).map_err(map_error(AORS_MAP))?;
        match map.get(&hash, 0) {
            Ok(route) => Ok(Some(route)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataPlaneError::Map { name: AORS_MAP, source }),
        }
    }

    /// Every AOR route, read in batches.
    pub fn all_aor_routes(&self) -> Result<Vec<(u64, AorRoute)>> {
        let fd = self.map_fd(AORS_MAP)?;
        // SAFETY: AORS maps u64 to AorRoute (xdp/maps.rs).
        unsafe { super::batch::lookup_all(fd) }.map_err(batch_error(AORS_MAP, "lookup"))
    }

    /// Every nat reply entry, read in batches.
    pub fn all_nat_replies(&self) -> Result<Vec<(NatKey, NatEntry)>> {
        let fd = self.map_fd(NAT_REPLIES_MAP)?;
        // SAFETY: NAT_REPLIES maps NatKey to NatEntry (xdp/maps.rs).
        unsafe { super::batch::lookup_all(fd) }.map_err(batch_error(NAT_REPLIES_MAP, "lookup"))
    }

    /// Removes many nat reply entries in one system call (or a few).
    pub fn remove_nat_replies(&mut self, keys: &[NatKey]) -> Result<()> {
        let fd = self.map_fd(NAT_REPLIES_MAP)?;
        // SAFETY: NAT_REPLIES is keyed by NatKey (xdp/maps.rs).
        unsafe { super::batch::delete(fd, keys) }.map_err(batch_error(NAT_REPLIES_MAP, "delete"))
    }

    /// A hash (or per-CPU array) map's file descriptor, for the batched
    /// calls aya lacks.
    fn map_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>> {
        match self.ebpf.map(name).ok_or(DataPlaneError::MissingMap(name))? {
            Map::LruHashMap(data) | Map::HashMap(data) | Map::PerCpuArray(data) => Ok(data.fd().as_fd()),
            _ => Err(DataPlaneError::Map { name, source: MapError::InvalidMapType { map_type: 0 } }),
        }
    }

    pub fn install_client(&mut self, client: Endpoint, entry: ClientEntry) -> Result<()> {
        let mut map: HashMap<_, Endpoint, ClientEntry> = self.map(CLIENTS_MAP)?;
        map.insert(client, entry, 0).map_err(map_error(CLIENTS_MAP))
    }

    /// A client's entry, if it has one.
    pub fn client(&mut self, client: Endpoint) -> Result<Option<ClientEntry>> {
        let map: HashMap<_, Endpoint, ClientEntry> = self.map(CLIENTS_MAP)?;
        match map.get(&client, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataPlaneError::Map { name: CLIENTS_MAP, source }),
        }
    }

    /// Removes a client's entry (absent is fine: the LRU may have evicted it).
    pub fn remove_client(&mut self, client: Endpoint) -> Result<()> {
        let mut map: HashMap<_, Endpoint, ClientEntry> = self.map(CLIENTS_MAP)?;
        match map.remove(&client) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataPlaneError::Map { name: CLIENTS_MAP, source }),
        }
    }

    /// Removes a nat reply entry (absent is fine).
    pub fn remove_nat_reply(&mut self, key: NatKey) -> Result<()> {
        let mut map: HashMap<_, NatKey, NatEntry> = self.map(NAT_REPLIES_MAP)?;
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataPlaneError::Map { name: NAT_REPLIES_MAP, source }),
        }
    }

    pub fn add_decap_address(&mut self, address: IpAddr) -> Result<()> {
        self.add_address(DECAP_ADDRESSES_MAP, address)
    }

    /// An edge whose tunnels the decapsulator accepts.
    pub fn add_decap_source(&mut self, address: IpAddr) -> Result<()> {
        self.add_address(DECAP_SOURCES_MAP, address)
    }

    fn add_address(&mut self, name: &'static str, address: IpAddr) -> Result<()> {
        let mut map: HashMap<_, Endpoint, u8> = self.map(name)?;
        map.insert(endpoint(address, 0), 1, 0).map_err(map_error(name))
    }

    /// Every verdict counter, summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&mut self) -> Result<Vec<(Counter, u64)>> {
        let map: PerCpuArray<_, u64> = self.map(COUNTERS_MAP)?;
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = map.get(&(counter as u32), 0).map_err(map_error(COUNTERS_MAP))?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }

    pub fn counter(&mut self, counter: Counter) -> Result<u64> {
        Ok(self.counters()?.into_iter().find(|(c, _)| *c == counter).map_or(0, |(_, n)| n))
    }

    /// What the fast path sent to the server in slot `index`, summed over CPUs.
    pub fn server_stats(&mut self, index: u32) -> Result<ServerStats> {
        let map: PerCpuArray<_, ServerStats> = self.map(SERVER_STATS_MAP)?;
        let per_cpu = map.get(&index, 0).map_err(map_error(SERVER_STATS_MAP))?;
        Ok(per_cpu.iter().fold(ServerStats::default(), |sum, cpu| ServerStats {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
        }))
    }

    /// How many load slots `LOADS` has (as many as the client map holds).
    pub fn load_slots(&mut self) -> Result<u32> {
        let map: PerCpuArray<_, u64> = self.map(LOADS_MAP)?;
        Ok(map.len())
    }

    /// The packets counted in load slot `slot`, summed over CPUs (0 for
    /// `NO_LOAD_SLOT`).
    pub fn client_packets(&mut self, slot: u32) -> Result<u64> {
        let map: PerCpuArray<_, u64> = self.map(LOADS_MAP)?;
        if slot >= map.len() {
            return Ok(0);
        }
        Ok(map.get(&slot, 0).map_err(map_error(LOADS_MAP))?.iter().sum())
    }

    /// Zeroes load slots on every CPU, in one system call (or a few),
    /// before they are handed to clients: a slot freed by another keeps
    /// that one's count until then.
    pub fn reset_loads(&mut self, slots: &[u32]) -> Result<()> {
        let cpus = cpus()?;
        let zeros = vec![0u64; slots.len() * cpus];
        let fd = self.map_fd(LOADS_MAP)?;
        // SAFETY: LOADS is a per-CPU array of u64 keyed by u32 (xdp/maps.rs),
        // and `cpus` is the number of possible CPUs.
        unsafe { super::batch::update_per_cpu(fd, slots, &zeros, cpus) }.map_err(batch_error(LOADS_MAP, "update"))
    }

    /// The program's event ring buffer, taken out for its one reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(EVENTS_MAP).ok_or(DataPlaneError::MissingMap(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(map_error(EVENTS_MAP))
    }

    /// The kept next hops (`HOPS`, `REPLY_HOPS`, `HOP_STATE`), taken out
    /// for their one writer (`hops::Keeper`).
    pub fn take_hops(&mut self) -> Result<super::hops::HopMaps> {
        let hops = self.ebpf.take_map(HOPS_MAP).ok_or(DataPlaneError::MissingMap(HOPS_MAP))?;
        let replies = self.ebpf.take_map(REPLY_HOPS_MAP).ok_or(DataPlaneError::MissingMap(REPLY_HOPS_MAP))?;
        let state = self.ebpf.take_map(HOP_STATE_MAP).ok_or(DataPlaneError::MissingMap(HOP_STATE_MAP))?;
        Ok(super::hops::HopMaps::new(
            Array::try_from(hops).map_err(map_error(HOPS_MAP))?,
            LpmTrie::try_from(replies).map_err(map_error(REPLY_HOPS_MAP))?,
            Array::try_from(state).map_err(map_error(HOP_STATE_MAP))?,
        ))
    }

    fn map<'a, M>(&'a mut self, name: &'static str) -> Result<M>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(DataPlaneError::MissingMap(name))?;
        M::try_from(map).map_err(map_error(name))
    }
}

/// The XDP object `run` loads: the one embedded in this binary, or the
/// file `REDIRECTOR_XDP_OBJECT` names (a rebuilt program tried on a running
/// edge without rebuilding the daemon; the pinned maps must match it).
fn object() -> Result<std::borrow::Cow<'static, [u8]>> {
    match std::env::var_os(XDP_OBJECT_VARIABLE) {
        Some(path) => std::fs::read(&path)
            .map(std::borrow::Cow::Owned)
            .map_err(|source| DataPlaneError::Object { path: path.into(), source }),
        None => Ok(std::borrow::Cow::Borrowed(super::PROGRAM)),
    }
}

/// The maps with an entry per client, sized by `[fast_path] max_clients`.
pub const CLIENT_MAPS: [&str; 4] = [CLIENTS_MAP, NAT_REPLIES_MAP, LOADS_MAP, AORS_MAP];

fn size_client_maps(loader: &mut EbpfLoader<'_>, clients: u32) {
    for name in CLIENT_MAPS {
        loader.map_max_entries(name, clients);
    }
}

/// The possible CPUs, as many as a per-CPU map has values for each key.
fn cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, error)| DataPlaneError::Map { name: LOADS_MAP, source: MapError::IoError(error) })
}

/// See `object`.
pub const XDP_OBJECT_VARIABLE: &str = "REDIRECTOR_XDP_OBJECT";

/// Program `name`, verified and loaded into the kernel the first time it
/// is asked for: `decap` and `pass` never pay for the edge program's
/// verification (about a second of kernel time each).
fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    let program = ebpf.program_mut(name).ok_or(DataPlaneError::Program { name, source: ProgramError::NotLoaded })?;
    let program: &mut Xdp = program.try_into().map_err(|source| DataPlaneError::Program { name, source })?;
    if program.fd().is_err() {
        program.load().map_err(|source| DataPlaneError::Program { name, source })?;
    }
    Ok(program)
}

fn batch_error(name: &'static str, what: &'static str) -> impl Fn(super::batch::BatchError) -> DataPlaneError {
    move |source| DataPlaneError::Batch { name, what, source }
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { name, source }
}

/// Bytes of kernel memory the BPF maps this process holds take, as the
/// kernel accounts them (`memlock` in /proc/self/fdinfo).
pub fn kernel_memory() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else { return 0 };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter(|info| info.lines().any(|line| line.starts_with("map_id:")))
        .filter_map(|info| {
            info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// An `EVENTS` record's bytes as the program wrote them.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    (bytes.len() == size_of::<Event>()).then(|| bytemuck::pod_read_unaligned(bytes))
}

pub fn endpoint(address: IpAddr, port: u16) -> Endpoint {
    match address {
        IpAddr::V4(v4) => Endpoint::v4(v4.octets(), port.to_be()),
        IpAddr::V6(v6) => Endpoint::v6(v6.octets(), port.to_be()),
    }
}

/// The IP address an `Endpoint` holds.
pub fn endpoint_ip(endpoint: &Endpoint) -> IpAddr {
    if endpoint.family == redirector_ebpf::FAMILY_V4 {
        let [a, b, c, d, ..] = endpoint.addr;
        IpAddr::from([a, b, c, d])
    } else {
        IpAddr::from(endpoint.addr)
    }
}

pub fn service_endpoints(config: &Config) -> impl Iterator<Item = Endpoint> + '_ {
    config
        .service
        .addresses
        .iter()
        .flat_map(|&address| config.service.ports.iter().map(move |&port| endpoint(address, port)))
}

/// The service addresses at the probe port, if probes are on.
pub fn probe_endpoints(config: &Config) -> impl Iterator<Item = Endpoint> + '_ {
    let port = config.probe.port;
    config.service.addresses.iter().filter_map(move |&address| port.map(|port| endpoint(address, port)))
}

pub fn edge_config(config: &Config) -> redirector_ebpf::Config {
    let mut value = redirector_ebpf::Config {
        mode: match config.mode {
            ForwardingMode::Dsr => Mode::Dsr as u8,
            ForwardingMode::Nat => Mode::Nat as u8,
        },
        ..Default::default()
    };
    if let Some(v4) = config.edge.ipv4 {
        value.edge_v4 = v4.octets();
        value.flags |= CONFIG_HAS_EDGE_V4;
    }
    if let Some(v6) = config.edge.ipv6 {
        value.edge_v6 = v6.octets();
        value.flags |= CONFIG_HAS_EDGE_V6;
    }
    value
}

/// The kernel's view of a home server: its addresses, port and effective state.
pub fn server_entry(home: &HomeServer) -> Server {
    let state = match home.effective_state() {
        ServerState::Active => redirector_ebpf::ServerState::Active,
        // Its clients keep the fast path until they are moved.
        ServerState::Draining | ServerState::Removing => redirector_ebpf::ServerState::Draining,
        ServerState::Down => redirector_ebpf::ServerState::Down,
    };
    entry(home.ipv4, home.ipv6, home.port, state)
}

/// The XDP attach mode aya takes for ours.
pub fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    }
}

fn entry(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>, port: u16, state: redirector_ebpf::ServerState) -> Server {
    let mut entry = Server { port_be: port.to_be(), state: state as u8, ..Default::default() };
    if let Some(v4) = ipv4 {
        entry.v4 = v4.octets();
        entry.flags |= SERVER_HAS_V4;
    }
    if let Some(v6) = ipv6 {
        entry.v6 = v6.octets();
        entry.flags |= SERVER_HAS_V6;
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_carry_wire_order_ports_and_family() {
        let v4 = endpoint("192.0.2.10".parse().unwrap(), 5060);
        assert_eq!(&v4.addr[..4], &[192, 0, 2, 10]);
        assert_eq!(&v4.addr[4..], &[0; 12]);
        assert_eq!(v4.port_be.to_ne_bytes(), [0x13, 0xc4]);
        assert_eq!(v4.family, redirector_ebpf::FAMILY_V4);
        let v6 = endpoint("2001:db8::1".parse().unwrap(), 1);
        assert_eq!(v6.addr[0..2], [0x20, 0x01]);
        assert_eq!(v6.family, redirector_ebpf::FAMILY_V6);
    }

    #[test]
    fn config_becomes_map_values() {
        let config = Config::parse(
            r#"
            interface = "e"
            mode = "dsr"
            [service]
            addresses = ["192.0.2.10"]
            ports = [5060, 5080]
            [edge]
            ipv4 = "10.0.0.1"
            [[servers]]
            name = "a"
            ipv6 = "fd00::a"
            state = "down"
            "#,
        )
        .unwrap();
        let edge = edge_config(&config);
        assert_eq!((edge.mode, edge.flags, edge.edge_v4), (Mode::Dsr as u8, CONFIG_HAS_EDGE_V4, [10, 0, 0, 1]));
        let ports: Vec<u16> = service_endpoints(&config).map(|s| u16::from_be(s.port_be)).collect();
        assert_eq!(ports, vec![5060, 5080]);
        let server = server_entry(&config.home_servers()[0]);
        assert_eq!((server.flags, server.state), (SERVER_HAS_V6, redirector_ebpf::ServerState::Down as u8));
        assert_eq!(u16::from_be(server.port_be), 5060);
    }
}
