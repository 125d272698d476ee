//! Watchers: SUBSCRIBE dialogs that passed through the edge, kept by the
//! client they watch, so that when that client moves each watcher can be
//! told (`NOTIFY` with `Subscription-State: terminated;reason=deactivated`,
//! RFC 6665 §4.2.2) and re-subscribe at the new home server.
//!
//! The edge is a stateless proxy without Record-Route, so it sees a
//! dialog's first SUBSCRIBE and the notifier's answer to it, but not
//! refreshes sent straight to the notifier. A subscription is therefore
//! kept until the client moves, the watcher unsubscribes through the edge
//! (`Expires: 0`), the SUBSCRIBE is refused, or the registry is full (the
//! oldest goes first) — never by its own expiry, which the edge cannot
//! follow. A NOTIFY for a dialog that ended meanwhile is answered 481 (or,
//! if the watcher is gone, retransmitted until Timer F).
//!
//! A dialog still waiting for the notifier's answer when its client moves
//! is marked moved: if the old home server then confirms it, the watcher
//! is told at once.

use std::{net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use crate::edge::dialogs::MAX_FIELD;
use crate::{
    counters::{add, bump},
    edge::{
        dialogs::{self, Dialog, Dialogs},
        notifier::Notify,
    },
    sip::{Aor, HeaderKind, Message, NameAddr, ParseError, tag, without_tag},
};

/// A dialog's identity as the edge sees it before the notifier's tag is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DialogId {
    pub call_id: String,
    /// The watcher's (From) tag.
    pub watcher_tag: String,
}

/// One watcher's subscription to one client (the presentity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: DialogId,
    pub presentity: Aor,
    /// The SUBSCRIBE's To value without a tag: the NOTIFY's From.
    pub presentity_header: String,
    /// The SUBSCRIBE's From value, tag included: the NOTIFY's To.
    pub watcher_header: String,
    /// The watcher's Contact URI: the NOTIFY's Request-URI.
    pub watcher_contact: String,
    /// The Event header (package and id), echoed in the NOTIFY.
    pub event: String,
    /// The watcher's CSeq number on its SUBSCRIBE (for the log).
    pub cseq: u32,
    /// The SUBSCRIBE's Record-Route values in order: the NOTIFY's Route
    /// set (RFC 3261 §12.1.1), for proxies before the edge that stay on
    /// the dialog's path.
    pub route_set: Vec<String>,
    /// Where the SUBSCRIBE came from, and so where the NOTIFY goes back.
    pub reply_to: SocketAddr,
    /// The notifier's (To) tag, from its 2xx; `None` until it answered.
    pub notifier_tag: Option<String>,
}

impl Subscription {
    /// The dialog a SUBSCRIBE for `presentity` from `source` opens, and the
    /// expiry it asks for. Errors name the header a watcher got wrong.
    pub fn from_request(
        message: &Message<'_>,
        presentity: Aor,
        source: SocketAddr,
    ) -> Result<(Self, Option<u32>), ParseError> {
        let header = |kind, name| message.value(kind).map(|v| v.into_owned()).ok_or(ParseError::Missing(name));
        let from = header(HeaderKind::From, "From")?;
        let to = header(HeaderKind::To, "To")?;
        let contact = header(HeaderKind::Contact, "Contact")?;
        let watcher_tag = tag(&from).ok_or(ParseError::Missing("From tag"))?.to_owned();
        let watcher_contact = NameAddr::parse(&contact, "Contact")?.uri.to_owned();
        let expires = message.value(HeaderKind::Expires).and_then(|v| v.trim().parse().ok());
        let route_set: Vec<String> = message.record_route_set();
        let subscription = Self {
            id: DialogId { call_id: header(HeaderKind::CallId, "Call-ID")?.trim().to_owned(), watcher_tag },
            presentity,
            presentity_header: without_tag(&to),
            watcher_header: from.trim().to_owned(),
            watcher_contact,
            event: header(HeaderKind::Event, "Event")?.trim().to_owned(),
            cseq: message.cseq()?.0,
            route_set,
            reply_to: source,
            notifier_tag: None,
        };
        if subscription.fields().any(|field| field.len() > MAX_FIELD) {
            return Err(ParseError::Malformed("SUBSCRIBE (a header over 1024 bytes)"));
        }
        Ok((subscription, expires))
    }

