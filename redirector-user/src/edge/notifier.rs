//! Sends the NOTIFYs of `watchers` as RFC 3261 §17.1.2 non-INVITE client
//! transactions over UDP: retransmitted at Timer E (T1 doubling to T2, or
//! T2 once a provisional answer came) until a final answer, or given up at
//! Timer F (64·T1).
//!
//! NOTIFYs leave from the proxy socket with the proxy address in their Via,
//! so a watcher that answers by its Via reaches the daemon even when its
//! own address is on the fast path. Answers that arrive at a service
//! address instead (some clients, SIPp among them, answer where they send)
//! are taken too, unless the watcher's address is on the fast path, which
//! then forwards them to the watcher's own home server. Answers are matched
//! by branch alone (§17.1.3): it is random, and only the watcher saw it.
//!
//! Known limit: a watcher behind a NAT or firewall that only lets in what
//! comes from the service address it talked to will not receive the NOTIFY
//! from the proxy address.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{net::UdpSocket, sync::mpsc, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    counters::bump,
    edge::watchers::{self, Subscription, WatcherCounters},
};

/// RFC 3261 §17.1.1.1 defaults.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
pub const TIMER_F: Duration = Duration::from_secs(32);

pub const NOTIFY_BRANCH_PREFIX: &str = "z9hG4bK-rdr-notify-";

/// Timer E's next interval after `current`.
pub fn next_interval(current: Duration, proceeding: bool) -> Duration {
    if proceeding { T2 } else { (current * 2).min(T2) }
}

pub struct Notifier {
    /// The proxy sockets (one per family) and their addresses.
    proxies: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// Status codes of the answers to each pending transaction, by branch.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<u16>>>,
    counters: Arc<WatcherCounters>,
}

impl Notifier {
    /// NOTIFYs leave from the proxy socket of the watcher's family, whose
    /// address goes in their Via.
    pub fn new(proxies: Vec<(SocketAddr, Arc<UdpSocket>)>, counters: Arc<WatcherCounters>) -> Self {
        Self { proxies, pending: Mutex::new(HashMap::new()), counters }
    }

    /// Starts a transaction for every subscription that arrives, until the
    /// sending side closes.
    pub async fn run(self: Arc<Self>, mut deactivated: mpsc::UnboundedReceiver<Subscription>) {
        while let Some(subscription) = deactivated.recv().await {
            tokio::spawn(self.clone().transaction(subscription));
        }
    }

    /// A response whose top Via branch is `branch`; true if it was ours.
    pub fn answered(&self, branch: &str, code: u16) -> bool {
        match self.pending.lock().expect("notifier lock").get(branch) {
            Some(transaction) => transaction.send(code).is_ok(),
            None => false,
        }
    }

    async fn transaction(self: Arc<Self>, subscription: Subscription) {
        let to = subscription.reply_to;
        let Some((sent_by, socket)) = self.proxies.iter().find(|(local, _)| local.is_ipv4() == to.is_ipv4()) else {
            bump(&self.counters.notifies_unroutable);
            warn!(%to, "no proxy address of the watcher's family to send its NOTIFY from");
            return;
        };
        let branch = format!("{NOTIFY_BRANCH_PREFIX}{:016x}", RandomState::new().hash_one(&subscription.id));
        let bytes = watchers::notify(&subscription, *sent_by, &branch);
        let (sender, mut answers) = mpsc::unbounded_channel();
        self.pending.lock().expect("notifier lock").insert(branch.clone(), sender);
        bump(&self.counters.notifies_sent);
        let give_up = Instant::now() + TIMER_F;
        let (mut interval, mut proceeding) = (T1, false);
        let outcome = loop {
            if let Err(error) = socket.send_to(&bytes, to).await {
                warn!(%to, %error, "sending a NOTIFY failed");
            }
            let retransmit = (Instant::now() + interval).min(give_up);
            if let Some(code) = final_answer(&mut answers, retransmit, &mut proceeding).await {
                break Some(code);
            }
            if Instant::now() >= give_up {
                break None;
            }
            interval = next_interval(interval, proceeding);
        };
        self.pending.lock().expect("notifier lock").remove(&branch);
        let call_id = &subscription.id.call_id;
        match outcome {
            Some(code) => {
                bump(&self.counters.notifies_answered);
                info!(%to, call_id, code, aor = %subscription.presentity, "watcher told its client moved");
            }
            None => {
                bump(&self.counters.notifies_timed_out);
                debug!(%to, call_id, "NOTIFY never answered (Timer F)");
            }
        }
    }
}

