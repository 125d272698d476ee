//! Which clients the kernel forwards: the one place client entries (and in
//! nat mode their edge ports and reply entries) are written, for static
//! clients and first contacts alike. Keeps AOR → installed client keys so
//! a later move can find and update them.
//!
//! Each client address also holds a load slot: its index in the per-CPU
//! `LOADS` array, where the program counts its packets. An array indexed
//! from the entry costs a hit no second hash lookup (a per-CPU hash keyed
//! by the client would), and per CPU no hit writes a line another CPU
//! reads. A slot stays with its address across moves and re-installs, so
//! its count only grows; it is freed with the address's edge port (idle,
//! evicted, forgotten) and zeroed when handed out again, so no client
//! starts with another's count: a slot handed out waits in
//! `unzeroed_slots` until the next write, which zeroes every waiting slot
//! in one batched call before it writes any entry naming one.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use redirector_ebpf::{
    AorRoute, CLIENT_ADDS_RPORT, CLIENT_CHECKS_REGISTER, CLIENT_SHARED, ClientEntry, Endpoint, NO_LOAD_SLOT, NatEntry,
    NatKey, aor::aor_hash,
};

use crate::{
    config::{Config, ForwardingMode},
    kernel::{
        aor_routes::{AorRoutes, Claim, hash_of},
        installed::{InstalledClients, KernelRoute, LineRoute, NatReply},
        loader::{DataPlane, DataPlaneError, endpoint, endpoint_ip, service_endpoints},
        nat_ports::{NatPorts, NatPortsExhausted},
        numbers::{Numbers, Reuse},
    },
    model::{HomeServer, Origin},
    sip::Aor,
};

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error(transparent)]
    DataPlane(Box<DataPlaneError>),
    #[error(transparent)]
    NatPorts(#[from] NatPortsExhausted),
}

impl From<DataPlaneError> for FastPathError {
    fn from(error: DataPlaneError) -> Self {
        Self::DataPlane(Box::new(error))
    }
}

/// Keyed by what clients send, so hashed with a random seed; foldhash
/// rather than SipHash, as a move of a million clients looks each up twice.
type Seeded = foldhash::fast::RandomState;

/// AOR → (client key, service endpoint it talked to), as `FastPath` keeps them.
type InstalledEntries = HashMap<Aor, Vec<(Endpoint, Endpoint)>, Seeded>;

/// `aor`'s installed entries, with room for one when it has none yet: most
/// AORs have one client socket, and a `Vec`'s first push makes room for
/// four (160 bytes an AOR instead of 40, touched as the table grows).
fn entries_of(installed: &mut InstalledEntries, aor: Aor) -> &mut Vec<(Endpoint, Endpoint)> {
    installed.entry(aor).or_insert_with(|| Vec::with_capacity(1))
}

pub struct FastPath {
    dataplane: DataPlane,
    mode: ForwardingMode,
    nat_ports: NatPorts,
    /// A client keeps its edge port across re-installs.
    nat_port_of: HashMap<Endpoint, u16, Seeded>,
    /// `LOADS` slots, as many as the client map holds entries.
    load_slots: Numbers,
    /// A client keeps its load slot (and count) across re-installs.
    load_slot_of: HashMap<Endpoint, u32, Seeded>,
    /// Slots handed out and not yet zeroed in the kernel (`write` does).
    unzeroed_slots: Vec<u32>,
    /// What first contact learned of a client (static clients have none),
    /// kept across re-installs.
    learned: HashMap<Endpoint, Learned, Seeded>,
    /// AOR → (client key, service endpoint it talked to).
    installed: InstalledEntries,
    /// A shared socket's other lines: the AORs first contact installed it
    /// for after its owner, which the kernel routes by `AORS`. One of them
    /// takes the socket over when its owner's entries are withdrawn
    /// (`hand_over`).
    lines: HashMap<Endpoint, Vec<Aor>, Seeded>,
    /// nat: each other line's own edge port, on the socket that first got
    /// one for it: its `AORS` route names the port, whose reply entry
    /// names the socket and the line's home. Held until the line is
    /// withdrawn or expires, or the socket leaves the fast path.
    line_ports: HashMap<Aor, LinePort, Seeded>,
    /// nat, between `adopt` and `sync_aors`: the reply entries a previous
    /// daemon left naming an adopted shared socket (its other lines'
    /// ports), by edge port; their ports are held until `sync_aors` keeps
    /// those a consistent route names and removes the rest.
    adopted_line_replies: HashMap<u16, (NatKey, NatEntry), Seeded>,
    /// The AORs the current scan has yet to look at.
    scanning: Vec<Aor>,
    /// The client entries as first contact reads them, kept in step with
    /// every write and removal.
    shared: Arc<InstalledClients>,
    /// The clients the config pins (`[[clients]]`).
    static_clients: HashSet<Endpoint>,
    /// Which AORs `AORS` routes.
    aor_routes: AorRoutes,
}

/// nat: a shared socket's other line's own edge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinePort {
    /// The socket.
    client: Endpoint,
    /// The service address:port it talked to: its replies' source.
    service: Endpoint,
    port: u16,
}

impl LinePort {
    fn key(&self) -> NatKey {
        NatKey { edge_port_be: self.port.to_be(), family: self.client.family, _pad: 0 }
    }
}

/// What first contact learned of a client, for its kernel entry.
#[derive(Debug, Clone, Copy)]
struct Learned {
    /// nat: the program adds `;rport` to its requests (`CLIENT_ADDS_RPORT`).
    adds_rport: bool,
    /// The `aor_hash` of the AOR it was installed for, whose requests
    /// may take its entry (`CLIENT_CHECKS_REGISTER`).
    aor_hash: u64,
    /// Which AOR the socket was installed for (a hash of it). It keeps it
    /// while it is installed: a request of another AOR from it makes it
    /// `shared` instead.
    owner: u64,
    /// The socket carries other AORs too (`CLIENT_SHARED`): the kernel
    /// sends only its owner's requests on.
    shared: bool,
}

impl Learned {
    /// What `origin` teaches of the socket, installed for `aor`.
    fn of(origin: &Origin, aor: &Aor, before: Option<Self>) -> Self {
        let owner = owner_of(aor);
        let shared = before.is_some_and(|b| b.owner == owner && b.shared);
        Self { adds_rport: !origin.asks_rport, aor_hash: aor_hash(aor.as_str().as_bytes()), owner, shared }
    }

    /// What an adopted kernel entry says first contact had learned.
    fn of_entry(entry: &ClientEntry) -> Self {
        Self {
            adds_rport: entry.flags & CLIENT_ADDS_RPORT != 0,
            aor_hash: entry.aor_hash,
            owner: entry.owner,
            shared: entry.flags & CLIENT_SHARED != 0,
        }
    }