    fn fields(&self) -> impl Iterator<Item = &str> {
        let headers = [&self.id.call_id, &self.id.watcher_tag, &self.presentity_header, &self.watcher_header];
        let more = [&self.watcher_contact, &self.event];
        headers.into_iter().chain(more).chain(&self.route_set).map(String::as_str)
    }
}

/// What recording a SUBSCRIBE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Kept; `evicted` older subscriptions made room for it.
    Kept { evicted: usize },
    /// `Expires: 0`: the watcher ended it.
    Ended,
}

/// What the notifier's final answer to a SUBSCRIBE did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// Nothing to do (a provisional, a repeat, an unknown dialog).
    Nothing,
    /// Confirmed; kept until its client moves.
    Confirmed,
    /// Refused before it was ever confirmed: forgotten.
    Refused,
    /// Confirmed after its client moved: the watcher is to be told now.
    Moved(Box<Subscription>),
}

/// Dialogs changed since the store last saw them.
pub type Changes = dialogs::Changes<DialogId>;

/// A kept subscription; also what the store keeps of it (with its age).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    subscription: Subscription,
    /// Its client moved while the notifier had not answered yet.
    moved: bool,
}

impl Dialog for Entry {
    type Id = DialogId;

    fn id(&self) -> &DialogId {
        &self.subscription.id
    }

    fn client(&self) -> &Aor {
        &self.subscription.presentity
    }

    fn key(id: &DialogId) -> String {
        format!("{}\n{}", id.call_id, id.watcher_tag)
    }
}

/// The subscriptions, by dialog and by watched client, oldest first.
#[derive(Debug)]
pub struct Registry {
    dialogs: Dialogs<Entry>,
}

impl Registry {
    pub fn new(capacity: usize) -> Self {
        Self { dialogs: Dialogs::new(capacity) }
    }

    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// Records a SUBSCRIBE that is being proxied; `moved` when its client
    /// moved after the SUBSCRIBE was routed. A repeat keeps the notifier's
    /// tag already learned.
    pub fn subscribed(&mut self, mut subscription: Subscription, expires: Option<u32>, moved: bool) -> Recorded {
        let previous = self.dialogs.remove(&subscription.id);
        if expires == Some(0) {
            return Recorded::Ended;
        }
        if subscription.notifier_tag.is_none() {
            subscription.notifier_tag = previous.and_then(|p| p.subscription.notifier_tag);
        }
        let evicted = self.dialogs.insert(Entry { subscription, moved });
        Recorded::Kept { evicted }
    }

    /// What changed since the last call, for the store.
    pub fn take_changes(&mut self) -> Changes {
        self.dialogs.take_changes()
    }

    /// Changes the store did not take: written with the next save.
    pub fn retry(&mut self, changes: Changes) {
        self.dialogs.retry(changes);
    }

    /// Takes back what the store kept (see `Dialogs::restore`). Returns
    /// how many were restored and skipped.
    pub fn restore(&mut self, stored: Vec<(String, String)>) -> (usize, usize) {
        self.dialogs.restore(stored)
    }

