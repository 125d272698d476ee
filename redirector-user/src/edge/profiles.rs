//! Configuration documents over SIP: the `ua-profile` event package (RFC
//! 6080, on RFC 6665's SUBSCRIBE / NOTIFY). A client subscribes at the
//! service address to its own user profile; the edge answers `200` and
//! sends a NOTIFY carrying the client's document (the one `GET /config`
//! serves, rendered by the state owner), and another whenever that
//! document changes (the client moved, its home's address changed) for as
//! long as the subscription lasts. `Expires: 0` is a one-time fetch: `200`,
//! then one NOTIFY with the document that ends the subscription.
//!
//! Who may subscribe (the access rule): the profile's AOR is the `To` URI;
//! the `From` URI must name the same AOR, the SUBSCRIBE must come straight
//! from the client (one Via), and its source socket must be one the fast
//! path has installed for that AOR (a first contact of that AOR, a
//! REGISTER say, came from it). Anything else gets `403`. A refresh or an
//! unsubscribe in the dialog (its `To` tag is ours) is the subscriber's by
//! the dialog's identity (Call-ID and both tags), wherever it comes from:
//! its address may have changed, or its fast-path entry idled out.
//!
//! Sans-IO: the owner hands in each request with whether its source is
//! installed for its AOR, the AOR's document and the time; this returns
//! the response and the NOTIFYs to send (the notifier retransmits them).

use std::{
    collections::BTreeSet,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    counters::{add, bump},
    edge::{
        dialogs::{self, Dialog, Dialogs, MAX_FIELD},
        notifier::Notify,
    },
    sip::{
        Aor, HeaderKind, Message, NameAddr, ParseError,
        response::{self, Basis},
        split_list, tag, unfold, without_tag,
    },
};

/// The event package.
pub const EVENT: &str = "ua-profile";

/// What documents are served with, over SIP as over HTTP.
pub const CONTENT_TYPE: &str = "application/xml; charset=utf-8";

/// A rendered document and its entity tag (quoted, as `ETag` carries it):
/// the tag changes exactly when the document does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub body: String,
    pub etag: String,
}

/// Whether a SUBSCRIBE is for the `ua-profile` package (the Event
/// header's type, before any parameter).
pub fn is_profile_event(message: &Message<'_>) -> bool {
    message.value(HeaderKind::Event).is_some_and(|event| package(&event).eq_ignore_ascii_case(EVENT))
}

fn package(event: &str) -> &str {
    event.split(';').next().unwrap_or_default().trim()
}

/// An Event header parameter's value, unquoted.
fn event_param<'a>(event: &'a str, name: &str) -> Option<&'a str> {
    event.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().trim_matches('"'))
    })
}

/// A subscription's dialog as the subscriber sees it before our tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProfileId {
    pub call_id: String,
    /// The subscriber's (From) tag.
    pub subscriber_tag: String,
}

/// A `ua-profile` SUBSCRIBE as first contact read it, for the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRequest {
    /// What a response copies, its top Via stamped with the source.
    pub basis: Basis<'static>,
    /// Where the SUBSCRIBE came from (and its NOTIFYs go).
    pub source: SocketAddr,
    /// The service address it arrived at: our Contact, where refreshes come.
    pub local: SocketAddr,
    /// Straight from its client (one Via value).
    pub direct: bool,
    /// The profile's AOR (the `To` URI).
    pub aor: Aor,
    /// The subscriber's AOR (the `From` URI).
    pub from_aor: Aor,
    pub id: ProfileId,
    /// Our tag, in a refresh or unsubscribe within the dialog.
    pub to_tag: Option<String>,
    /// The `From` value, tag included: the NOTIFY's To.
    pub subscriber_header: String,
    /// The `To` value without a tag: the NOTIFY's From.
    pub profile_header: String,
    /// The subscriber's Contact URI: the NOTIFY's Request-URI.
    pub contact: String,
    /// The Event header (package and parameters), echoed in the NOTIFY.
    pub event: String,
    /// Record-Route values in order: the NOTIFY's Route set.
    pub route_set: Vec<String>,
    pub cseq: u32,
    pub expires: Option<u32>,
}

/// Why an initial SUBSCRIBE (or its repeat) is refused 403, if it is:
/// only a client's own profile, straight from it, from a socket the fast
/// path has installed for its AOR.
fn refusal(request: &ProfileRequest, authorized: bool) -> Option<&'static str> {
    if request.from_aor != request.aor {
        Some("Only Your Own Profile")
    } else if !request.direct {
        Some("Only Straight From The Client")
    } else if !authorized {
        Some("Register From This Address First")
    } else {
        None
    }
}

