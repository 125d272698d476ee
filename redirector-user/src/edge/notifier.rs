//! Sends the NOTIFYs of `watchers` as RFC 3261 §17.1.2 non-INVITE client
//! transactions over UDP: retransmitted at Timer E (T1 doubling to T2, or
//! T2 once a provisional answer came) until a final answer, or given up at
//! Timer F (64·T1). Sans-IO: it is given subscriptions, answers and the
//! time, and returns what to send and when to wake it next.
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
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

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

/// A datagram to send from the proxy address `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Transaction {
    /// When it is to be retransmitted or given up, whichever is first.
    fn due(&self) -> Instant {
        self.retransmit.min(self.give_up)
    }
}

struct Transaction {
    subscription: Subscription,
    sent_by: SocketAddr,
    bytes: Vec<u8>,
    /// Timer E's current interval.
    interval: Duration,
    /// When it is sent again.
    retransmit: Instant,
    give_up: Instant,
    proceeding: bool,
}

pub struct Notifier {
    /// The proxy addresses, one per family: NOTIFYs leave from the one of
    /// the watcher's family, which their Via names.
    proxies: Vec<SocketAddr>,
    /// Pending transactions by branch.
    pending: HashMap<String, Transaction>,
    /// When each pending transaction is due next, earliest first; entries
    /// of transactions that ended or moved on are skipped when met.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    branches: RandomState,
    started: u64,
    counters: Arc<WatcherCounters>,
}

impl Notifier {
    pub fn new(proxies: Vec<SocketAddr>, counters: Arc<WatcherCounters>) -> Self {
        let pending = HashMap::new();
        Self { proxies, pending, deadlines: BinaryHeap::new(), branches: RandomState::new(), started: 0, counters }
    }

    /// Starts the NOTIFY transaction telling a watcher its client moved.
    pub fn start(&mut self, subscription: Subscription, now: Instant) -> Option<Transmit> {
        let to = subscription.reply_to;
        let Some(&sent_by) = self.proxies.iter().find(|proxy| proxy.is_ipv4() == to.is_ipv4()) else {
            bump(&self.counters.notifies_unroutable);
            warn!(%to, "no proxy address of the watcher's family to send its NOTIFY from");
            return None;
        };
        self.started += 1;
        // Random, and only the watcher sees it: answers are matched by it alone (§17.1.3).
        let branch = format!("{NOTIFY_BRANCH_PREFIX}{:016x}", self.branches.hash_one((&subscription.id, self.started)));
        let bytes = watchers::notify(&subscription, sent_by, &branch);
        bump(&self.counters.notifies_sent);
        let transmit = Transmit { from: sent_by, to, bytes: bytes.clone() };
        let transaction = Transaction {
            subscription,
            sent_by,
            bytes,
            interval: T1,
            retransmit: now + T1,
            give_up: now + TIMER_F,
            proceeding: false,
        };
        self.deadlines.push(Reverse((transaction.due(), branch.clone())));
        self.pending.insert(branch, transaction);
        Some(transmit)
    }

    /// A response whose top Via branch is `branch`; true if it was ours. A
    /// provisional answer only slows retransmission to T2 (§17.1.2.2).
    pub fn handle_answer(&mut self, branch: &str, code: u16) -> bool {
        let Some(transaction) = self.pending.get_mut(branch) else { return false };
        if code < 200 {
            transaction.proceeding = true;
            return true;
        }
        let transaction = self.pending.remove(branch).expect("found above");
        bump(&self.counters.notifies_answered);
        let subscription = &transaction.subscription;
        let (to, call_id, aor) = (subscription.reply_to, &subscription.id.call_id, &subscription.presentity);
        info!(%to, call_id, code, %aor, "watcher told its client moved");
        true
    }

