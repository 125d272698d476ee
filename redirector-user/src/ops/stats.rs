//! The statistics stream. A task reads the kernel's per-CPU counters every
//! `[stats].interval` and publishes one `Stats` reading (per-server packets,
//! bytes, rates and clients; verdict, first-contact and watcher counters)
//! for the control API and the Prometheus endpoint. Every client's packet
//! counter is read by the daemon's scan of the fast path (one pass serves
//! the idle sweep, expiry's sightings and these samples), which hands each
//! pass's samples to the rebalancer through a lock-free single-producer
//! single-consumer queue (`ringbuf`), so sampling never waits on planning.
//!
//! Client counters are cumulative: when the queue is full the sample is
//! dropped (counted), and the next one still yields exact rates over the
//! longer span.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ringbuf::{HeapCons, HeapProd, HeapRb, traits::*};
use tokio::{sync::Notify, time::Instant};
use tracing::warn;

use crate::{
    edge::rebalance,
    ops::{
        api::Stats,
        owner::{Owner, OwnerGone},
    },
};

/// Every client's fast-path packet counter at one instant.
#[derive(Debug, Clone)]
pub struct LoadSample {
    pub taken: Instant,
    pub clients: Vec<rebalance::Sample>,
}

/// The newest reading, shared by the control API and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Latest {
    stats: RwLock<Option<Arc<Stats>>>,
    /// Load samples dropped because the rebalancer had not taken the last ones.
    pub load_samples_dropped: AtomicU64,
}

impl Latest {
    pub fn get(&self) -> Option<Arc<Stats>> {
        self.stats.read().expect("stats lock").clone()
    }

    pub(crate) fn publish(&self, stats: Stats) {
        *self.stats.write().expect("stats lock") = Some(Arc::new(stats));
    }
}

/// The stats task's end of the queue.
pub struct LoadSender {
    producer: HeapProd<LoadSample>,
    ready: Arc<Notify>,
}

/// The rebalancer's end of the queue.
pub struct LoadReceiver {
    consumer: HeapCons<LoadSample>,
    ready: Arc<Notify>,
}

/// A queue holding up to `capacity` load samples.
pub fn load_queue(capacity: usize) -> (LoadSender, LoadReceiver) {
    let (producer, consumer) = HeapRb::new(capacity).split();
    let ready = Arc::new(Notify::new());
    (LoadSender { producer, ready: ready.clone() }, LoadReceiver { consumer, ready })
}

impl LoadSender {
    /// Queues `sample`; gives it back if the queue is full.
    pub fn send(&mut self, sample: LoadSample) -> Result<(), LoadSample> {
        self.producer.try_push(sample)?;
        self.ready.notify_one();
        Ok(())
    }

    /// Queues `sample`, counting it in `latest` if the queue is full.
    pub fn send_or_count(&mut self, sample: LoadSample, latest: &Latest) {
        if self.send(sample).is_err() {
            latest.load_samples_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LoadReceiver {
    /// Waits for a sample and returns the newest queued; older ones carry
    /// nothing the newest does not (the counters are cumulative).
    pub async fn newest(&mut self) -> LoadSample {
        loop {
            if let Some(newest) = self.consumer.pop_iter().last() {
                return newest;
            }
            self.ready.notified().await;
        }
    }
}

/// Fills in per-server rates from the previous reading, `seconds` earlier.
pub fn with_rates(mut now: Stats, previous: Option<&Stats>, seconds: f64) -> Stats {
    now.interval = seconds;
    let Some(previous) = previous.filter(|_| seconds > 0.0) else {
        return now;
    };
    for server in &mut now.servers {
        let Some(before) = previous.servers.iter().find(|s| s.name == server.name) else { continue };
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
        server.packets_per_second = Some(rate(server.packets, before.packets));
        server.bytes_per_second = Some(rate(server.bytes, before.bytes));
    }
    now
}

/// Reads and publishes every `interval`.
pub async fn run(owner: Owner, latest: Arc<Latest>, interval: Duration) -> Result<(), OwnerGone> {
    let mut ticks = tokio::time::interval(interval);
    let mut previous: Option<(Arc<Stats>, Instant)> = None;
    loop {
        // The tick's scheduled instant, not the time it ran: rates are over
        // whole ticks.
        let now = ticks.tick().await;
        let stats = match owner.read().await? {
            Ok(reading) => reading,
            Err(error) => {
                warn!(%error, "reading statistics failed");
                continue;
            }
        };
        let seconds = previous.as_ref().map_or(0.0, |(_, at)| (now - *at).as_secs_f64());
        let stats = with_rates(stats, previous.as_ref().map(|(p, _)| p.as_ref()), seconds);
        latest.publish(stats);
        previous = latest.get().map(|stats| (stats, now));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{model::ServerState, ops::api::ServerStatus, sip::Aor};

    pub(crate) fn server(name: &str, packets: u64, bytes: u64) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            state: ServerState::Active,
            healthy: true,
            ipv4: None,
            ipv6: None,
            port: 5060,
            weight: 1.0,
            clients: 0,
            packets,
            bytes,
            packets_per_second: None,
            bytes_per_second: None,
        }
    }

    fn stats(servers: Vec<ServerStatus>) -> Stats {
        Stats { servers, ..Stats::default() }
    }

    #[test]
    fn rates_come_from_the_previous_reading() {
        let before = stats(vec![server("home0", 100, 10_000), server("home1", 5, 500)]);
        let now = stats(vec![server("home0", 300, 30_000), server("home1", 5, 500), server("new", 7, 70)]);
        let rated = with_rates(now, Some(&before), 2.0);
        assert_eq!(rated.interval, 2.0);
        let rates: Vec<_> = rated.servers.iter().map(|s| (s.packets_per_second, s.bytes_per_second)).collect();
        assert_eq!(rates, [(Some(100.0), Some(10_000.0)), (Some(0.0), Some(0.0)), (None, None)]);
        let first = with_rates(stats(vec![server("home0", 1, 1)]), None, 0.0);
        assert_eq!(first.servers[0].packets_per_second, None, "no rate without a previous reading");
    }

    fn sample(packets: u64) -> LoadSample {
        let aor = Aor::from_canonical("sip:a@x".into());
        LoadSample {
            taken: Instant::now(),
            clients: vec![rebalance::Sample { aor, server: "h".into(), key: 1, packets }],
        }
    }

    #[tokio::test]
    async fn the_rebalancer_gets_the_newest_sample_and_a_full_queue_refuses() {
        let (mut sender, mut receiver) = load_queue(2);
        sender.send(sample(1)).unwrap();
        sender.send(sample(2)).unwrap();
        let refused = sender.send(sample(3)).unwrap_err();
        assert_eq!(refused.clients[0].packets, 3);
        assert_eq!(receiver.newest().await.clients[0].packets, 2);
        let waiting = tokio::spawn(async move { receiver.newest().await.clients[0].packets });
        tokio::task::yield_now().await;
        sender.send(sample(4)).unwrap();
        assert_eq!(waiting.await.unwrap(), 4, "a waiting receiver wakes for the next sample");
    }
}