/// Why a `ua-profile` SUBSCRIBE is answered without the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// `400`, the reason naming what is wrong.
    Malformed(String),
    /// `406`: its Accept names no type the documents are.
    NotAcceptable,
    /// `404`: a profile type other than `user` (device and local-network
    /// profiles are not served here).
    NotUser,
}

impl ProfileRequest {
    /// Reads a `ua-profile` SUBSCRIBE that arrived at `local` from `source`.
    pub fn parse(message: &Message<'_>, source: SocketAddr, local: SocketAddr) -> Result<Self, Unreadable> {
        let malformed = |error: ParseError| Unreadable::Malformed(error.to_string());
        let header =
            |kind, name| message.value(kind).map(|v| unfold(&v).trim().to_owned()).ok_or(ParseError::Missing(name));
        let from = header(HeaderKind::From, "From").map_err(malformed)?;
        let to = header(HeaderKind::To, "To").map_err(malformed)?;
        let call_id = header(HeaderKind::CallId, "Call-ID").map_err(malformed)?;
        let contact = header(HeaderKind::Contact, "Contact").map_err(malformed)?;
        let event = header(HeaderKind::Event, "Event").map_err(malformed)?;
        let (cseq, method) = message.cseq().map_err(malformed)?;
        if method != "SUBSCRIBE" {
            return Err(malformed(ParseError::CSeqMethod));
        }
        let subscriber_tag = tag(&from).ok_or(ParseError::Missing("From tag")).map_err(malformed)?.to_owned();
        let from_aor =
            Aor::from_uri(NameAddr::parse(&from, "From").map_err(malformed)?.uri, "From").map_err(malformed)?;
        let aor = Aor::from_uri(NameAddr::parse(&to, "To").map_err(malformed)?.uri, "To").map_err(malformed)?;
        let contact = NameAddr::parse(&contact, "Contact").map_err(malformed)?.uri.to_owned();
        let expires = match message.value(HeaderKind::Expires) {
            None => None,
            Some(value) => Some(value.trim().parse().map_err(|_| malformed(ParseError::Malformed("Expires")))?),
        };
        if event_param(&event, "profile-type").is_some_and(|kind| !kind.eq_ignore_ascii_case("user")) {
            return Err(Unreadable::NotUser);
        }
        if !accepts_documents(message) {
            return Err(Unreadable::NotAcceptable);
        }
        let route_set: Vec<String> = message.record_route_set();
        let mut basis = Basis::of(message).into_owned();
        let direct = basis.vias.len() == 1;
        basis.stamp_top_via(source);
        let request = Self {
            basis,
            source,
            local,
            direct,
            aor,
            from_aor,
            id: ProfileId { call_id, subscriber_tag },
            to_tag: tag(&to).map(str::to_owned),
            subscriber_header: from,
            profile_header: without_tag(&to),
            contact,
            event,
            route_set,
            cseq,
            expires,
        };
        let fields = [&request.id.call_id, &request.subscriber_header, &request.profile_header, &request.contact];
        let too_long =
            fields.into_iter().chain([&request.event]).chain(&request.route_set).any(|f| f.len() > MAX_FIELD);
        if too_long {
            return Err(malformed(ParseError::Malformed("SUBSCRIBE (a header over 1024 bytes)")));
        }
        Ok(request)
    }

    /// Where its response goes.
    pub fn reply_address(&self) -> SocketAddr {
        self.basis.response_address(self.source)
    }
}

/// Whether the request's Accept (if any) takes what documents are: an
/// absent Accept means the package's default (RFC 6665 §8.3), ours.
fn accepts_documents(message: &Message<'_>) -> bool {
    let mut accepts = message.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("Accept")).peekable();
    if accepts.peek().is_none() {
        return true;
    }
    accepts.flat_map(|h| split_list(h.value).map(|v| unfold(v).into_owned())).any(|range| {
        let range = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        matches!(range.as_str(), "application/xml" | "application/*" | "*/*")
    })
}

/// One subscription: what its NOTIFYs need, and how far they got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSubscription {
    pub id: ProfileId,
    pub aor: Aor,
    /// Our (To) tag.
    pub tag: String,
    pub profile_header: String,
    pub subscriber_header: String,
    pub contact: String,
    pub event: String,
    pub route_set: Vec<String>,
    /// Where its NOTIFYs go: where its last SUBSCRIBE came from.
    pub reply_to: SocketAddr,
    /// The service address it subscribed at: our Contact.
    pub service: SocketAddr,
    /// The subscriber's last SUBSCRIBE CSeq.
    pub cseq: u32,
    /// Our last NOTIFY's CSeq.
    pub notify_cseq: u32,
    /// When it ends unless refreshed, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The entity tag of the document last sent.
    pub etag: Option<String>,
}