/// Waits until `deadline` for a final answer; a provisional one only
/// records that the watcher is proceeding (§17.1.2.2).
async fn final_answer(
    answers: &mut mpsc::UnboundedReceiver<u16>,
    deadline: Instant,
    proceeding: &mut bool,
) -> Option<u16> {
    loop {
        tokio::select! {
            Some(code) = answers.recv() => match code {
                100..=199 => *proceeding = true,
                code => return Some(code),
            },
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        edge::watchers::DialogId,
        sip::{Aor, HeaderKind, Message, Via},
    };

    /// When a transaction started at 0 sends, if nothing ever answers.
    fn send_times() -> Vec<Duration> {
        let mut times = vec![Duration::ZERO];
        let mut interval = T1;
        while let Some(&last) = times.last()
            && last + interval < TIMER_F
        {
            times.push(last + interval);
            interval = next_interval(interval, false);
        }
        times
    }

    #[test]
    fn timer_e_doubles_to_t2_and_timer_f_ends_it() {
        let ms = |times: Vec<Duration>| times.into_iter().map(|t| t.as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(send_times()),
            [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500],
            "RFC 3261 §17.1.2.2 with T1 = 500 ms, T2 = 4 s, F = 32 s"
        );
        assert_eq!(next_interval(T1, true), T2, "a provisional answer moves straight to T2");
    }

    fn subscription(reply_to: SocketAddr) -> Subscription {
        Subscription {
            id: DialogId { call_id: "c1".into(), watcher_tag: "w".into() },
            presentity: Aor::from_uri("sip:bob@example.net", "To").unwrap(),
            presentity_header: "<sip:bob@example.net>".into(),
            watcher_header: "<sip:alice@example.net>;tag=w".into(),
            watcher_contact: format!("sip:alice@{reply_to}"),
            event: "presence".into(),
            cseq: 1,
            route_set: Vec::new(),
            reply_to,
            notifier_tag: Some("n".into()),
        }
    }

    fn branch_of(bytes: &[u8]) -> String {
        let message = Message::parse(bytes).unwrap();
        assert_eq!(message.value(HeaderKind::CallId).unwrap(), "c1");
        let top = message.via_values().next().unwrap().into_owned();
        Via::parse(&top).unwrap().branch().unwrap().to_owned()
    }

    async fn setup() -> (Arc<Notifier>, UdpSocket, Arc<WatcherCounters>) {
        let edge = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let watcher = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let counters = Arc::new(WatcherCounters::default());
        let sent_by = edge.local_addr().unwrap();
        (Arc::new(Notifier::new(vec![(sent_by, edge)], counters.clone())), watcher, counters)
    }

    #[tokio::test(start_paused = true)]
    async fn retransmits_until_a_final_answer() {
        let (notifier, watcher, counters) = setup().await;
        let task = tokio::spawn(notifier.clone().transaction(subscription(watcher.local_addr().unwrap())));
        let mut buf = [0u8; 2048];
        let mut branches = Vec::new();
        for _ in 0..3 {
            let len = watcher.recv(&mut buf).await.unwrap();
            branches.push(branch_of(&buf[..len]));
        }
        assert!(branches.iter().all(|b| b == &branches[0] && b.starts_with(NOTIFY_BRANCH_PREFIX)), "{branches:?}");
        assert!(!notifier.answered("z9hG4bK-other", 200), "another branch is not this transaction");
        assert!(notifier.answered(&branches[0], 200));
        task.await.unwrap();
        assert_eq!(counters.notifies_answered.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!notifier.answered(&branches[0], 200), "the transaction is over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provisional_answer_slows_retransmission_to_t2() {
        let (notifier, watcher, _) = setup().await;
        let task = tokio::spawn(notifier.clone().transaction(subscription(watcher.local_addr().unwrap())));
        let mut buf = [0u8; 2048];
        let len = watcher.recv(&mut buf).await.unwrap();
        let branch = branch_of(&buf[..len]);
        let proceeding = Instant::now();
        assert!(notifier.answered(&branch, 100));
        watcher.recv(&mut buf).await.unwrap();
        assert_eq!(proceeding.elapsed(), T1, "the retransmission already scheduled, not one per 100");
        watcher.recv(&mut buf).await.unwrap();
        assert_eq!(proceeding.elapsed(), T1 + T2, "then every T2");
        assert!(notifier.answered(&branch, 200));
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_notify_stops_at_timer_f() {
        let (notifier, watcher, counters) = setup().await;
        let started = Instant::now();
        notifier.transaction(subscription(watcher.local_addr().unwrap())).await;
        assert_eq!(started.elapsed(), TIMER_F);
        let mut buf = [0u8; 2048];
        let mut sent = 0;
        while watcher.try_recv(&mut buf).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, send_times().len());
        assert_eq!(counters.notifies_timed_out.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