    /// The kernel entry's flags and hash for a client first contact
    /// learned (`Some`) or a static one.
    fn apply(learned: Option<Self>, mode: ForwardingMode, entry: &mut ClientEntry) {
        let nat = mode == ForwardingMode::Nat;
        match learned {
            // Static clients: whether they ask for rport is not known (the
            // program checks each request), and they may register any AOR.
            None => {
                if nat {
                    entry.flags |= CLIENT_ADDS_RPORT;
                }
            }
            Some(learned) => {
                if nat && learned.adds_rport {
                    entry.flags |= CLIENT_ADDS_RPORT;
                }
                entry.flags |= CLIENT_CHECKS_REGISTER;
                if learned.shared {
                    entry.flags |= CLIENT_SHARED;
                }
                entry.aor_hash = learned.aor_hash;
                entry.owner = learned.owner;
            }
        }
    }
}

/// The key a client entry's `owner` holds for `aor`.
pub fn owner_of(aor: &Aor) -> u64 {
    xxhash_rust::xxh3::xxh3_64(aor.as_str().as_bytes())
}

/// What `FastPath::install` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The socket forwards to the AOR's home.
    ForAor,
    /// The socket is another AOR's: it was marked shared, and the AOR's
    /// requests from it go up to first contact.
    Shared,
}

/// What `adopt` made of a previous daemon's client entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Kept as they were.
    pub kept: usize,
    /// Rewritten: their AOR's home changed, or they needed an edge port.
    pub repointed: usize,
    /// Removed: their AOR is no longer assigned.
    pub removed: usize,
}

/// A learned client address as one scan step read it from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub aor: Aor,
    /// The server slot the kernel sends it to.
    pub server: u32,
    /// A key for the client address.
    pub key: u64,
    /// Fast-path packets so far (since its load slot was handed out).
    pub packets: u64,
    /// How long ago its last packet was (or it was installed).
    pub seen_ago: Duration,
}

impl Reading {
    /// The key covers the load slot: an address that comes back on another
    /// slot is a new series to the rebalancer, not a jump in the old one.
    fn of(aor: &Aor, client: Endpoint, entry: &ClientEntry, packets: u64, now: u64) -> Self {
        let key = xxhash_rust::xxh3::xxh3_64(&[bytemuck::bytes_of(&client), &entry.load_slot.to_ne_bytes()].concat());
        Self {
            aor: aor.clone(),
            server: entry.server,
            key,
            packets,
            seen_ago: Duration::from_nanos(now.saturating_sub(entry.last_seen_ns)),
        }
    }
}

/// What one scan step did and read.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Idle client addresses taken off the fast path.
    pub removed: usize,
    /// The others.
    pub readings: Vec<Reading>,
    /// Whether the pass over every learned client is complete.
    pub complete: bool,
}

impl FastPath {
    /// Takes a configured data plane and installs the config's static clients.
    pub fn new(dataplane: DataPlane, config: &Config) -> Result<Self, FastPathError> {
        Self::with_servers(dataplane, config, &config.home_servers())
    }

    /// As `new`, the static clients pointed at the slots `servers` are in
    /// (the daemon's pool, whose slots outlive config edits); a client of a
    /// server not among them is left to first contact.
    pub fn with_servers(dataplane: DataPlane, config: &Config, servers: &[HomeServer]) -> Result<Self, FastPathError> {
        let mut fast_path = Self::empty(dataplane, config)?;
        fast_path.install_static(config, servers)?;
        Ok(fast_path)
    }

    /// As `with_servers`, after taking back what a previous daemon left in
    /// the adopted maps (see `adopt`): static clients come after, so none
    /// is handed an edge port an adopted client holds.
    pub fn adopting(
        dataplane: DataPlane,
        config: &Config,
        servers: &[HomeServer],
        homes: &HashMap<u64, (Aor, u32)>,
    ) -> Result<(Self, Adopted), FastPathError> {
        let mut fast_path = Self::empty(dataplane, config)?;
        let adopted = fast_path.adopt(homes)?;
        fast_path.install_static(config, servers)?;
        Ok((fast_path, adopted))
    }

    fn empty(mut dataplane: DataPlane, config: &Config) -> Result<Self, FastPathError> {
        let static_clients = config.clients.iter().map(|c| endpoint(c.address.ip(), c.address.port())).collect();
        let slots = dataplane.load_slots()?;
        Ok(Self {
            dataplane,
            mode: config.mode,
            nat_ports: NatPorts::new(config.edge.nat_port_range()),
            nat_port_of: HashMap::default(),
            load_slots: Numbers::new(0..=slots.saturating_sub(1), Reuse::Soonest),
            load_slot_of: HashMap::default(),
            unzeroed_slots: Vec::new(),
            learned: HashMap::default(),
            installed: HashMap::default(),
            lines: HashMap::default(),
            line_ports: HashMap::default(),
            adopted_line_replies: HashMap::default(),
            scanning: Vec::new(),
            shared: Arc::default(),
            static_clients,
            aor_routes: AorRoutes::default(),
        })
    }

    fn install_static(&mut self, config: &Config, servers: &[HomeServer]) -> Result<(), FastPathError> {
        for client in &config.clients {
            let Some(server) = servers.iter().find(|s| s.name == client.server).map(|s| s.index) else {
                tracing::warn!(client = %client.address, server = client.server, "a [[clients]] entry's server is not in the pool: left to first contact");
                continue;
            };
            // Static clients have not said which service address they use:
            // nat replies come from the first one of their family.
            let family = endpoint(client.address.ip(), 0).family;
            let service = service_endpoints(config).find(|s| s.family == family).unwrap_or_default();
            self.put(endpoint(client.address.ip(), client.address.port()), server, service)?;
        }
        Ok(())
    }

