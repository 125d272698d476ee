//! The daemon's tasks. Each runs until it fails; `supervise` ends the
//! daemon when any of them ends, naming it.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use redirector_ebpf::{EventKind, FAMILY_V4};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    sync::mpsc,
    task::JoinSet,
};
use tracing::{debug, warn};

use super::{
    DaemonError, Result,
    raw::RawSender,
    sockets::{Received, Senders, send, send_all},
};
use crate::{
    edge::{
        first_contact::{Action, FirstContact},
        notifier::{Answered, Notifier, Notify},
    },
    kernel::loader::decode_event,
    ops::{
        owner::{Command, Owner},
        stats::{Latest, LoadReceiver, LoadSample, LoadSender},
    },
    probe::Keys,
    store::unix_seconds,
};

/// The daemon's tasks, each with the name it is reported by.
pub type Tasks = JoinSet<(String, Result<()>)>;

/// Spawns `task` under `name`.
pub fn spawn(tasks: &mut Tasks, name: String, task: impl Future<Output = Result<()>> + Send + 'static) {
    tasks.spawn(async move { (name, task.await) });
}

/// Waits for `shutdown` (Ok) or for the first task to end, which is an
/// error whether the task failed or returned: none is meant to stop.
pub async fn supervise(mut tasks: Tasks, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::select! {
        () = shutdown => Ok(()),
        Some(joined) = tasks.join_next() => Err(match joined {
            Ok((task, Ok(()))) => DaemonError::TaskEnded { task },
            Ok((task, Err(error))) => DaemonError::TaskFailed { task, source: Box::new(error) },
            Err(error) => DaemonError::TaskPanicked(error),
        }),
    }
}

/// NOTIFY answers queued for the notifier at most.
pub const NOTIFY_ANSWERS: usize = 4096;

/// A watcher's answer to one of our NOTIFYs, for the notifier's task.
pub struct NotifyAnswer {
    pub branch: String,
    pub code: u16,
    pub from: SocketAddr,
}

/// Everything a socket's task needs to act on first contact's answers.
#[derive(Clone)]
pub struct Context {
    pub core: FirstContact,
    pub owner: Owner,
    pub senders: Senders,
    pub raw: Arc<RawSender>,
    pub notify_answers: mpsc::Sender<NotifyAnswer>,
    /// The notifier's queue: a ua-profile subscription's first NOTIFY
    /// goes there once the SUBSCRIBE's 200 has left.
    pub notifies: mpsc::UnboundedSender<Notify>,
}

/// First contact on one service socket: each batch read once, the new
/// clients in it assigned by the owner in one request, then answered.
pub async fn serve_service(socket: Arc<UdpSocket>, context: Context) -> Result<()> {
    let local = socket.local_addr().map_err(super::io("reading a service socket's address"))?;
    let mut received = Received::new();
    let none = HashMap::new();
    loop {
        received.receive(&socket).await.map_err(super::io(format!("receiving on {local}")))?;
        let read = context.core.read(received.iter(), local);
        let unassigned = read.unassigned();
        let actions = if unassigned.is_empty() {
            context.core.answer(read, Ok(&none))
        } else {
            let assigned = context.owner.assign(unassigned).await?;
            context.core.answer(read, assigned.as_ref().map_err(|error| error.as_ref()))
        };
        act(actions, &socket, &context).await?;
    }
}

/// Home servers' responses and watchers' answers on one proxy socket.
pub async fn serve_proxy(socket: Arc<UdpSocket>, context: Context) -> Result<()> {
    let local = socket.local_addr().map_err(super::io("reading a proxy socket's address"))?;
    let mut received = Received::new();
    loop {
        received.receive(&socket).await.map_err(super::io(format!("receiving on {local}")))?;
        let actions = received.iter().flat_map(|(datagram, source)| context.core.on_proxy_datagram(datagram, source));
        act(actions.collect(), &socket, &context).await?;
    }
}

