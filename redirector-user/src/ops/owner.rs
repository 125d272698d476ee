//! The state owner: one thread that owns `Operations` (the store, the fast
//! path's kernel entries, the pool, the watchers' dialogs, the clients'
//! ua-profile subscriptions) and applies the
//! commands sent to it in order. Nothing else touches that state, so it
//! needs no lock, and no tokio worker ever waits on an fsync or a map
//! syscall: they wait on a reply channel instead.
//!
//! Group commit: new clients from every first-contact core that are queued
//! together are assigned in one durable transaction.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redirector_ebpf::probe::ProbeConfig;
use tokio::sync::oneshot;

use crate::{
    edge::{
        admission::Refused,
        assignments::Assigned,
        first_contact::{Action, NewClient},
        profiles::{ProfileAnswer, ProfileId, ProfileRequest},
        rebalance::Sample,
    },
    ops::{
        api::{Reply, Request, Stats},
        operations::{OperationError, Operations, ScanStep},
    },
    sip::Aor,
    store::{StoreError, StoreEvent, Term},
};

/// Each new client's assignment, or why it has none; or the store's
/// failure (shared by every batch of the failed transaction).
pub type AssignReply = Result<HashMap<Aor, Result<Assigned, Refused>>, Arc<StoreError>>;

/// A statistics reading.
pub type Reading = Result<Stats, OperationError>;

pub enum Command {
    /// First contact's clients without a usable assignment.
    Assign { clients: Vec<NewClient>, reply: oneshot::Sender<AssignReply> },
    /// The state changes first contact decided on for one batch; `done`
    /// once applied, so the answers that make clients come back (a 302
    /// after an install) leave only then.
    Apply { changes: Vec<Action>, done: oneshot::Sender<()> },
    /// A control API request.
    Control { request: Request, reply: oneshot::Sender<Reply> },
    /// Clients' ua-profile SUBSCRIBEs: their answers (response, first
    /// NOTIFY), in order, once their subscriptions are saved.
    Profiles { requests: Vec<ProfileRequest>, reply: oneshot::Sender<Vec<ProfileAnswer>> },
    /// Subscriptions not refreshed by now end.
    ExpireProfiles,
    /// A NOTIFY of this subscription was refused: it ends.
    ProfileRefused(ProfileId),
    /// Health round `sequence` starts (the previous one closes); `done`
    /// once applied, so rounds never pile up while the owner is busy.
    HealthTick { sequence: u32, done: oneshot::Sender<()> },
    /// One step of the scan over the fast path's learned clients (a budget
    /// of them): idle ones leave, the others' sightings are recorded and,
    /// with `sample`, their load; `done` tells what the step did.
    Scan { idle: Duration, sample: bool, done: oneshot::Sender<ScanStep> },
    /// An expiry walk over the store starts (unless one is under way).
    Expire,
    /// A new period's probe key: written to the responder, answering while
    /// the pool has a home taking new clients.
    ProbeKeys { config: ProbeConfig },
    /// The statistics stream's reading.
    Read { reply: oneshot::Sender<Reading> },
    /// A rebalancing round on clients' load, `seconds` after the last.
    Load { clients: Vec<Sample>, seconds: f64 },
    /// Changes committed to a shared store, as its watch delivered them.
    Followed(Vec<StoreEvent>),
    /// This edge gained (its term) or lost the leadership of the pool's
    /// decisions.
    Lead(Option<Term>),
    /// Ends the thread; what it owns (the program's link among it) is dropped.
    Stop,
}

/// How the rest of the daemon reaches the owner.
#[derive(Clone)]
pub struct Owner {
    commands: std::sync::mpsc::Sender<Command>,
}

/// The owner thread's end of its channel.
pub struct Commands(std::sync::mpsc::Receiver<Command>);

#[derive(Debug, thiserror::Error)]
#[error("the state owner thread has stopped (see the log for why)")]
pub struct OwnerGone;

impl Owner {
    /// The way to the owner, whose commands queue until `start`.
    pub fn channel() -> (Self, Commands) {
        let (commands, receiver) = std::sync::mpsc::channel();
        (Self { commands }, Commands(receiver))
    }