    /// Takes back a previous daemon's client entries (maps of this mode):
    /// each installed for an AOR that `homes` (by `owner_of` key) still
    /// assigns is kept, pointed at that AOR's server slot now, with its
    /// edge port and reply entry; the others are removed (the AOR expired
    /// or is gone; nat: the entry has no port or reply entry of its own,
    /// which the LRU may have evicted), and come back through first
    /// contact. Static clients' entries are left to `install_static`.
    /// nat: reply entries that name an adopted shared socket are held for
    /// `sync_aors`, which keeps the lines' ports its routes still name.
    /// Entries that need no change keep their last-seen time, and every
    /// kept entry its load slot and count (one whose slot another entry
    /// took first, or beyond the map, is rewritten with a fresh one).
    fn adopt(&mut self, homes: &HashMap<u64, (Aor, u32)>) -> Result<Adopted, FastPathError> {
        let nat = self.mode == ForwardingMode::Nat;
        let mut replies: HashMap<NatKey, NatEntry> = self.dataplane.all_nat_replies()?.into_iter().collect();
        let mut adopted = Adopted::default();
        let (mut repoint, mut gone) = (Vec::new(), Vec::new());
        let mut claimed = HashSet::new();
        for (client, entry) in self.dataplane.all_clients()? {
            let key = NatKey { edge_port_be: entry.nat_port_be, family: client.family, _pad: 0 };
            let reply = replies.get(&key).filter(|reply| reply.client == client && entry.nat_port_be != 0).copied();
            if entry.owner == 0 && self.static_clients.contains(&client) {
                // `install_static` rewrites it, on the same edge port and slot.
                self.claim_load_slot(client, entry.load_slot, &mut claimed);
                if reply.is_some() {
                    self.nat_port_of.insert(client, u16::from_be(entry.nat_port_be));
                    replies.remove(&key);
                }
                continue;
            }
            let Some((aor, server)) = homes.get(&entry.owner).filter(|_| entry.owner != 0 && (!nat || reply.is_some()))
            else {
                gone.push(client);
                continue;
            };
            self.learned.insert(client, Learned::of_entry(&entry));
            if let Some(reply) = reply {
                self.nat_port_of.insert(client, u16::from_be(entry.nat_port_be));
                self.share_nat_reply(&key, &reply);
                replies.remove(&key);
            }
            let service = reply.map_or_else(Endpoint::default, |reply| reply.service);
            entries_of(&mut self.installed, aor.clone()).push((client, service));
            let slot_claimed = self.claim_load_slot(client, entry.load_slot, &mut claimed);
            if entry.server == *server && slot_claimed {
                self.share(&client, &entry);
                adopted.kept += 1;
            } else {
                repoint.push((client, *server, service));
            }
        }
        if nat {
            self.hold_line_replies(&mut replies);
        }
        // Every adopted port and slot is taken before a repointed entry is written.
        self.nat_ports.reserve(self.nat_port_of.values().copied());
        self.nat_ports.reserve(self.adopted_line_replies.keys().copied());
        self.load_slots.reserve(self.load_slot_of.values().copied());
        let mut writes = Writes::new();
        for &(client, server, service) in &repoint {
            self.entry_for(client, (server, service), &mut writes)?;
        }
        adopted.repointed = repoint.len();
        adopted.removed = gone.len();
        self.dataplane.remove_clients(&gone)?;
        // What is left belongs to no adopted client.
        self.dataplane.remove_nat_replies(&replies.into_keys().collect::<Vec<_>>())?;
        self.write(&writes)?;
        Ok(adopted)
    }

    /// nat: moves the reply entries that name an adopted shared socket
    /// out of `replies` (left over once every client took its own) into
    /// `adopted_line_replies`: they may be its other lines' ports.
    fn hold_line_replies(&mut self, replies: &mut HashMap<NatKey, NatEntry>) {
        replies.retain(|key, reply| {
            let shared = self.learned.get(&reply.client).is_some_and(|learned| learned.shared);
            if shared {
                self.adopted_line_replies.insert(u16::from_be(key.edge_port_be), (*key, *reply));
            }
            !shared
        });
    }

    /// Gives `client` the load slot its adopted entry names, unless the
    /// slot is beyond the map or another entry claimed it first; whether
    /// it did.
    fn claim_load_slot(&mut self, client: Endpoint, slot: u32, claimed: &mut HashSet<u32>) -> bool {
        let free = slot <= self.load_slots.end() && claimed.insert(slot);
        if free {
            self.load_slot_of.insert(client, slot);
        }
        free
    }

    /// The client entries, for first contact to read.
    pub fn shared(&self) -> Arc<InstalledClients> {
        self.shared.clone()
    }

    pub fn dataplane(&mut self) -> &mut DataPlane {
        &mut self.dataplane
    }

    /// Forwards `origin`'s traffic to the server in slot `server` (`origin`
    /// names the service address:port it talked to, the source of nat
    /// replies, and whether its Via asked for rport); or, when the kernel
    /// holds the socket for another AOR, marks it shared (see
    /// `share_socket`) and routes `aor` by `AORS` to `server` (the program
    /// sends the line's datagrams from the socket there; nat: from an edge
    /// port of the line's own, `give_line_port`). A socket
    /// another AOR owned that is off the kernel (withdrawn, idle) is taken
    /// over by `aor`, shared still.
    pub fn install(&mut self, aor: &Aor, origin: Origin, server: u32) -> Result<Installed, Arc<FastPathError>> {
        let mut results = self.install_many(&[Install { aor, origin, server }]);
        results.pop().expect("one result per install")
    }

