//! The hop keeper's thread: keeps `HOPS` (and in nat mode `REPLY_HOPS`)
//! in step with the kernel's route, neighbour and link tables (rtnetlink
//! events) and with the pool's home server addresses, and renews its
//! lease while it runs. It is the maps' only writer; the state owner never
//! touches them, so no lock is shared.
//! Netlink and map writes block, hence a thread of its own, off the runtime.

use std::{
    collections::HashSet,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tracing::warn;

use crate::{
    edge::pool::PoolView,
    kernel::{
        hops::{Destination, HopError, Keeper, LEASE},
        netlink::Changes,
    },
};

/// How often the lease is renewed and the pool's addresses looked at.
const RENEW_EVERY: Duration = Duration::from_millis(250);
/// Changes arriving together (a link going down takes its routes and
/// neighbours with it) are recomputed once, this long after the first.
const SETTLE: Duration = Duration::from_millis(20);
/// After a failure, how long the FIB serves alone before the keeper tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The running keeper; stopping it hands every next hop back to the FIB.
pub struct HopKeeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HopKeeper {
    pub fn start(keeper: Keeper, changes: Changes, pool: PoolView) -> std::io::Result<Self> {
        const { assert!(RENEW_EVERY.as_nanos() * 2 < LEASE.as_nanos(), "a late renewal must not lapse the lease") };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hop keeper".into())
            .spawn(move || run(keeper, changes, &pool, &stopping))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for HopKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut keeper: Keeper, mut changes: Changes, pool: &PoolView, stop: &AtomicBool) {
    let mut stale = true;
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = step(&mut keeper, &mut changes, pool, &mut stale) {
            warn!(%error, "keeping next hops failed: the FIB routes every packet until it works again");
            let _ = keeper.release();
            stale = true;
            std::thread::sleep(RETRY_AFTER);
        }
    }
    let _ = keeper.release();
}

/// Waits for changes (at most `RENEW_EVERY`), recomputes the hops if they
/// or the pool's addresses changed, and renews the lease.
fn step(keeper: &mut Keeper, changes: &mut Changes, pool: &PoolView, stale: &mut bool) -> Result<(), HopError> {
    if readable(&*changes, RENEW_EVERY) {
        let seen = changes.drain()?;
        if seen.iter().any(|change| keeper.affected_by(change)) {
            keeper.invalidate()?;
            std::thread::sleep(SETTLE);
            changes.drain()?;
            *stale = true;
        }
    }
    let destinations = Destination::of_servers(pool.load().servers());
    let kept: HashSet<&Destination> = keeper.destinations().collect();
    if *stale || kept != destinations.iter().collect() {
        keeper.recompute(&destinations)?;
        *stale = false;
    }
    keeper.renew()
}

/// Whether `fd` has something to read within `timeout`.
fn readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    ready > 0
}
