//! The pool changed at runtime: `redirector servers add / remove / set` and
//! a config reload, checked and applied to a `Pool` without touching
//! anything else. The state owner carries out the `Effect`s (the kernel's
//! SERVERS slot, health checks, moves of a removed server's clients).
//!
//! **Slots.** A server keeps the SERVERS slot it was given for as long as
//! it is in the pool. A new server takes the lowest slot never used; only
//! when all `MAX_SERVERS` have been used does it take a removed server's
//! slot, the one retired longest ago. A slot is retired only once its
//! server's clients have all moved and its SERVERS entry reads "unused",
//! so by the time it is reused no client entry the daemon made points at
//! it; and what might still (a datagram in flight, a kernel entry a failed
//! restore left) meets "unused" and goes to first contact, never to the
//! wrong server, for as long as a never-used slot remains.
//!
//! **Reloads.** The store keeps the pool; the config's `[[servers]]` seed
//! it and then change it as a three-way merge: each reload compares the
//! config with the `[[servers]]` it last applied (also stored) and applies
//! only what the config itself changed, field by field. So a change made
//! with the CLI outlives restarts and reloads unless the config changes
//! that same field of that same server afterwards. A server the config no
//! longer lists is removed; one it newly lists is added (or, if the CLI
//! added one of that name, takes the config's definition). A refused
//! change is not recorded as applied, so the next reload tries it again.

use std::net::IpAddr;

use redirector_ebpf::MAX_SERVERS;

use crate::{
    edge::pool::Pool,
    model::{HomeServer, ServerSpec, ServerState},
    store::{StoredPool, StoredServer},
};

/// One change to the pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Add(ServerSpec),
    /// The server of that name, redefined.
    Update(ServerSpec),
    /// Its clients are moved away, then it leaves the pool.
    Remove(String),
}

/// What a change asks of the state owner, with the server as it is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write its SERVERS slot, health-check it.
    Added(HomeServer),
    /// Rewrite its SERVERS slot.
    Changed(HomeServer),
    /// Rewrite its SERVERS slot (it takes no new clients), move its
    /// clients away, then `Pool::retire` it.
    Removing(HomeServer),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    #[error("no home server named \"{0}\" (`redirector servers` lists them)")]
    Unknown(String),
    #[error(
        "a home server named \"{0}\" exists already: choose another name, or change it with `redirector servers set`"
    )]
    DuplicateName(String),
    #[error("{address} is already the address of home server \"{other}\": each address belongs to one server")]
    DuplicateAddress { address: IpAddr, other: String },
    #[error("a home server needs a name")]
    EmptyName,
    #[error("home server \"{0}\" needs an address: give --ipv4, --ipv6 or both")]
    NoAddress(String),
    #[error("port 0 is no SIP port: give the port the server listens on (leave it out for 5060)")]
    BadPort,
    #[error("weight {0} is not a positive number: give a weight above 0 (1 is the default)")]
    BadWeight(f64),
    #[error(
        "a home server's state can be set to active or draining, not {0:?} (`redirector servers remove` removes one)"
    )]
    BadState(ServerState),
    #[error(
        "\"{0}\" is the last active home server: {1} it would leave new clients nowhere to go (503); add or activate another server first"
    )]
    LastActive(String, &'static str),
    #[error(
        "all {MAX_SERVERS} SERVERS slots are taken (a removed server's slot frees once its clients have moved): remove a server first"
    )]
    Full,
    #[error(
        "\"{0}\" was removed since the config last listed it, so the config's change to it is not applied: add it again with `redirector servers add`, or take it out of the config"
    )]
    RemovedSince(String),
}

impl Pool {
    /// This pool with `change` made, and what the owner must do for it;
    /// an error, and nothing changed, if the change is refused.
    pub fn apply(&self, change: &Change) -> Result<(Pool, Effect), PoolError> {
        let mut next = self.clone();
        let effect = match change {
            Change::Add(spec) => next.add(spec)?,
            Change::Update(spec) => next.update(spec)?,
            Change::Remove(name) => next.remove(name)?,
        };
        Ok((next, effect))
    }

    /// The server `name` leaves the pool (its clients have all moved) and
    /// its slot is retired.
    pub fn retire(&self, name: &str) -> Option<(Pool, HomeServer)> {
        let mut next = self.clone();
        let gone = next.take(name)?;
        Some((next, gone))
    }

    fn add(&mut self, spec: &ServerSpec) -> Result<Effect, PoolError> {
        if self.server(&spec.name).is_some() {
            return Err(PoolError::DuplicateName(spec.name.clone()));
        }
        self.check(spec, None)?;
        settable(spec.state)?;
        let slot = self.take_slot().ok_or(PoolError::Full)?;
        let home = HomeServer::new(spec.clone(), slot);
        self.push(home.clone());
        Ok(Effect::Added(home))
    }