    /// `install` for many clients, in order, with one result each. Their
    /// kernel entries go in one batched write (and their fresh load slots'
    /// zeroing in one more), not two calls a client. A socket found to be
    /// another AOR's has what came before it written first, so marking it
    /// shared finds the kernel as one install at a time would. A failed
    /// write's error is shared by every client it did not write.
    pub fn install_many(&mut self, installs: &[Install<'_>]) -> Vec<Result<Installed, Arc<FastPathError>>> {
        let mut results = Vec::with_capacity(installs.len());
        let mut pending = Pending::new();
        for install in installs {
            let Install { aor, origin, server } = *install;
            let entry = (
                endpoint(origin.client.ip(), origin.client.port()),
                endpoint(origin.service.ip(), origin.service.port()),
            );
            let before = self.learned.get(&entry.0).copied();
            let owned_by_other = before.is_some_and(|learned| learned.owner != owner_of(aor));
            if owned_by_other {
                self.flush(&mut pending, &mut results);
                if self.shared.get(origin.client).is_some() {
                    results.push(self.add_shared_line(entry, aor, server).map_err(Arc::new));
                    continue;
                }
            }
            let mut learned = Learned::of(&origin, aor, before);
            learned.shared |= owned_by_other;
            self.learned.insert(entry.0, learned);
            if let Some(lines) = self.lines.get_mut(&entry.0) {
                lines.retain(|line| line != aor);
            }
            let in_kernel = self.shared.get(origin.client).is_some();
            if let Err(error) = self.entry_for(entry.0, (server, entry.1), &mut pending.writes) {
                let forgotten = if in_kernel { Ok(()) } else { self.forget_client(entry.0) };
                results.push(Err(Arc::new(forgotten.err().unwrap_or(error))));
                continue;
            }
            pending.installs.push(PendingInstall { result: results.len(), aor, entry, in_kernel });
            // Settled by `flush` once the kernel has the entry.
            results.push(Ok(Installed::ForAor));
        }
        self.flush(&mut pending, &mut results);
        results
    }

    /// Writes the pending installs' entries and records those the kernel
    /// took; the others get the write's error, and a client the kernel
    /// held no entry of before and holds none of now (an earlier install
    /// of the batch may have written one) keeps no load slot or edge port.
    fn flush(&mut self, pending: &mut Pending<'_>, results: &mut [Result<Installed, Arc<FastPathError>>]) {
        if pending.installs.is_empty() {
            return;
        }
        let Pending { writes, installs } = std::mem::replace(pending, Pending::new());
        let (written, error) = match self.write(&writes) {
            Ok(()) => (installs.len(), None),
            Err(stopped) => (stopped.clients, Some(Arc::new(stopped.error))),
        };
        for (k, PendingInstall { result, aor, entry, in_kernel }) in installs.into_iter().enumerate() {
            if k < written {
                let entries = entries_of(&mut self.installed, aor.clone());
                if !entries.contains(&entry) {
                    entries.push(entry);
                }
                continue;
            }
            let error = error.clone().expect("a write that stopped short has an error");
            let held = in_kernel || self.shared.get(socket_address(&entry.0)).is_some();
            let forgotten = if held { Ok(()) } else { self.forget_client(entry.0) };
            results[result] = Err(forgotten.map_err(Arc::new).err().unwrap_or(error));
        }
    }

    /// A socket installed for one AOR sent a request of another: it stays
    /// its owner's (home, hash, installs), and from now on the kernel
    /// checks every request from it, so no other AOR's request goes to
    /// the owner's home. The kernel's entry is flagged as it is; one off
    /// the kernel (its owner moving, or evicted) gets the flag when it is
    /// written again.
    fn share_socket(&mut self, client: Endpoint) -> Result<(), FastPathError> {
        if self.learned.get(&client).is_none_or(|learned| learned.shared) {
            return Ok(());
        }
        // Recorded shared only once the kernel's entry is flagged: a failed
        // write is tried again by the next install of another line.
        match self.dataplane.client(client)? {
            Some(mut entry) => {
                entry.flags |= CLIENT_SHARED;
                self.dataplane.install_client(client, entry)?;
                self.share(&client, &entry);
            }
            // Evicted: first contact's copy goes too, as the kernel's entry
            // did, so it routes no other line's datagram by the entry.
            None => self.shared.remove(socket_address(&client)),
        }
        if let Some(learned) = self.learned.get_mut(&client) {
            learned.shared = true;
        }
        Ok(())
    }

    /// `aor`, another line of the socket `client` the kernel holds for its
    /// owner (talking to `service`): the socket is marked shared and `aor`
    /// routed by `AORS` (nat: by a port of its own).
    fn add_shared_line(
        &mut self,
        (client, service): (Endpoint, Endpoint),
        aor: &Aor,
        server: u32,
    ) -> Result<Installed, FastPathError> {
        self.share_socket(client)?;
        self.add_line(client, aor);
        if self.mode == ForwardingMode::Nat {
            self.give_line_port(client, service, aor)?;
        }
        self.route_aors(&[(aor, server)])?;
        Ok(Installed::Shared)
    }

    /// nat: `aor`, another line of socket `client`, gets an edge port of
    /// its own, for `route_aors` to write with its home; also a line homed
    /// where the entry is, whose port then does not follow the entry's
    /// line when that one moves. A line that holds
    /// one on another socket (the AOR registered from two) keeps it there:
    /// the program sends it from that socket alone, and from this one it
    /// goes up.
    fn give_line_port(&mut self, client: Endpoint, service: Endpoint, aor: &Aor) -> Result<(), FastPathError> {
        if !self.line_ports.contains_key(aor) {
            let port = self.nat_ports.allocate()?;
            self.line_ports.insert(aor.clone(), LinePort { client, service, port });
        }
        Ok(())
    }

    /// nat: frees the AORs' own edge ports and their reply entries (their
    /// routes already out of `AORS`). A port stays held while the kernel
    /// keeps its entry.
    fn free_line_ports<'a>(&mut self, aors: impl IntoIterator<Item = &'a Aor>) -> Result<(), FastPathError> {
        for aor in aors {
            let Some(line) = self.line_ports.get(aor).copied() else { continue };
            self.dataplane.remove_nat_reply(line.key())?;
            self.shared.remove_nat_reply(line.client.family == redirector_ebpf::FAMILY_V4, line.port);
            self.nat_ports.release(line.port);
            self.line_ports.remove(aor);
        }
        Ok(())
    }

    /// nat: the lines that hold an edge port on socket `client`.
    fn lines_with_ports_on(&self, client: Endpoint) -> Vec<Aor> {
        self.line_ports.iter().filter(|(_, line)| line.client == client).map(|(aor, _)| aor.clone()).collect()
    }

    /// The edge port `aor` holds as another line of a shared socket
    /// (nat), for tests.
    pub fn line_port(&self, aor: &Aor) -> Option<u16> {
        self.line_ports.get(aor).map(|line| line.port)
    }

    /// Records `aor` as one of a shared socket's other lines.
    fn add_line(&mut self, client: Endpoint, aor: &Aor) {
        let lines = self.lines.entry(client).or_default();
        if !lines.contains(aor) {
            lines.push(aor.clone());
        }
    }

    /// The other lines a shared socket carries (`lines`), for tests.
    pub fn lines(&self, client: Endpoint) -> Vec<Aor> {
        self.lines.get(&client).cloned().unwrap_or_default()
    }

    /// Marks `source` an upstream proxy in `PROXIES` (dsr: only its misses
    /// have their Vias read, nat reads none), unless it was lately;
    /// whether it was written.
    pub fn record_proxy(&mut self, source: IpAddr, now: Instant) -> Result<bool, FastPathError> {
        if !self.shared.proxy_unwritten(source, now) {
            return Ok(false);
        }
        let write = self.mode == ForwardingMode::Dsr;
        if write {
            self.dataplane.add_proxy(source)?;
        }
        self.shared.proxy_written(source, now);
        Ok(write)
    }

    /// The client keys installed for `aor`.
    pub fn installed(&self, aor: &Aor) -> Vec<Endpoint> {
        self.installed.get(aor).map_or_else(Vec::new, |entries| entries.iter().map(|(client, _)| *client).collect())
    }

    /// Takes the AORs' clients off the fast path, and their routes out of
    /// `AORS`, with one batched map delete each: their packets go up to
    /// first contact, which answers from the assignments and installs them
    /// again (with the edge ports and load slots they keep meanwhile).
    /// Returns the clients withdrawn.
    /// A shared socket one of whose other lines is still routed
    /// stays on the fast path, handed over to that line (`hand_over`):
    /// withdrawing one line takes the fast path from no other. nat: a
    /// withdrawn line's own edge port is freed with its reply entry.
    pub fn withdraw_many(&mut self, aors: &[Aor]) -> Result<Vec<Endpoint>, FastPathError> {
        self.unroute_aors(aors)?;
        self.drop_lines(aors);
        self.free_line_ports(aors)?;
        let withdrawn: Vec<(Aor, Vec<(Endpoint, Endpoint)>)> =
            aors.iter().filter_map(|aor| self.installed.remove_entry(aor)).collect();
        let mut clients = Vec::new();
        for (aor, entries) in &withdrawn {
            let owner = owner_of(aor);
            for &(client, service) in entries {
                // A socket another AOR took since is that AOR's to withdraw.
                let own = self.learned.get(&client).is_none_or(|learned| learned.owner == owner);
                if own && !self.hand_over(client, service, None) {
                    clients.push(client);
                }
            }
        }
        let removed = self.dataplane.remove_clients(&clients);
        let done = entries_done(&removed, clients.len());
        clients[..done].iter().for_each(|client| self.shared.remove(socket_address(client)));
        if let Err(error) = removed {
            // Still recorded: a later move or scan finds what the kernel kept.
            for (aor, entries) in withdrawn {
                self.installed.entry(aor).or_default().extend(entries);
            }
            return Err(error.into());
        }
        Ok(clients)
    }

