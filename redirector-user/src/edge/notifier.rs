//! Sends the edge's NOTIFYs (to `watchers` whose client moved, and in
//! clients' `profiles` subscriptions) as RFC 3261 §17.1.2 non-INVITE client
//! transactions over UDP: retransmitted at Timer E (T1 doubling to T2, or
//! T2 once a provisional answer came) until a final answer, or given up at
//! Timer F (64·T1). Sans-IO: it is given NOTIFYs to send, answers and the
//! time, and returns what to send and when to wake it next.
//!
//! A profile subscription has at most one NOTIFY pending: a newer one of
//! the same dialog (a higher CSeq, the newer document) replaces it, whose
//! retransmissions stop and whose late answer is no longer ours; an older
//! one queued after a newer one is dropped. A profile
//! NOTIFY refused with a final non-2xx ends its subscription (RFC 6665
//! §4.2.2: the caller tells the owner); one never answered by Timer F
//! leaves it in place: a subscriber on the fast path that answers at the
//! service address rather than at the NOTIFY's Via has its answer
//! forwarded to its home server by the kernel, so silence proves nothing.
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
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    counters::bump,
    edge::{
        profiles::{ProfileCounters, ProfileId, ProfileNotify},
        watchers::{self, Subscription, WatcherCounters},
    },
};

/// A NOTIFY for the notifier to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// A watcher's client moved: its subscription ends (deactivated).
    Deactivated(Subscription),
    /// A client's own ua-profile subscription: its document, or its end.
    Profile(ProfileNotify),
}

impl Notify {
    /// Where it goes: where the SUBSCRIBE came from.
    fn to(&self) -> SocketAddr {
        match self {
            Notify::Deactivated(subscription) => subscription.reply_to,
            Notify::Profile(notify) => notify.subscription.reply_to,
        }
    }

    fn bytes(&self, sent_by: SocketAddr, branch: &str) -> Vec<u8> {
        match self {
            Notify::Deactivated(subscription) => watchers::notify(subscription, sent_by, branch),
            Notify::Profile(notify) => notify.bytes(sent_by, branch),
        }
    }

    fn call_id(&self) -> &str {
        match self {
            Notify::Deactivated(subscription) => &subscription.id.call_id,
            Notify::Profile(notify) => &notify.subscription.id.call_id,
        }
    }

    /// The profile dialog it belongs to.
    fn profile(&self) -> Option<&ProfileId> {
        match self {
            Notify::Deactivated(_) => None,
            Notify::Profile(notify) => Some(&notify.subscription.id),
        }
    }
}

/// What an answer to a NOTIFY did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// Not an answer to a NOTIFY pending here.
    NotOurs,
    /// Ours: provisional, or final and nothing follows.
    Ours,
    /// A final non-2xx answer to a profile NOTIFY: its subscription ends.
    Refused(ProfileId),
}

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
    notify: Notify,
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
    /// The branch of each profile dialog's pending NOTIFY.
    by_dialog: HashMap<ProfileId, String>,
    /// The highest NOTIFY CSeq started in each profile dialog: one queued
    /// late is dropped, never sent after a newer one (a subscription's
    /// first NOTIFY comes through the task that sent its 200, later ones
    /// straight from the owner, which may overtake it), and when it started:
    /// entries past `LATEST_KEPT` are forgotten (a subscription dropped
    /// without a final NOTIFY is never told to the notifier).
    latest: HashMap<ProfileId, (u32, Instant)>,
    /// When `latest` was last swept.
    swept: Option<Instant>,
    /// When each pending transaction is due next, earliest first; entries
    /// of transactions that ended or moved on are skipped when met.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    branches: RandomState,
    started: u64,
    counters: Arc<WatcherCounters>,
    profile_counters: Arc<ProfileCounters>,
}

/// How long a profile dialog's last NOTIFY CSeq is kept at least.
const LATEST_KEPT: Duration = Duration::from_secs(120);

/// How many dialogs' CSeqs are kept before old ones are looked for.
const LATEST_SWEEP_ABOVE: usize = 4096;