impl Dialog for ProfileSubscription {
    type Id = ProfileId;

    fn id(&self) -> &ProfileId {
        &self.id
    }

    fn client(&self) -> &Aor {
        &self.aor
    }

    fn key(id: &ProfileId) -> String {
        format!("{}\n{}", id.call_id, id.subscriber_tag)
    }
}

/// A NOTIFY's Subscription-State.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Active for this many more seconds.
    Active(u64),
    /// Ended: the subscriber asked (a fetch, an unsubscribe) or it expired.
    Timeout,
    /// Ended: the AOR has no assignment any more.
    NoResource,
}

impl State {
    fn header(self) -> String {
        match self {
            State::Active(seconds) => format!("active;expires={seconds}"),
            State::Timeout => "terminated;reason=timeout".into(),
            State::NoResource => "terminated;reason=noresource".into(),
        }
    }
}

/// A NOTIFY to send in a subscription's dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileNotify {
    /// The dialog as of this NOTIFY (its `notify_cseq` is this one's).
    pub subscription: ProfileSubscription,
    pub state: State,
    /// The document, if the NOTIFY carries one.
    pub body: Option<String>,
}

impl ProfileNotify {
    /// The NOTIFY, sent by the edge at `sent_by` (its Via; answers come
    /// back there) in transaction `branch`.
    pub fn bytes(&self, sent_by: SocketAddr, branch: &str) -> Vec<u8> {
        let s = &self.subscription;
        crate::sip::Notify {
            target: &s.contact,
            sent_by,
            branch,
            route_set: &s.route_set,
            from: &s.profile_header,
            from_tag: &s.tag,
            to: &s.subscriber_header,
            call_id: &s.id.call_id,
            cseq: s.notify_cseq,
            contact: s.service.to_string(),
            event: &s.event,
            subscription_state: &self.state.header(),
            body: self.body.as_deref().map(|body| (CONTENT_TYPE, body)),
        }
        .bytes()
    }

    /// Whether this NOTIFY ends its subscription.
    pub fn ends(&self) -> bool {
        !matches!(self.state, State::Active(_))
    }
}

/// How long subscriptions last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Granted when a SUBSCRIBE has no Expires, and the most ever granted.
    pub max_expires: u32,
    /// Shorter (non-zero) ones get `423` with this as `Min-Expires`.
    pub min_expires: u32,
    /// Subscriptions kept at most (the oldest go first).
    pub capacity: usize,
}

/// The owner's answer to one SUBSCRIBE: the response, and the NOTIFY to
/// start once the response is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileAnswer {
    pub to: SocketAddr,
    pub response: Vec<u8>,
    pub notify: Option<ProfileNotify>,
}

crate::counters::counters! {
    ProfileCounters, "What the edge did with ua-profile subscriptions, since start.",
    /// Subscriptions made (an initial SUBSCRIBE answered 200).
    subscribed,
    /// One-time fetches (an initial SUBSCRIBE with Expires: 0).
    fetched,
    /// Refreshes within a dialog.
    refreshed,
    /// Unsubscribes within a dialog (Expires: 0).
    unsubscribed,
    /// SUBSCRIBEs repeated (the same CSeq), answered again without a NOTIFY.
    repeated,
    /// 403: not the client's own profile, not straight from it, or not
    /// from a socket the fast path has for its AOR.
    forbidden,
    /// 400: a malformed ua-profile SUBSCRIBE.
    malformed,
    /// 406: its Accept takes no XML.
    not_acceptable,
    /// 404: a profile type other than user, or no document for the AOR.
    not_found,
    /// 481: a refresh for a subscription that does not exist (any more).
    no_subscription,
    /// 423: a subscription shorter than min_expires.
    too_brief,
    /// Subscriptions ended because they were not refreshed in time.
    expired,
    /// Subscriptions ended because their AOR lost its assignment.
    ended_no_resource,
    /// Subscriptions dropped, oldest first, to stay within capacity.
    evicted,
    /// NOTIFYs sent because a subscribed document changed.
    changes_notified,
    /// NOTIFY transactions started (every kind).
    notifies_sent,
    /// Of those, answered with a 2xx.
    notifies_answered,
    /// Of those, refused (a final non-2xx): the subscription ends.
    notifies_refused,
    /// Of those, never answered before Timer F (the subscription stays).
    notifies_timed_out,
    /// Of those, replaced by a newer NOTIFY of the same dialog before an answer.
    notifies_superseded,
    /// NOTIFYs not sent: the edge has no proxy address of the subscriber's family.
    notifies_unroutable,
    /// Subscriptions written to (or removed from) the store.
    dialogs_saved,
}