    /// Starts the owner thread on the queued and coming `commands`; it runs
    /// until `Command::Stop` or until every `Owner` is dropped.
    pub fn start(operations: Operations, commands: Commands) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("state-owner".into()).spawn(move || run(operations, commands.0))
    }

    pub fn send(&self, command: Command) -> Result<(), OwnerGone> {
        self.commands.send(command).map_err(|_| OwnerGone)
    }

    pub async fn assign(&self, clients: Vec<NewClient>) -> Result<AssignReply, OwnerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Assign { clients, reply })?;
        answer.await.map_err(|_| OwnerGone)
    }

    pub async fn apply(&self, changes: Vec<Action>) -> Result<(), OwnerGone> {
        let (done, applied) = oneshot::channel();
        self.send(Command::Apply { changes, done })?;
        applied.await.map_err(|_| OwnerGone)
    }

    pub async fn profiles(&self, requests: Vec<ProfileRequest>) -> Result<Vec<ProfileAnswer>, OwnerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Profiles { requests, reply })?;
        answer.await.map_err(|_| OwnerGone)
    }

    pub async fn health_tick(&self, sequence: u32) -> Result<(), OwnerGone> {
        let (done, applied) = oneshot::channel();
        self.send(Command::HealthTick { sequence, done })?;
        applied.await.map_err(|_| OwnerGone)
    }

    /// One step of a scan.
    pub async fn scan(&self, idle: Duration, sample: bool) -> Result<ScanStep, OwnerGone> {
        let (done, step) = oneshot::channel();
        self.send(Command::Scan { idle, sample, done })?;
        step.await.map_err(|_| OwnerGone)
    }

    pub async fn control(&self, request: Request) -> Result<Reply, OwnerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Control { request, reply })?;
        answer.await.map_err(|_| OwnerGone)
    }

    /// `control` for a thread outside the runtime.
    pub fn control_blocking(&self, request: Request) -> Result<Reply, OwnerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Control { request, reply })?;
        answer.blocking_recv().map_err(|_| OwnerGone)
    }

    pub async fn read(&self) -> Result<Reading, OwnerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Read { reply })?;
        answer.await.map_err(|_| OwnerGone)
    }
}

fn run(mut operations: Operations, commands: std::sync::mpsc::Receiver<Command>) {
    while let Some(first) = next(&operations, &commands) {
        let mut queued: Vec<Command> = first.into_iter().collect();
        queued.extend(commands.try_iter());
        for run in runs(queued) {
            match run {
                Run::Assigns(requests) => assign(&mut operations, requests),
                Run::Applies(batches) => apply(&mut operations, batches),
                Run::One(Command::Stop) => return,
                Run::One(other) => execute(&mut operations, other),
            }
        }
        // One batch of queued moves (or expiry) between rounds of commands.
        operations.work();
        operations.lift_throttles();
        operations.publish_routes();
        operations.publish_pool();
    }
}

/// Queued commands as the owner carries them out, in order.
enum Run {
    /// Consecutive `Assign`s: one commit.
    Assigns(Vec<AssignRequest>),
    /// Consecutive `Apply`s: their installs in one kernel write.
    Applies(Vec<ApplyRequest>),
    /// Any other command.
    One(Command),
}

/// `commands` with consecutive ones of a kind gathered; nothing changes order.
fn runs(commands: Vec<Command>) -> Vec<Run> {
    let mut runs = Vec::new();
    for command in commands {
        match (command, runs.last_mut()) {
            (Command::Assign { clients, reply }, Some(Run::Assigns(run))) => run.push((clients, reply)),
            (Command::Assign { clients, reply }, _) => runs.push(Run::Assigns(vec![(clients, reply)])),
            (Command::Apply { changes, done }, Some(Run::Applies(run))) => run.push((changes, done)),
            (Command::Apply { changes, done }, _) => runs.push(Run::Applies(vec![(changes, done)])),
            (other, _) => runs.push(Run::One(other)),
        }
    }
    runs
}

/// The next command: waited for until the owner's own work (moves, the
/// expiry walk's next page) is due, then `Some(None)` to do that work;
/// `None` once every sender is gone.
fn next(operations: &Operations, commands: &std::sync::mpsc::Receiver<Command>) -> Option<Option<Command>> {
    let Some(due) = operations.next_work() else {
        return commands.recv().ok().map(Some);
    };
    match commands.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
        Ok(command) => Some(Some(command)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Some(None),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
    }
}