impl Notifier {
    pub fn new(proxies: Vec<SocketAddr>, counters: Arc<WatcherCounters>, profiles: Arc<ProfileCounters>) -> Self {
        Self {
            proxies,
            pending: HashMap::new(),
            by_dialog: HashMap::new(),
            latest: HashMap::new(),
            swept: None,
            deadlines: BinaryHeap::new(),
            branches: RandomState::new(),
            started: 0,
            counters,
            profile_counters: profiles,
        }
    }

    fn count(
        &self,
        notify: &Notify,
        watchers: fn(&WatcherCounters) -> &AtomicU64,
        profiles: fn(&ProfileCounters) -> &AtomicU64,
    ) {
        match notify {
            Notify::Deactivated(_) => bump(watchers(&self.counters)),
            Notify::Profile(_) => bump(profiles(&self.profile_counters)),
        }
    }

    /// Starts the NOTIFY transaction for `notify`.
    pub fn start(&mut self, notify: Notify, now: Instant) -> Option<Transmit> {
        let to = notify.to();
        let Some(&sent_by) = self.proxies.iter().find(|proxy| proxy.is_ipv4() == to.is_ipv4()) else {
            self.count(&notify, |c| &c.notifies_unroutable, |c| &c.notifies_unroutable);
            warn!(%to, "no proxy address of the subscriber's family to send its NOTIFY from");
            return None;
        };
        if let Notify::Profile(profile) = &notify {
            let (id, cseq) = (&profile.subscription.id, profile.subscription.notify_cseq);
            if self.latest.get(id).is_some_and(|(latest, _)| *latest >= cseq) {
                bump(&self.profile_counters.notifies_superseded);
                debug!(call_id = id.call_id, cseq, "a NOTIFY older than one already sent is dropped");
                return None;
            }
            self.forget_old_dialogs(now);
            self.latest.insert(id.clone(), (cseq, now));
        }
        self.started += 1;
        // Random, and only the subscriber sees it: answers are matched by it alone (§17.1.3).
        let branch = format!("{NOTIFY_BRANCH_PREFIX}{:016x}", self.branches.hash_one((notify.call_id(), self.started)));
        if let Some(dialog) = notify.profile().cloned()
            && let Some(older) = self.by_dialog.insert(dialog, branch.clone())
            && self.pending.remove(&older).is_some()
        {
            bump(&self.profile_counters.notifies_superseded);
        }
        let bytes = notify.bytes(sent_by, &branch);
        self.count(&notify, |c| &c.notifies_sent, |c| &c.notifies_sent);
        let transmit = Transmit { from: sent_by, to, bytes: bytes.clone() };
        let transaction = Transaction {
            notify,
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

    /// A response whose top Via branch is `branch`. A provisional answer
    /// only slows retransmission to T2 (§17.1.2.2).
    pub fn handle_answer(&mut self, branch: &str, code: u16) -> Answered {
        let Some(transaction) = self.pending.get_mut(branch) else { return Answered::NotOurs };
        if code < 200 {
            transaction.proceeding = true;
            return Answered::Ours;
        }
        let transaction = self.pending.remove(branch).expect("found above");
        let to = transaction.notify.to();
        let call_id = transaction.notify.call_id();
        match &transaction.notify {
            Notify::Deactivated(subscription) => {
                bump(&self.counters.notifies_answered);
                info!(%to, call_id, code, aor = %subscription.presentity, "watcher told its client moved");
                Answered::Ours
            }
            Notify::Profile(notify) => {
                let id = &notify.subscription.id;
                if self.by_dialog.get(id).is_some_and(|b| b == branch) {
                    self.by_dialog.remove(id);
                }
                if notify.ends() || !(200..300).contains(&code) {
                    self.latest.remove(id);
                }
                if (200..300).contains(&code) {
                    bump(&self.profile_counters.notifies_answered);
                    debug!(%to, call_id, code, "ua-profile NOTIFY answered");
                    return Answered::Ours;
                }
                bump(&self.profile_counters.notifies_refused);
                info!(%to, call_id, code, aor = %notify.subscription.aor, "ua-profile NOTIFY refused: the subscription ends");
                if notify.ends() { Answered::Ours } else { Answered::Refused(id.clone()) }
            }
        }
    }

    /// Forgets the dialogs whose last NOTIFY started more than
    /// `LATEST_KEPT` ago (by then any NOTIFY it could overtake has long
    /// been sent), once there are many, at most every `LATEST_KEPT`.
    fn forget_old_dialogs(&mut self, now: Instant) {
        let due = self.swept.is_none_or(|at| now.duration_since(at) >= LATEST_KEPT);
        if due && self.latest.len() > LATEST_SWEEP_ABOVE {
            self.latest.retain(|_, (_, at)| now.duration_since(*at) < LATEST_KEPT);
            self.swept = Some(now);
        }
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
                self.count(&transaction.notify, |c| &c.notifies_timed_out, |c| &c.notifies_timed_out);
                if let Some(id) = transaction.notify.profile()
                    && self.by_dialog.get(id) == Some(&branch)
                {
                    self.by_dialog.remove(id);
                }
                if let Notify::Profile(notify) = &transaction.notify
                    && notify.ends()
                {
                    self.latest.remove(&notify.subscription.id);
                }
                let (to, call_id) = (transaction.notify.to(), transaction.notify.call_id());
                debug!(%to, call_id, "NOTIFY never answered (Timer F)");
                continue;
            }
            transaction.interval = next_interval(transaction.interval, transaction.proceeding);
            // Late by more than the interval: the next one counts from now.
            let next = at + transaction.interval;
            transaction.retransmit = if next > now { next } else { now + transaction.interval };
            let to = transaction.notify.to();
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
        (Notifier::new(vec![PROXY.parse().unwrap()], counters.clone(), Arc::default()), counters)
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
        let first = notifier.start(Notify::Deactivated(subscription(WATCHER.parse().unwrap())), start).unwrap();
        assert_eq!((first.from, first.to), (PROXY.parse().unwrap(), WATCHER.parse().unwrap()));
        let branch = branch_of(&first.bytes);
        assert!(branch.starts_with(NOTIFY_BRANCH_PREFIX), "{branch}");
        let again = notifier.handle_timeout(start + T1);
        assert_eq!(again.len(), 1);
        assert_eq!(branch_of(&again[0].bytes), branch, "a retransmission is the same transaction");
        assert_eq!(
            notifier.handle_answer("z9hG4bK-other", 200),
            Answered::NotOurs,
            "another branch is not this transaction"
        );
        assert_eq!(notifier.handle_answer(&branch, 200), Answered::Ours);
        assert_eq!(notifier.poll_timeout(), None, "the transaction is over");
        assert_eq!(counters.notifies_answered.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(notifier.handle_answer(&branch, 200), Answered::NotOurs, "and its answers are no longer ours");
    }

    #[test]
    fn a_provisional_answer_slows_retransmission_to_t2() {
        let (mut notifier, _) = setup();
        let start = Instant::now();
        let branch = branch_of(
            &notifier.start(Notify::Deactivated(subscription(WATCHER.parse().unwrap())), start).unwrap().bytes,
        );
        assert_eq!(notifier.handle_answer(&branch, 100), Answered::Ours);
        let sent = run(&mut notifier, start, T1 + T2 + T2);
        assert_eq!(sent, [T1, T1 + T2, T1 + T2 + T2], "the retransmission already scheduled, then every T2");
        assert_eq!(notifier.handle_answer(&branch, 200), Answered::Ours);
    }

    #[test]
    fn an_unanswered_notify_stops_at_timer_f() {
        let (mut notifier, counters) = setup();
        let start = Instant::now();
        notifier.start(Notify::Deactivated(subscription(WATCHER.parse().unwrap())), start).unwrap();
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
        assert_eq!(
            notifier.start(Notify::Deactivated(subscription("[2001:db8::7]:5070".parse().unwrap())), Instant::now()),
            None
        );
        assert_eq!(counters.notifies_unroutable.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    fn profile_notify(cseq: u32, state: crate::edge::profiles::State) -> Notify {
        use crate::edge::profiles::{ProfileId, ProfileNotify, ProfileSubscription};
        let subscription = ProfileSubscription {
            id: ProfileId { call_id: "c1".into(), subscriber_tag: "s".into() },
            aor: Aor::from_uri("sip:alice@example.net", "To").unwrap(),
            tag: "t".into(),
            profile_header: "<sip:alice@example.net>".into(),
            subscriber_header: "<sip:alice@example.net>;tag=s".into(),
            contact: format!("sip:alice@{WATCHER}"),
            event: "ua-profile".into(),
            route_set: Vec::new(),
            reply_to: WATCHER.parse().unwrap(),
            service: "192.0.2.10:5060".parse().unwrap(),
            cseq: 1,
            notify_cseq: cseq,
            expires_at: 0,
            etag: None,
        };
        Notify::Profile(ProfileNotify { subscription, state, body: Some("<p/>".into()) })
    }

    #[test]
    fn a_newer_profile_notify_replaces_the_pending_one_of_its_dialog() {
        use crate::edge::profiles::State;
        let (mut notifier, _) = setup();
        let start = Instant::now();
        let first = branch_of(&notifier.start(profile_notify(1, State::Active(60)), start).unwrap().bytes);
        let second = branch_of(&notifier.start(profile_notify(2, State::Active(60)), start).unwrap().bytes);
        assert_eq!(notifier.profile_counters.notifies_superseded.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(notifier.handle_answer(&first, 200), Answered::NotOurs, "the older one is no longer pending");
        let again = notifier.handle_timeout(start + T1);
        assert_eq!(again.len(), 1, "only the newer one is retransmitted");
        assert_eq!(branch_of(&again[0].bytes), second);
        assert_eq!(notifier.handle_answer(&second, 200), Answered::Ours);
        assert_eq!(notifier.poll_timeout(), None);
        let late = notifier.start(profile_notify(1, State::Active(60)), start);
        assert_eq!(late, None, "the first NOTIFY queued after the second is never sent");
        assert_eq!(notifier.profile_counters.notifies_superseded.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn dialogs_notified_long_ago_are_forgotten_once_many() {
        use crate::edge::profiles::State;
        let (mut notifier, _) = setup();
        let start = Instant::now();
        let in_dialog = |n: usize| {
            let Notify::Profile(mut notify) = profile_notify(1, State::Active(60)) else { unreachable!() };
            notify.subscription.id.call_id = format!("c{n}");
            Notify::Profile(notify)
        };
        for n in 0..=LATEST_SWEEP_ABOVE {
            notifier.start(in_dialog(n), start).expect("sent");
        }
        assert_eq!(notifier.latest.len(), LATEST_SWEEP_ABOVE + 1, "young ones are kept");
        notifier.start(in_dialog(usize::MAX), start + LATEST_KEPT).unwrap();
        assert_eq!(notifier.latest.len(), 1, "only the newest is left");
    }

    #[test]
    fn a_refused_profile_notify_ends_its_subscription_and_a_silent_one_does_not() {
        use crate::edge::profiles::{ProfileId, State};
        let (mut notifier, _) = setup();
        let start = Instant::now();
        let branch = branch_of(&notifier.start(profile_notify(1, State::Active(60)), start).unwrap().bytes);
        let id = ProfileId { call_id: "c1".into(), subscriber_tag: "s".into() };
        assert_eq!(notifier.handle_answer(&branch, 481), Answered::Refused(id));
        let last = branch_of(&notifier.start(profile_notify(2, State::Timeout), start).unwrap().bytes);
        assert_eq!(notifier.handle_answer(&last, 481), Answered::Ours, "a NOTIFY that ends it already");
        notifier.start(profile_notify(3, State::Active(60)), start).unwrap();
        run(&mut notifier, start, TIMER_F + T2);
        let counters = &notifier.profile_counters;
        assert_eq!(counters.notifies_timed_out.load(std::sync::atomic::Ordering::Relaxed), 1, "given up at Timer F");
        assert_eq!(counters.notifies_refused.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