    /// The AORs are no longer any shared socket's other lines.
    fn drop_lines(&mut self, aors: &[Aor]) {
        if self.lines.is_empty() {
            return;
        }
        let gone: HashSet<&Aor> = aors.iter().collect();
        self.lines.retain(|_, lines| {
            lines.retain(|line| !gone.contains(line));
            !lines.is_empty()
        });
    }

    /// Gives a shared socket whose owner is withdrawn to the first of its
    /// other lines that `AORS` routes: its entry becomes that line's
    /// (home, hash, owner; edge port and load slot kept), as if the line
    /// had been first, and the line's requests from it take the entry.
    /// nat: the line keeps its own port too (its home may have it as the
    /// line's contact) until the line is withdrawn or the socket leaves.
    /// Whether it did; on a failed write the socket is withdrawn. With
    /// `busy_within`, only to a line the kernel routed within that time
    /// (the idle sweep: the socket is busy for that line).
    fn hand_over(&mut self, client: Endpoint, service: Endpoint, busy_within: Option<Duration>) -> bool {
        let Some(before) = self.learned.get(&client).copied() else { return false };
        let now = monotonic_ns();
        let busy = |last_seen_ns: u64| {
            busy_within.is_none_or(|within| Duration::from_nanos(now.saturating_sub(last_seen_ns)) <= within)
        };
        let Some((line, home)) = self.lines.get(&client).and_then(|lines| {
            lines.iter().find_map(|line| {
                let route = self.dataplane.aor_route(self.aor_routes.routed(line)?).ok()??;
                busy(route.last_seen_ns).then(|| (line.clone(), route.server))
            })
        }) else {
            return false;
        };
        let owner = owner_of(&line);
        self.learned.insert(client, Learned { aor_hash: hash_of(&line), owner, shared: true, ..before });
        if let Err(error) = self.put(client, home, service) {
            tracing::warn!(%error, %line, "a shared socket could not be handed to its other line: withdrawn with its owner");
            self.learned.insert(client, before);
            return false;
        }
        if let Some(lines) = self.lines.get_mut(&client) {
            lines.retain(|other| *other != line);
        }
        entries_of(&mut self.installed, line).push((client, service));
        true
    }

    /// Points the AORs' clients at their new servers (slots), in place:
    /// `plan_repoint` then `repoint` with every move.
    pub fn repoint_many(&mut self, moves: &[(&Aor, u32)]) -> Result<(), FastPathError> {
        let plan = self.plan_repoint(moves);
        self.repoint(plan, |_| true)
    }

