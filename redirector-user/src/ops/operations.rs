//! The edge's state that must change together, and everything done to it:
//! assignments (store, cache, counts), the home servers, the fast path's
//! kernel entries, the watchers' dialogs, health and rebalancing. One
//! thread owns it (`owner`) and applies commands in order, so nothing here
//! takes a lock. What operators do (moves of clients, drain / undrain,
//! statistics, the route table) is one kind of command; first contact's
//! new assignments, installs and watchers are others.
//!
//! A move never sends a client to a server the store has not committed it
//! to: the new assignment is committed first (generation + 1, durably;
//! meanwhile the client is held out of first contact's cache and the
//! kernel sends it to the server the store still names), and only then
//! are its kernel entries repointed in place, before the move is answered;
//! the client's watchers are queued for their NOTIFY. A drain or a dead server moves its clients in
//! batches of `MOVE_BATCH`, one database transaction each.
//!
//! The pool changes at runtime (`servers add / remove / set`, a reload of
//! the config's `[[servers]]`) as `edge::servers` decides: each change is
//! saved in the store first, then published to first contact and written to
//! the kernel's SERVERS slot; a removed server's clients move as a drain's
//! do, and only then does it leave the pool and its slot read "unused".
//!
//! Two walks also go a step at a time between commands: the scan of the
//! fast path's learned clients (`scan`: one read of each kernel entry
//! serves the idle sweep, expiry's sightings and the load samples) and the
//! expiry walk over the store (`start_expiry`, then `work`, a page at a
//! time, paced).

mod followed;
mod installs;
mod profiles;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use redirector_ebpf::{Throttle, probe::ProbeConfig};
use tokio::sync::oneshot;

use crate::{
    counters::{add, bump},
    edge::{
        admission::{Admission, Refused},
        assignments::{Assigned, Assignments},
        expiry::{self, Walk},
        first_contact::{Action, Counters, NewClient},
        health::{Tracker, Transition},
        pool::{Pool, PoolView},
        profiles::Profiles,
        rebalance::{Planned, Rebalancer, Sample, ServerLoad, plan},
        routes::{RouteVersion, Since},
        servers::{self, Change, Effect, PoolError},
        watchers::{Subscription, Watchers},
    },
    kernel::{
        fast_path::{FastPath, FastPathError, Install, Installed, Reading, monotonic_ns},
        loader,
    },
    model::{HomeServer, ServerSpec, ServerState},
    ops::{
        api::{
            Client, DaemonStatus, Entry, Move, PlannedMove, RecentMove, Reloaded, Reply, Request, Route, RouteTable,
            ServerStatus, Stats,
        },
        documents::{Common, Template},
    },
    probe::state::{Announcement, announcements},
    sip::{Aor, ParseError},
    store::{Cached, DialogKind, StoreError, Term, unix_seconds},
};

use installs::{Due, Step, installs_of_new, steps};

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
    Pool(#[from] PoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    FastPath(#[from] FastPathError),
}

type Result<T, E = OperationError> = std::result::Result<T, E>;

/// Clients one scan command looks at: a few milliseconds of map reads, so
/// installs and moves queued behind it wait no longer than that.
const SCAN_BUDGET: usize = 2_000;

/// Assignments one step of an expiry walk reads (one database read, and at
/// most one transaction for what it removes and persists).
const EXPIRY_PAGE: usize = 2_000;

/// An expiry walk reads a page at most this often: a page costs the owner
/// a few milliseconds, so a walk over a large store (one starts as the
/// daemon does, when every phone may be registering again at once) takes
/// a bounded share of it, 40,000 assignments a second, instead of every
/// moment between two rounds of installs.
const EXPIRY_PAGE_EVERY: Duration = Duration::from_millis(50);

/// Moves kept for the status page's list of the last ones.
const RECENT_MOVES: usize = 100;

/// Clients moved per database transaction (and per hold of the fast-path
/// lock) when a server is drained or goes down.
const MOVE_BATCH: usize = 2_000;

pub struct Operations {
    pub assignments: Assignments,
    /// Published to first-contact cores after every change.
    pool: PoolView,
    pub fast_path: FastPath,
    /// Told of every move, so the client's watchers get their NOTIFY.
    pub watchers: Watchers,
    /// Clients' own ua-profile subscriptions, told of every change of
    /// their document.
    pub profiles: Profiles,
    /// `[documents] template`: what documents are rendered from.
    template: Option<Arc<Template>>,
    /// What every document shares but the probe targets (the pool's).
    documents: Common,
    tracker: Tracker,
    rebalancer: Rebalancer,
    /// Who may become a new client.
    admission: Admission,
    /// First contact's counters, for the statistics.
    counters: Arc<Counters>,
    /// Where the store is, and since when this daemon runs.
    store_path: String,
    started: Instant,
    /// When the cap on assignments was last reported.
    warned_at_capacity: Option<Instant>,
    /// Moves still to be made, oldest first.
    jobs: VecDeque<MoveJob>,
    /// When assignments expire (`None`: never), and the walk under way.
    expiry: Option<expiry::Policy>,
    walk: Option<Walk>,
    /// When the walk may read its next page.
    next_page_at: Instant,
    /// The load samples of the scan pass under way, when it takes them.
    pass: Vec<Sample>,
    /// The config's `[[servers]]` as last applied (see `edge::servers`).
    applied: Vec<ServerSpec>,
    /// Whether this edge makes the pool-wide decisions: health verdicts and
    /// the moves they cause, rebalancing, expiry. Always with a store of
    /// its own; with a shared one, while it holds the leadership. Every
    /// write that carries out such a decision is fenced with the term.
    leading: Option<Term>,
    /// A health verdict applied here whose save failed (retried each round).
    verdicts_unsaved: bool,
    following: followed::Following,
    /// Stragglers (see `followed`) seen while another edge led: moved by
    /// this one if it takes over, in case the leader missed them.
    stragglers: followed::Stragglers,
    /// The probe responder's current key, once probes are on.
    probe: Option<ProbeConfig>,
    /// What the homes are to be told of their state (`probe::state`):
    /// every home's while this edge leads, none while it follows.
    home_states: tokio::sync::watch::Sender<Vec<Announcement>>,
    /// The routing table's version, as last published to its streams.
    route_version: tokio::sync::watch::Sender<RouteVersion>,
    /// The last moves, newest last, with why they were made.
    recent_moves: VecDeque<RecentMove>,
}

/// One step of a scan over the fast path's learned clients.
#[derive(Debug, Default)]
pub struct ScanStep {
    /// Whether the pass is complete (or failed: it starts over next time).
    pub complete: bool,
    /// With a completed pass that was asked for them: every learned
    /// client's load sample.
    pub samples: Option<Vec<Sample>>,
}

/// Every client of a server to move, a batch at a time.
struct MoveJob {
    from: String,
    left: Vec<Aor>,
    moves: Vec<Move>,
    /// Told the moves once all are made (a drain asked for them).
    reply: Option<oneshot::Sender<Reply>>,
    /// The leader's term, for a job the leader decided (a failover, a
    /// removal it resumed, stragglers): its moves are made only while the
    /// term lasts. None for an operator's.
    fence: Option<Term>,
    /// Logged when done.
    why: &'static str,
    /// The server leaves the pool once its clients have moved.
    retire: bool,
}