    /// When `handle_timeout` is due next, if anything is pending.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, branch))) = self.deadlines.peek() {
            if self.pending.get(branch).is_some_and(|t| t.due() == *at) {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Retransmits what is due at `now` and gives up what reached Timer F.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Transmit> {
        let mut due = Vec::new();
        while let Some(at) = self.poll_timeout().filter(|at| *at <= now) {
            let Reverse((_, branch)) = self.deadlines.pop().expect("peeked");
            let transaction = self.pending.get_mut(&branch).expect("checked by poll_timeout");
            if now >= transaction.give_up {
                let transaction = self.pending.remove(&branch).expect("found above");
                bump(&self.counters.notifies_timed_out);
                let (to, call_id) = (transaction.subscription.reply_to, &transaction.subscription.id.call_id);
                debug!(%to, call_id, "NOTIFY never answered (Timer F)");
                continue;
            }
            transaction.interval = next_interval(transaction.interval, transaction.proceeding);
            // Late by more than the interval: the next one counts from now.
            let next = at + transaction.interval;
            transaction.retransmit = if next > now { next } else { now + transaction.interval };
            let to = transaction.subscription.reply_to;
            due.push(Transmit { from: transaction.sent_by, to, bytes: transaction.bytes.clone() });
            self.deadlines.push(Reverse((transaction.due(), branch)));
        }
        due
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

    const PROXY: &str = "192.0.2.1:5060";
    const WATCHER: &str = "198.51.100.7:5070";

    fn setup() -> (Notifier, Arc<WatcherCounters>) {
        let counters = Arc::new(WatcherCounters::default());
        (Notifier::new(vec![PROXY.parse().unwrap()], counters.clone()), counters)
    }

    /// Drives the notifier from `start` to `end` in steps of `step`, as its
    /// task would; returns when each datagram was sent, after `start`.
    fn run(notifier: &mut Notifier, start: Instant, end: Duration) -> Vec<Duration> {
        let mut sent = Vec::new();
        while let Some(at) = notifier.poll_timeout().filter(|at| *at <= start + end) {
            sent.extend(notifier.handle_timeout(at).iter().map(|_| at - start));
        }
        sent
    }

    #[test]
    fn retransmits_until_a_final_answer() {
        let (mut notifier, counters) = setup();
        let start = Instant::now();
        let first = notifier.start(subscription(WATCHER.parse().unwrap()), start).unwrap();
        assert_eq!((first.from, first.to), (PROXY.parse().unwrap(), WATCHER.parse().unwrap()));
        let branch = branch_of(&first.bytes);
        assert!(branch.starts_with(NOTIFY_BRANCH_PREFIX), "{branch}");
        let again = notifier.handle_timeout(start + T1);
        assert_eq!(again.len(), 1);
        assert_eq!(branch_of(&again[0].bytes), branch, "a retransmission is the same transaction");
        assert!(!notifier.handle_answer("z9hG4bK-other", 200), "another branch is not this transaction");
        assert!(notifier.handle_answer(&branch, 200));
        assert_eq!(notifier.poll_timeout(), None, "the transaction is over");
        assert_eq!(counters.notifies_answered.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!notifier.handle_answer(&branch, 200), "and its answers are no longer ours");
    }

    #[test]
    fn a_provisional_answer_slows_retransmission_to_t2() {
        let (mut notifier, _) = setup();
        let start = Instant::now();
        let branch = branch_of(&notifier.start(subscription(WATCHER.parse().unwrap()), start).unwrap().bytes);
        assert!(notifier.handle_answer(&branch, 100));
        let sent = run(&mut notifier, start, T1 + T2 + T2);
        assert_eq!(sent, [T1, T1 + T2, T1 + T2 + T2], "the retransmission already scheduled, then every T2");
        assert!(notifier.handle_answer(&branch, 200));
    }

    #[test]
    fn an_unanswered_notify_stops_at_timer_f() {
        let (mut notifier, counters) = setup();
        let start = Instant::now();
        notifier.start(subscription(WATCHER.parse().unwrap()), start).unwrap();
        let sent = run(&mut notifier, start, TIMER_F + T2);
        let mut expected = send_times();
        expected.remove(0);
        assert_eq!(sent, expected, "every retransmission at Timer E, none after Timer F");
        assert_eq!(notifier.poll_timeout(), None);
        assert_eq!(counters.notifies_timed_out.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_watcher_of_a_family_without_a_proxy_address_is_counted_unroutable() {
        let (mut notifier, counters) = setup();
        assert_eq!(notifier.start(subscription("[2001:db8::7]:5070".parse().unwrap()), Instant::now()), None);
        assert_eq!(counters.notifies_unroutable.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