    /// Keeps the server's slot and health; a removal under way is called
    /// off by setting it active or draining again.
    fn update(&mut self, spec: &ServerSpec) -> Result<Effect, PoolError> {
        let current = self.server(&spec.name).ok_or_else(|| PoolError::Unknown(spec.name.clone()))?;
        self.check(spec, Some(&spec.name))?;
        // A reload may change a server being removed: it stays removing.
        if !(current.state == ServerState::Removing && spec.state == ServerState::Removing) {
            settable(spec.state)?;
        }
        if current.state == ServerState::Active && spec.state != ServerState::Active {
            self.check_another_active(&spec.name, "draining")?;
        }
        let (next, home) = self
            .changed(
                |s| s.name == spec.name,
                |s| *s = HomeServer { healthy: s.healthy, ..HomeServer::new(spec.clone(), s.index) },
            )
            .expect("found above");
        *self = next;
        Ok(Effect::Changed(home))
    }

    fn remove(&mut self, name: &str) -> Result<Effect, PoolError> {
        self.server(name).ok_or_else(|| PoolError::Unknown(name.to_owned()))?;
        self.check_another_active(name, "removing")?;
        let (next, home) = self.changed(|s| s.name == name, |s| s.state = ServerState::Removing).expect("found above");
        *self = next;
        Ok(Effect::Removing(home))
    }

    /// A definition the operator may give: named, addressed, a SIP port, a
    /// positive weight, and no address of another
    /// server's (`except` is the one being redefined). A server being
    /// removed keeps its address only until it is gone: its replacement
    /// may take it (a rename).
    fn check(&self, spec: &ServerSpec, except: Option<&str>) -> Result<(), PoolError> {
        if spec.name.is_empty() {
            return Err(PoolError::EmptyName);
        }
        if spec.ipv4.is_none() && spec.ipv6.is_none() {
            return Err(PoolError::NoAddress(spec.name.clone()));
        }
        if spec.port == 0 {
            return Err(PoolError::BadPort);
        }
        if !(spec.weight.is_finite() && spec.weight > 0.0) {
            return Err(PoolError::BadWeight(spec.weight));
        }
        let addresses = spec.ipv4.map(IpAddr::from).into_iter().chain(spec.ipv6.map(IpAddr::from));
        for address in addresses {
            let others = self.servers().iter().filter(|s| Some(s.name.as_str()) != except);
            if let Some(other) = others.filter(|s| s.state != ServerState::Removing).find(|s| s.has_address(address)) {
                return Err(PoolError::DuplicateAddress { address, other: other.name.clone() });
            }
        }
        Ok(())
    }

    /// Another server than `name` is active (by the operator's word: a
    /// server that is down now is still meant to take clients).
    fn check_another_active(&self, name: &str, doing: &'static str) -> Result<(), PoolError> {
        if self.servers().iter().any(|s| s.name != name && s.state == ServerState::Active) {
            return Ok(());
        }
        Err(PoolError::LastActive(name.to_owned(), doing))
    }
}

/// The pool the store kept, and the config's servers as it last applied
/// them; an empty pool if it kept none (the config then seeds it).
pub fn restore(stored: Option<StoredPool>) -> (Pool, Vec<ServerSpec>) {
    let Some(stored) = stored else { return (Pool::default(), Vec::new()) };
    let servers = stored
        .servers
        .into_iter()
        .map(|s| HomeServer { healthy: s.healthy, ..HomeServer::new(s.spec, s.slot) })
        .collect();
    (Pool::restore(servers, stored.next_slot, stored.retired), stored.applied)
}

/// What the store keeps of `pool`, the health checks' last verdicts too.
pub fn to_store(pool: &Pool, applied: &[ServerSpec]) -> StoredPool {
    StoredPool {
        servers: pool
            .servers()
            .iter()
            .map(|s| StoredServer { slot: s.index, spec: s.spec(), healthy: s.healthy })
            .collect(),
        applied: applied.to_vec(),
        next_slot: pool.next_slot(),
        retired: pool.retired().to_vec(),
    }
}