/// State changes are applied by the owner first (so an install precedes
/// the answer that makes the client come back), then the datagrams are sent.
async fn act(actions: Vec<Action>, socket: &Arc<UdpSocket>, context: &Context) -> Result<()> {
    debug!(?actions, "first contact");
    let (mut sends, mut raw_sends, mut changes, mut profiles) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for action in actions {
        match action {
            Action::Reply { .. } | Action::Forward { .. } | Action::Relay { .. } => sends.push(action),
            Action::Profile(request) => profiles.push(*request),
            Action::Encapsulate { .. } | Action::Translate { .. } => raw_sends.push(action),
            Action::NotifyAnswered { branch, code, from } => {
                let answer = NotifyAnswer { branch, code, from };
                match context.notify_answers.try_send(answer) {
                    Ok(()) => {}
                    // Anyone can send one: a flood of them is dropped, not queued.
                    Err(mpsc::error::TrySendError::Full(dropped)) => {
                        debug!(from = %dropped.from, "NOTIFY answer dropped: the notifier is behind");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(DaemonError::TaskEnded { task: "notifier".into() });
                    }
                }
            }
            change => changes.push(change),
        }
    }
    if !changes.is_empty() {
        context.owner.apply(changes).await?;
    }
    let mut notifies = Vec::new();
    if !profiles.is_empty() {
        for answer in context.owner.profiles(profiles).await? {
            sends.push(Action::Reply { to: answer.to, bytes: answer.response });
            notifies.extend(answer.notify);
        }
    }
    send_grouped(&sends, socket, &context.senders).await;
    for action in &raw_sends {
        context.raw.send(action).await;
    }
    // A subscription's first NOTIFY leaves after its 200: RFC 6665 lets a
    // NOTIFY overtake the 200 (§4.1.2.4), but not every client copes.
    for notify in notifies {
        if context.notifies.send(Notify::Profile(notify)).is_err() {
            return Err(DaemonError::TaskEnded { task: "notifier".into() });
        }
    }
    Ok(())
}

/// Sends each datagram from the socket its action names, consecutive ones
/// from one socket in one batch.
async fn send_grouped(sends: &[Action], socket: &Arc<UdpSocket>, senders: &Senders) {
    let mut batch: Vec<(SocketAddr, &[u8])> = Vec::with_capacity(sends.len());
    let mut current: Option<&Arc<UdpSocket>> = None;
    for action in sends {
        let (from, to, bytes) = match action {
            Action::Reply { to, bytes } => (Some(socket), *to, bytes),
            Action::Forward { to, bytes } => (senders.proxy_for(*to), *to, bytes),
            Action::Relay { to, bytes, from } => (senders.service_for(*from, *to), *to, bytes),
            _ => continue,
        };
        let Some(from) = from else {
            warn!(%to, "no socket of this family to send from");
            continue;
        };
        if current.is_some_and(|current| !Arc::ptr_eq(current, from)) {
            send_all(current.expect("checked"), &batch).await;
            batch.clear();
        }
        current = Some(from);
        batch.push((to, bytes));
    }
    if let Some(current) = current {
        send_all(current, &batch).await;
    }
}

/// The NOTIFY transactions: one starts for every NOTIFY queued (a watcher
/// whose client moved, a ua-profile subscription's document or end);
/// answers and Timer E / F drive them. A refused profile NOTIFY ends its
/// subscription at the owner.
pub async fn notify(
    mut notifier: Notifier,
    mut notifies: mpsc::UnboundedReceiver<Notify>,
    mut answers: mpsc::Receiver<NotifyAnswer>,
    senders: Senders,
    owner: Owner,
) -> Result<()> {
    loop {
        let wake = notifier.poll_timeout();
        let transmits = tokio::select! {
            Some(notify) = notifies.recv() => notifier.start(notify, Instant::now()).into_iter().collect(),
            Some(NotifyAnswer { branch, code, from }) = answers.recv() => {
                match notifier.handle_answer(&branch, code) {
                    Answered::NotOurs => debug!(%from, branch, "answer to a NOTIFY no longer pending"),
                    Answered::Ours => {}
                    Answered::Refused(id) => owner.send(Command::ProfileRefused(id))?,
                }
                Vec::new()
            }
            () = until(wake) => notifier.handle_timeout(Instant::now()),
            else => return Ok(()),
        };
        for transmit in transmits {
            send(senders.proxy_for(transmit.to), &transmit.bytes, transmit.to).await;
        }
    }
}

/// Completes at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Health checks: every `interval`, the owner closes the previous round
/// (marking servers down that missed too many), then every home server is
/// pinged.
pub async fn health(context: Context, interval: Duration) -> Result<()> {
    let mut ticks = tokio::time::interval(interval);
    // A round the owner took long to close is not made up for in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for sequence in 1u32.. {
        ticks.tick().await;
        context.owner.health_tick(sequence).await?;
        for action in context.core.pings(sequence) {
            if let Action::Forward { to, bytes } = action {
                send(context.senders.proxy_for(to), &bytes, to).await;
            }
        }
    }
    Ok(())
}

/// How often one server may get a resolution ping: a FIB miss repeats for
/// every packet until its neighbour resolves.
const RESOLUTION_PING_GAP: Duration = Duration::from_millis(200);