/// Everything the owner's state is made of.
pub struct Parts {
    pub assignments: Assignments,
    pub pool: PoolView,
    pub fast_path: FastPath,
    pub watchers: Watchers,
    pub profiles: Profiles,
    pub template: Option<Arc<Template>>,
    /// What every document shares (its probe targets are filled in from
    /// the pool when rendered).
    pub documents: Common,
    pub tracker: Tracker,
    pub rebalancer: Rebalancer,
    pub admission: Admission,
    pub counters: Arc<Counters>,
    pub store_path: String,
    pub expiry: Option<expiry::Policy>,
    /// The config's `[[servers]]` as last applied.
    pub applied: Vec<ServerSpec>,
}

/// How often reaching the cap on assignments is logged at most.
const CAPACITY_WARNING_GAP: Duration = Duration::from_secs(60);

impl Operations {
    pub fn new(parts: Parts) -> Self {
        let Parts {
            assignments,
            pool,
            fast_path,
            watchers,
            profiles,
            template,
            documents,
            tracker,
            rebalancer,
            admission,
            counters,
            store_path,
            expiry,
            applied,
        } = parts;
        let (route_version, _) = tokio::sync::watch::channel(assignments.routes().version());
        Self {
            assignments,
            pool,
            fast_path,
            watchers,
            profiles,
            template,
            documents,
            tracker,
            rebalancer,
            admission,
            counters,
            store_path,
            started: Instant::now(),
            warned_at_capacity: None,
            jobs: VecDeque::new(),
            expiry,
            walk: None,
            next_page_at: Instant::now(),
            pass: Vec::new(),
            applied,
            leading: Some(Term::Alone),
            verdicts_unsaved: false,
            following: followed::Following::default(),
            stragglers: followed::Stragglers::default(),
            probe: None,
            home_states: tokio::sync::watch::channel(Vec::new()).0,
            route_version,
            recent_moves: VecDeque::new(),
        }
    }

    /// This edge gained or lost the leadership. A follower leaves the
    /// moves no operator asked of it to the leader; a new leader resumes
    /// the moves the last one may have cut short, and applies its own
    /// health checks' verdicts where the pool says otherwise.
    pub fn lead(&mut self, term: Option<Term>) {
        let was_leading = std::mem::replace(&mut self.leading, term).is_some();
        let leading = self.leading.is_some();
        if was_leading == leading {
            return;
        }
        tracing::info!(leading, "leadership of the pool's decisions changed");
        if !leading {
            self.jobs.retain(|job| job.fence.is_none());
            return;
        }
        if let Err(error) = self.resume_pool_moves() {
            tracing::warn!(%error, "resuming the last leader's moves failed");
        }
        let stragglers = self.stragglers.take();
        self.move_stragglers(stragglers);
        self.keep_verdicts();
    }

    /// The leader's health verdicts, applied where the pool says otherwise
    /// (another edge's save brought an older verdict back), and saved again
    /// if the last save failed.
    fn keep_verdicts(&mut self) {
        let pool = self.pool.load_full();
        for (slot, up) in self.tracker.verdicts() {
            if pool.by_index(slot).is_some_and(|home| home.healthy != up) {
                self.apply_health(if up { Transition::Up(slot) } else { Transition::Down(slot) });
            }
        }
        if self.verdicts_unsaved {
            let fence = self.leading.clone();
            self.verdicts_unsaved = self.save_pool(&self.pool.load_full(), fence.as_ref()).is_err();
        }
    }

    /// Told the routing table's version whenever it changes (see `publish_routes`).
    pub fn route_versions(&self) -> tokio::sync::watch::Receiver<RouteVersion> {
        self.route_version.subscribe()
    }

    /// Tells the routing table's streams of its version, if it changed.
    pub fn publish_routes(&self) {
        let now = self.assignments.routes().version();
        self.route_version.send_if_modified(|published| std::mem::replace(published, now) != now);
    }

    /// Told what to tell the homes whenever it changes (see `publish_pool`).
    pub fn home_states(&self) -> tokio::sync::watch::Receiver<Vec<Announcement>> {
        self.home_states.subscribe()
    }

    /// After every round of commands, whatever changed the pool (an
    /// operator, health, another edge, the leadership): the edge's own
    /// responder answers while a home takes new clients, and the task
    /// telling the homes their state hears of a change at once. Neither
    /// writes anything unless something changed.
    pub fn publish_pool(&mut self) {
        if let Some(config) = self.probe {
            self.set_probe(config);
        }
        let states = announcements(self.pool.load().servers(), self.leading.is_some());
        self.home_states.send_if_modified(|published| {
            let changed = *published != states;
            if changed {
                *published = states;
            }
            changed
        });
    }

    /// At start: the pool saved (as seeded or changed by the config),
    /// removals that a restart interrupted resumed, and the clients of
    /// servers last known down moved (the moves a restart may have cut
    /// short; those already made are not made again).
    pub fn start_pool(&mut self) -> Result<()> {
        let pool = self.pool.load_full();
        match self.save_pool(&pool, None) {
            // An edge started from its replica while etcd is out of reach.
            Err(OperationError::Store(error)) if error.is_unavailable() => tracing::warn!(
                %error,
                "the pool is not saved: the config's [[servers]] changes apply here only; reload (SIGHUP) once etcd answers"
            ),
            saved => saved?,
        }
        if self.leading.is_some() {
            self.resume_pool_moves()?;
        }
        Ok(())
    }

    /// The moves a leader makes that the last one may have cut short:
    /// removals under way resumed, the clients of servers known down
    /// moved (those already moved are not moved again).
    fn resume_pool_moves(&mut self) -> Result<()> {
        let pool = self.pool.load_full();
        for removing in pool.servers().iter().filter(|s| s.state == ServerState::Removing) {
            tracing::info!(server = removing.name, "resuming the removal of a home server");
            let job = self.leaders(self.removal(&removing.name)?);
            self.jobs.extend(job);
        }
        for down in pool.servers().iter().filter(|s| !s.healthy && s.state != ServerState::Removing) {
            tracing::info!(server = down.name, "home server known down: its clients move");
            let job = self.leaders(self.move_all_from(&down.name, "home server down, its clients moved")?);
            self.jobs.extend(job);
        }
        Ok(())
    }

    fn warn_at_capacity(&mut self, now: Instant) {
        if self.warned_at_capacity.is_some_and(|at| now.duration_since(at) < CAPACITY_WARNING_GAP) {
            return;
        }
        self.warned_at_capacity = Some(now);
        let held: u64 = self.assignments.client_counts().values().sum();
        tracing::warn!(
            held,
            "the pool holds as many assignments as [limits] max_assignments allows: new clients get 503; raise it"
        );
    }

    /// Has the kernel throttle the prefixes just refused for their rate, so
    /// that their floods stop at XDP. A failure costs only the throttle:
    /// the daemon still refuses them.
    fn throttle_refused_prefixes(&mut self) {
        // Homes are not held up by it: their requests go to the proxy
        // address and their nat replies to edge ports, neither of which
        // the program throttles.
        let prefixes = self.admission.take_throttled();
        if prefixes.is_empty() {
            return;
        }
        let limits = self.admission.limits();
        let until = monotonic_ns().saturating_add(limits.throttle_for.as_nanos() as u64);
        let throttle = Throttle::new(until, limits.throttled_datagrams);
        match self.fast_path.dataplane().throttle(&prefixes, throttle) {
            Ok(()) => add(&self.counters.prefixes_throttled, prefixes.len() as u64),
            Err(error) => tracing::warn!(%error, "throttling flooding prefixes in the kernel failed"),
        }
    }