/// The subscriptions (kept by the state owner), and where their NOTIFYs
/// go (the notifier).
pub struct Profiles {
    dialogs: Dialogs<ProfileSubscription>,
    /// (expires_at, id), earliest first; entries of subscriptions dropped
    /// for capacity are skipped when met.
    expiring: BTreeSet<(u64, ProfileId)>,
    settings: Settings,
    /// Our dialog tags are random: with the subscriber's Call-ID and tag,
    /// they are what lets a refresh in, from wherever it comes.
    tags: RandomState,
    issued: u64,
    notifies: mpsc::UnboundedSender<Notify>,
    pub counters: Arc<ProfileCounters>,
}

pub type Changes = dialogs::Changes<ProfileId>;

/// The To tag of a refusal: stateless, the same for a repeated SUBSCRIBE.
fn refusal_tag(id: &ProfileId) -> String {
    format!("rdrp{:012x}", xxh3_64(format!("{}\n{}", id.call_id, id.subscriber_tag).as_bytes()) & 0xffff_ffff_ffff)
}

impl Profiles {
    pub fn new(settings: Settings, notifies: mpsc::UnboundedSender<Notify>) -> Self {
        let dialogs = Dialogs::new(settings.capacity);
        let (tags, issued) = (RandomState::new(), 0);
        Self { dialogs, expiring: BTreeSet::new(), settings, tags, issued, notifies, counters: Arc::default() }
    }

    /// Subscriptions kept now.
    pub fn kept(&self) -> usize {
        self.dialogs.len()
    }

    /// Whether `aor` has subscriptions.
    pub fn has(&self, aor: &Aor) -> bool {
        !self.dialogs.of(aor).is_empty()
    }

    /// Every AOR with subscriptions.
    pub fn subscribed_aors(&self) -> Vec<Aor> {
        let mut aors: Vec<Aor> =
            self.dialogs.ids().iter().filter_map(|id| self.dialogs.get(id).map(|s| s.aor.clone())).collect();
        aors.sort();
        aors.dedup();
        aors
    }

    /// Answers a SUBSCRIBE. `authorized`: its source is a socket the fast
    /// path has installed for its AOR; `document`: the AOR's document now
    /// (`None` without an assignment); `now` in seconds since the Unix epoch.
    pub fn subscribe(
        &mut self,
        request: &ProfileRequest,
        authorized: bool,
        document: Option<&Document>,
        now: u64,
    ) -> ProfileAnswer {
        // An initial SUBSCRIBE, or its repeat (answered with our tag), only
        // from whom the rule allows.
        if let Some(reason) = request.to_tag.is_none().then(|| refusal(request, authorized)).flatten() {
            bump(&self.counters.forbidden);
            return self.reject(request, 403, reason, &[]);
        }
        let existing = self.dialogs.get(&request.id).cloned();
        match (&request.to_tag, existing) {
            (Some(to_tag), Some(existing)) if *to_tag == existing.tag => {
                self.in_dialog(request, existing, document, now)
            }
            (Some(_), _) => {
                bump(&self.counters.no_subscription);
                self.reject(request, 481, "Subscription Does Not Exist", &[])
            }
            (None, Some(existing)) if existing.cseq == request.cseq => self.repeat(request, &existing, now),
            (None, existing) => self.initial(request, document, existing, now),
        }
    }