/// Acts on the program's events: a FIB miss towards a home server makes the
/// kernel resolve that server's neighbour now (by pinging it), not at the
/// next health check.
pub async fn events(events: RingBuf<MapData>, context: Context) -> Result<()> {
    // SAFETY: the ring buffer owns its map's fd, which stays open and the
    // same for as long as the AsyncFd owns the ring buffer.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| DaemonError::Io { what: "polling the event ring buffer".into(), source: e.into() })?;
    // (server slot, IPv4?) → when it was last pinged.
    let mut last_ping: HashMap<(u32, bool), tokio::time::Instant> = HashMap::new();
    loop {
        let mut guard = events.readable_mut().await.map_err(super::io("polling the event ring buffer"))?;
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
            if let Some(Action::Forward { to, bytes }) = context.core.resolution_ping(server, ipv4) {
                send(context.senders.proxy_for(to), &bytes, to).await;
            }
        }
    }
}

/// What the scan of the fast path's learned clients serves.
pub struct Scan {
    /// Clients idle this long leave the fast path.
    pub idle: Duration,
    /// How often a pass starts.
    pub every: Duration,
    /// `None` when rebalancing is off.
    pub load: Option<LoadFeed>,
}

/// Where the scan's load samples go.
pub struct LoadFeed {
    pub sender: LoadSender,
    /// How often the rebalancer wants a sample.
    pub every: Duration,
    /// Counts the samples the rebalancer had no room for.
    pub latest: Arc<Latest>,
}

/// One pass over the learned clients every `scan.every`, each pass in steps
/// the owner interleaves with everything else; each client entry is read
/// once per pass for the idle sweep, for its AOR's sighting (expiry) and,
/// at the rebalancer's interval, for its load sample.
pub async fn scan(owner: Owner, mut scan: Scan) -> Result<()> {
    let mut ticks = tokio::time::interval(scan.every);
    // A pass the owner took long over is not made up for in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample: Option<tokio::time::Instant> = None;
    loop {
        // The tick's scheduled instant: samples fall due on whole ticks.
        let taken = ticks.tick().await;
        let sample = scan.load.as_ref().is_some_and(|load| last_sample.is_none_or(|at| taken - at >= load.every));
        let samples = loop {
            let step = owner.scan(scan.idle, sample).await?;
            if step.complete {
                break step.samples;
            }
        };
        if let (Some(load), Some(clients)) = (scan.load.as_mut(), samples) {
            last_sample = Some(taken);
            load.sender.send_or_count(LoadSample { taken, clients }, &load.latest);
        }
    }
}

/// Has the owner end the ua-profile subscriptions not refreshed in time,
/// every second.
pub async fn expire_profiles(owner: Owner) -> Result<()> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        owner.send(Command::ExpireProfiles)?;
    }
}

/// Starts an expiry walk over the store every `every`.
pub async fn expire(owner: Owner, every: Duration) -> Result<()> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        owner.send(Command::Expire)?;
    }
}

/// Gives the probe responder each period's key as the period starts.
pub async fn probe_keys(owner: Owner, keys: Keys, port: u16) -> Result<()> {
    loop {
        let now = unix_seconds();
        owner.send(Command::ProbeKeys { config: keys.config_at(now, port, true) })?;
        tokio::time::sleep(Duration::from_secs(keys.until_next_period(now))).await;
    }
}

/// Hands the owner every load sample, for the moves the rebalancer decides on.
pub async fn rebalance(owner: Owner, mut samples: LoadReceiver) -> Result<()> {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let sample = samples.newest().await;
        let seconds = last.map_or(0.0, |at| (sample.taken - at).as_secs_f64());
        last = Some(sample.taken);
        owner.send(Command::Load { clients: sample.clients, seconds })?;
    }
}

/// The address a socket's task is named by.
pub fn named(what: &str, socket: &UdpSocket, index: usize) -> String {
    let address = socket.local_addr().map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string());
    format!("{what} on {address} (#{index})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(ends: Option<Result<()>>) -> Tasks {
        let mut tasks = Tasks::new();
        spawn(&mut tasks, "forever".into(), std::future::pending());
        if let Some(end) = ends {
            spawn(&mut tasks, "short-lived".into(), async move { end });
        }
        tasks
    }

    #[tokio::test]
    async fn a_task_that_returns_ends_the_daemon_by_name() {
        let error = supervise(tasks(Some(Ok(()))), std::future::pending()).await.unwrap_err();
        assert!(matches!(&error, DaemonError::TaskEnded { task } if task == "short-lived"), "{error}");
        assert!(error.to_string().contains("short-lived"), "{error}");
    }

    #[tokio::test]
    async fn a_task_that_fails_ends_the_daemon_with_its_name_and_cause() {
        let failure = Err(DaemonError::Io { what: "receiving".into(), source: std::io::Error::other("boom") });
        let text = supervise(tasks(Some(failure)), std::future::pending()).await.unwrap_err().to_string();
        assert!(text.contains("short-lived") && text.contains("boom"), "{text}");
    }

    #[tokio::test]
    async fn shutdown_ends_it_cleanly() {
        assert!(supervise(tasks(None), async {}).await.is_ok());
    }
}
