//! The edge daemon: the XDP program attached, the assignment database open,
//! and UDP sockets on every service address (what the fast path passes up)
//! and on the proxy address (home servers' responses), each served by a
//! tokio task that applies first contact's actions.
//!
//! Assignments are reloaded from the database on start; the kernel map is
//! refilled lazily: it is keyed by client source address, which only a
//! client's next first contact tells us.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use redirector_ebpf::{Counter, EventKind, FAMILY_V4, REDIRECTOR_PROGRAM};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    config::{self, Config},
    edge::{
        first_contact::{Action, FirstContact, Settings},
        health::{Tracker, Transition},
        notifier::Notifier,
        rebalance::{Rebalancer, Thresholds},
        watchers::{Subscription, Watchers},
    },
    kernel::{
        fast_path::{FastPath, FastPathError},
        loader::{DataPlane, DataPlaneError, decode_event, endpoint_ip, service_endpoints, xdp_mode},
    },
    ops::{
        control, metrics,
        operations::{OperationError, Operations},
        stats::{self, Latest, LoadReceiver},
    },
    store::{RedbStore, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("binding {address}, the {what}: {source}")]
    Bind { address: SocketAddr, what: &'static str, source: std::io::Error },
    #[error(
        "creating the control socket {path}: {source} (is another redirector using it? is its directory writable?)"
    )]
    Control { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DataPlane(Box<DataPlaneError>),
    #[error(transparent)]
    FastPath(#[from] FastPathError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("a daemon task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("Daemon::serve runs once per Daemon")]
    ServedTwice,
}

impl From<DataPlaneError> for DaemonError {
    fn from(error: DataPlaneError) -> Self {
        Self::DataPlane(Box::new(error))
    }
}

type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// Maps an I/O error to `DaemonError::Io` saying what was being done.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

pub struct Daemon {
    pub first_contact: Arc<FirstContact>,
    pub fast_path: Arc<Mutex<FastPath>>,
    control: std::os::unix::net::UnixListener,
    services: Vec<std::net::UdpSocket>,
    /// One per family the edge serves.
    proxies: Vec<std::net::UdpSocket>,
    health: config::Health,
    idle_timeout: Duration,
    rebalance: config::Rebalance,
    stats_interval: Duration,
    prometheus: Option<std::net::TcpListener>,
    /// The statistics stream's newest reading.
    pub latest: Arc<Latest>,
    rebalancer: Arc<Mutex<Rebalancer>>,
    tracker: Arc<Mutex<Tracker>>,
    pub watchers: Arc<Watchers>,
    /// Subscriptions whose client moved; taken by `serve`'s notifier.
    deactivated: Mutex<Option<mpsc::UnboundedReceiver<Subscription>>>,
    /// The program's event ring buffer; taken by `serve`'s reader.
    events: Mutex<Option<RingBuf<MapData>>>,
}

impl Daemon {
    /// Opens the database, binds every socket, then loads, configures and
    /// attaches the program — in that order, so no first contact the
    /// program passes up finds no socket. The program stays attached until
    /// `Daemon` drops.
    pub fn start(config: &Config) -> Result<Self> {
        let store = RedbStore::open(&config.sip.database)?;
        let services = service_endpoints(config)
            .map(|endpoint| {
                let address = SocketAddr::new(endpoint_ip(&endpoint), u16::from_be(endpoint.port_be));
                bind(address, "service address (it must be assigned to the edge, e.g. on lo)")
            })
            .collect::<Result<Vec<_>>>()?;
        let proxy_addresses = config.proxy_addresses();
        let proxies = proxy_addresses
            .iter()
            .map(|&address| bind(address, "sip.proxy_address (an address of the edge's own)"))
            .collect::<Result<Vec<_>>>()?;
        let prometheus = config
            .stats
            .prometheus
            .map(|address| {
                let what = "Prometheus endpoint ([stats] prometheus)";
                metrics::bind(address).map_err(|source| DaemonError::Bind { address, what, source })
            })
            .transpose()?;
        let control = control::bind(&config.control.socket)
            .map_err(|source| DaemonError::Control { path: config.control.socket.clone(), source })?;
        let mut dataplane = DataPlane::load()?;
        dataplane.configure(config)?;
        let events = dataplane.take_events()?;
        let mut fast_path = FastPath::new(dataplane, config)?;
        fast_path.dataplane().attach(REDIRECTOR_PROGRAM, &config.interface, xdp_mode(config.attach))?;
        let settings = Settings {
            policy: config.sip.first_contact,
            redirect_expires: config.sip.redirect_expires,
            retry_after: config.sip.retry_after,
            proxies: proxy_addresses,
            services: services
                .iter()
                .map(std::net::UdpSocket::local_addr)
                .collect::<std::io::Result<_>>()
                .map_err(io("reading the service sockets' addresses"))?,
        };
        let first_contact = FirstContact::new(settings, config.home_servers(), Box::new(store))?;
        let assignments: u64 = first_contact.client_counts().values().sum();
        info!(database = %config.sip.database.display(), assignments, "assignment database open");
        let (watchers, deactivated) = Watchers::new(config.watchers.capacity);
        Ok(Self {
            watchers: Arc::new(watchers),
            deactivated: Mutex::new(Some(deactivated)),
            events: Mutex::new(Some(events)),
            first_contact: Arc::new(first_contact),
            fast_path: Arc::new(Mutex::new(fast_path)),
            control,
            services,
            proxies,
            health: config.health.clone(),
            idle_timeout: Duration::from_secs_f64(config.fast_path.idle_timeout),
            rebalance: config.rebalance.clone(),
            stats_interval: Duration::from_secs_f64(config.stats.interval),
            prometheus,
            latest: Arc::default(),
            rebalancer: Arc::new(Mutex::new(rebalancer(&config.rebalance))),
            tracker: Arc::new(Mutex::new(Tracker::new(
                config.servers.len(),
                config.health.down_after,
                config.health.up_after,
            ))),
        })
    }

    /// Serves until `shutdown` completes or a socket fails.
    pub async fn serve(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let services = registered(&self.services).map_err(io("registering the service sockets with the runtime"))?;
        let proxies = registered(&self.proxies).map_err(io("registering the proxy sockets with the runtime"))?;
        let sockets = Sockets::new(&services, &proxies).map_err(io("reading the sockets' addresses"))?;
        let notifier = Arc::new(Notifier::new(sockets.proxies.clone(), self.watchers.counters.clone()));
        let deactivated = self.deactivated.lock().expect("receiver lock").take().ok_or(DaemonError::ServedTwice)?;
        let events = self.events.lock().expect("events lock").take().ok_or(DaemonError::ServedTwice)?;
        let mut tasks = tokio::task::JoinSet::<Result<()>>::new();
        let notifying = notifier.clone();
        tasks.spawn(async move {
            notifying.run(deactivated).await;
            Ok(())
        });
        tasks.spawn(events_loop(events, self.first_contact.clone(), sockets.clone()));
        for socket in &services {
            tasks.spawn(self.receive_loop(socket.clone(), false, sockets.clone(), notifier.clone()));
        }
        for socket in &proxies {
            tasks.spawn(self.receive_loop(socket.clone(), true, sockets.clone(), notifier.clone()));
        }
        let interval = Duration::from_secs_f64(self.health.interval);
        tasks.spawn(sweep_loop(self.fast_path.clone(), self.idle_timeout));
        tasks.spawn(health_loop(Arc::new(self.operations()), self.tracker.clone(), sockets, interval));
        let control = self.control.try_clone().map_err(io("cloning the control socket"))?;
        let serving =
            control::serve(control, Arc::new(self.operations()), self.rebalancer.clone(), self.latest.clone());
        tasks.spawn(async move { serving.await.map_err(io("serving the control socket")) });
        let load = self.rebalance.enabled.then(|| {
            let (sender, receiver) = stats::load_queue(LOAD_QUEUE);
            tasks.spawn(rebalance_loop(Arc::new(self.operations()), self.rebalancer.clone(), receiver));
            (sender, Duration::from_secs_f64(self.rebalance.interval))
        });
        if let Some(listener) = &self.prometheus {
            let listener = listener.try_clone().map_err(io("cloning the Prometheus socket"))?;
            let serving = metrics::serve(listener, self.latest.clone());
            tasks.spawn(async move { serving.await.map_err(io("serving Prometheus metrics")) });
        }
        let reading = stats::run(Arc::new(self.operations()), self.latest.clone(), self.stats_interval, load);
        tasks.spawn(async move { Ok(reading.await?) });
        tokio::select! {
            () = shutdown => Ok(()),
            Some(result) = tasks.join_next() => result?,
        }
    }

    fn receive_loop(
        &self,
        socket: Arc<UdpSocket>,
        is_proxy: bool,
        sockets: Sockets,
        notifier: Arc<Notifier>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let first_contact = self.first_contact.clone();
        let watchers = self.watchers.clone();
        let fast_path = self.fast_path.clone();
        let operations = Arc::new(self.operations());
        let tracker = self.tracker.clone();
        async move {
            let local = socket.local_addr().map_err(io("reading a socket's address"))?;
            let mut buf = vec![0u8; 65_535];
            loop {
                let batch = receive_batch(&socket, &mut buf).await.map_err(io(format!("receiving on {local}")))?;
                if !is_proxy {
                    let datagrams: Vec<(&[u8], SocketAddr)> = batch.iter().map(|(d, s)| (d.as_slice(), *s)).collect();
                    let moved = first_contact.prepare(&datagrams);
                    record_watchers(&moved, &first_contact, &fast_path, &watchers, &notifier);
                }
                for (datagram, source) in &batch {
                    let actions = if is_proxy {
                        first_contact.on_proxy_datagram(datagram, *source)
                    } else {
                        first_contact.on_service_datagram(datagram, *source, local)
                    };
                    debug!(%source, %local, ?actions, "first contact");
                    apply(&actions, local, &first_contact, &fast_path);
                    record_answers(&actions, &tracker, &operations);
                    record_watchers(&actions, &first_contact, &fast_path, &watchers, &notifier);
                    for action in &actions {
                        let (from, to, bytes) = match action {
                            Action::Reply { to, bytes } => (Some(&socket), to, bytes),
                            Action::Forward { to, bytes } => (sockets.proxy_for(*to), to, bytes),
                            Action::Relay { to, bytes, from } => (sockets.service_for(*from, *to), to, bytes),
                            _ => continue,
                        };
                        send(from, bytes, *to).await;
                    }
                }
            }
        }
    }

    /// What operators can do to this edge.
    pub fn operations(&self) -> Operations {
        Operations {
            first_contact: self.first_contact.clone(),
            fast_path: self.fast_path.clone(),
            watchers: self.watchers.clone(),
        }
    }

    /// First contact's counters and the kernel's verdict counters.
    pub fn report(&self) -> Report {
        let kernel = self.fast_path.lock().expect("fast path lock").dataplane().counters().unwrap_or_default();
        Report { first_contact: self.first_contact.counters.snapshot(), kernel }
    }
}

/// The sockets datagrams leave from, with their addresses.
#[derive(Clone)]
struct Sockets {
    services: Vec<(SocketAddr, Arc<UdpSocket>)>,
    proxies: Vec<(SocketAddr, Arc<UdpSocket>)>,
}

impl Sockets {
    fn new(services: &[Arc<UdpSocket>], proxies: &[Arc<UdpSocket>]) -> std::io::Result<Self> {
        let addressed = |sockets: &[Arc<UdpSocket>]| {
            sockets.iter().map(|s| Ok((s.local_addr()?, s.clone()))).collect::<std::io::Result<Vec<_>>>()
        };
        Ok(Self { services: addressed(services)?, proxies: addressed(proxies)? })
    }

    /// The proxy socket of `to`'s family.
    fn proxy_for(&self, to: SocketAddr) -> Option<&Arc<UdpSocket>> {
        of_family(&self.proxies, to)
    }

    /// The service socket at `from`, else one of `to`'s family, else the
    /// proxy socket of that family.
    fn service_for(&self, from: Option<SocketAddr>, to: SocketAddr) -> Option<&Arc<UdpSocket>> {
        let at = from.filter(|from| from.is_ipv4() == to.is_ipv4());
        let exact = at.and_then(|at| self.services.iter().find(|(local, _)| *local == at).map(|(_, s)| s));
        exact.or_else(|| of_family(&self.services, to)).or_else(|| self.proxy_for(to))
    }
}

fn of_family(sockets: &[(SocketAddr, Arc<UdpSocket>)], to: SocketAddr) -> Option<&Arc<UdpSocket>> {
    sockets.iter().find(|(local, _)| local.is_ipv4() == to.is_ipv4()).map(|(_, socket)| socket)
}

/// Sends, or says why it could not.
async fn send(from: Option<&Arc<UdpSocket>>, bytes: &[u8], to: SocketAddr) {
    let Some(socket) = from else {
        warn!(%to, "no socket of this family to send from");
        return;
    };
    if let Err(error) = socket.send_to(bytes, to).await {
        warn!(%to, %error, "sending failed");
    }
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

/// Makes the moves the rebalancer decides on, sample by sample.
async fn rebalance_loop(
    operations: Arc<Operations>,
    rebalancer: Arc<Mutex<Rebalancer>>,
    mut samples: LoadReceiver,
) -> Result<()> {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let sample = samples.newest().await;
        let seconds = last.map_or(0.0, |at| (sample.taken - at).as_secs_f64());
        last = Some(sample.taken);
        let (operations, rebalancer) = (operations.clone(), rebalancer.clone());
        let round = tokio::task::spawn_blocking(move || -> Result<usize, OperationError> {
            let targets = operations.balance_targets();
            let planned = rebalancer.lock().expect("rebalancer lock").observe(&targets, &sample.clients, seconds);
            Ok(operations.apply_plan(&planned, "load skew")?.len())
        });
        match round.await? {
            Ok(0) => {}
            Ok(moved) => info!(moved, "rebalanced"),
            Err(error) => warn!(%error, "rebalancing failed"),
        }
    }
}

/// Datagrams taken off a socket at once: what is already queued, so a
/// burst of first contacts shares one database commit (`FirstContact::prepare`).
const BATCH: usize = 64;

/// Waits for a datagram, then takes whatever else is queued (up to
/// `BATCH`). An error after the first is left for the next wait to report,
/// so no datagram already taken is lost.
async fn receive_batch(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Vec<(Vec<u8>, SocketAddr)>> {
    let (len, source) = socket.recv_from(buf).await?;
    let mut batch = vec![(buf[..len].to_vec(), source)];
    while batch.len() < BATCH {
        let Ok((len, source)) = socket.try_recv_from(buf) else { break };
        batch.push((buf[..len].to_vec(), source));
    }
    Ok(batch)
}

/// How often one server may get a resolution ping: a FIB miss repeats for
/// every packet until its neighbour resolves.
const RESOLUTION_PING_GAP: Duration = Duration::from_millis(200);

/// Acts on the program's events: a FIB miss towards a home server makes the
/// kernel resolve that server's neighbour now (by pinging it), not at the
/// next health check.
async fn events_loop(events: RingBuf<MapData>, first_contact: Arc<FirstContact>, sockets: Sockets) -> Result<()> {
    // SAFETY: the ring buffer owns its map's fd, which stays open and the
    // same for as long as the AsyncFd owns the ring buffer.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| DaemonError::Io { what: "polling the event ring buffer".into(), source: e.into() })?;
    // (server slot, IPv4?) → when it was last pinged.
    let mut last_ping: HashMap<(u32, bool), tokio::time::Instant> = HashMap::new();
    loop {
        let mut guard = events.readable_mut().await.map_err(io("polling the event ring buffer"))?;
        let mut misses = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            match decode_event(&item) {
                Some(event) if event.kind == EventKind::FibMiss as u32 => {
                    misses.push((event.server, event.family == FAMILY_V4));
                }
                _ => warn!(bytes = item.len(), "unknown record in the event ring buffer"),
            }
        }
        guard.clear_ready();
        let now = tokio::time::Instant::now();
        for (server, ipv4) in misses {
            if last_ping.get(&(server, ipv4)).is_some_and(|at| now - *at < RESOLUTION_PING_GAP) {
                continue;
            }
            last_ping.insert((server, ipv4), now);
            if let Some(Action::Forward { to, bytes }) = first_contact.resolution_ping(server, ipv4) {
                send(sockets.proxy_for(to), &bytes, to).await;
            }
        }
    }
}

/// Removes idle learned clients from the fast path, a few times per timeout.
async fn sweep_loop(fast_path: Arc<Mutex<FastPath>>, idle: Duration) -> Result<()> {
    let mut ticks = tokio::time::interval((idle / 4).min(Duration::from_secs(30)));
    loop {
        ticks.tick().await;
        let fast_path = fast_path.clone();
        let swept = tokio::task::spawn_blocking(move || fast_path.lock().expect("fast path lock").sweep(idle)).await?;
        match swept {
            Ok(0) => {}
            Ok(removed) => debug!(removed, "idle clients left the fast path"),
            Err(error) => warn!(%error, "sweeping idle clients failed"),
        }
    }
}

/// Health checks: every `interval`, closes the previous round (marking
/// servers down that missed too many), then pings every home server.
async fn health_loop(
    operations: Arc<Operations>,
    tracker: Arc<Mutex<Tracker>>,
    sockets: Sockets,
    interval: Duration,
) -> Result<()> {
    let mut ticks = tokio::time::interval(interval);
    for sequence in 1u32.. {
        ticks.tick().await;
        let transitions = tracker.lock().expect("health lock").tick(sequence);
        for transition in transitions {
            let operations = operations.clone();
            // A down server's clients are moved: database commits.
            tokio::task::spawn_blocking(move || apply_health(&operations, transition));
        }
        for action in operations.first_contact.pings(sequence) {
            if let Action::Forward { to, bytes } = action {
                send(sockets.proxy_for(to), &bytes, to).await;
            }
        }
    }
    Ok(())
}

fn record_answers(actions: &[Action], tracker: &Mutex<Tracker>, operations: &Operations) {
    for action in actions {
        if let Action::PingAnswered { server, sequence } = action {
            let transition = tracker.lock().expect("health lock").answered(*server, *sequence);
            if let Some(transition) = transition {
                apply_health(operations, transition);
            }
        }
    }
}

/// Watcher bookkeeping. A SUBSCRIBE is recorded under the fast-path lock
/// that moves hold, against the generation it was routed by: a move in
/// between must not go unnoticed.
fn record_watchers(
    actions: &[Action],
    first_contact: &FirstContact,
    fast_path: &Mutex<FastPath>,
    watchers: &Watchers,
    notifier: &Notifier,
) {
    for action in actions {
        match action {
            Action::Watch { subscription, expires, generation } => {
                let _moves = fast_path.lock().expect("fast path lock");
                let current = first_contact.store().get(&subscription.presentity).ok().flatten().map(|a| a.generation);
                watchers.subscribed((**subscription).clone(), *expires, current != Some(*generation));
            }
            Action::SubscribeAnswered { id, code, notifier_tag } => {
                watchers.answered(id, *code, notifier_tag.as_deref());
            }
            Action::NotifyAnswered { branch, code, from } if !notifier.answered(branch, *code) => {
                debug!(%from, branch, "answer to a NOTIFY no longer pending");
            }
            Action::Moved { aor } => watchers.client_moved(aor),
            _ => {}
        }
    }
}

fn apply_health(operations: &Operations, transition: Transition) {
    let (server, healthy) = match transition {
        Transition::Down(server) => (server, false),
        Transition::Up(server) => (server, true),
    };
    if let Err(error) = operations.set_health(server, healthy) {
        warn!(server, healthy, %error, "applying a health verdict failed");
    }
}

/// Installs come first, so the client's very next packet takes the fast
/// path. Each is made only if the assignment it was decided on is still
/// current, checked under the fast-path lock that moves hold too: a move
/// between decision and install must not be undone.
fn apply(actions: &[Action], service: SocketAddr, first_contact: &FirstContact, fast_path: &Mutex<FastPath>) {
    for action in actions {
        let Action::Install { client, server, aor, generation } = action else { continue };
        let mut fast_path = fast_path.lock().expect("fast path lock");
        let current = first_contact.store().get(aor).ok().flatten().map(|a| a.generation);
        if current != Some(*generation) {
            debug!(%aor, %client, "not installed: the assignment moved meanwhile");
            continue;
        }
        match fast_path.install(aor, *client, *server, service) {
            Ok(()) => debug!(%aor, %client, server, "on the fast path"),
            Err(error) => warn!(%aor, %client, %error, "could not put the client on the fast path"),
        }
    }
}

/// Tokio sockets sharing the bound ones.
fn registered(sockets: &[std::net::UdpSocket]) -> std::io::Result<Vec<Arc<UdpSocket>>> {
    sockets.iter().map(|s| Ok(Arc::new(UdpSocket::from_std(s.try_clone()?)?))).collect()
}

fn bind(address: SocketAddr, what: &'static str) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(address).map_err(|source| DaemonError::Bind { address, what, source })?;
    socket.set_nonblocking(true).map_err(|source| DaemonError::Bind { address, what, source })?;
    Ok(socket)
}