    /// The kernel entries that point the AORs' clients at their new
    /// servers (slots), each with everything else it holds (edge port,
    /// load slot, what first contact learned), written by `repoint`. Nothing
    /// the program reads changes yet, so a move can plan while its commit
    /// runs. A plan that failed (no load slot could be zeroed) carries its
    /// error to `repoint`, which then withdraws the entries.
    pub fn plan_repoint<'a>(&mut self, moves: &[(&'a Aor, u32)]) -> Repoint<'a> {
        let mut targets = Vec::with_capacity(moves.len());
        let mut ends = Vec::with_capacity(moves.len());
        for &(aor, server) in moves {
            if let Some(entries) = self.installed.get(aor) {
                let owner = owner_of(aor);
                // A socket another AOR took since (this one's entry expired
                // meanwhile) is left to that AOR.
                let own =
                    |(client, _): &&(Endpoint, Endpoint)| self.learned.get(client).is_none_or(|l| l.owner == owner);
                targets.extend(entries.iter().filter(own).map(|&(client, service)| (client, server, service)));
            }
            ends.push(targets.len());
        }
        let mut writes = Writes::new();
        let planned = targets
            .into_iter()
            .try_for_each(|(client, server, service)| self.entry_for(client, (server, service), &mut writes));
        Repoint { moves: moves.to_vec(), ends, writes: planned.map(|()| writes) }
    }

    /// Writes a plan's entries of the moves `moved` says were made (by
    /// position), in one batched map update, and their AORs' routes in
    /// `AORS`; the others are left as they are. Called after the moves'
    /// durable commit, so the kernel never sends a client to a server the
    /// store does not name yet (a crash in
    /// between leaves the old entries, which the next daemon repoints when
    /// it adopts them). If the kernel refuses part of the batch, the moved
    /// AORs' entries are withdrawn instead: their next packets meet first
    /// contact, which answers from the store, rather than the server they
    /// left.
    pub fn repoint(&mut self, plan: Repoint<'_>, moved: impl Fn(usize) -> bool) -> Result<(), FastPathError> {
        let Repoint { moves, ends, writes } = plan;
        let all = (0..moves.len()).all(&moved);
        let routes: Vec<(&Aor, u32)> = moves.iter().enumerate().filter(|&(i, _)| moved(i)).map(|(_, &m)| m).collect();
        let written = writes.and_then(|writes| {
            let writes = if all { writes } else { writes.only(&ends, &moved) };
            self.write(&writes)?;
            self.route_aors(&routes)
        });
        if let Err(error) = written {
            let moved: Vec<Aor> = routes.iter().map(|&(aor, _)| aor.clone()).collect();
            if let Err(withdrawing) = self.withdraw_many(&moved) {
                tracing::error!(%withdrawing, "moved clients whose entries were not rewritten could not be withdrawn either: they reach their old server until their entries expire or are written again");
            }
            return Err(error);
        }
        Ok(())
    }

    /// Takes the AORs' clients off the fast path for good (their assignments
    /// expired): client entries in one batched delete, then their nat ports
    /// and reply entries.
    pub fn forget_many(&mut self, aors: &[Aor]) -> Result<(), FastPathError> {
        for client in self.withdraw_many(aors)? {
            self.forget_client(client)?;
        }
        Ok(())
    }

    /// One step of the scan over learned clients: each client entry is read
    /// once, and that reading serves everything the daemon wants of it. Idle
    /// ones (last packet older than `idle`) are removed, with their nat ports
    /// and reply entries: a client gone that long no longer owns its address
    /// and port, which another client may reuse. The others are returned,
    /// for load samples and for when their AOR was last seen.
    /// Config-pinned clients are not scanned and never expire. Each call
    /// looks at up to `budget` clients, resuming where the last call
    /// stopped, so a scan of a large pool never holds up installs and moves
    /// for its whole length.
    pub fn scan(&mut self, idle: Duration, budget: usize) -> Result<Scanned, FastPathError> {
        if self.scanning.is_empty() {
            self.scanning = self.installed.keys().cloned().collect();
        }
        let now = monotonic_ns();
        let mut scanned = Scanned::default();
        let mut looked = 0;
        while looked < budget {
            let Some(aor) = self.scanning.pop() else { break };
            let entries = self.installed.remove(&aor).unwrap_or_default();
            looked += entries.len().max(1);
            let (kept, result) = self.scan_entries(&aor, entries, now, idle, &mut scanned.readings);
            if !kept.is_empty() {
                self.installed.insert(aor, kept);
            }
            scanned.removed += result?;
        }
        scanned.complete = self.scanning.is_empty();
        Ok(scanned)
    }

    /// Reads an AOR's entries, removing the idle ones and recording the
    /// others in `readings`; returns the ones kept (on an error, every one
    /// not removed: none is forgotten while the kernel still holds it) and
    /// how many were removed.
    fn scan_entries(
        &mut self,
        aor: &Aor,
        entries: Vec<(Endpoint, Endpoint)>,
        now: u64,
        idle: Duration,
        readings: &mut Vec<Reading>,
    ) -> (Vec<(Endpoint, Endpoint)>, Result<usize, FastPathError>) {
        let mut kept = Vec::with_capacity(entries.len());
        let mut removed = 0;
        let mut entries = entries.into_iter();
        while let Some((client, service)) = entries.next() {
            let outcome = match self.dataplane.client(client) {
                Ok(Some(entry)) if Duration::from_nanos(now.saturating_sub(entry.last_seen_ns)) <= idle => {
                    self.dataplane.client_packets(entry.load_slot).map_err(FastPathError::from).map(|packets| {
                        readings.push(Reading::of(aor, client, &entry, packets, now));
                        kept.push((client, service));
                    })
                }
                // Idle too long, but a shared socket another of whose lines
                // the kernel routed lately: handed to that line (no longer
                // this AOR's).
                Ok(Some(_)) if self.hand_over(client, service, Some(idle)) => Ok(()),
                // Gone from the map (the LRU evicted it) or idle too long.
                Ok(_) => self.remove(client).map(|()| removed += 1),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = outcome {
                kept.push((client, service));
                kept.extend(entries);
                return (kept, Err(error));
            }
        }
        (kept, Ok(removed))
    }

    /// Routes each AOR to the server in its slot in `AORS` (one batched
    /// write; a hash another AOR shares is removed instead, see
    /// `aor_routes`). In nat mode only the shared sockets' other lines
    /// that hold an edge port of their own (`line_ports`) are routed, each
    /// with that port, whose reply entry is rewritten to name the home
    /// first: a datagram between the two writes finds the two homes differ
    /// and goes up, never to the home the line left. A route the kernel
    /// does not take (the map is full) is logged and left out: that AOR's
    /// datagrams go up to first contact, which proxies them, as before;
    /// the others are written all the same.
    pub fn route_aors(&mut self, routes: &[(&Aor, u32)]) -> Result<(), FastPathError> {
        let nat = self.mode == ForwardingMode::Nat;
        let (mut hashes, mut values, mut shared) = (Vec::new(), Vec::new(), Vec::new());
        let mut replies = Writes::new();
        for &(aor, server) in routes {
            let line = self.line_ports.get(aor).copied();
            if nat && line.is_none() {
                continue;
            }
            match self.aor_routes.claim(aor) {
                Claim::Route(hash) => {
                    let mut route = AorRoute { server, ..AorRoute::default() };
                    if let Some(line) = line {
                        route.nat_port_be = line.port.to_be();
                        replies.nat_keys.push(line.key());
                        replies.nat_entries.push(NatEntry { client: line.client, service: line.service, server });
                    }
                    hashes.push(hash);
                    values.push(route);
                }
                Claim::Shared(hash) => shared.push(hash),
            }
        }
        if !shared.is_empty() {
            self.dataplane.unroute_aors(&shared)?;
            shared.iter().for_each(|&hash| self.shared.remove_line_route(hash));
        }
        if !replies.nat_keys.is_empty() {
            self.write(&replies)?;
        }
        let refused = self.write_aor_routes(&hashes, &values);
        for (&hash, route) in hashes.iter().zip(&values) {
            if route.nat_port_be != 0 && !refused.contains(&hash) {
                let line = LineRoute { server: route.server, nat_port: u16::from_be(route.nat_port_be) };
                self.shared.put_line_route(hash, line);
            }
        }
        Ok(())
    }

    /// Writes AOR routes, past any the kernel refuses (one call per
    /// refusal: a full map takes updates of the routes it holds, not new
    /// ones). A refused route is deleted, so that none is left naming the
    /// home an AOR moved off, and forgotten. Returns the refused ones.
    fn write_aor_routes(&mut self, hashes: &[u64], values: &[AorRoute]) -> Vec<u64> {
        let mut refused = Vec::new();
        let mut from = 0;
        while from < hashes.len() {
            let Err(error) = self.dataplane.route_aors(&hashes[from..], &values[from..]) else { break };
            let failed = from + error.entries_done(hashes.len() - from);
            if refused.is_empty() {
                tracing::warn!(%error, "AOR routes not written (is `max_clients` below the assignments held?): their requests through other proxies go up to first contact");
            }
            refused.extend(hashes.get(failed));
            from = failed + 1;
        }
        if refused.is_empty() {
            return refused;
        }
        tracing::warn!(
            refused = refused.len(),
            written = hashes.len() - refused.len(),
            "AOR routes the kernel did not take"
        );
        if let Err(error) = self.dataplane.unroute_aors(&refused) {
            tracing::error!(%error, "AOR routes the kernel refused could not be deleted either: proxied requests of those AORs may reach a home they left");
        }
        refused.iter().for_each(|&hash| {
            self.aor_routes.forget(hash);
            self.shared.remove_line_route(hash);
        });
        refused
    }

    /// Takes the AORs' routes out of `AORS` (one batched delete); a route
    /// is forgotten only once the kernel has let it go.
    fn unroute_aors(&mut self, aors: &[Aor]) -> Result<(), FastPathError> {
        let routed: Vec<(&Aor, u64)> =
            aors.iter().filter_map(|aor| Some((aor, self.aor_routes.routed(aor)?))).collect();
        if routed.is_empty() {
            return Ok(());
        }
        let hashes: Vec<u64> = routed.iter().map(|&(_, hash)| hash).collect();
        let removed = self.dataplane.unroute_aors(&hashes);
        let done = entries_done(&removed, hashes.len());
        for &(aor, hash) in &routed[..done] {
            self.aor_routes.release(aor);
            self.shared.remove_line_route(hash);
        }
        Ok(removed?)
    }

    /// How long ago the program last routed one of `aor`'s requests by
    /// its `AORS` route (to within a second); `None` if it has not since
    /// the route was written, or the AOR has none.
    pub fn aor_seen_ago(&self, aor: &Aor) -> Option<Duration> {
        let hash = self.aor_routes.routed(aor)?;
        let route = self.dataplane.aor_route(hash).ok()??;
        (route.last_seen_ns != 0).then(|| Duration::from_nanos(monotonic_ns().saturating_sub(route.last_seen_ns)))
    }

    /// At start: `AORS` routes exactly `routes` (every assigned AOR with
    /// its home's slot), whatever a previous daemon left in it; what it
    /// left is removed first, so that a full map makes room. nat: it
    /// routes the lines whose ports `adopt_line_ports` keeps (their homes
    /// still hold the lines' bindings at those ports), each to the home
    /// `routes` gives it now.
    pub fn sync_aors(&mut self, routes: &[(&Aor, u32)]) -> Result<(), FastPathError> {
        let held = self.dataplane.all_aor_routes()?;
        let wanted: HashSet<u64> = if self.mode == ForwardingMode::Nat {
            self.adopt_line_ports(routes, &held)?
        } else {
            routes.iter().map(|(aor, _)| hash_of(aor)).collect()
        };
        let stale: Vec<u64> = held.into_iter().map(|(hash, _)| hash).filter(|hash| !wanted.contains(hash)).collect();
        if !stale.is_empty() {
            self.dataplane.unroute_aors(&stale)?;
        }
        self.route_aors(routes)
    }

    /// nat, at start: a pinned route that names an edge port keeps it
    /// for its line when the reply entry `adopt` held for that port names
    /// the route's home (and an adopted shared socket), and the store
    /// still assigns the route's AOR: the port, the socket's line and
    /// the port's reply entry are taken back. The other held reply
    /// entries are removed and their ports freed. Returns the kept
    /// routes' hashes.
    fn adopt_line_ports(
        &mut self,
        routes: &[(&Aor, u32)],
        held: &[(u64, AorRoute)],
    ) -> Result<HashSet<u64>, FastPathError> {
        let mut replies = std::mem::take(&mut self.adopted_line_replies);
        let mut kept = HashSet::new();
        if !replies.is_empty() {
            let assigned: HashMap<u64, &Aor> = routes.iter().map(|&(aor, _)| (hash_of(aor), aor)).collect();
            for (hash, route) in held {
                let port = u16::from_be(route.nat_port_be);
                let Some(aor) = assigned.get(hash).filter(|_| port != 0) else { continue };
                let Some(&(_, reply)) = replies.get(&port).filter(|(_, reply)| reply.server == route.server) else {
                    continue;
                };
                replies.remove(&port);
                self.line_ports.insert((*aor).clone(), LinePort { client: reply.client, service: reply.service, port });
                self.add_line(reply.client, aor);
                kept.insert(*hash);
            }
        }
        let gone: Vec<NatKey> = replies.values().map(|(key, _)| *key).collect();
        if !gone.is_empty() {
            self.dataplane.remove_nat_replies(&gone)?;
        }
        replies.into_keys().for_each(|port| self.nat_ports.release(port));
        Ok(kept)
    }

    fn remove(&mut self, client: Endpoint) -> Result<(), FastPathError> {
        self.dataplane.remove_client(client)?;
        self.shared.remove(socket_address(&client));
        self.forget_client(client)
    }

    /// Forgets what first contact learned of `client`, and frees its load
    /// slot, and its edge port and reply entry, if it has one.
    fn forget_client(&mut self, client: Endpoint) -> Result<(), FastPathError> {
        // nat: the lines sent by ports of their own from a shared socket go
        // up with it, and their ports are freed.
        if self.learned.remove(&client).is_some_and(|learned| learned.shared) && !self.line_ports.is_empty() {
            let lines = self.lines_with_ports_on(client);
            self.unroute_aors(&lines)?;
            self.free_line_ports(&lines)?;
        }
        self.lines.remove(&client);
        if let Some(slot) = self.load_slot_of.remove(&client) {
            self.load_slots.release(slot);
        }
        if let Some(port) = self.nat_port_of.remove(&client) {
            let key = NatKey { edge_port_be: port.to_be(), family: client.family, _pad: 0 };
            self.dataplane.remove_nat_reply(key)?;
            self.shared.remove_nat_reply(client.family == redirector_ebpf::FAMILY_V4, port);
            self.nat_ports.release(port);
        }
        Ok(())
    }

    fn put(&mut self, client: Endpoint, server: u32, service: Endpoint) -> Result<(), FastPathError> {
        let mut writes = Writes::new();
        self.entry_for(client, (server, service), &mut writes)?;
        Ok(self.write(&writes)?)
    }

    /// The kernel entries that forward `client` to the server in slot
    /// `server` (with its load slot, and in nat mode its edge port, both
    /// kept across re-installs), with what first contact learned of it.
    fn entry_for(
        &mut self,
        client: Endpoint,
        (server, service): (u32, Endpoint),
        writes: &mut Writes,
    ) -> Result<(), FastPathError> {
        let mut entry = ClientEntry { server, last_seen_ns: writes.now, ..Default::default() };
        Learned::apply(self.learned.get(&client).copied(), self.mode, &mut entry);
        if self.mode == ForwardingMode::Nat {
            let port = match self.nat_port_of.get(&client) {
                Some(&port) => port,
                None => self.nat_ports.allocate()?,
            };
            self.nat_port_of.insert(client, port);
            entry.nat_port_be = port.to_be();
            writes.nat_keys.push(NatKey { edge_port_be: port.to_be(), family: client.family, _pad: 0 });
            writes.nat_entries.push(NatEntry { client, service, server });
        }
        entry.load_slot = self.load_slot(client);
        writes.clients.push(client);
        writes.entries.push(entry);
        Ok(())
    }

    /// `client`'s load slot, a fresh one if it has none (zeroed by the
    /// next `write`, before any entry names it). With every slot held
    /// (more addresses than the client map holds, the LRU's evictions not
    /// yet scanned), `NO_LOAD_SLOT`: the client is forwarded uncounted
    /// until it is installed again.
    fn load_slot(&mut self, client: Endpoint) -> u32 {
        if let Some(&slot) = self.load_slot_of.get(&client) {
            return slot;
        }
        let Some(slot) = self.load_slots.allocate() else {
            tracing::warn!(client = %socket_address(&client), "every load slot is held: a client is forwarded without counting its load");
            return NO_LOAD_SLOT;
        };
        self.unzeroed_slots.push(slot);
        self.load_slot_of.insert(client, slot);
        slot
    }

    /// Reply entries first: a client's forwarded packet may be answered at
    /// once. Load slots handed out are zeroed before either: a count left
    /// over would look like the new client's burst (they stay waiting if
    /// that fails). First contact's copy gets exactly what the kernel
    /// took, also when a batch stops part way.
    fn write(&mut self, writes: &Writes) -> Result<(), Stopped> {
        let stopped = |error: DataPlaneError, clients| Stopped { clients, error: error.into() };
        if !self.unzeroed_slots.is_empty() {
            self.dataplane.reset_loads(&self.unzeroed_slots).map_err(|error| stopped(error, 0))?;
            self.unzeroed_slots.clear();
        }
        if !writes.nat_keys.is_empty() {
            let written = self.dataplane.install_nat_replies(&writes.nat_keys, &writes.nat_entries);
            let done = entries_done(&written, writes.nat_keys.len());
            for (key, entry) in writes.nat_keys.iter().zip(&writes.nat_entries).take(done) {
                self.share_nat_reply(key, entry);
            }
            written.map_err(|error| stopped(error, 0))?;
        }
        if writes.clients.len() >= SHARED_ASIDE_FROM {
            return self.write_clients_sharing_aside(writes);
        }
        if !writes.clients.is_empty() {
            let written = self.dataplane.install_clients(&writes.clients, &writes.entries);
            let done = entries_done(&written, writes.clients.len());
            for (client, entry) in writes.clients.iter().zip(&writes.entries).take(done) {
                self.share(client, entry);
            }
            written.map_err(|error| stopped(error, done))?;
        }
        Ok(())
    }

    /// `write`'s client entries for a large batch (a move's): first
    /// contact's copy is written on a second thread while the kernel takes
    /// the batch, and the entries the kernel did not take (it stopped part
    /// way) are taken out of the copy again, so the copy never names a
    /// route the kernel does not have.
    fn write_clients_sharing_aside(&mut self, writes: &Writes) -> Result<(), Stopped> {
        let (dataplane, shared) = (&mut self.dataplane, &*self.shared);
        let written = std::thread::scope(|scope| {
            scope.spawn(|| {
                for (client, entry) in writes.clients.iter().zip(&writes.entries) {
                    shared.put(socket_address(client), route_of(entry));
                }
            });
            dataplane.install_clients(&writes.clients, &writes.entries)
        });
        let done = entries_done(&written, writes.clients.len());
        writes.clients[done..].iter().for_each(|client| self.shared.remove(socket_address(client)));
        written.map_err(|error| Stopped { clients: done, error: error.into() })
    }

    /// First contact's copy of a client entry written to the kernel.
    fn share(&self, client: &Endpoint, entry: &ClientEntry) {
        self.shared.put(socket_address(client), route_of(entry));
    }

    fn share_nat_reply(&self, key: &NatKey, entry: &NatEntry) {
        let (client, service) = (socket_address(&entry.client), socket_address(&entry.service));
        self.shared.put_nat_reply(u16::from_be(key.edge_port_be), NatReply { client, service, server: entry.server });
    }
}

