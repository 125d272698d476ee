//! Which clients the kernel forwards: the one place client entries (and in
//! nat mode their edge ports and reply entries) are written, for static
//! clients and first contacts alike. Keeps AOR → installed client keys so
//! a later move can find and update them.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use redirector_ebpf::{ClientEntry, Endpoint, NatEntry, NatKey};

use crate::{
    config::{Config, ForwardingMode},
    kernel::{
        loader::{DataPlane, DataPlaneError, endpoint, service_endpoints},
        nat_ports::{NatPorts, NatPortsExhausted},
    },
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

pub struct FastPath {
    dataplane: DataPlane,
    mode: ForwardingMode,
    nat_ports: NatPorts,
    /// A client keeps its edge port across re-installs.
    nat_port_of: HashMap<Endpoint, u16>,
    /// AOR → (client key, service endpoint it talked to).
    installed: HashMap<Aor, Vec<(Endpoint, Endpoint)>>,
    /// The AORs the current sweep has yet to look at.
    sweeping: Vec<Aor>,
}

/// A client's kernel entries, taken off the fast path during a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawn {
    aor: Aor,
    entries: Vec<(Endpoint, Endpoint)>,
}

impl FastPath {
    /// Takes a configured data plane and installs the config's static clients.
    pub fn new(dataplane: DataPlane, config: &Config) -> Result<Self, FastPathError> {
        let mut fast_path = Self {
            dataplane,
            mode: config.mode,
            nat_ports: NatPorts::new(config.edge.nat_port_range()),
            nat_port_of: HashMap::new(),
            installed: HashMap::new(),
            sweeping: Vec::new(),
        };
        for client in &config.clients {
            let server = config.server_index(&client.server).expect("validated: clients name known servers");
            // Static clients have not said which service address they use:
            // nat replies come from the first one of their family.
            let family = endpoint(client.address.ip(), 0).family;
            let service = service_endpoints(config).find(|s| s.family == family).unwrap_or_default();
            fast_path.put(endpoint(client.address.ip(), client.address.port()), server, service)?;
        }
        Ok(fast_path)
    }

    pub fn dataplane(&mut self) -> &mut DataPlane {
        &mut self.dataplane
    }

    /// Forwards `client`'s traffic to the server in slot `server`; `service`
    /// is the address:port it talked to (the source of nat replies).
    pub fn install(
        &mut self,
        aor: &Aor,
        client: SocketAddr,
        server: u32,
        service: SocketAddr,
    ) -> Result<(), FastPathError> {
        let entry = (endpoint(client.ip(), client.port()), endpoint(service.ip(), service.port()));
        self.put(entry.0, server, entry.1)?;
        let entries = self.installed.entry(aor.clone()).or_default();
        if !entries.contains(&entry) {
            entries.push(entry);
        }
        Ok(())
    }

    /// The client keys installed for `aor`.
    pub fn installed(&self, aor: &Aor) -> Vec<Endpoint> {
        self.installed.get(aor).map_or_else(Vec::new, |entries| entries.iter().map(|(client, _)| *client).collect())
    }

    /// Takes the AORs' clients off the fast path, with one batched map
    /// delete: until `restore_many`, their packets go up to first contact,
    /// which answers from the assignments.
    pub fn withdraw_many(&mut self, aors: &[Aor]) -> Result<Vec<Withdrawn>, FastPathError> {
        let withdrawn: Vec<Withdrawn> = aors
            .iter()
            .map(|aor| Withdrawn { aor: aor.clone(), entries: self.installed.remove(aor).unwrap_or_default() })
            .collect();
        let clients: Vec<Endpoint> =
            withdrawn.iter().flat_map(|w| w.entries.iter().map(|(client, _)| *client)).collect();
        if let Err(error) = self.dataplane.remove_clients(&clients) {
            // Still recorded: a later move or sweep finds what the kernel kept.
            for w in withdrawn {
                self.installed.entry(w.aor).or_default().extend(w.entries);
            }
            return Err(error.into());
        }
        Ok(withdrawn)
    }

    /// Puts withdrawn clients back on the fast path, each to the server in
    /// its slot, with batched map updates.
    /// Recorded whatever happens: a batch that fails part way leaves some
    /// entries in the kernel, and a later move or sweep must find them
    /// (removing one that is not there is harmless).
    pub fn restore_many(&mut self, moves: Vec<(Withdrawn, u32)>) -> Result<(), FastPathError> {
        let mut writes = Writes::default();
        let mut result = Ok(());
        for (withdrawn, server) in &moves {
            for &(client, service) in &withdrawn.entries {
                if result.is_ok() {
                    result = self.entry_for(client, *server, service, &mut writes);
                }
            }
        }
        let result = result.and_then(|()| self.write(&writes));
        for (withdrawn, _) in moves {
            self.installed.entry(withdrawn.aor).or_default().extend(withdrawn.entries);
        }
        result
    }

