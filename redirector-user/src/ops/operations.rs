//! What operators can do to a running edge, and what they can see: moves of
//! clients between home servers, drain / undrain, statistics and the route
//! table. The control API (`control`) is only transport around this.
//!
//! A move never leaves a window in which a client is forwarded to a server
//! it no longer belongs to: its kernel entries are withdrawn first (its
//! packets then go up to first contact, which answers from the database),
//! the new assignment is committed (generation + 1), and only then are the
//! entries restored, pointing at the new server; the client's watchers are
//! queued for their NOTIFY. A drain or a dead server moves its clients in
//! batches of `MOVE_BATCH`, one database transaction each.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use crate::{
    edge::{
        first_contact::FirstContact,
        rebalance::{Planned, Rebalancer, Sample, ServerLoad, plan},
        watchers::Watchers,
    },
    kernel::{
        fast_path::{FastPath, FastPathError},
        loader,
    },
    model::{HomeServer, ServerState},
    ops::api::{Move, PlannedMove, Route, ServerStatus, Stats},
    sip::{Aor, ParseError},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("no home server named \"{0}\" (`redirector servers` lists them)")]
    UnknownServer(String),
    #[error("no assignment for {0} (`redirector routes` lists them)")]
    UnknownAor(String),
    #[error("\"{0}\" is not an address of record ({1}); write it as sip:user@domain")]
    BadAor(String, ParseError),
    #[error("home server {0} is down or failing its health checks: assign clients to an active or draining server")]
    ServerDown(String),
    #[error("no active home server to take the clients of {0}; undrain or bring one up first")]
    NoActiveServer(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    FastPath(#[from] FastPathError),
}

type Result<T, E = OperationError> = std::result::Result<T, E>;

/// Clients moved per database transaction (and per hold of the fast-path
/// lock) when a server is drained or goes down.
const MOVE_BATCH: usize = 2_000;

pub struct Operations {
    pub first_contact: Arc<FirstContact>,
    pub fast_path: Arc<Mutex<FastPath>>,
    /// Told of every move, so the client's watchers get their NOTIFY.
    pub watchers: Arc<Watchers>,
}

impl Operations {
    /// `redirector assign AOR SERVER`.
    pub fn assign(&self, aor: &str, server: &str) -> Result<Move> {
        let aor = Aor::from_uri(aor, "AOR").map_err(|e| OperationError::BadAor(aor.to_owned(), e))?;
        let to = self.server(server)?;
        if to.effective_state() == ServerState::Down {
            return Err(OperationError::ServerDown(to.name));
        }
        if self.first_contact.store().get(&aor)?.is_none() {
            return Err(OperationError::UnknownAor(aor.to_string()));
        }
        let mut moved = self.move_batch(&[(aor, to.clone())], None)?;
        moved.pop().ok_or(OperationError::ServerDown(to.name))
    }

    /// Takes `server` out of new assignments and moves all its clients to
    /// the other active servers (rendezvous hashing over them).
    pub fn drain(&self, server: &str) -> Result<Vec<Move>> {
        self.set_state(server, ServerState::Draining)?;
        let moves = self.move_all_from(server)?;
        tracing::info!(server, moved = moves.len(), "drained");
        Ok(moves)
    }

    /// Applies a health verdict for the server in slot `index`: to first
    /// contact and the kernel at once (so the fast path stops sending to a
    /// down server immediately), and a down server's clients are moved.
    pub fn set_health(&self, index: u32, healthy: bool) -> Result<Vec<Move>> {
        let home = self.change_server(|first_contact| first_contact.set_health(index, healthy), &index.to_string())?;
        if healthy {
            tracing::info!(server = home.name, "home server up");
            return Ok(Vec::new());
        }
        let moves = self.move_all_from(&home.name)?;
        tracing::warn!(server = home.name, moved = moves.len(), "home server down, its clients moved");
        Ok(moves)
    }

    /// Changes a server for first contact and writes its effective state to
    /// the kernel, both under the fast-path lock: concurrent changes (a drain
    /// racing a health verdict) reach the kernel in the order they were made.
    fn change_server(
        &self,
        change: impl FnOnce(&FirstContact) -> Option<HomeServer>,
        name: &str,
    ) -> Result<HomeServer> {
        let mut fast_path = self.fast_path.lock().expect("fast path lock");
        let home = change(&self.first_contact).ok_or_else(|| OperationError::UnknownServer(name.to_owned()))?;
        fast_path.dataplane().set_server(home.index, loader::server_entry(&home)).map_err(FastPathError::from)?;
        Ok(home)
    }

    /// Moves every client of `server` to the other servers that take new
    /// clients (rendezvous hashing over them), `MOVE_BATCH` at a time.
    /// Passes repeat until one finds nobody left: a first contact that chose
    /// `server` just before it stopped taking clients may commit after a pass
    /// read the table.
    fn move_all_from(&self, server: &str) -> Result<Vec<Move>> {
        const PASSES: usize = 3;
        let mut moves = Vec::new();
        for _ in 0..PASSES {
            let left: Vec<_> = self.first_contact.store().all()?.into_iter().filter(|a| a.server == server).collect();
            if left.is_empty() {
                break;
            }
            for batch in left.chunks(MOVE_BATCH) {
                let planned = batch
                    .iter()
                    .map(|assignment| {
                        let to = self.first_contact.choose_server(&assignment.aor, Some(server));
                        Ok((assignment.aor.clone(), to.ok_or_else(|| OperationError::NoActiveServer(server.into()))?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                moves.extend(self.move_batch(&planned, Some(server))?);
            }
        }
        Ok(moves)
    }

    /// Lets `server` take new clients again.
    pub fn undrain(&self, server: &str) -> Result<ServerStatus> {
        self.set_state(server, ServerState::Active)?;
        tracing::info!(server, "undrained");
        self.status(server)
    }

    /// Sets a server's state for first contact and the kernel at once.
    pub fn set_state(&self, server: &str, state: ServerState) -> Result<HomeServer> {
        self.change_server(|first_contact| first_contact.set_state(server, state), server)
    }

    /// Servers that take new clients, as the rebalancer weighs them.
    pub fn balance_targets(&self) -> Vec<ServerLoad> {
        let servers = self.first_contact.servers();
        servers
            .into_iter()
            .filter(HomeServer::accepts_new)
            .map(|s| ServerLoad { name: s.name, weight: s.weight })
            .collect()
    }

    /// A load sample of every learned client, by server name.
    pub fn samples(&self) -> Result<Vec<Sample>> {
        let servers = self.first_contact.servers();
        let raw = self.fast_path.lock().expect("fast path lock").samples()?;
        Ok(raw
            .into_iter()
            .filter_map(|(aor, index, key, packets)| {
                let server = servers.iter().find(|s| s.index == index)?.name.clone();
                Some(Sample { aor, server, key, packets })
            })
            .collect())
    }

    /// The rebalancer's plan on its latest rates; applied unless `dry_run`.
    pub fn rebalance(&self, rebalancer: &Mutex<Rebalancer>, dry_run: bool) -> Result<Vec<PlannedMove>> {
        let planned = {
            let rebalancer = rebalancer.lock().expect("rebalancer lock");
            plan(&self.balance_targets(), &rebalancer.latest, &rebalancer.thresholds)
        };
        if !dry_run {
            self.apply_plan(&planned, "requested")?;
        }
        Ok(planned
            .into_iter()
            .map(|p| PlannedMove { aor: p.aor.to_string(), from: p.from, to: p.to, rate: p.rate })
            .collect())
    }

    /// Makes planned moves, logging why.
    /// Makes planned moves, logging why; a client that moved since the
    /// plan was made is left where it is.
    pub fn apply_plan(&self, planned: &[Planned], reason: &str) -> Result<Vec<Move>> {
        let mut moves = Vec::new();
        for p in planned {
            tracing::info!(aor = %p.aor, from = p.from, to = p.to, rate = p.rate, reason, "rebalancing");
            moves.extend(self.move_batch(&[(p.aor.clone(), self.server(&p.to)?)], Some(&p.from))?);
        }
        Ok(moves)
    }

    /// Moves clients to their planned servers (see `FirstContact::reassign_many`
    /// for the ones left alone): every kernel entry withdrawn, one durable
    /// commit, the watchers queued, the entries restored pointing at the
    /// new servers, under the fast-path lock, and with lookups of known
    /// clients held off from the withdrawal to the commit. Entries that are
    /// not restored (the client was left alone, the commit failed, the
    /// kernel refused one) stay withdrawn: the client's next packet meets
    /// first contact, which answers from the database and puts it back.
    fn move_batch(&self, planned: &[(Aor, HomeServer)], only_from: Option<&str>) -> Result<Vec<Move>> {
        let mut fast_path = self.fast_path.lock().expect("fast path lock");
        let reassigned = {
            let _moving = self.first_contact.begin_move();
            let withdrawn = planned.iter().map(|(aor, _)| fast_path.withdraw(aor)).collect::<Result<Vec<_>, _>>()?;
            let pairs: Vec<(&Aor, &str)> = planned.iter().map(|(aor, to)| (aor, to.name.as_str())).collect();
            withdrawn.into_iter().zip(self.first_contact.reassign_many(&pairs, only_from)?)
        };
        let mut moves = Vec::with_capacity(planned.len());
        for ((aor, to), (entries, done)) in planned.iter().zip(reassigned) {
            let Some(done) = done else { continue };
            self.watchers.client_moved(aor);
            if let Err(error) = fast_path.restore(entries, to.index) {
                tracing::warn!(%aor, %error, "a moved client's kernel entries were not all restored");
            }
            let from = done.previous.unwrap_or_default();
            tracing::debug!(%aor, from, to = to.name, generation = done.generation, "moved");
            moves.push(Move { aor: aor.to_string(), from, to: to.name.clone(), generation: done.generation });
        }
        Ok(moves)
    }

    fn server(&self, name: &str) -> Result<HomeServer> {
        self.first_contact.server(name).ok_or_else(|| OperationError::UnknownServer(name.to_owned()))
    }

    pub fn servers(&self) -> Result<Vec<ServerStatus>> {
        let clients = self.first_contact.client_counts();
        let mut fast_path = self.fast_path.lock().expect("fast path lock");
        self.first_contact
            .servers()
            .into_iter()
            .map(|home| {
                let sent = fast_path.dataplane().server_stats(home.index).map_err(FastPathError::from)?;
                Ok(ServerStatus {
                    clients: clients.get(&home.name).copied().unwrap_or(0),
                    name: home.name,
                    state: home.state,
                    healthy: home.healthy,
                    ipv4: home.ipv4,
                    ipv6: home.ipv6,
                    port: home.port,
                    weight: home.weight,
                    packets: sent.packets,
                    bytes: sent.bytes,
                    packets_per_second: None,
                    bytes_per_second: None,
                })
            })
            .collect()
    }

    fn status(&self, server: &str) -> Result<ServerStatus> {
        self.servers()?
            .into_iter()
            .find(|s| s.name == server)
            .ok_or_else(|| OperationError::UnknownServer(server.into()))
    }

    /// A fresh reading of every figure (rates are the stats stream's job).
    pub fn stats(&self) -> Result<Stats> {
        let servers = self.servers()?;
        let verdicts =
            self.fast_path.lock().expect("fast path lock").dataplane().counters().map_err(FastPathError::from)?;
        let named = |counters: Vec<(&'static str, u64)>| counters.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        Ok(Stats {
            interval: 0.0,
            servers,
            verdicts: verdicts.into_iter().map(|(counter, n)| (counter.label().to_owned(), n)).collect(),
            first_contact: named(self.first_contact.counters.snapshot()),
            watchers: {
                let mut watchers: BTreeMap<String, u64> = named(self.watchers.counters.snapshot());
                watchers.insert("subscriptions_kept".into(), self.watchers.kept() as u64);
                watchers
            },
        })
    }

    /// The AORs assigned to `server`.
    pub fn clients(&self, server: &str) -> Result<Vec<String>> {
        self.server(server)?;
        let assignments = self.first_contact.store().all()?;
        Ok(assignments.into_iter().filter(|a| a.server == server).map(|a| a.aor.to_string()).collect())
    }

    pub fn routes(&self) -> Result<Vec<Route>> {
        let servers = self.first_contact.servers();
        let assignments = self.first_contact.store().all()?;
        Ok(assignments
            .into_iter()
            .map(|a| {
                let home = servers.iter().find(|s| s.name == a.server);
                let address = home.and_then(|h| {
                    h.ipv4
                        .map(|ip| SocketAddr::new(ip.into(), h.port))
                        .or(h.ipv6.map(|ip| SocketAddr::new(ip.into(), h.port)))
                });
                Route { aor: a.aor.to_string(), server: a.server, address, generation: a.generation }
            })
            .collect())
    }
}