    /// Has the program stop looking first contacts up in `THROTTLED` once
    /// every throttle there has lifted (a miss then costs no lookup).
    pub fn lift_throttles(&mut self) {
        if let Err(error) = self.fast_path.dataplane().lift_throttles(monotonic_ns()) {
            tracing::warn!(%error, "clearing the kernel's throttling flag failed: misses still look the throttle up");
        }
    }

    /// Answers a control API request on `reply`: at once, or for a drain
    /// once its moves are made (see `work`).
    pub fn answer(&mut self, request: Request, reply: oneshot::Sender<Reply>) {
        match &request {
            Request::Drain { server } => self.drain(server, reply),
            Request::RemoveServer { server } => self.remove_server(server, reply),
            _ => {
                let _ = reply.send(self.answer_now(request));
            }
        }
    }

    fn answer_now(&mut self, request: Request) -> Reply {
        let result = match request {
            Request::Stats => self.stats().map(Reply::Stats),
            Request::Servers => self.servers().map(Reply::Servers),
            Request::Clients { server } => self.clients(&server).map(Reply::Clients),
            Request::Assign { aor, server } => self.assign(&aor, &server).map(|m| Reply::Moves(vec![m])),
            Request::Drain { .. } => unreachable!("`answer` queues drains"),
            Request::Undrain { server } => self.undrain(&server).map(Reply::Server),
            Request::Routes => self.routes().map(Reply::Routes),
            Request::RouteTable { since } => self.route_table(since).map(Reply::RouteTable),
            Request::RouteOf { aor } => self.route_of(&aor).map(|route| Reply::Routes(route.into_iter().collect())),
            Request::Document { aor } => Aor::from_uri(&aor, "AOR")
                .map_err(|e| OperationError::BadAor(aor.clone(), e))
                .map(|aor| Reply::Document(self.document(&aor))),
            Request::RecentMoves => Ok(Reply::RecentMoves(self.recent_moves.iter().rev().cloned().collect())),
            Request::Rebalance { dry_run } => self.rebalance(dry_run).map(Reply::Plan),
            Request::Entries { aor } => self.entries(&aor).map(Reply::Entries),
            Request::Status => Ok(Reply::Status(self.status_of_daemon())),
            Request::RemoveServer { .. } => unreachable!("`answer` queues removals"),
            Request::AddServer { server } => self.add_server(server).map(Reply::Server),
            Request::SetServer { server, weight, state } => self.set_server(&server, weight, state).map(Reply::Server),
            Request::ReloadServers { servers } => self.reload_servers(servers).map(Reply::Reloaded),
        };
        result.unwrap_or_else(|error| Reply::Error(error.to_string()))
    }

    /// First contact's clients without a usable assignment get one, all in
    /// one durable transaction; those that came straight from their client
    /// go on the fast path at once, and the watchers of those moved off an
    /// unusable server are told.
    pub fn assign_new(&mut self, clients: &[NewClient]) -> Result<HashMap<Aor, Result<Assigned, Refused>>, StoreError> {
        let pool = self.pool.load_full();
        let mut unique: Vec<&NewClient> = clients.iter().collect();
        unique.sort_by(|a, b| a.aor.cmp(&b.aor));
        unique.dedup_by(|a, b| a.aor == b.aor);
        let aors: Vec<&Aor> = unique.iter().map(|c| &c.aor).collect();
        let now = Instant::now();
        let sources: HashMap<&Aor, (std::net::IpAddr, bool)> =
            unique.iter().map(|c| (&c.aor, (c.source, c.direct))).collect();
        let admission = &mut self.admission;
        let mut admit = |aor: &Aor, held: u64| match sources.get(aor) {
            Some(&(source, direct)) => admission.admit(source, direct, held, now),
            None => Err(Refused::RateLimited),
        };
        let homes: HashMap<&Aor, &String> =
            unique.iter().filter_map(|c| c.cookie_home.as_ref().map(|home| (&c.aor, home))).collect();
        let cookie_home = |aor: &Aor| homes.get(aor).map(|home| (*home).clone());
        let results = self.assignments.assign_all(&aors, &pool, &mut admit, &cookie_home)?;
        self.throttle_refused_prefixes();
        let assigned: HashMap<Aor, Result<Assigned, Refused>> = aors.into_iter().cloned().zip(results).collect();
        if assigned.values().any(|result| *result == Err(Refused::AtCapacity)) {
            self.warn_at_capacity(now);
        }
        let routed: Vec<&Aor> = assigned.iter().filter(|(_, result)| result.is_ok()).map(|(aor, _)| aor).collect();
        self.route_current(&routed);
        for client in clients {
            if assigned.get(&client.aor).is_some_and(|result| result.as_ref().is_ok_and(|done| done.moved)) {
                self.client_moved(&client.aor);
            }
        }
        self.install_all(&installs_of_new(clients, &assigned, &pool));
        self.save_watchers();
        self.save_profiles();
        Ok(assigned)
    }

    /// What first contact decided that changes state: installs, watchers'
    /// dialogs, health answers, in order; each run of installs together
    /// (one batched kernel write). Sends are not the owner's.
    pub fn apply(&mut self, actions: Vec<Action>) {
        for step in steps(actions) {
            match step {
                Step::Installs(installs) => self.install_all(&installs),
                Step::One(action) => self.apply_one(action),
            }
        }
        self.save_watchers();
    }

    fn apply_one(&mut self, action: Action) {
        match action {
            Action::Install { origin, server, aor, generation } => {
                self.install_all(&[Due { aor, origin, server, generation }])
            }
            Action::Watch { subscription, expires, generation } => self.watch(*subscription, expires, generation),
            Action::RecordProxy { source } => self.record_proxy(source),
            Action::SubscribeAnswered { id, code, notifier_tag } => {
                self.watchers.answered(&id, code, notifier_tag.as_deref())
            }
            Action::PingAnswered { server, sequence } => {
                if let Some(transition) = self.tracker.answered(server, sequence) {
                    self.apply_health(transition);
                }
            }
            Action::Reply { .. }
            | Action::Forward { .. }
            | Action::Relay { .. }
            | Action::Encapsulate { .. }
            | Action::Translate { .. }
            | Action::NotifyAnswered { .. }
            | Action::Profile(_) => {}
        }
    }

    /// Writes the watchers' dialogs that changed to the store, so that a
    /// restarted daemon still tells them when their client moves. A
    /// failure is logged: the dialogs stay in memory and are written with
    /// the next change.
    fn save_watchers(&mut self) {
        let changes = self.watchers.take_changes();
        if changes.is_empty() {
            return;
        }
        let (kept, removed) = (changes.kept.len(), changes.removed.len());
        let store = self.assignments.store();
        match store.save_dialogs(DialogKind::Watches, &changes.kept, &changes.removed) {
            Ok(()) => add(&self.watchers.counters.dialogs_saved, (kept + removed) as u64),
            Err(error) => {
                tracing::warn!(%error, kept, removed, "saving watchers' dialogs failed; retried with the next change");
                self.watchers.retry(changes);
            }
        }
    }