    /// The notifier's final answer to a SUBSCRIBE: a 2xx confirms the
    /// dialog with its tag; a refusal ends a dialog that was never confirmed
    /// (a refused refresh leaves a confirmed one to its notifier).
    pub fn answered(&mut self, id: &DialogId, code: u16, notifier_tag: Option<&str>) -> Answered {
        let Some(entry) = self.dialogs.get(id) else { return Answered::Nothing };
        if entry.subscription.notifier_tag.is_some() {
            return Answered::Nothing;
        }
        match code {
            200..=299 => {
                let entry = self.dialogs.get_mut(id).expect("found above");
                entry.subscription.notifier_tag = notifier_tag.map(str::to_owned);
                if !entry.moved {
                    return Answered::Confirmed;
                }
                let moved = self.dialogs.remove(id).map(|e| e.subscription);
                moved.map_or(Answered::Nothing, |s| Answered::Moved(Box::new(s)))
            }
            300.. => {
                self.dialogs.remove(id);
                Answered::Refused
            }
            _ => Answered::Nothing,
        }
    }

    /// `presentity` moved: removes and returns its confirmed subscriptions;
    /// those still waiting for the notifier are marked moved.
    pub fn take(&mut self, presentity: &Aor) -> Vec<Subscription> {
        let mut confirmed = Vec::new();
        for id in self.dialogs.of(presentity) {
            match self.dialogs.get(&id) {
                Some(entry) if entry.subscription.notifier_tag.is_none() => {
                    self.dialogs.get_mut(&id).expect("found above").moved = true;
                }
                Some(_) => confirmed.extend(self.dialogs.remove(&id).map(|e| e.subscription)),
                None => {}
            }
        }
        confirmed
    }
}

crate::counters::counters! {
    WatcherCounters, "What the edge did for watchers, since start.",
    /// SUBSCRIBEs recorded (new dialogs and repeats).
    subscriptions_recorded,
    /// Subscriptions dropped, oldest first, to stay within capacity.
    subscriptions_evicted,
    /// SUBSCRIBEs with Expires: 0 (the watcher ending its subscription).
    unsubscribes,
    /// Subscriptions the notifier refused before confirming them.
    subscriptions_refused,
    /// NOTIFY transactions started because a watched client moved.
    notifies_sent,
    /// Of those, answered with a final response.
    notifies_answered,
    /// Of those, never answered before Timer F.
    notifies_timed_out,
    /// NOTIFYs not sent: the edge has no proxy address of the watcher's family.
    notifies_unroutable,
    /// Dialogs written to (or removed from) the store, so that a restarted
    /// daemon still tells their watchers.
    dialogs_saved,
}

/// The registry, kept by the state owner, and the queue of NOTIFYs to
/// send (the notifier drains it), where the watchers of a client that
/// moved go.
pub struct Watchers {
    registry: Registry,
    notifies: mpsc::UnboundedSender<Notify>,
    pub counters: Arc<WatcherCounters>,
}

impl Watchers {
    pub fn new(capacity: usize, notifies: mpsc::UnboundedSender<Notify>) -> Self {
        Self { registry: Registry::new(capacity), notifies, counters: Arc::default() }
    }

    /// Records a SUBSCRIBE being proxied; `moved` if its client moved
    /// since the SUBSCRIBE was routed.
    pub fn subscribed(&mut self, subscription: Subscription, expires: Option<u32>, moved: bool) {
        let recorded = self.registry.subscribed(subscription, expires, moved);
        match recorded {
            Recorded::Kept { evicted } => {
                bump(&self.counters.subscriptions_recorded);
                add(&self.counters.subscriptions_evicted, evicted as u64);
            }
            Recorded::Ended => bump(&self.counters.unsubscribes),
        }
    }

    pub fn answered(&mut self, id: &DialogId, code: u16, notifier_tag: Option<&str>) {
        let answered = self.registry.answered(id, code, notifier_tag);
        match answered {
            Answered::Refused => bump(&self.counters.subscriptions_refused),
            Answered::Moved(subscription) => self.tell(*subscription),
            Answered::Confirmed | Answered::Nothing => {}
        }
    }

    /// `aor` moved to another home server: its watchers are to be told.
    pub fn client_moved(&mut self, aor: &Aor) {
        let moved = self.registry.take(aor);
        moved.into_iter().for_each(|subscription| self.tell(subscription));
    }