/// A batch's new clients, and where the owner's answer goes.
type AssignRequest = (Vec<NewClient>, oneshot::Sender<AssignReply>);

/// A batch's state changes, and where to say they are applied.
type ApplyRequest = (Vec<Action>, oneshot::Sender<()>);

/// The changes of consecutive `Apply` commands, together; each batch is
/// told once all are applied.
fn apply(operations: &mut Operations, batches: Vec<ApplyRequest>) {
    let (changes, done): (Vec<Vec<Action>>, Vec<oneshot::Sender<()>>) = batches.into_iter().unzip();
    operations.apply(changes.into_iter().flatten().collect());
    for done in done {
        let _ = done.send(());
    }
}

/// One transaction for the clients of every queued `Assign`.
fn assign(operations: &mut Operations, requests: Vec<AssignRequest>) {
    if requests.is_empty() {
        return;
    }
    let clients: Vec<NewClient> = requests.iter().flat_map(|(clients, _)| clients.iter().cloned()).collect();
    let result = operations.assign_new(&clients).map_err(Arc::new);
    if let Err(error) = &result {
        tracing::warn!(%error, clients = clients.len(), "assigning new clients failed");
    }
    for (wanted, reply) in requests {
        let answer = result.as_ref().map_err(Arc::clone).map(|assigned| {
            wanted.iter().filter_map(|c| Some((c.aor.clone(), assigned.get(&c.aor)?.clone()))).collect()
        });
        // A core that gave up waiting has nothing left to answer.
        let _ = reply.send(answer);
    }
}

fn execute(operations: &mut Operations, command: Command) {
    match command {
        Command::Assign { .. } | Command::Apply { .. } | Command::Stop => unreachable!("`run` handles these itself"),
        Command::Control { request, reply } => operations.answer(request, reply),
        Command::Profiles { requests, reply } => {
            let _ = reply.send(operations.subscribe_profiles(requests));
        }
        Command::ExpireProfiles => operations.expire_profiles(),
        Command::ProfileRefused(id) => operations.profile_refused(&id),
        Command::HealthTick { sequence, done } => {
            operations.health_tick(sequence);
            let _ = done.send(());
        }
        Command::Scan { idle, sample, done } => {
            let _ = done.send(operations.scan(idle, sample));
        }
        Command::Expire => operations.start_expiry(),
        Command::ProbeKeys { config } => operations.set_probe(config),
        Command::Read { reply } => {
            let _ = reply.send(operations.stats());
        }
        Command::Load { clients, seconds } => operations.observe_load(&clients, seconds),
        Command::Followed(events) => operations.follow(events),
        Command::Lead(leading) => operations.lead(leading),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign() -> Command {
        Command::Assign { clients: Vec::new(), reply: oneshot::channel().0 }
    }

    fn apply(changes: usize) -> Command {
        let ping = Action::PingAnswered { server: 0, sequence: 1 };
        Command::Apply { changes: vec![ping; changes], done: oneshot::channel().0 }
    }

    /// (kind, commands gathered) of each run.
    fn shape(runs: &[Run]) -> Vec<(&'static str, usize)> {
        runs.iter()
            .map(|run| match run {
                Run::Assigns(requests) => ("assign", requests.len()),
                Run::Applies(batches) => ("apply", batches.len()),
                Run::One(_) => ("other", 1),
            })
            .collect()
    }

    #[test]
    fn consecutive_commands_of_a_kind_are_carried_out_together_in_order() {
        let queued = vec![apply(3), apply(2), apply(1), assign(), assign(), Command::Expire, apply(4), Command::Stop];
        let runs = runs(queued);
        assert_eq!(shape(&runs), [("apply", 3), ("assign", 2), ("other", 1), ("apply", 1), ("other", 1)]);
        let Run::Applies(batches) = &runs[0] else { unreachable!("checked above") };
        let sizes: Vec<usize> = batches.iter().map(|(changes, _)| changes.len()).collect();
        assert_eq!(sizes, [3, 2, 1], "each batch whole, in order");
        assert!(matches!(runs[2], Run::One(Command::Expire)));
        assert!(matches!(runs[4], Run::One(Command::Stop)));
    }
}