    /// Puts the clients on the fast path whose assignment they were routed
    /// by is still current (a move between decision and install must not
    /// be undone), in one batched kernel write.
    fn install_all(&mut self, due: &[Due]) {
        let current: Vec<&Due> = due
            .iter()
            .filter(|due| {
                let current = self.assignments.generation(&due.aor) == Some(due.generation);
                if !current {
                    tracing::debug!(aor = %due.aor, client = %due.origin.client, "not installed: the assignment moved meanwhile");
                }
                current
            })
            .collect();
        let installs: Vec<Install<'_>> =
            current.iter().map(|due| Install { aor: &due.aor, origin: due.origin, server: due.server }).collect();
        let results = self.fast_path.install_many(&installs);
        for (due, result) in current.iter().zip(results) {
            let (aor, client, server) = (&due.aor, due.origin.client, due.server);
            match result {
                Ok(Installed::ForAor) => {
                    bump(&self.counters.installed);
                    tracing::debug!(%aor, %client, server, "on the fast path");
                }
                Ok(Installed::Shared) => tracing::debug!(%aor, %client, "a socket shared with another AOR: left to it"),
                Err(error) => tracing::warn!(%aor, %client, %error, "could not put the client on the fast path"),
            }
        }
    }

    /// Has the kernel read the Vias of `source`'s misses (dsr): its
    /// requests for known AORs go home from XDP from then on. A failure
    /// costs only that: they are proxied here, as before.
    fn record_proxy(&mut self, source: std::net::IpAddr) {
        match self.fast_path.record_proxy(source, Instant::now()) {
            Ok(true) => {
                bump(&self.counters.proxies_recorded);
                tracing::debug!(%source, "an upstream proxy: its requests are routed by AOR in the kernel");
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%source, %error, "could not record an upstream proxy in the kernel"),
        }
    }

    /// Records a SUBSCRIBE against the generation it was routed by: a move
    /// in between must not go unnoticed.
    fn watch(&mut self, subscription: Subscription, expires: Option<u32>, generation: u64) {
        let moved = self.assignments.generation(&subscription.presentity) != Some(generation);
        self.watchers.subscribed(subscription, expires, moved);
    }

    /// Closes health round `sequence - 1` and opens round `sequence`.
    pub fn health_tick(&mut self, sequence: u32) {
        for transition in self.tracker.tick(sequence) {
            self.apply_health(transition);
        }
        if self.leading.is_some() {
            self.keep_verdicts();
        }
    }

    /// Writes the probe responder's key; the edge answers for the pool only
    /// while a home takes new clients (checked again after every round of
    /// the owner's commands, `publish_pool`).
    pub fn set_probe(&mut self, config: ProbeConfig) {
        let answering = self.pool.load().servers().iter().any(HomeServer::accepts_new);
        let config = ProbeConfig { answering: u8::from(answering), ..config };
        if self.probe == Some(config) {
            return;
        }
        match self.fast_path.dataplane().set_probe(config) {
            Ok(()) => self.probe = Some(config),
            Err(error) => tracing::error!(%error, "writing the probe key failed: probes keep the previous one"),
        }
    }

    /// A verdict of this edge's health checks: published for the other
    /// edges to see, and applied if this edge leads.
    fn apply_health(&mut self, transition: Transition) {
        self.publish_health();
        if self.leading.is_none() {
            return;
        }
        let (server, healthy) = match transition {
            Transition::Down(server) => (server, false),
            Transition::Up(server) => (server, true),
        };
        if let Err(error) = self.set_health(server, healthy) {
            tracing::warn!(server, healthy, %error, "applying a health verdict failed");
        }
    }

    /// What this edge's health checks see, by server name, in a shared
    /// store (an operator compares the edges' views with etcdctl).
    fn publish_health(&self) {
        let store = self.assignments.store();
        if !store.shared() {
            return;
        }
        let pool = self.pool.load();
        let seen: BTreeMap<String, bool> = self
            .tracker
            .verdicts()
            .into_iter()
            .filter_map(|(slot, up)| Some((pool.by_index(slot)?.name.clone(), up)))
            .collect();
        if let Err(error) = store.publish_health(&seen) {
            tracing::warn!(%error, "publishing this edge's health verdicts failed");
        }
    }

    /// One step of the scan over learned clients (up to `SCAN_BUDGET`): each
    /// kernel entry is read once, for everything wanted of it. Clients idle
    /// longer than `idle` leave the fast path; the others' last packet is a
    /// sighting of their AOR (for expiry) and, with `sample`, a load sample
    /// of the pass, handed over when the pass completes.
    pub fn scan(&mut self, idle: Duration, sample: bool) -> ScanStep {
        match self.fast_path.scan(idle, SCAN_BUDGET) {
            Ok(scanned) => {
                if scanned.removed > 0 {
                    tracing::debug!(removed = scanned.removed, "idle clients left the fast path");
                }
                self.record_readings(scanned.readings, sample);
                let samples = (scanned.complete && sample).then(|| std::mem::take(&mut self.pass));
                ScanStep { complete: scanned.complete, samples }
            }
            Err(error) => {
                tracing::warn!(%error, "scanning the fast path's clients failed");
                self.pass.clear();
                ScanStep { complete: true, samples: None }
            }
        }
    }

    /// Each reading is a sighting of its AOR and, with `sample`, a load sample.
    fn record_readings(&mut self, readings: Vec<Reading>, sample: bool) {
        let now = unix_seconds();
        let pool = self.pool.load_full();
        for reading in readings {
            self.assignments.seen(&reading.aor, now.saturating_sub(reading.seen_ago.as_secs()));
            if !sample {
                continue;
            }
            let Some(server) = pool.by_index(reading.server) else { continue };
            let Reading { aor, key, packets, .. } = reading;
            self.pass.push(Sample { aor, server: server.name.clone(), key, packets });
        }
    }

    /// Starts a walk over the store for expired assignments (or, on an edge
    /// that does not lead, for sightings to keep), unless one is under way
    /// or assignments never expire; `work` makes it a page at a time.
    pub fn start_expiry(&mut self) {
        if self.expiry.is_some() && self.walk.is_none() {
            self.walk = Some(Walk::default());
        }
    }