    fn tell(&self, subscription: Subscription) {
        let (aor, call_id) = (&subscription.presentity, &subscription.id.call_id);
        tracing::info!(%aor, call_id, cseq = subscription.cseq, "watcher to be told its client moved");
        // The receiver lives as long as the daemon serves; after that
        // nobody is left to send the NOTIFY anyway.
        let _ = self.notifies.send(Notify::Deactivated(subscription));
    }

    /// Subscriptions kept now.
    pub fn kept(&self) -> usize {
        self.registry.len()
    }

    /// See `Registry::take_changes`.
    pub fn take_changes(&mut self) -> Changes {
        self.registry.take_changes()
    }

    /// See `Registry::retry`.
    pub fn retry(&mut self, changes: Changes) {
        self.registry.retry(changes);
    }

    /// See `Registry::restore`.
    pub fn restore(&mut self, stored: Vec<(String, String)>) -> (usize, usize) {
        self.registry.restore(stored)
    }
}

/// The highest CSeq RFC 3261 §8.1.1.5 allows. The edge never sees the
/// notifier's own NOTIFYs (no Record-Route), so it cannot count on from
/// theirs; a number no notifier has passed cannot be rejected as out of
/// order (§12.2.2), and the dialog ends with this request.
pub const NOTIFY_CSEQ: u32 = (1 << 31) - 1;