    fn initial(
        &mut self,
        request: &ProfileRequest,
        document: Option<&Document>,
        existing: Option<ProfileSubscription>,
        now: u64,
    ) -> ProfileAnswer {
        let Some(document) = document else {
            bump(&self.counters.not_found);
            return self.reject(request, 404, "No Document For This AOR", &[]);
        };
        let Some(granted) = self.granted(request) else {
            bump(&self.counters.too_brief);
            return self.too_brief(request);
        };
        // A new SUBSCRIBE of a dialog we keep stays in it.
        let tag = match &existing {
            Some(existing) => existing.tag.clone(),
            None => {
                self.issued += 1;
                format!("rdrp{:016x}", self.tags.hash_one((&request.id, self.issued)))
            }
        };
        let mut subscription = ProfileSubscription {
            id: request.id.clone(),
            aor: request.aor.clone(),
            tag,
            profile_header: request.profile_header.clone(),
            subscriber_header: request.subscriber_header.clone(),
            contact: request.contact.clone(),
            event: request.event.clone(),
            route_set: request.route_set.clone(),
            reply_to: request.source,
            service: request.local,
            cseq: request.cseq,
            notify_cseq: existing.map_or(1, |e| e.notify_cseq + 1),
            expires_at: now + u64::from(granted),
            etag: Some(document.etag.clone()),
        };
        let response = self.ok(request, &subscription.tag, granted);
        if granted == 0 {
            bump(&self.counters.fetched);
            self.forget(&request.id);
            subscription.expires_at = now;
            return self.answer(request, response, subscription, State::Timeout, Some(document));
        }
        bump(&self.counters.subscribed);
        self.keep(subscription.clone());
        self.answer(request, response, subscription, State::Active(u64::from(granted)), Some(document))
    }

    /// A refresh or an unsubscribe in an existing dialog.
    fn in_dialog(
        &mut self,
        request: &ProfileRequest,
        existing: ProfileSubscription,
        document: Option<&Document>,
        now: u64,
    ) -> ProfileAnswer {
        if request.cseq == existing.cseq {
            return self.repeat(request, &existing, now);
        }
        if request.cseq < existing.cseq {
            return self.reject(request, 500, "CSeq Out Of Order", &[]);
        }
        if request.from_aor != existing.aor {
            bump(&self.counters.forbidden);
            return self.reject(request, 403, "Only Your Own Profile", &[]);
        }
        let Some(granted) = self.granted(request) else {
            bump(&self.counters.too_brief);
            return self.too_brief(request);
        };
        // A target refresh: the Contact may change, the route set does not
        // (RFC 3261 §12.2.1.2).
        let mut subscription = ProfileSubscription {
            contact: request.contact.clone(),
            reply_to: request.source,
            cseq: request.cseq,
            notify_cseq: existing.notify_cseq + 1,
            expires_at: now + u64::from(granted),
            etag: document.map(|d| d.etag.clone()),
            ..existing
        };
        let response = self.ok(request, &subscription.tag, granted);
        let state = match document {
            None => State::NoResource,
            Some(_) if granted == 0 => State::Timeout,
            Some(_) => State::Active(u64::from(granted)),
        };
        if state == State::Active(u64::from(granted)) {
            bump(&self.counters.refreshed);
            self.keep(subscription.clone());
        } else {
            if document.is_none() {
                bump(&self.counters.ended_no_resource);
            } else {
                bump(&self.counters.unsubscribed);
            }
            self.forget(&request.id);
            subscription.expires_at = now;
        }
        self.answer(request, response, subscription, state, document)
    }

    /// The same SUBSCRIBE again (a retransmission): the same answer, no NOTIFY.
    fn repeat(&self, request: &ProfileRequest, existing: &ProfileSubscription, now: u64) -> ProfileAnswer {
        bump(&self.counters.repeated);
        let left = u32::try_from(existing.expires_at.saturating_sub(now)).unwrap_or(u32::MAX);
        let response = self.ok(request, &existing.tag, left);
        ProfileAnswer { to: request.reply_address(), response, notify: None }
    }

    /// What a SUBSCRIBE is granted: its Expires (the longest we grant if
    /// absent or longer), `None` for a non-zero one that is too brief.
    fn granted(&self, request: &ProfileRequest) -> Option<u32> {
        match request.expires {
            Some(0) => Some(0),
            Some(asked) if asked < self.settings.min_expires => None,
            Some(asked) => Some(asked.min(self.settings.max_expires)),
            None => Some(self.settings.max_expires),
        }
    }

    fn keep(&mut self, subscription: ProfileSubscription) {
        if let Some(old) = self.dialogs.get(&subscription.id) {
            self.expiring.remove(&(old.expires_at, subscription.id.clone()));
        }
        self.expiring.insert((subscription.expires_at, subscription.id.clone()));
        let evicted = self.dialogs.insert(subscription);
        add(&self.counters.evicted, evicted as u64);
    }

    /// Removes a subscription, and its place in the expiry order.
    fn forget(&mut self, id: &ProfileId) -> Option<ProfileSubscription> {
        let subscription = self.dialogs.remove(id)?;
        self.expiring.remove(&(subscription.expires_at, id.clone()));
        Some(subscription)
    }