    /// One page of the expiry walk: the assignments in it whose client was
    /// not seen for `expire_after` go from the store, the counts, first
    /// contact's cache and the kernel; sightings that moved far enough
    /// are persisted, in the same transaction.
    fn expire_page(&mut self) {
        let (Some(policy), Some(walk)) = (self.expiry, self.walk.as_mut()) else { return };
        self.next_page_at = Instant::now() + EXPIRY_PAGE_EVERY;
        let page = match self.assignments.store().page(walk.cursor(), EXPIRY_PAGE) {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "reading assignments for expiry failed; the next walk tries again");
                self.walk = None;
                return;
            }
        };
        let (assignments, fast_path, now) = (&self.assignments, &self.fast_path, unix_seconds());
        let last_seen = |aor: &Aor| {
            let seen = assignments.last_seen(aor)?;
            if !policy.expired(seen, now) {
                return Some(seen);
            }
            // Requests the kernel routes by AOR (from upstream proxies) are
            // seen nowhere else; read only for a client about to expire.
            let routed = fast_path.aor_seen_ago(aor).map_or(0, |ago| now.saturating_sub(ago.as_secs()));
            Some(seen.max(routed))
        };
        let mut verdicts = walk.judge(&policy, &page, EXPIRY_PAGE, last_seen, now);
        // A follower keeps its sightings in a shared store (clients the
        // router keeps on this edge are seen nowhere else); the leader
        // alone expires.
        if self.leading.is_none() {
            verdicts.expired.clear();
        }
        if walk.is_done() {
            self.walk = None;
        }
        if verdicts.expired.is_empty() && verdicts.persist.is_empty() {
            return;
        }
        match self.retire(&verdicts) {
            Ok(()) if verdicts.expired.is_empty() => {}
            Ok(()) => tracing::info!(
                expired = verdicts.expired.len(),
                "assignments not seen for [store] expire_after removed"
            ),
            Err(error) => tracing::warn!(%error, "expiring assignments failed; the next walk tries again"),
        }
    }

    /// Takes expired clients out of first contact, off the fast path and out
    /// of the store (persisting `persist` with them). On a failure the
    /// clients stay assigned (their kernel entries may be gone: their next
    /// packet meets first contact, which puts them back).
    fn retire(&mut self, verdicts: &expiry::Verdicts) -> Result<()> {
        let aors: Vec<Aor> = verdicts.expired.iter().map(|a| a.aor.clone()).collect();
        aors.iter().for_each(|aor| self.assignments.hold(aor));
        // Expiring is the leader's decision; keeping sightings is any edge's.
        let fence = self.leading.clone().filter(|_| !aors.is_empty());
        let retired = match self.fast_path.forget_many(&aors) {
            Ok(()) => {
                let expired = self.assignments.expire(&verdicts.expired, &verdicts.persist, fence.as_ref());
                self.step_down_if_deposed(expired, fence.as_ref())
            }
            Err(error) => Err(error.into()),
        };
        if retired.is_err() {
            self.release(&aors);
            return retired;
        }
        // Their documents are gone: subscriptions to them end.
        aors.iter().for_each(|aor| self.document_changed(aor));
        self.save_profiles();
        retired
    }

    /// One rebalancing round on a load sample taken `seconds` after the last.
    pub fn observe_load(&mut self, clients: &[Sample], seconds: f64) {
        let Some(term) = self.leading.clone() else { return };
        let targets = self.balance_targets();
        let planned = self.rebalancer.observe(&targets, clients, seconds);
        match self.apply_plan(&planned, "load skew", Some(&term)) {
            Ok(moves) if moves.is_empty() => {}
            Ok(moves) => tracing::info!(moved = moves.len(), "rebalanced"),
            Err(error) => tracing::warn!(%error, "rebalancing failed"),
        }
    }

    /// `redirector assign AOR SERVER`.
    pub fn assign(&mut self, aor: &str, server: &str) -> Result<Move> {
        let aor = Aor::from_uri(aor, "AOR").map_err(|e| OperationError::BadAor(aor.to_owned(), e))?;
        let to = self.server(server)?;
        if to.effective_state() == ServerState::Down {
            return Err(OperationError::ServerDown(to.name));
        }
        if self.assignments.store().get(&aor)?.is_none() {
            return Err(OperationError::UnknownAor(aor.to_string()));
        }
        let mut moved = self.move_batch(&[(aor, to.clone())], None, "assigned by an operator", None)?;
        moved.pop().ok_or(OperationError::ServerDown(to.name))
    }

    /// Takes `server` out of new assignments and moves all its clients to
    /// the other active servers (rendezvous hashing over them).
    /// Queues the moves of a drain; they answer `reply` once made, and a
    /// failure to start answers it at once.
    fn drain(&mut self, server: &str, reply: oneshot::Sender<Reply>) {
        let job = self.set_state(server, ServerState::Draining).and_then(|_| self.move_all_from(server, "drained"));
        match job {
            Ok(job) => self.jobs.push_back(MoveJob { reply: Some(reply), ..job }),
            Err(error) => {
                let _ = reply.send(Reply::Error(error.to_string()));
            }
        }
    }

    /// Applies a health verdict for the server in slot `index`: to first
    /// contact and the kernel at once (so the fast path stops sending to a
    /// down server immediately), and a down server's clients are moved.
    pub fn set_health(&mut self, index: u32, healthy: bool) -> Result<()> {
        let home = self.change_server(|s| s.index == index, |s| s.healthy = healthy, &index.to_string())?;
        // Kept, so that a restarted daemon starts from this verdict; a
        // store that fails must not keep a down server's clients on it.
        let fence = self.leading.clone();
        if let Err(error) = self.save_pool(&self.pool.load_full(), fence.as_ref()) {
            tracing::warn!(server = home.name, healthy, %error, "keeping a health verdict in the store failed; saved again with the next health round");
            self.verdicts_unsaved = true;
        }
        if healthy {
            tracing::info!(server = home.name, "home server up");
            return Ok(());
        }
        // A save refused for an ended term deposed this edge: the new
        // leader moves the clients (`leaders` queues nothing then).
        let job = self.leaders(self.move_all_from(&home.name, "home server down, its clients moved")?);
        self.jobs.extend(job);
        Ok(())
    }

    /// When `work` has something to do next: at once while moves are
    /// under way, at the walk's next page while an expiry walk is;
    /// `None` when neither is.
    pub fn next_work(&self) -> Option<Instant> {
        if !self.jobs.is_empty() {
            return Some(Instant::now());
        }
        self.walk.as_ref().map(|_| self.next_page_at)
    }

    /// Makes the next batch of the oldest job's moves, `MOVE_BATCH` clients
    /// in one transaction, or else the next page of the expiry walk when it
    /// is due; the owner interleaves it with everything else.
    pub fn work(&mut self) {
        if !self.jobs.is_empty() {
            self.move_next_batch();
        } else if Instant::now() >= self.next_page_at {
            self.expire_page();
        }
    }

    fn move_next_batch(&mut self) {
        let Some(mut job) = self.jobs.pop_front() else { return };
        // Undrained, or back up, since the job began: its clients stay.
        let still_leaving =
            self.pool.load().server(&job.from).is_some_and(|s| s.effective_state() != ServerState::Active);
        if !still_leaving {
            tracing::info!(
                server = job.from,
                moved = job.moves.len(),
                left = job.left.len(),
                "moves stopped: the server takes clients again"
            );
            job.left.clear();
        }
        let batch: Vec<Aor> = job.left.drain(..job.left.len().min(MOVE_BATCH)).collect();
        match self.move_batch_from(&job.from, &batch, job.why, job.fence.as_ref()) {
            Ok(moves) => job.moves.extend(moves),
            Err(error) => {
                let moved = job.moves.len();
                tracing::warn!(server = job.from, %error, moved, left = job.left.len(), "moving clients failed");
                if let Some(reply) = job.reply {
                    let _ = reply.send(Reply::Error(format!("{error} (after moving {moved} clients)")));
                }
                return;
            }
        }
        if !job.left.is_empty() {
            self.jobs.push_front(job);
            return;
        }
        tracing::info!(server = job.from, moved = job.moves.len(), "{}", job.why);
        let done = match job.retire {
            true => self.retire_server(&job.from, job.fence.as_ref()).map(|()| job.moves),
            false => Ok(job.moves),
        };
        if let Some(reply) = job.reply {
            let _ = reply.send(done.map_or_else(|error| Reply::Error(error.to_string()), Reply::Moves));
        }
    }

    /// Changes a server, publishes the pool to first contact and writes the
    /// server's effective state to the kernel.
    fn change_server(
        &mut self,
        matches: impl Fn(&HomeServer) -> bool,
        change: impl FnOnce(&mut HomeServer),
        name: &str,
    ) -> Result<HomeServer> {
        let (pool, home) =
            self.pool.load().changed(matches, change).ok_or_else(|| OperationError::UnknownServer(name.to_owned()))?;
        self.pool.store(Arc::new(pool));
        self.fast_path.dataplane().set_server(home.index, loader::server_entry(&home)).map_err(FastPathError::from)?;
        Ok(home)
    }

    /// The moves of every client of `server` to the other servers that take
    /// new clients (rendezvous hashing over them), for `work` to make a
    /// batch at a time. None can land on `server` meanwhile from this
    /// edge: it takes no new clients. (Another edge sharing the store may
    /// assign one before it learns of the change: the leader moves those,
    /// see `followed`.)
    fn move_all_from(&self, server: &str, why: &'static str) -> Result<MoveJob> {
        let left: Vec<Aor> =
            self.assignments.store().all()?.into_iter().filter(|a| a.server == server).map(|a| a.aor).collect();
        Ok(MoveJob { from: server.to_owned(), left, moves: Vec::new(), reply: None, fence: None, why, retire: false })
    }

    /// `job` as the leader's, made only while this term lasts; none when
    /// this edge does not lead (it may just have been deposed): an
    /// unfenced job would pass for an operator's and outlive the term.
    fn leaders(&self, job: MoveJob) -> Option<MoveJob> {
        let fence = self.leading.clone()?;
        Some(MoveJob { fence: Some(fence), ..job })
    }

    /// One batch of a job: `aors` off `from`, each to where rendezvous
    /// hashing puts it now.
    fn move_batch_from(&mut self, from: &str, aors: &[Aor], why: &str, fence: Option<&Term>) -> Result<Vec<Move>> {
        let pool = self.pool.load_full();
        // Clients that moved meanwhile (at a first contact, or by `assign`)
        // keep their place on the fast path.
        let planned = aors
            .iter()
            .filter(|aor| self.assignments.server_of(aor).is_none_or(|server| &*server == from))
            .map(|aor| {
                let to = pool.choose(aor, Some(from)).cloned();
                Ok((aor.clone(), to.ok_or_else(|| OperationError::NoActiveServer(from.into()))?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.move_batch(&planned, Some(from), why, fence)
    }

    /// Lets `server` take new clients again.
    pub fn undrain(&mut self, server: &str) -> Result<ServerStatus> {
        self.set_state(server, ServerState::Active)?;
        tracing::info!(server, "undrained");
        self.status(server)
    }

    /// Sets a server's state for first contact and the kernel at once, and
    /// in the store, so it outlives a restart.
    pub fn set_state(&mut self, server: &str, state: ServerState) -> Result<HomeServer> {
        let (pool, _) = self
            .pool
            .load()
            .changed(|s| s.name == server, |s| s.state = state)
            .ok_or_else(|| OperationError::UnknownServer(server.to_owned()))?;
        self.save_pool(&pool, None)?;
        let home = self.change_server(|s| s.name == server, |s| s.state = state, server)?;
        // The homes taking new clients are every document's probe targets.
        self.refresh_profiles();
        Ok(home)
    }

    /// `redirector servers add`: the server takes new clients at once.
    pub fn add_server(&mut self, spec: ServerSpec) -> Result<ServerStatus> {
        let name = spec.name.clone();
        self.change_pool(&Change::Add(spec))?;
        self.status(&name)
    }

    /// `redirector servers set`: a new weight applies to new clients (and
    /// the rebalancer's targets); draining keeps the server's clients where
    /// they are (`redirector drain` moves them); active calls a removal off.
    pub fn set_server(&mut self, name: &str, weight: Option<f64>, state: Option<ServerState>) -> Result<ServerStatus> {
        let mut spec = self.pool.load().server(name).map(HomeServer::spec).ok_or(PoolError::Unknown(name.into()))?;
        spec.weight = weight.unwrap_or(spec.weight);
        spec.state = state.unwrap_or(spec.state);
        self.change_pool(&Change::Update(spec))?;
        self.status(name)
    }

    /// `redirector servers remove`: answered once the server's clients have
    /// moved and it has left the pool; a failure to start answers at once.
    fn remove_server(&mut self, name: &str, reply: oneshot::Sender<Reply>) {
        let started = self.change_pool(&Change::Remove(name.to_owned())).and_then(|_| self.removal(name));
        match started {
            Ok(job) => self.jobs.push_back(MoveJob { reply: Some(reply), ..job }),
            Err(error) => {
                let _ = reply.send(Reply::Error(error.to_string()));
            }
        }
    }

    /// The moves of every client of `name`, after which it leaves the pool.
    fn removal(&self, name: &str) -> Result<MoveJob> {
        let job = self.move_all_from(name, "home server removed, its clients moved")?;
        Ok(MoveJob { retire: true, ..job })
    }

    /// The server `name`, whose clients have all moved, leaves the pool and
    /// its SERVERS slot reads "unused": anything still pointing at it goes
    /// to first contact. Unless its removal was called off meanwhile.
    fn retire_server(&mut self, name: &str, fence: Option<&Term>) -> Result<()> {
        let pool = self.pool.load_full();
        if pool.server(name).is_none_or(|s| s.state != ServerState::Removing) {
            tracing::info!(server = name, "removal called off: the server stays");
            return Ok(());
        }
        let (next, gone) = pool.retire(name).ok_or_else(|| OperationError::UnknownServer(name.to_owned()))?;
        self.save_pool(&next, fence)?;
        self.pool.store(Arc::new(next));
        self.tracker.remove(gone.index);
        self.fast_path.dataplane().set_server(gone.index, Default::default()).map_err(FastPathError::from)?;
        tracing::info!(server = name, slot = gone.index, "home server removed");
        self.refresh_profiles();
        Ok(())
    }

    /// Reloaded config's `[[servers]]`: what the config changed since it was
    /// last applied is applied; each refusal is logged and reported.
    pub fn reload_servers(&mut self, config: Vec<ServerSpec>) -> Result<Reloaded> {
        let done = servers::reload(&self.pool.load(), &self.applied, &config);
        let previous = std::mem::replace(&mut self.applied, done.applied);
        if let Err(error) = self.commit_pool(done.pool, &done.effects) {
            self.applied = previous;
            return Err(error);
        }
        let mut report = Reloaded::default();
        for effect in &done.effects {
            if let Effect::Removing(home) = effect {
                let job = self.removal(&home.name)?;
                self.jobs.push_back(job);
            }
            report.changed.push(describe(effect));
        }
        for (server, error) in done.refused {
            tracing::warn!(server, %error, "a change of the config's [[servers]] was not applied");
            report.refused.push(format!("{server}: {error}"));
        }
        Ok(report)
    }

    /// One change of the pool, checked, saved, published and written to
    /// the kernel (a removal's moves are the caller's to queue).
    fn change_pool(&mut self, change: &Change) -> Result<Effect> {
        let (pool, effect) = self.pool.load().apply(change)?;
        self.commit_pool(pool, std::slice::from_ref(&effect))?;
        tracing::info!("{}", describe(&effect));
        Ok(effect)
    }

    /// Saves `pool` (nothing changes if that fails), publishes it to first
    /// contact, and writes each changed server's SERVERS slot; an added
    /// server is health-checked from the next round.
    fn commit_pool(&mut self, pool: Pool, effects: &[Effect]) -> Result<()> {
        self.save_pool(&pool, None)?;
        self.pool.store(Arc::new(pool));
        for effect in effects {
            let (Effect::Added(home) | Effect::Changed(home) | Effect::Removing(home)) = effect;
            if let Effect::Added(_) = effect {
                self.tracker.add(home.index);
            }
            self.fast_path
                .dataplane()
                .set_server(home.index, loader::server_entry(home))
                .map_err(FastPathError::from)?;
        }
        // A home's address or port may have changed, and its clients'
        // documents with it.
        self.refresh_profiles();
        Ok(())
    }

    /// Keeps `pool` and the config's servers as last applied in the store
    /// (`fence`: a leader's decision, made only while its term lasts).
    fn save_pool(&mut self, pool: &Pool, fence: Option<&Term>) -> Result<()> {
        let saved = self.assignments.store().save_pool(&servers::to_store(pool, &self.applied), fence);
        self.step_down_if_deposed(saved, fence)
    }

    /// A leader's write refused because its term (`fence`) had ended:
    /// this edge steps down at once if that is still its term (its
    /// campaign ends the term too).
    fn step_down_if_deposed<T>(&mut self, result: Result<T, StoreError>, fence: Option<&Term>) -> Result<T> {
        if result.as_ref().is_err_and(StoreError::is_deposed) && self.leading.as_ref() == fence {
            self.lead(None);
        }
        Ok(result?)
    }

    /// Servers that take new clients, as the rebalancer weighs them.
    pub fn balance_targets(&self) -> Vec<ServerLoad> {
        let pool = self.pool.load();
        let targets = pool.servers().iter().filter(|s| s.accepts_new());
        targets.map(|s| ServerLoad { name: s.name.clone(), weight: s.weight }).collect()
    }

    /// The rebalancer's plan on its latest rates; applied unless `dry_run`.
    pub fn rebalance(&mut self, dry_run: bool) -> Result<Vec<PlannedMove>> {
        let planned = plan(&self.balance_targets(), &self.rebalancer.latest, &self.rebalancer.thresholds);
        if !dry_run {
            self.apply_plan(&planned, "requested", None)?;
        }
        Ok(planned
            .into_iter()
            .map(|p| PlannedMove { aor: p.aor.to_string(), from: p.from, to: p.to, rate: p.rate })
            .collect())
    }

    /// Makes planned moves, logging why; a client that moved since the
    /// plan was made is left where it is. `fence`: the leader's plan.
    pub fn apply_plan(&mut self, planned: &[Planned], reason: &str, fence: Option<&Term>) -> Result<Vec<Move>> {
        let mut moves = Vec::new();
        for p in planned {
            tracing::info!(aor = %p.aor, from = p.from, to = p.to, rate = p.rate, reason, "rebalancing");
            let why = format!("rebalanced ({reason}): {:.1} packets/s", p.rate);
            moves.extend(self.move_batch(&[(p.aor.clone(), self.server(&p.to)?)], Some(&p.from), &why, fence)?);
        }
        Ok(moves)
    }

    /// Moves clients to their planned servers (see
    /// `Assignments::reassign_many` for the ones left alone): each is held
    /// out of first contact's cache, then one durable commit (`fence`: a
    /// leader's, made only while its term lasts), then the moved clients'
    /// kernel entries are repointed in place at their new servers (planned
    /// on a second thread while the commit runs) and the watchers told.
    /// Until the commit the kernel sends them to the server the store still
    /// names; once the move returns, to the new one (entries the kernel
    /// refuses to rewrite are withdrawn instead, and the client's next
    /// packet meets first contact, which answers from the assignments).
    /// Clients left alone keep their entries.
    fn move_batch(
        &mut self,
        planned: &[(Aor, HomeServer)],
        only_from: Option<&str>,
        why: &str,
        fence: Option<&Term>,
    ) -> Result<Vec<Move>> {
        for (aor, _) in planned {
            self.assignments.hold(aor);
        }
        let pool = self.pool.load_full();
        let pairs: Vec<(&Aor, &str)> = planned.iter().map(|(aor, to)| (aor, to.name.as_str())).collect();
        let targets: Vec<(&Aor, u32)> = planned.iter().map(|(aor, to)| (aor, to.index)).collect();
        let (fast_path, assignments) = (&mut self.fast_path, &mut self.assignments);
        let (reassigned, plan) = std::thread::scope(|scope| {
            let planning = scope.spawn(|| fast_path.plan_repoint(&targets));
            let reassigned = assignments.reassign_many(&pairs, only_from, &pool, fence);
            (reassigned, planning.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        let reassigned = self.step_down_if_deposed(reassigned, fence);
        let reassigned = match reassigned {
            Ok(reassigned) => reassigned,
            Err(error) => {
                self.release(planned.iter().map(|(aor, _)| aor));
                return Err(error);
            }
        };
        let mut moves = Vec::with_capacity(planned.len());
        for ((aor, to), done) in planned.iter().zip(&reassigned) {
            let Some(done) = done else { continue };
            let from = done.previous.clone().unwrap_or_default();
            tracing::debug!(%aor, from, to = to.name, generation = done.generation, "moved");
            moves.push(Move { aor: aor.to_string(), from, to: to.name.clone(), generation: done.generation });
        }
        if let Err(error) = self.fast_path.repoint(plan, |i| reassigned[i].is_some()) {
            tracing::warn!(%error, moved = moves.len(), "moved clients' kernel entries were not repointed: their next packets meet first contact");
        }
        for ((aor, _), done) in planned.iter().zip(&reassigned) {
            if done.is_some() {
                self.client_moved(aor);
            }
        }
        self.release(planned.iter().map(|(aor, _)| aor));
        // After the clients are on the fast path again: this is a commit too.
        self.save_watchers();
        self.save_profiles();
        self.remember(&moves, why);
        Ok(moves)
    }

    /// Routes AORs in the kernel's `AORS` to the homes they are assigned
    /// to now (new assignments, ones another edge made). One
    /// that fails is logged: the AOR's requests through other proxies go
    /// up to first contact, which proxies them.
    fn route_current(&mut self, aors: &[&Aor]) {
        let pool = self.pool.load_full();
        let routes: Vec<(&Aor, u32)> =
            aors.iter().filter_map(|aor| Some((*aor, pool.server(&self.assignments.server_of(aor)?)?.index))).collect();
        if let Err(error) = self.fast_path.route_aors(&routes) {
            tracing::warn!(%error, aors = routes.len(), "AORs not routed in the kernel: their requests through other proxies go up to first contact");
        }
    }

    /// Keeps the last `RECENT_MOVES` moves, with why they were made.
    fn remember(&mut self, moves: &[Move], why: &str) {
        let at = unix_seconds();
        let skip = moves.len().saturating_sub(RECENT_MOVES);
        for m in &moves[skip..] {
            if self.recent_moves.len() == RECENT_MOVES {
                self.recent_moves.pop_front();
            }
            let (aor, from, to, why) = (m.aor.clone(), m.from.clone(), m.to.clone(), why.to_owned());
            self.recent_moves.push_back(RecentMove { at, aor, from, to, why });
        }
    }

    /// Shows held clients that did not move (or expire) to first contact
    /// again.
    fn release<'a>(&self, aors: impl IntoIterator<Item = &'a Aor>) {
        aors.into_iter().for_each(|aor| self.assignments.release(aor));
    }

    fn server(&self, name: &str) -> Result<HomeServer> {
        self.pool.load().server(name).cloned().ok_or_else(|| OperationError::UnknownServer(name.to_owned()))
    }

    pub fn servers(&mut self) -> Result<Vec<ServerStatus>> {
        let clients = self.assignments.client_counts();
        let pool: Arc<Pool> = self.pool.load_full();
        pool.servers()
            .iter()
            .map(|home| {
                let sent = self.fast_path.dataplane().server_stats(home.index).map_err(FastPathError::from)?;
                Ok(ServerStatus {
                    clients: clients.get(&home.name).copied().unwrap_or(0),
                    name: home.name.clone(),
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

    fn status(&mut self, server: &str) -> Result<ServerStatus> {
        self.servers()?
            .into_iter()
            .find(|s| s.name == server)
            .ok_or_else(|| OperationError::UnknownServer(server.into()))
    }

    /// A fresh reading of every figure (rates are the stats stream's job).
    pub fn stats(&mut self) -> Result<Stats> {
        let servers = self.servers()?;
        let verdicts = self.fast_path.dataplane().counters().map_err(FastPathError::from)?;
        let named = |counters: Vec<(&'static str, u64)>| counters.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        Ok(Stats {
            interval: 0.0,
            servers,
            verdicts: verdicts.into_iter().map(|(counter, n)| (counter.label().to_owned(), n)).collect(),
            first_contact: named(self.counters.snapshot()),
            kernel_memory: loader::kernel_memory(),
            watchers: {
                let mut watchers: BTreeMap<String, u64> = named(self.watchers.counters.snapshot());
                watchers.insert("subscriptions_kept".into(), self.watchers.kept() as u64);
                watchers
            },
            profiles: {
                let mut profiles: BTreeMap<String, u64> = named(self.profiles.counters.snapshot());
                profiles.insert("subscriptions_kept".into(), self.profiles.kept() as u64);
                profiles
            },
            store: self.store_figures(),
        })
    }

    /// A shared store's counters, what this edge followed of it, and
    /// whether it leads; nothing for a store of its own.
    fn store_figures(&self) -> BTreeMap<String, u64> {
        let store = self.assignments.store();
        if !store.shared() {
            return BTreeMap::new();
        }
        let figures = store.counters().into_iter().chain(self.following.snapshot());
        let mut figures: BTreeMap<String, u64> = figures.map(|(name, n)| (name.to_owned(), n)).collect();
        figures.insert("leading".into(), u64::from(self.leading.is_some()));
        figures
    }

    /// The AORs assigned to `server`, with when each was last seen.
    pub fn clients(&self, server: &str) -> Result<Vec<Client>> {
        self.server(server)?;
        let assignments = self.assignments.store().all()?;
        Ok(assignments
            .into_iter()
            .filter(|a| a.server == server)
            .map(|a| Client {
                last_seen: self.assignments.last_seen(&a.aor).unwrap_or(a.last_seen),
                aor: a.aor.to_string(),
            })
            .collect())
    }

    fn status_of_daemon(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            store: self.store_path.clone(),
            assignments: self.assignments.client_counts().values().sum(),
            kernel_memory: loader::kernel_memory(),
        }
    }

    /// `aor`'s client addresses on the fast path, as the kernel has them.
    pub fn entries(&mut self, aor: &str) -> Result<Vec<Entry>> {
        let aor = Aor::from_uri(aor, "AOR").map_err(|e| OperationError::BadAor(aor.to_owned(), e))?;
        let mut entries = Vec::new();
        for key in self.fast_path.installed(&aor) {
            let Some(entry) = self.fast_path.dataplane().client(key).map_err(FastPathError::from)? else { continue };
            let client = SocketAddr::new(loader::endpoint_ip(&key), u16::from_be(key.port_be));
            let packets = self.fast_path.dataplane().client_packets(entry.load_slot).map_err(FastPathError::from)?;
            entries.push(Entry { client, server: entry.server, packets });
        }
        Ok(entries)
    }

    /// The routing table with its version, or what changed after `since`.
    pub fn route_table(&self, since: Option<RouteVersion>) -> Result<RouteTable> {
        let version = self.assignments.routes().version();
        let table = RouteTable { version, since, reload: false, routes: Vec::new(), removed: Vec::new() };
        let Some(since) = since else { return Ok(RouteTable { routes: self.routes()?, ..table }) };
        let Since::Changes(changes) = self.assignments.routes().since(since) else {
            return Ok(RouteTable { reload: true, ..table });
        };
        let pool = self.pool.load();
        let (mut routes, mut removed) = (Vec::new(), Vec::new());
        for (aor, server) in changes {
            let Some(server) = server else {
                removed.push(aor.to_string());
                continue;
            };
            let address = pool.server(&server).and_then(HomeServer::any_address);
            let generation = self.assignments.generation(&aor).unwrap_or_default();
            routes.push(Route { aor: aor.to_string(), server, address, generation });
        }
        Ok(RouteTable { routes, removed, ..table })
    }

    /// `aor`'s route, if it is assigned, as this edge has it.
    pub fn route_of(&self, aor: &str) -> Result<Option<Route>> {
        let aor = Aor::from_uri(aor, "AOR").map_err(|e| OperationError::BadAor(aor.to_owned(), e))?;
        let Some(cached) = self.assignments.current(&aor) else { return Ok(None) };
        Ok(Some(self.route(&aor, &cached)))
    }

    fn route(&self, aor: &Aor, cached: &Cached) -> Route {
        let address = self.pool.load().server(&cached.server).and_then(HomeServer::any_address);
        Route { aor: aor.to_string(), server: cached.server.to_string(), address, generation: cached.generation }
    }

    /// Every assignment as this edge has it (its cache, which with a shared
    /// store follows the other edges' commits), in AOR order.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        self.assignments.cache().for_each(|aor, cached| routes.push(self.route(aor, cached)));
        routes.sort_by(|a, b| a.aor.cmp(&b.aor));
        Ok(routes)
    }
}

/// A pool change, as logged and reported.
fn describe(effect: &Effect) -> String {
    match effect {
        Effect::Added(home) => format!("home server {} added (slot {}, weight {})", home.name, home.index, home.weight),
        Effect::Changed(home) => {
            format!("home server {} changed: {:?}, weight {}", home.name, home.state, home.weight)
        }
        Effect::Removing(home) => format!("home server {} being removed: its clients move away", home.name),
    }
}