/// A move's kernel entries, planned (`FastPath::plan_repoint`) and not
/// yet written.
pub struct Repoint<'a> {
    /// Each AOR with its new server's slot.
    moves: Vec<(&'a Aor, u32)>,
    /// Where each AOR's entries end in `writes` (they start where the
    /// previous AOR's end).
    ends: Vec<usize>,
    writes: Result<Writes, FastPathError>,
}

/// How first contact's copy reads a client entry.
fn route_of(entry: &ClientEntry) -> KernelRoute {
    let nat_port = (entry.nat_port_be != 0).then(|| u16::from_be(entry.nat_port_be));
    let adds_rport = entry.flags & CLIENT_ADDS_RPORT != 0;
    let checks = entry.flags & (CLIENT_CHECKS_REGISTER | CLIENT_SHARED) != 0;
    let aor_hash = checks.then_some(entry.aor_hash);
    let shared = entry.flags & CLIENT_SHARED != 0;
    KernelRoute { server: entry.server, nat_port, adds_rport, aor_hash, shared }
}

/// Client entries from which `FastPath::write` writes first contact's copy
/// beside the kernel's, on a second thread (below it, starting the thread
/// costs more than it saves).
const SHARED_ASIDE_FROM: usize = 16_384;

/// A client for `FastPath::install_many` to put on the fast path.
#[derive(Debug, Clone, Copy)]
pub struct Install<'a> {
    pub aor: &'a Aor,
    pub origin: Origin,
    /// The slot of the server its traffic goes to.
    pub server: u32,
}