    fn answer(
        &mut self,
        request: &ProfileRequest,
        response: Vec<u8>,
        subscription: ProfileSubscription,
        state: State,
        document: Option<&Document>,
    ) -> ProfileAnswer {
        let notify = ProfileNotify { subscription, state, body: document.map(|d| d.body.clone()) };
        ProfileAnswer { to: request.reply_address(), response, notify: Some(notify) }
    }

    fn ok(&self, request: &ProfileRequest, tag: &str, granted: u32) -> Vec<u8> {
        let extra = [("Expires", granted.to_string()), ("Contact", format!("<sip:{}>", request.local))];
        response::build(&request.basis, 200, "OK", tag, &extra)
    }

    fn too_brief(&self, request: &ProfileRequest) -> ProfileAnswer {
        let min = [("Min-Expires", self.settings.min_expires.to_string())];
        self.reject(request, 423, "Interval Too Brief", &min)
    }

    fn reject(&self, request: &ProfileRequest, code: u16, reason: &str, extra: &[(&str, String)]) -> ProfileAnswer {
        let response = response::build(&request.basis, code, reason, &refusal_tag(&request.id), extra);
        ProfileAnswer { to: request.reply_address(), response, notify: None }
    }

    /// `aor`'s document is now `document` (`None`: it has no assignment):
    /// each of its subscriptions whose document differs is notified, or
    /// ended without one.
    pub fn changed(&mut self, aor: &Aor, document: Option<&Document>, now: u64) {
        for id in self.dialogs.of(aor) {
            let Some(subscription) = self.dialogs.get(&id) else { continue };
            let notify = match document {
                Some(document) if subscription.etag.as_deref() == Some(document.etag.as_str()) => continue,
                Some(document) => {
                    let subscription = self.dialogs.get_mut(&id).expect("found above");
                    subscription.notify_cseq += 1;
                    subscription.etag = Some(document.etag.clone());
                    bump(&self.counters.changes_notified);
                    let left = subscription.expires_at.saturating_sub(now);
                    ProfileNotify {
                        subscription: subscription.clone(),
                        state: State::Active(left),
                        body: Some(document.body.clone()),
                    }
                }
                None => {
                    let mut subscription = self.forget(&id).expect("found above");
                    subscription.notify_cseq += 1;
                    bump(&self.counters.ended_no_resource);
                    ProfileNotify { subscription, state: State::NoResource, body: None }
                }
            };
            self.send(notify);
        }
    }

    /// Ends the subscriptions not refreshed by `now`, each with a NOTIFY.
    pub fn expire(&mut self, now: u64) {
        while let Some((at, id)) = self.expiring.first().cloned() {
            if at > now {
                break;
            }
            self.expiring.pop_first();
            if self.dialogs.get(&id).is_none_or(|s| s.expires_at != at) {
                continue;
            }
            let mut subscription = self.forget(&id).expect("found above");
            subscription.notify_cseq += 1;
            bump(&self.counters.expired);
            tracing::debug!(aor = %subscription.aor, call_id = subscription.id.call_id, "ua-profile subscription expired");
            self.send(ProfileNotify { subscription, state: State::Timeout, body: None });
        }
    }

    /// A NOTIFY of the subscription was refused: it ends (RFC 6665 §4.2.2).
    pub fn refused(&mut self, id: &ProfileId) {
        if let Some(subscription) = self.forget(id) {
            tracing::debug!(aor = %subscription.aor, call_id = id.call_id, "ua-profile subscription ended by its subscriber");
        }
    }

    fn send(&self, notify: ProfileNotify) {
        // The receiver lives as long as the daemon serves.
        let _ = self.notifies.send(Notify::Profile(notify));
    }

    /// What changed since the last call, for the store.
    pub fn take_changes(&mut self) -> Changes {
        self.dialogs.take_changes()
    }

    /// Changes the store did not take: written with the next save.
    pub fn retry(&mut self, changes: Changes) {
        self.dialogs.retry(changes);
    }

    /// Takes back what the store kept (see `Dialogs::restore`).
    pub fn restore(&mut self, stored: Vec<(String, String)>) -> (usize, usize) {
        let counts = self.dialogs.restore(stored);
        self.expiring =
            self.dialogs.ids().into_iter().filter_map(|id| Some((self.dialogs.get(&id)?.expires_at, id))).collect();
        counts
    }
}

#[cfg(test)]
#[path = "profiles_tests.rs"]
mod tests;
