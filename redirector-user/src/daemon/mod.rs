//! The edge daemon: the XDP program attached, the state owner thread
//! running (`ops::owner`), and UDP sockets on every service address (what
//! the fast path passes up) and proxy address (home servers' responses),
//! bound once per core, each served by a task with its own first-contact
//! core.
//!
//! Assignments are reloaded from the database on start; the kernel map is
//! refilled lazily: it is keyed by client source address, which only a
//! client's next first contact tells us.

mod home_states;
mod hops;
mod nat_replies;
mod raw;
mod sockets;
mod tasks;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use redirector_ebpf::Counter;
use tokio::sync::mpsc;
use tracing::info;

use self::{
    hops::HopKeeper,
    raw::{RawSender, RawSockets},
    sockets::{Senders, bind_shared, registered},
    tasks::{Context, Tasks, named, spawn, supervise},
};
use crate::{
    config::{self, Backend, Config},
    edge::{
        admission::{Admission, Limits},
        assignments::Assignments,
        expiry,
        first_contact::{Counters, FirstContact, Settings},
        health::Tracker,
        notifier::{Notifier, Notify},
        pool,
        profiles::{self, ProfileCounters, Profiles},
        rebalance::{Rebalancer, Thresholds},
        routes::RouteVersion,
        servers,
        watchers::{WatcherCounters, Watchers},
    },
    kernel::{
        fast_path::{FastPath, FastPathError, owner_of},
        hops::{HopError, HopMaps, Keeper, LEASE, Sources},
        loader::{DataPlane, DataPlaneError, edge_config, endpoint_ip, service_endpoints, xdp_mode},
        netlink::{Changes, Tables},
        pins::Pins,
    },
    ops::{
        api::{Reply, Request},
        control,
        documents::{self, Template, TemplateError},
        http::{self, TokenError},
        operations::{OperationError, Operations, Parts},
        owner::{Command, Owner, OwnerGone},
        stats::{self, Latest},
    },
    probe::{Keys, state::Announcement},
    sip::Aor,
    store::{AssignmentStore, DialogKind, EtcdSettings, EtcdStore, RedbStore, StoreError, Tls},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("binding {address}, the {what}: {source}")]
    Bind { address: SocketAddr, what: &'static str, source: std::io::Error },
    #[error(
        "creating the control socket {path}: {source} (is another redirector using it? is its directory writable?)"
    )]
    Control { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "opening a raw socket for fast-path clients' passed-up datagrams (IP fragments): {0} (redirector needs CAP_NET_RAW)"
    )]
    Raw(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    DataPlane(Box<DataPlaneError>),
    #[error(transparent)]
    FastPath(#[from] FastPathError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    OwnerGone(#[from] OwnerGone),
    #[error(transparent)]
    Operation(#[from] OperationError),
    #[error("the daemon's task `{task}` stopped, and the daemon with it (it is meant to run until shutdown)")]
    TaskEnded { task: String },
    #[error("the daemon's task `{task}` failed, and the daemon stopped: {source}")]
    TaskFailed { task: String, source: Box<DaemonError> },
    #[error("a daemon task panicked: {0}")]
    TaskPanicked(#[from] tokio::task::JoinError),
    #[error("Daemon::serve runs once per Daemon")]
    ServedTwice,
    #[error("keeping next hops: {0}")]
    Hops(#[from] HopError),
    #[error("{0} (`[probe] secret_file`)")]
    ProbeSecret(#[from] crate::probe::SecretError),
}

impl From<DataPlaneError> for DaemonError {
    fn from(error: DataPlaneError) -> Self {
        Self::DataPlane(Box::new(error))
    }
}

type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// The store `[store] backend` names.
fn open_store(config: &Config) -> Result<Box<dyn AssignmentStore>> {
    Ok(match config.store.backend {
        Backend::Redb => Box::new(RedbStore::open(&config.sip.database)?),
        Backend::Etcd => Box::new(EtcdStore::connect(&etcd_settings(config)?)?),
    })
}

/// Where the assignments are, as `redirector status` shows it.
fn store_description(config: &Config) -> String {
    match config.store.backend {
        Backend::Redb => config.sip.database.display().to_string(),
        Backend::Etcd => format!("etcd {} under {}", config.store.endpoints.join(","), config.store.prefix),
    }
}

fn etcd_settings(config: &Config) -> Result<EtcdSettings> {
    let store = &config.store;
    let user = match (&store.username, &store.password_file) {
        (Some(name), Some(file)) => {
            let password =
                std::fs::read_to_string(file).map_err(io(format!("reading store.password_file {}", file.display())))?;
            Some((name.clone(), password.trim_end().to_owned()))
        }
        _ => None,
    };
    let tls = store.ca.clone().map(|ca| Tls { ca, identity: store.cert.clone().zip(store.key.clone()) });
    Ok(EtcdSettings {
        endpoints: store.endpoints.clone(),
        prefix: store.prefix.clone(),
        edge: store.edge.clone().unwrap_or_else(host_name),
        user,
        tls,
        timeout: Duration::from_secs_f64(store.timeout),
        replica: Some(config.replica()),
        max_txn_ops: store.max_txn_ops,
    })
}

/// This host's name, the default name of an edge among a pool's edges.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "edge".into(), |name| name.trim().to_owned())
}

/// With a shared store: the owner is told of what other edges commit, and
/// this edge campaigns for the pool's decisions, following until it wins.
fn follow_store(operations: &Operations, owner: &Owner) -> Result<()> {
    let store = operations.assignments.store();
    if !store.shared() {
        return Ok(());
    }
    let following = owner.clone();
    store.follow(Box::new(move |events| {
        let _ = following.send(Command::Followed(events));
    }))?;
    let leading = owner.clone();
    store.lead(Box::new(move |leads| {
        let _ = leading.send(Command::Lead(leads));
    }))?;
    Ok(())
}

/// Maps an I/O error to `DaemonError::Io` saying what was being done.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

pub struct Daemon {
    owner: Owner,
    owner_thread: Mutex<Option<JoinHandle<()>>>,
    /// The first-contact core each socket's task gets a copy of.
    core: FirstContact,
    control: std::os::unix::net::UnixListener,
    /// Per service address, one socket per core.
    services: Vec<std::net::UdpSocket>,
    /// Per family the edge serves, one socket per core.
    proxies: Vec<std::net::UdpSocket>,
    /// What fast-path clients' passed-up datagrams leave by.
    raw: RawSockets,
    /// nat: where home servers' passed-up replies to edge ports arrive.
    nat_replies: Vec<socket2::Socket>,
    health: config::Health,
    idle_timeout: Duration,
    expiry: Option<expiry::Policy>,
    rebalance: config::Rebalance,
    stats_interval: Duration,
    /// With probes on: the keys and the probe port.
    probe: Option<(Keys, u16)>,
    /// With probes on: where the homes' state messages leave from, and
    /// how often they are sent again.
    state_senders: Option<(home_states::Senders, Duration)>,
    /// What the homes are to be told, as the owner publishes it.
    home_states: tokio::sync::watch::Receiver<Vec<Announcement>>,
    /// `[stats] prometheus`: `/metrics` alone.
    prometheus: Option<std::net::TcpListener>,
    /// `[http] listen`, with its bearer token.
    http: Option<(std::net::TcpListener, Arc<str>)>,
    /// `[documents] template`.
    template: Option<Arc<Template>>,
    /// The routing table's version, as the owner publishes it.
    route_versions: tokio::sync::watch::Receiver<RouteVersion>,
    /// The statistics stream's newest reading.
    pub latest: Arc<Latest>,
    watcher_counters: Arc<WatcherCounters>,
    profile_counters: Arc<ProfileCounters>,
    /// The NOTIFYs to send (watchers', profile subscriptions'); the queue's
    /// end is taken by `serve`'s notifier.
    notifies: mpsc::UnboundedSender<Notify>,
    queued_notifies: Mutex<Option<mpsc::UnboundedReceiver<Notify>>>,
    /// The program's event ring buffer; taken by `serve`'s reader.
    events: Mutex<Option<RingBuf<MapData>>>,
    /// Keeps the program's next hops while the daemon runs.
    _hop_keeper: HopKeeper,
}

/// The routing table's epoch (see `edge::routes`): nanoseconds since the
/// Unix epoch at start, so that no two runs share one.
fn route_epoch() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `[http] listen` bound, with the token read from `[http] token_file`.
fn bind_http(config: &Config) -> Result<Option<(std::net::TcpListener, Arc<str>)>> {
    let (Some(address), Some(token_file)) = (config.http.listen, &config.http.token_file) else { return Ok(None) };
    let token = http::read_token(token_file)?;
    let what = "HTTP listener ([http] listen)";
    let listener = http::bind(address).map_err(|source| DaemonError::Bind { address, what, source })?;
    Ok(Some((listener, token)))
}

impl Daemon {
    /// Opens the database, binds every socket, then loads, configures and
    /// attaches the program — in that order, so no first contact the
    /// program passes up finds no socket — and starts the state owner. The
    /// program stays attached through its pinned link after `Daemon`
    /// drops and the process exits (`redirector detach` removes it); a
    /// previous daemon's pinned maps and link are adopted.
    pub fn start(config: &Config) -> Result<Self> {
        // Loaded before anything is attached: the first first contacts find
        // every known client in the cache.
        let counters = Arc::new(Counters::default());
        let assignments = Assignments::open(open_store(config)?, counters.clone(), route_epoch())?;
        let total: u64 = assignments.client_counts().values().sum();
        info!(database = %config.sip.database.display(), assignments = total, "assignment database open");
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let service_what = "service address (it must be assigned to the edge, e.g. on lo)";
        let service_addresses: Vec<SocketAddr> = service_endpoints(config)
            .map(|endpoint| SocketAddr::new(endpoint_ip(&endpoint), u16::from_be(endpoint.port_be)))
            .collect();
        let services = bind_all(&service_addresses, cores, service_what)?;
        let proxy_addresses = config.proxy_addresses();
        let proxies = bind_all(&proxy_addresses, cores, "sip.proxy_address (an address of the edge's own)")?;
        let prometheus = config
            .stats
            .prometheus
            .map(|address| {
                let what = "Prometheus endpoint ([stats] prometheus)";
                http::bind(address).map_err(|source| DaemonError::Bind { address, what, source })
            })
            .transpose()?;
        let http = bind_http(config)?;
        let template = config.documents.template.as_deref().map(Template::load).transpose()?.map(Arc::new);
        let raw = RawSockets::open(config.edge.ipv4, config.edge.ipv6).map_err(DaemonError::Raw)?;
        let nat_replies = nat_reply_sockets(config).map_err(DaemonError::Raw)?;
        let control = control::bind(&config.control.socket)
            .map_err(|source| DaemonError::Control { path: config.control.socket.clone(), source })?;
        // The pool first: nothing is written to the pinned maps, which the
        // previous daemon's program may still forward by, before it is known.
        let (pool, applied) = servers::restore(assignments.store().pool()?);
        let seeded = servers::reload(&pool, &applied, &config.specs());
        for (server, error) in &seeded.refused {
            tracing::warn!(server, %error, "a change of the config's [[servers]] was not applied");
        }
        let pins = Pins::new(&config.fast_path.bpffs, &config.interface);
        let mut dataplane = DataPlane::load_pinned(&pins, config.fast_path.max_clients)?;
        // Verified before any pinned map is touched: a program this kernel
        // refuses leaves the running one's maps as they were.
        dataplane.program(redirector_ebpf::REDIRECTOR_PROGRAM)?;
        let adopting = adopt_or_clear(&mut dataplane, config)?;
        dataplane.configure_edge(config)?;
        dataplane.set_servers(seeded.pool.servers())?;
        let events = dataplane.take_events()?;
        let hop_maps = dataplane.take_hops()?;
        let homes = homes_by_owner(&assignments, &seeded.pool);
        let mut fast_path = if adopting {
            let (fast_path, adopted) = FastPath::adopting(dataplane, config, seeded.pool.servers(), &homes)?;
            info!(pins = %pins.directory().display(), ?adopted, "adopted the pinned fast path");
            fast_path
        } else {
            FastPath::with_servers(dataplane, config, seeded.pool.servers())?
        };
        // Every assignment's route, whatever a previous daemon's map held.
        fast_path.sync_aors(&homes.values().map(|(aor, slot)| (aor, *slot)).collect::<Vec<_>>())?;
        let tracker = Tracker::new(
            seeded.pool.servers().iter().map(|s| (s.index, s.healthy)),
            config.health.down_after,
            config.health.up_after,
        );
        let pool = pool::view(seeded.pool);
        let hop_keeper = start_hop_keeper(hop_maps, config, pool.clone())?;
        let took_over = fast_path.dataplane().attach_pinned(&config.interface, xdp_mode(config.attach), &pins)?;
        info!(link = %pins.link().display(), took_over, "XDP program attached through its pinned link");
        let settings = Settings {
            policy: config.sip.first_contact,
            redirect_expires: config.sip.redirect_expires,
            retry_after: config.sip.retry_after,
            proxies: proxy_addresses,
            services: service_addresses,
            probe: probe_keys(config)?,
            profiles: None,
        };
        let (notifies, queued_notifies) = mpsc::unbounded_channel();
        let mut watchers = Watchers::new(config.watchers.capacity, notifies.clone());
        let (restored, skipped) = watchers.restore(assignments.store().dialogs(DialogKind::Watches)?);
        info!(restored, skipped, "watchers' dialogs read from the store");
        let watcher_counters = watchers.counters.clone();
        let mut profiles = Profiles::new(profile_settings(&config.documents), notifies.clone());
        let (restored, skipped) = profiles.restore(assignments.store().dialogs(DialogKind::Profiles)?);
        info!(restored, skipped, "ua-profile subscriptions read from the store");
        let profile_counters = profiles.counters.clone();
        // Documents on: ua-profile SUBSCRIBEs are answered here.
        let settings = Settings { profiles: template.is_some().then(|| profile_counters.clone()), ..settings };
        let core = FirstContact::new(settings, pool.clone(), assignments.cache(), fast_path.shared(), counters.clone());
        let rebalancer = rebalancer(&config.rebalance);
        let limits = Limits {
            per_prefix: config.limits.new_clients_per_prefix,
            burst: config.limits.new_clients_burst,
            max_assignments: config.limits.max_assignments,
            throttle_for: Duration::from_secs_f64(config.limits.throttle_for),
            throttled_datagrams: config.limits.throttled_datagrams,
        };
        let expiry = expiry::Policy::new(Duration::from_secs_f64(config.store.expire_after));
        let mut operations = Operations::new(Parts {
            assignments,
            pool,
            fast_path,
            watchers,
            profiles,
            template: template.clone(),
            documents: documents::Common {
                probe_port: config.probe.port.filter(|_| config.probe.secret_file.is_some()),
                probe_servers: Vec::new(),
                idle_timeout: config.fast_path.idle_timeout as u64,
                assignment_expires: config.store.expire_after as u64,
                redirect_expires: config.sip.redirect_expires,
                subscription_expires: config.documents.max_expires,
            },
            tracker,
            rebalancer,
            admission: Admission::new(limits),
            counters,
            store_path: store_description(config),
            expiry,
            applied: seeded.applied,
        });
        if operations.assignments.store().shared() {
            // Until the election says otherwise, another edge leads.
            operations.lead(None);
        }
        operations.start_pool()?;
        // Documents that changed while no daemon ran (a move made by
        // another edge, a home's new address) are sent now.
        operations.refresh_profiles();
        let route_versions = operations.route_versions();
        let home_states = operations.home_states();
        let state_senders = match config.probe.port {
            Some(_) => Some((home_states::Senders::bind(config)?, Duration::from_secs_f64(config.probe.state_every))),
            None => None,
        };
        let (owner, commands) = Owner::channel();
        follow_store(&operations, &owner)?;
        let owner_thread = Owner::start(operations, commands).map_err(io("starting the state owner thread"))?;
        Ok(Self {
            owner,
            owner_thread: Mutex::new(Some(owner_thread)),
            core,
            control,
            services,
            proxies,
            raw,
            nat_replies,
            health: config.health.clone(),
            idle_timeout: Duration::from_secs_f64(config.fast_path.idle_timeout),
            expiry,
            rebalance: config.rebalance.clone(),
            stats_interval: Duration::from_secs_f64(config.stats.interval),
            probe: probe_keys(config)?.zip(config.probe.port),
            state_senders,
            home_states,
            prometheus,
            http,
            template,
            route_versions,
            latest: Arc::default(),
            watcher_counters,
            profile_counters,
            notifies,
            queued_notifies: Mutex::new(Some(queued_notifies)),
            events: Mutex::new(Some(events)),
            _hop_keeper: hop_keeper,
        })
    }

    /// Serves until `shutdown` completes (Ok) or one of its tasks ends
    /// (an error naming it).
    pub async fn serve(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let services = registered(&self.services).map_err(io("registering the service sockets with the runtime"))?;
        let proxies = registered(&self.proxies).map_err(io("registering the proxy sockets with the runtime"))?;
        let senders = Senders::new(&services, &proxies).map_err(io("reading the sockets' addresses"))?;
        let notifier =
            Notifier::new(senders.proxy_addresses(), self.watcher_counters.clone(), self.profile_counters.clone());
        let queued = self.queued_notifies.lock().expect("receiver lock").take().ok_or(DaemonError::ServedTwice)?;
        let events = self.events.lock().expect("events lock").take().ok_or(DaemonError::ServedTwice)?;
        let (notify_answers, answers) = mpsc::channel(tasks::NOTIFY_ANSWERS);
        let raw = self.raw.try_clone().and_then(RawSender::new).map_err(io("registering the raw sockets"))?;
        let context = Context {
            core: self.core.clone(),
            owner: self.owner.clone(),
            senders,
            raw: Arc::new(raw),
            notify_answers,
            notifies: self.notifies.clone(),
        };
        let mut tasks = Tasks::new();
        let notifying = tasks::notify(notifier, queued, answers, context.senders.clone(), self.owner.clone());
        spawn(&mut tasks, "notifier".into(), notifying);
        spawn(&mut tasks, "events".into(), tasks::events(events, context.clone()));
        for (index, socket) in services.iter().enumerate() {
            spawn(
                &mut tasks,
                named("first contact", socket, index),
                tasks::serve_service(socket.clone(), context.clone()),
            );
        }
        for (index, socket) in proxies.iter().enumerate() {
            spawn(&mut tasks, named("proxy", socket, index), tasks::serve_proxy(socket.clone(), context.clone()));
        }
        for (index, socket) in self.nat_replies.iter().enumerate() {
            let socket =
                socket.try_clone().and_then(nat_replies::registered).map_err(io("registering a nat reply socket"))?;
            let serving = nat_replies::serve(socket, context.clone());
            spawn(&mut tasks, format!("nat replies (#{index})"), serving);
        }
        let interval = Duration::from_secs_f64(self.health.interval);
        spawn(&mut tasks, "health".into(), tasks::health(context.clone(), interval));
        self.spawn_ops(&mut tasks)?;
        supervise(tasks, shutdown).await
    }

    /// The control socket, the statistics stream, the scan of the fast path
    /// and the rebalancer it feeds, expiry, and the Prometheus endpoint.
    fn spawn_ops(&self, tasks: &mut Tasks) -> Result<()> {
        let control = self.control.try_clone().map_err(io("cloning the control socket"))?;
        let serving = control::serve(control, self.owner.clone(), self.latest.clone());
        spawn(tasks, "control".into(), async move { serving.await.map_err(io("serving the control socket")) });
        let load = self.rebalance.enabled.then(|| {
            let (sender, receiver) = stats::load_queue(LOAD_QUEUE);
            spawn(tasks, "rebalance".into(), tasks::rebalance(self.owner.clone(), receiver));
            let every = Duration::from_secs_f64(self.rebalance.interval);
            tasks::LoadFeed { sender, every, latest: self.latest.clone() }
        });
        let scan = tasks::Scan { idle: self.idle_timeout, every: self.scan_every(), load };
        spawn(tasks, "scan".into(), tasks::scan(self.owner.clone(), scan));
        if let Some((keys, port)) = self.probe {
            spawn(tasks, "probe keys".into(), tasks::probe_keys(self.owner.clone(), keys, port));
        }
        if let (Some((keys, port)), Some((senders, every))) = (self.probe, &self.state_senders) {
            let sockets = senders.registered().map_err(io("registering the state message sockets"))?;
            let telling = home_states::Telling { keys, port, every: *every };
            spawn(tasks, "home states".into(), home_states::tell(sockets, self.home_states.clone(), telling));
        }
        if let Some(expiry) = self.expiry {
            spawn(tasks, "expiry".into(), tasks::expire(self.owner.clone(), expiry.walk_every()));
        }
        if self.template.is_some() {
            spawn(tasks, "ua-profile expiry".into(), tasks::expire_profiles(self.owner.clone()));
        }
        if let Some(listener) = &self.prometheus {
            let listener = listener.try_clone().map_err(io("cloning the Prometheus socket"))?;
            let serving = http::serve(listener, http::metrics_only(self.latest.clone()));
            spawn(tasks, "prometheus".into(), async move { serving.await.map_err(io("serving Prometheus metrics")) });
        }
        if let Some((listener, token)) = &self.http {
            let listener = listener.try_clone().map_err(io("cloning the HTTP socket"))?;
            let shared = http::Shared {
                owner: self.owner.clone(),
                latest: self.latest.clone(),
                versions: self.route_versions.clone(),
                template: self.template.clone(),
            };
            let serving = http::serve(listener, http::router(shared, token.clone()));
            spawn(tasks, "http".into(), async move { serving.await.map_err(io("serving HTTP ([http] listen)")) });
        }
        let reading = stats::run(self.owner.clone(), self.latest.clone(), self.stats_interval);
        spawn(tasks, "stats".into(), async move { Ok(reading.await?) });
        Ok(())
    }

    /// How often the fast path's learned clients are scanned: a few times
    /// per idle timeout (30 s at most), at the rebalancer's interval, and as
    /// often as expiry walks the store (so fast-path sightings are fresh).
    fn scan_every(&self) -> Duration {
        let sweep = (self.idle_timeout / 4).min(Duration::from_secs(30));
        let rebalance = self.rebalance.enabled.then(|| Duration::from_secs_f64(self.rebalance.interval));
        let expiry = self.expiry.map(|policy| policy.walk_every());
        [Some(sweep), rebalance, expiry].into_iter().flatten().min().unwrap_or(sweep)
    }

    /// A control API request, answered by the state owner; for threads
    /// outside the runtime (tests, the demo, the benchmark).
    pub fn control(&self, request: Request) -> Reply {
        self.owner.control_blocking(request).unwrap_or_else(|gone| Reply::Error(gone.to_string()))
    }

    /// Applies `config`'s `[[servers]]` as a reload does (SIGHUP): what the
    /// config changed since it was last applied. The rest of a config takes
    /// a restart.
    pub async fn reload_servers(&self, config: &Config) -> Reply {
        let request = Request::ReloadServers { servers: config.specs() };
        self.owner.control(request).await.unwrap_or_else(|gone| Reply::Error(gone.to_string()))
    }

    /// First contact's counters and the kernel's verdict counters; for
    /// threads outside the runtime.
    pub fn report(&self) -> Report {
        let verdicts = match self.control(Request::Stats) {
            Reply::Stats(stats) => stats.verdicts,
            _ => Default::default(),
        };
        let kernel = Counter::ALL.iter().map(|&c| (c, verdicts.get(c.label()).copied().unwrap_or(0))).collect();
        Report { first_contact: self.core.counters.snapshot(), kernel }
    }
}

/// The owner, and with it the program's link, goes before `drop` returns.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.owner.send(Command::Stop);
        if let Some(thread) = self.owner_thread.lock().expect("owner thread lock").take() {
            let _ = thread.join();
        }
    }
}

/// The hop keeper, routing from the edge's addresses.
fn start_hop_keeper(maps: HopMaps, config: &Config, pool: pool::PoolView) -> Result<HopKeeper> {
    let tables = Tables::open().map_err(HopError::from)?;
    let changes = Changes::open().map_err(HopError::from)?;
    let sources = Sources { v4: config.edge.ipv4, v6: config.edge.ipv6 };
    let keeper = Keeper::new(maps, tables, sources, LEASE);
    let keeper = if config.mode == config::ForwardingMode::Nat { keeper.keeping_replies() } else { keeper };
    HopKeeper::start(keeper, changes, pool).map_err(io("starting the hop keeper thread"))
}

/// How long ua-profile subscriptions last, and how many are kept.
fn profile_settings(documents: &config::DocumentSettings) -> profiles::Settings {
    profiles::Settings {
        max_expires: documents.max_expires,
        min_expires: documents.min_expires,
        capacity: documents.capacity,
    }
}

/// The probe keys, when `[probe] port` is set.
fn probe_keys(config: &Config) -> Result<Option<Keys>> {
    let (Some(_), Some(path)) = (config.probe.port, &config.probe.secret_file) else { return Ok(None) };
    Ok(Some(Keys::read(path, config.probe.period)?))
}

/// nat: a raw socket per edge address for passed-up replies to edge ports.
fn nat_reply_sockets(config: &Config) -> std::io::Result<Vec<socket2::Socket>> {
    if config.mode != config::ForwardingMode::Nat {
        return Ok(Vec::new());
    }
    let edges = [config.edge.ipv4.map(std::net::IpAddr::V4), config.edge.ipv6.map(std::net::IpAddr::V6)];
    let ports = config.edge.nat_port_range();
    edges.into_iter().flatten().map(|edge| nat_replies::open(edge, &ports)).collect()
}

/// Whether the pinned maps' client entries can be adopted: they were a
/// previous daemon's, of this forwarding mode. Entries of the other mode
/// are cleared (a dsr entry has no edge port, a nat one sends to the home
/// from the edge): their clients come back through first contact.
fn adopt_or_clear(dataplane: &mut DataPlane, config: &Config) -> Result<bool> {
    let Some(mode) = dataplane.adopted_mode()? else { return Ok(false) };
    if mode == edge_config(config).mode {
        return Ok(true);
    }
    tracing::warn!(mode = ?config.mode, "the pinned fast path was of the other mode: its clients come back through first contact");
    dataplane.clear_clients()?;
    Ok(false)
}

/// Every assigned AOR by the key its fast-path entries carry
/// (`ClientEntry::owner`), with its home server's slot: what adopting a
/// previous daemon's entries needs.
fn homes_by_owner(assignments: &Assignments, pool: &pool::Pool) -> HashMap<u64, (Aor, u32)> {
    let mut homes = HashMap::new();
    assignments.cache().for_each(|aor, cached| {
        if let Some(home) = pool.server(&cached.server) {
            homes.insert(owner_of(aor), (aor.clone(), home.index));
        }
    });
    homes
}

fn bind_all(addresses: &[SocketAddr], cores: usize, what: &'static str) -> Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::new();
    for &address in addresses {
        sockets.extend(bind_shared(address, cores).map_err(|source| DaemonError::Bind { address, what, source })?);
    }
    Ok(sockets)
}

/// A snapshot of the counters, by name.
#[derive(Debug, Clone)]
pub struct Report {
    pub first_contact: Vec<(&'static str, u64)>,
    pub kernel: Vec<(Counter, u64)>,
}

fn rebalancer(settings: &config::Rebalance) -> Rebalancer {
    let thresholds = Thresholds {
        trigger: settings.trigger,
        settle: settings.settle,
        max_moves: settings.max_moves,
        min_rate: settings.min_rate,
    };
    Rebalancer::new(thresholds, settings.sustain, settings.cooldown)
}

/// Load samples the stats task may queue before the rebalancer takes them.
const LOAD_QUEUE: usize = 8;