/// `install_many`'s installs gathered for one write.
struct Pending<'a> {
    writes: Writes,
    installs: Vec<PendingInstall<'a>>,
}

/// An install waiting in `Pending`.
struct PendingInstall<'a> {
    /// Where its result is.
    result: usize,
    aor: &'a Aor,
    /// (client, service).
    entry: (Endpoint, Endpoint),
    /// The kernel held an entry of the client before.
    in_kernel: bool,
}

impl Pending<'_> {
    fn new() -> Self {
        Self { writes: Writes::new(), installs: Vec::new() }
    }
}

/// A `FastPath::write` that stopped part way: the first `clients` client
/// entries are in the kernel, the others are not.
struct Stopped {
    clients: usize,
    error: FastPathError,
}

impl From<Stopped> for FastPathError {
    fn from(stopped: Stopped) -> Self {
        stopped.error
    }
}

/// Kernel entries to write together.
struct Writes {
    /// When they count as last seen: one clock read for the whole batch.
    now: u64,
    clients: Vec<Endpoint>,
    entries: Vec<ClientEntry>,
    nat_keys: Vec<NatKey>,
    nat_entries: Vec<NatEntry>,
}

/// How many of `asked` entries a batched write did.
fn entries_done(result: &Result<(), DataPlaneError>, asked: usize) -> usize {
    result.as_ref().map_or_else(|error| error.entries_done(asked), |()| asked)
}

impl Writes {
    /// The entries of the AORs `kept` says (by position), of writes that
    /// hold each AOR's entries up to its `ends`.
    fn only(self, ends: &[usize], kept: impl Fn(usize) -> bool) -> Self {
        let mut only = Self { now: self.now, ..Self::new() };
        let nat = !self.nat_keys.is_empty();
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            if kept(i) {
                only.clients.extend_from_slice(&self.clients[start..end]);
                only.entries.extend_from_slice(&self.entries[start..end]);
                if nat {
                    only.nat_keys.extend_from_slice(&self.nat_keys[start..end]);
                    only.nat_entries.extend_from_slice(&self.nat_entries[start..end]);
                }
            }
            start = end;
        }
        only
    }

    fn new() -> Self {
        Self {
            now: monotonic_ns(),
            clients: Vec::new(),
            entries: Vec::new(),
            nat_keys: Vec::new(),
            nat_entries: Vec::new(),
        }
    }
}

fn socket_address(endpoint: &Endpoint) -> SocketAddr {
    SocketAddr::new(endpoint_ip(endpoint), u16::from_be(endpoint.port_be))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the program's
/// `bpf_ktime_get_coarse_ns` stamps `last_seen_ns` with.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(last: u8) -> (Endpoint, Endpoint) {
        (Endpoint::v4([192, 0, 2, last], 5060u16.to_be()), Endpoint::v4([192, 0, 2, 10], 5060u16.to_be()))
    }

    #[test]
    fn an_aor_installed_first_keeps_room_for_one_socket_and_takes_more() {
        let mut installed = InstalledEntries::default();
        let aor = Aor::from_uri("sip:alice@example.com", "AOR").unwrap();
        entries_of(&mut installed, aor.clone()).push(socket(1));
        assert_eq!(installed[&aor].capacity(), 1, "room for the one socket most AORs have, not four");
        entries_of(&mut installed, aor.clone()).push(socket(2));
        assert_eq!(installed[&aor], [socket(1), socket(2)], "a second socket joins the first");
    }
}