/// The NOTIFY ending `subscription`, sent by the edge at `sent_by`.
pub fn notify(subscription: &Subscription, sent_by: SocketAddr, branch: &str) -> Vec<u8> {
    crate::sip::Notify {
        target: &subscription.watcher_contact,
        sent_by,
        branch,
        route_set: &subscription.route_set,
        from: &subscription.presentity_header,
        from_tag: subscription.notifier_tag.as_deref().unwrap_or_default(),
        to: &subscription.watcher_header,
        call_id: &subscription.id.call_id,
        cseq: NOTIFY_CSEQ,
        contact: sent_by.to_string(),
        event: &subscription.event,
        subscription_state: "terminated;reason=deactivated",
        body: None,
    }
    .bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn subscribe(call_id: &str, from_tag: &str, extra: &str) -> Vec<u8> {
        format!(
            "SUBSCRIBE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK1\r\n\
             From: \"Alice\" <sip:alice@example.net>;tag={from_tag}\r\nTo: <sip:bob@example.net>\r\n\
             Call-ID: {call_id}\r\nCSeq: 7 SUBSCRIBE\r\nContact: <sip:alice@198.51.100.7:5070>\r\n\
             Event: presence;id=4\r\n{extra}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn bob() -> Aor {
        Aor::from_uri("sip:bob@example.net", "To").unwrap()
    }

    fn source() -> SocketAddr {
        "198.51.100.7:5070".parse().unwrap()
    }

    fn parsed(call_id: &str, from_tag: &str, extra: &str) -> (Subscription, Option<u32>) {
        let bytes = subscribe(call_id, from_tag, extra);
        let message = Message::parse(&bytes).unwrap();
        Subscription::from_request(&message, bob(), source()).unwrap()
    }

    /// Behind a NAT the SUBSCRIBE's source is not its Contact: the NOTIFY
    /// names the Contact (its Request-URI) and goes back where the
    /// SUBSCRIBE came from (the only address known to reach the watcher).
    #[test]
    fn the_notify_names_the_contact_and_goes_back_to_the_source() {
        let bytes = subscribe("c9", "w9", "");
        let message = Message::parse(&bytes).unwrap();
        let nat: SocketAddr = "203.0.113.50:40000".parse().unwrap();
        let (mut subscription, _) = Subscription::from_request(&message, bob(), nat).unwrap();
        assert_eq!(subscription.reply_to, nat);
        assert_eq!(subscription.watcher_contact, "sip:alice@198.51.100.7:5070");
        subscription.notifier_tag = Some("n9".into());
        let text = String::from_utf8(notify(&subscription, "192.0.2.1:5060".parse().unwrap(), "z9hG4bK-x")).unwrap();
        assert!(text.starts_with("NOTIFY sip:alice@198.51.100.7:5070 SIP/2.0\r\n"), "{text}");
    }

    fn confirmed(registry: &mut Registry, call_id: &str) -> DialogId {
        let (subscription, expires) = parsed(call_id, "w1", "");
        let id = subscription.id.clone();
        registry.subscribed(subscription, expires, false);
        assert_eq!(registry.answered(&id, 200, Some("n1")), Answered::Confirmed);
        id
    }

    #[test]
    fn a_subscribe_yields_the_dialog_the_notify_needs() {
        let (subscription, expires) = parsed("c1@x", "w1", "Expires: 600\r\n");
        assert_eq!(expires, Some(600));
        assert_eq!(subscription.id, DialogId { call_id: "c1@x".into(), watcher_tag: "w1".into() });
        assert_eq!(subscription.watcher_header, "\"Alice\" <sip:alice@example.net>;tag=w1");
        assert_eq!(subscription.presentity_header, "<sip:bob@example.net>");
        assert_eq!(subscription.watcher_contact, "sip:alice@198.51.100.7:5070");
        assert_eq!((subscription.event.as_str(), subscription.cseq), ("presence;id=4", 7));
        assert!(subscription.route_set.is_empty());
        let routed = "Record-Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\r\nRecord-Route: <sip:p3;lr>\r\n";
        let (subscription, _) = parsed("c1@x", "w1", routed);
        assert_eq!(subscription.route_set, ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>", "<sip:p3;lr>"]);
    }

    #[test]
    fn a_subscribe_without_what_a_notify_needs_is_named() {
        for (missing, name) in [("Contact", "Contact"), ("Event", "Event")] {
            let text = String::from_utf8(subscribe("c", "w", "")).unwrap();
            let line = text.lines().find(|l| l.starts_with(missing)).unwrap().to_owned() + "\r\n";
            let bytes = text.replace(&line, "").into_bytes();
            let error = Subscription::from_request(&Message::parse(&bytes).unwrap(), bob(), source()).unwrap_err();
            assert_eq!(error, ParseError::Missing(name));
        }
        let bytes = String::from_utf8(subscribe("c", "w", "")).unwrap().replace(";tag=w", "").into_bytes();
        let error = Subscription::from_request(&Message::parse(&bytes).unwrap(), bob(), source()).unwrap_err();
        assert_eq!(error, ParseError::Missing("From tag"));
        let huge = format!("Event: presence;x={}\r\n", "a".repeat(MAX_FIELD));
        let bytes = String::from_utf8(subscribe("c", "w", "")).unwrap().replace("Event: presence;id=4\r\n", &huge);
        let error = Subscription::from_request(&Message::parse(bytes.as_bytes()).unwrap(), bob(), source());
        assert!(matches!(error, Err(ParseError::Malformed(_))), "a subscription's size is bounded: {error:?}");
    }

    #[test]
    fn a_move_takes_confirmed_dialogs_and_marks_pending_ones() {
        let mut registry = Registry::new(10);
        let id = confirmed(&mut registry, "c1");
        let (pending, _) = parsed("c2", "w2", "");
        let pending_id = pending.id.clone();
        registry.subscribed(pending, None, false);
        let taken = registry.take(&bob());
        assert_eq!(taken.len(), 1);
        assert_eq!((&taken[0].id, taken[0].notifier_tag.as_deref()), (&id, Some("n1")));
        assert_eq!(registry.len(), 1, "the pending one waits for its answer");
        assert!(registry.take(&bob()).is_empty());
        let Answered::Moved(late) = registry.answered(&pending_id, 202, Some("n2")) else { panic!("not told") };
        assert_eq!((late.id, late.notifier_tag.as_deref()), (pending_id, Some("n2")), "confirmed after the move");
        assert!(registry.is_empty());

        let (routed_before_the_move, _) = parsed("c3", "w3", "");
        let id = routed_before_the_move.id.clone();
        registry.subscribed(routed_before_the_move, None, true);
        assert!(matches!(registry.answered(&id, 200, Some("n3")), Answered::Moved(_)));
    }

    #[test]
    fn unsubscribe_refusal_and_repeats() {
        let mut registry = Registry::new(10);
        let id = confirmed(&mut registry, "c1");
        let (repeat, _) = parsed("c1", "w1", "");
        assert_eq!(registry.subscribed(repeat, Some(300), false), Recorded::Kept { evicted: 0 });
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.take(&bob())[0].notifier_tag.as_deref(), Some("n1"), "a repeat keeps the tag");

        let id2 = confirmed(&mut registry, "c2");
        assert_eq!(registry.answered(&id2, 489, None), Answered::Nothing);
        assert_eq!(registry.len(), 1, "a refused refresh leaves a confirmed dialog");
        let (unsubscribe, expires) = parsed("c2", "w1", "Expires: 0\r\n");
        assert_eq!(registry.subscribed(unsubscribe, expires, false), Recorded::Ended);
        assert!(registry.is_empty());

        let (pending, _) = parsed("c3", "w1", "");
        let pending_id = pending.id.clone();
        registry.subscribed(pending, None, false);
        assert_eq!(registry.answered(&pending_id, 100, None), Answered::Nothing);
        assert_eq!(registry.answered(&pending_id, 489, None), Answered::Refused);
        assert!(registry.is_empty(), "a refused first SUBSCRIBE leaves nothing");
        assert_eq!(registry.answered(&id, 200, Some("late")), Answered::Nothing);
        assert!(registry.is_empty(), "answers for unknown dialogs are ignored");
    }

    /// A store that keeps what `take_changes` hands it, as the daemon's does.
    fn saved(registry: &mut Registry, store: &mut BTreeMap<String, String>) {
        let changes = registry.take_changes();
        store.extend(changes.kept);
        changes.removed.iter().for_each(|key| drop(store.remove(key)));
    }

    #[test]
    fn dialogs_read_back_from_the_store_are_told_when_their_client_moves() {
        let (mut registry, mut store) = (Registry::new(10), BTreeMap::new());
        let id = confirmed(&mut registry, "c1");
        let (pending, _) = parsed("c2", "w2", "");
        let pending_id = pending.id.clone();
        registry.subscribed(pending, None, false);
        let (ended, _) = parsed("c3", "w3", "");
        registry.subscribed(ended, None, false);
        let (unsubscribe, expires) = parsed("c3", "w3", "Expires: 0\r\n");
        registry.subscribed(unsubscribe, expires, false);
        saved(&mut registry, &mut store);
        assert_eq!(store.len(), 2, "the unsubscribed dialog is not kept: {store:?}");
        assert!(registry.take_changes().is_empty(), "nothing changed since");

        let mut restarted = Registry::new(10);
        assert_eq!(restarted.restore(store.clone().into_iter().collect()), (2, 0));
        assert!(restarted.take_changes().is_empty(), "what was read back need not be written again");
        let taken = restarted.take(&bob());
        assert_eq!((taken.len(), &taken[0].id, taken[0].notifier_tag.as_deref()), (1, &id, Some("n1")));
        assert!(matches!(restarted.answered(&pending_id, 200, Some("n2")), Answered::Moved(_)), "the pending one");
        saved(&mut restarted, &mut store);
        assert!(store.is_empty(), "both told, both gone from the store: {store:?}");
    }

    #[test]
    fn a_restore_keeps_the_newest_within_capacity_and_skips_what_does_not_read() {
        let (mut registry, mut store) = (Registry::new(10), BTreeMap::new());
        for call_id in ["c1", "c2", "c3"] {
            confirmed(&mut registry, call_id);
        }
        saved(&mut registry, &mut store);
        store.insert("junk\nw".into(), "{not a record".into());
        let mut smaller = Registry::new(2);
        assert_eq!(smaller.restore(store.clone().into_iter().collect()), (2, 2));
        let kept: Vec<String> = smaller.take(&bob()).into_iter().map(|s| s.id.call_id).collect();
        assert_eq!(kept.iter().map(String::as_str).collect::<BTreeSet<_>>(), BTreeSet::from(["c2", "c3"]));
        let (fourth, _) = parsed("c4", "w1", "");
        smaller.subscribed(fourth, None, false);
        saved(&mut smaller, &mut store);
        assert!(!store.contains_key("c1\nw1"), "the oldest, dropped, left the store: {store:?}");
        assert!(!store.contains_key("junk\nw"), "what did not read back left it too: {store:?}");
    }

    #[test]
    fn a_save_that_failed_still_removes_what_did_not_read_back_when_retried() {
        let mut store = BTreeMap::from([("junk\nw".to_owned(), "{not a record".to_owned())]);
        let mut registry = Registry::new(10);
        assert_eq!(registry.restore(store.clone().into_iter().collect()), (0, 1));
        confirmed(&mut registry, "c1");
        let failed = registry.take_changes();
        registry.retry(failed);
        saved(&mut registry, &mut store);
        assert!(!store.contains_key("junk\nw"), "removed with the retried save: {store:?}");
        assert!(store.contains_key("c1\nw1"), "{store:?}");
    }

    #[test]
    fn a_full_registry_evicts_the_oldest() {
        let mut registry = Registry::new(2);
        confirmed(&mut registry, "c1");
        confirmed(&mut registry, "c2");
        let (third, _) = parsed("c3", "w1", "");
        assert_eq!(registry.subscribed(third, None, false), Recorded::Kept { evicted: 1 });
        let (fourth, _) = parsed("c2", "w1", "");
        let repeat = registry.subscribed(fourth, None, false);
        assert_eq!(repeat, Recorded::Kept { evicted: 0 }, "a repeat takes its own place");
        let left: Vec<String> = registry.dialogs.ids().into_iter().map(|id| id.call_id).collect();
        assert_eq!(left.len(), 2);
        assert!(!left.contains(&"c1".to_owned()), "{left:?}");
    }

    #[test]
    fn the_notify_ends_the_dialog_as_the_watcher_knows_it() {
        let (mut subscription, _) = parsed("c1@x", "w1", "Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n");
        subscription.notifier_tag = Some("n1".into());
        let bytes = notify(&subscription, "192.0.2.1:5060".parse().unwrap(), "z9hG4bK-rdr-notify-1");
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.method(), Some("NOTIFY"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("NOTIFY sip:alice@198.51.100.7:5070 SIP/2.0\r\n"), "{text}");
        let value = |kind| message.value(kind).unwrap().into_owned();
        assert_eq!(value(HeaderKind::From), "<sip:bob@example.net>;tag=n1");
        assert_eq!(value(HeaderKind::To), "\"Alice\" <sip:alice@example.net>;tag=w1");
        assert_eq!(value(HeaderKind::CallId), "c1@x");
        assert_eq!(value(HeaderKind::Event), "presence;id=4");
        assert_eq!(message.cseq().unwrap(), (NOTIFY_CSEQ, "NOTIFY".to_owned()));
        assert!(text.contains("\r\nSubscription-State: terminated;reason=deactivated\r\n"), "{text}");
        assert!(text.contains("\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-rdr-notify-1;rport\r\n"), "{text}");
        assert!(text.contains("\r\nRoute: <sip:p1;lr>\r\nRoute: <sip:p2;lr>\r\n"), "the route set: {text}");
    }
}