    /// Each learned client's fast-path packet count: (AOR, server slot, a
    /// key for the client address, packets).
    pub fn samples(&mut self) -> Result<Vec<(Aor, u32, u64, u64)>, FastPathError> {
        let mut samples = Vec::new();
        for (aor, entries) in &self.installed {
            for &(client, _) in entries {
                if let Some(entry) = self.dataplane.client(client)? {
                    let key = xxhash_rust::xxh3::xxh3_64(bytemuck::bytes_of(&client));
                    samples.push((aor.clone(), entry.server, key, entry.packets));
                }
            }
        }
        Ok(samples)
    }

    /// Removes learned clients whose last packet is older than `idle`, with
    /// their nat ports and reply entries: a client gone that long no longer
    /// owns its address and port, which another client may reuse.
    /// Config-pinned clients never expire. Each call looks at up to
    /// `budget` clients, resuming where the last call stopped, so a sweep of
    /// a large pool never holds up installs and moves for its whole length.
    /// Returns how many were removed, and whether the pass is complete.
    pub fn sweep(&mut self, idle: Duration, budget: usize) -> Result<(usize, bool), FastPathError> {
        if self.sweeping.is_empty() {
            self.sweeping = self.installed.keys().cloned().collect();
        }
        let now = monotonic_ns();
        let idle = idle.as_nanos() as u64;
        let mut removed = 0;
        let mut looked = 0;
        while looked < budget {
            let Some(aor) = self.sweeping.pop() else { break };
            let entries = self.installed.remove(&aor).unwrap_or_default();
            looked += entries.len().max(1);
            let (kept, result) = self.sweep_entries(entries, now, idle);
            if !kept.is_empty() {
                self.installed.insert(aor, kept);
            }
            removed += result?;
        }
        Ok((removed, self.sweeping.is_empty()))
    }

    /// Removes the idle ones of an AOR's entries; returns the ones kept
    /// (on an error, every one not removed: none is forgotten while the
    /// kernel still holds it) and how many were removed.
    fn sweep_entries(
        &mut self,
        entries: Vec<(Endpoint, Endpoint)>,
        now: u64,
        idle: u64,
    ) -> (Vec<(Endpoint, Endpoint)>, Result<usize, FastPathError>) {
        let mut kept = Vec::with_capacity(entries.len());
        let mut removed = 0;
        let mut entries = entries.into_iter();
        while let Some((client, service)) = entries.next() {
            let idle_too_long = self.dataplane.client(client).map(|entry| {
                // Gone from the map (the LRU evicted it) or idle too long.
                entry.is_none_or(|entry| now.saturating_sub(entry.last_seen_ns) > idle)
            });
            let outcome = match idle_too_long {
                Ok(true) => self.remove(client).map(|()| removed += 1),
                Ok(false) => {
                    kept.push((client, service));
                    Ok(())
                }
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

    fn remove(&mut self, client: Endpoint) -> Result<(), FastPathError> {
        self.dataplane.remove_client(client)?;
        if let Some(port) = self.nat_port_of.remove(&client) {
            let key = NatKey { edge_port_be: port.to_be(), family: client.family, _pad: 0 };
            self.dataplane.remove_nat_reply(key)?;
            self.nat_ports.release(port);
        }
        Ok(())
    }

    fn put(&mut self, client: Endpoint, server: u32, service: Endpoint) -> Result<(), FastPathError> {
        let mut writes = Writes::default();
        self.entry_for(client, server, service, &mut writes)?;
        self.write(&writes)
    }

    /// The kernel entries that forward `client` to the server in slot
    /// `server` (in nat mode with its edge port, kept across re-installs).
    fn entry_for(
        &mut self,
        client: Endpoint,
        server: u32,
        service: Endpoint,
        writes: &mut Writes,
    ) -> Result<(), FastPathError> {
        let mut entry = ClientEntry { server, last_seen_ns: monotonic_ns(), ..Default::default() };
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
        writes.clients.push(client);
        writes.entries.push(entry);
        Ok(())
    }

    /// Reply entries first: a client's forwarded packet may be answered at once.
    fn write(&mut self, writes: &Writes) -> Result<(), FastPathError> {
        if !writes.nat_keys.is_empty() {
            self.dataplane.install_nat_replies(&writes.nat_keys, &writes.nat_entries)?;
        }
        if !writes.clients.is_empty() {
            self.dataplane.install_clients(&writes.clients, &writes.entries)?;
        }
        Ok(())
    }
}

/// Kernel entries to write together.
#[derive(Default)]
struct Writes {
    clients: Vec<Endpoint>,
    entries: Vec<ClientEntry>,
    nat_keys: Vec<NatKey>,
    nat_entries: Vec<NatEntry>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the program's
/// `bpf_ktime_get_coarse_ns` stamps `last_seen_ns` with.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