/// The states an operator sets (down, too: a config may hold a server
/// out); removing is `Change::Remove`'s.
fn settable(state: ServerState) -> Result<(), PoolError> {
    match state {
        ServerState::Active | ServerState::Draining | ServerState::Down => Ok(()),
        ServerState::Removing => Err(PoolError::BadState(state)),
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloaded {
    pub pool: Pool,
    pub effects: Vec<Effect>,
    /// The config's servers as now applied, for the next reload to compare with.
    pub applied: Vec<ServerSpec>,
    /// Changes the config asked for that were refused, by server.
    pub refused: Vec<(String, PoolError)>,
}

/// Applies the config's `[[servers]]` (`config`) to `current`, knowing the
/// ones it last applied (`applied`): see the module's comment. Additions
/// and changes go first, so a server can be replaced in one reload;
/// those refused are tried once more after the removals (a replacement
/// taking the address of the server it replaces).
pub fn reload(current: &Pool, applied: &[ServerSpec], config: &[ServerSpec]) -> Reloaded {
    let mut done = Reloaded { pool: current.clone(), effects: Vec::new(), applied: Vec::new(), refused: Vec::new() };
    let (changes, removed_since) = diff(current, applied, config);
    let (removals, others): (Vec<Change>, Vec<Change>) =
        changes.into_iter().partition(|change| matches!(change, Change::Remove(_)));
    let mut retry = Vec::new();
    for change in others {
        if let Err(refused) = done.make(&change) {
            retry.push((change, refused));
        }
    }
    for change in &removals {
        if let Err(refused) = done.make(change) {
            done.refused.push((name_of(change).to_owned(), refused));
        }
    }
    for (change, first) in retry {
        if done.make(&change).is_err() {
            done.refused.push((name_of(&change).to_owned(), first));
        }
    }
    done.refused.extend(removed_since.into_iter().map(|name| (name.clone(), PoolError::RemovedSince(name))));
    done.applied = now_applied(applied, config, &done.refused);
    done
}

impl Reloaded {
    fn make(&mut self, change: &Change) -> Result<(), PoolError> {
        let (pool, effect) = self.pool.apply(change)?;
        self.pool = pool;
        self.effects.push(effect);
        Ok(())
    }
}

fn name_of(change: &Change) -> &str {
    match change {
        Change::Add(spec) | Change::Update(spec) => &spec.name,
        Change::Remove(name) => name,
    }
}

/// The changes the config asks for, and the servers it changed that the
/// operator removed since (their changes are not applied).
fn diff(current: &Pool, applied: &[ServerSpec], config: &[ServerSpec]) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut removed_since = Vec::new();
    for wanted in config {
        let before = applied.iter().find(|s| s.name == wanted.name);
        match (before, current.server(&wanted.name)) {
            (None, None) => changes.push(Change::Add(wanted.clone())),
            (None, Some(now)) if now.spec() != *wanted => changes.push(Change::Update(wanted.clone())),
            (Some(before), Some(now)) => {
                let merged = merge(before, wanted, &now.spec());
                if merged != now.spec() {
                    changes.push(Change::Update(merged));
                }
            }
            (Some(before), None) if before != wanted => removed_since.push(wanted.name.clone()),
            _ => {}
        }
    }
    for gone in applied.iter().filter(|before| !config.iter().any(|s| s.name == before.name)) {
        let present = current.server(&gone.name).is_some_and(|s| s.state != ServerState::Removing);
        if present {
            changes.push(Change::Remove(gone.name.clone()));
        }
    }
    (changes, removed_since)
}

/// `now` with every field the config changed since `before` taken from
/// `wanted`.
fn merge(before: &ServerSpec, wanted: &ServerSpec, now: &ServerSpec) -> ServerSpec {
    fn pick<T: PartialEq + Clone>(before: &T, wanted: &T, now: &T) -> T {
        if before != wanted { wanted.clone() } else { now.clone() }
    }
    ServerSpec {
        name: now.name.clone(),
        ipv4: pick(&before.ipv4, &wanted.ipv4, &now.ipv4),
        ipv6: pick(&before.ipv6, &wanted.ipv6, &now.ipv6),
        port: pick(&before.port, &wanted.port, &now.port),
        state: pick(&before.state, &wanted.state, &now.state),
        weight: pick(&before.weight, &wanted.weight, &now.weight),
    }
}

/// The config's servers as applied after a reload: each as the config has
/// it, except those whose change was refused, which keep what was applied
/// before (or stay out), so the next reload tries again.
fn now_applied(applied: &[ServerSpec], config: &[ServerSpec], refused: &[(String, PoolError)]) -> Vec<ServerSpec> {
    let was_refused = |name: &str| refused.iter().any(|(refused, _)| refused == name);
    let before = |name: &str| applied.iter().find(|s| s.name == name).cloned();
    let listed = config.iter().filter_map(|s| if was_refused(&s.name) { before(&s.name) } else { Some(s.clone()) });
    let kept = applied.iter().filter(|s| was_refused(&s.name) && !config.iter().any(|c| c.name == s.name));
    listed.chain(kept.cloned()).collect()
}

#[cfg(test)]
#[path = "servers_tests.rs"]
mod tests;
