use std::collections::BTreeMap;

use super::*;
use crate::sip::{Message, StartLine};

const CLIENT: &str = "198.51.100.7:5070";
const SERVICE: &str = "192.0.2.10:5060";
const NOW: u64 = 1_000_000;

fn settings() -> Settings {
    Settings { max_expires: 3600, min_expires: 60, capacity: 10 }
}

fn profiles() -> (Profiles, mpsc::UnboundedReceiver<Notify>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Profiles::new(settings(), sender), receiver)
}

/// A ua-profile SUBSCRIBE from `from` for `to`'s profile, `extra` headers
/// added (an Expires, a To tag goes in `to`).
fn subscribe_text(from: &str, to: &str, cseq: u32, extra: &str) -> String {
    format!(
        "SUBSCRIBE sip:{SERVICE} SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT};branch=z9hG4bKp{cseq};rport\r\n\
         From: <{from}>;tag=s1\r\nTo: <{to}\r\nCall-ID: p1@client\r\nCSeq: {cseq} SUBSCRIBE\r\n\
         Contact: <sip:alice@{CLIENT}>\r\nEvent: ua-profile;profile-type=user\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

const ALICE: &str = "sip:alice@example.net";

fn parse(text: &str) -> Result<ProfileRequest, Unreadable> {
    let message = Message::parse(text.as_bytes()).unwrap();
    ProfileRequest::parse(&message, CLIENT.parse().unwrap(), SERVICE.parse().unwrap())
}

/// Alice's SUBSCRIBE for her own profile (`to_tag`: within the dialog).
fn request(cseq: u32, expires: Option<u32>, to_tag: Option<&str>) -> ProfileRequest {
    let to = match to_tag {
        Some(tag) => format!("{ALICE}>;tag={tag}"),
        None => format!("{ALICE}>"),
    };
    let expires = expires.map_or_else(String::new, |e| format!("Expires: {e}\r\n"));
    parse(&subscribe_text(ALICE, &to, cseq, &expires)).unwrap()
}

fn document(registrar: &str) -> Document {
    Document {
        body: format!("<profile><registrar>{registrar}</registrar></profile>"),
        etag: format!("\"{registrar}\""),
    }
}

fn status(bytes: &[u8]) -> u16 {
    match Message::parse(bytes).unwrap().start {
        StartLine::Response { code, .. } => code,
        StartLine::Request { .. } => panic!("not a response"),
    }
}

fn header(bytes: &[u8], kind: HeaderKind) -> String {
    Message::parse(bytes).unwrap().value(kind).unwrap_or_default().into_owned()
}

fn named(bytes: &[u8], name: &str) -> Option<String> {
    let message = Message::parse(bytes).unwrap();
    message.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.trim().to_owned())
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// The NOTIFYs queued for the notifier since the last call.
fn queued(receiver: &mut mpsc::UnboundedReceiver<Notify>) -> Vec<ProfileNotify> {
    let mut notifies = Vec::new();
    while let Ok(notify) = receiver.try_recv() {
        let Notify::Profile(notify) = notify else { panic!("a watcher's NOTIFY from profiles") };
        notifies.push(notify);
    }
    notifies
}

/// A subscription alice made: its 200's To tag.
fn subscribed(profiles: &mut Profiles) -> String {
    let answer = profiles.subscribe(&request(1, Some(600), None), true, Some(&document("sip:10.0.0.1:5060")), NOW);
    assert_eq!(status(&answer.response), 200);
    tag(&header(&answer.response, HeaderKind::To)).unwrap().to_owned()
}

#[test]
fn a_ua_profile_subscribe_is_told_apart_by_its_event_package() {
    let text = subscribe_text(ALICE, &format!("{ALICE}>"), 1, "");
    assert!(is_profile_event(&Message::parse(text.as_bytes()).unwrap()));
    let presence = text.replace("Event: ua-profile;profile-type=user", "Event: presence");
    assert!(!is_profile_event(&Message::parse(presence.as_bytes()).unwrap()));
    let compact = text.replace("Event: ua-profile;profile-type=user", "o: UA-Profile");
    assert!(is_profile_event(&Message::parse(compact.as_bytes()).unwrap()), "compact form, any case");
}

#[test]
fn a_subscribe_yields_what_the_answer_and_its_notifies_need() {
    let request =
        parse(&subscribe_text(ALICE, &format!("{ALICE}>"), 4, "Expires: 600\r\nRecord-Route: <sip:p1;lr>\r\n"))
            .unwrap();
    assert_eq!(request.aor.as_str(), ALICE);
    assert_eq!(request.from_aor, request.aor);
    assert_eq!(request.id, ProfileId { call_id: "p1@client".into(), subscriber_tag: "s1".into() });
    assert_eq!((request.cseq, request.expires, request.to_tag.as_deref()), (4, Some(600), None));
    assert_eq!(request.contact, format!("sip:alice@{CLIENT}"));
    assert_eq!(request.event, "ua-profile;profile-type=user");
    assert_eq!(request.route_set, ["<sip:p1;lr>"]);
    assert!(request.direct);
    assert!(request.basis.vias[0].contains("received=198.51.100.7"), "stamped: {:?}", request.basis.vias);
}

#[test]
fn unreadable_subscribes_are_named() {
    let base = subscribe_text(ALICE, &format!("{ALICE}>"), 1, "");
    let malformed = |text: String| match parse(&text) {
        Err(Unreadable::Malformed(reason)) => reason,
        other => panic!("not malformed: {other:?}"),
    };
    assert!(malformed(base.replace(";tag=s1", "")).contains("From tag"));
    assert!(malformed(base.replace("Contact: <sip:alice@198.51.100.7:5070>\r\n", "")).contains("Contact"));
    assert!(malformed(base.replace("Content-Length", "Expires: soon\r\nContent-Length")).contains("Expires"));
    assert!(malformed(base.replace(&format!("To: <{ALICE}>"), "To: <http://x>")).contains("To"));
    let huge = format!("Record-Route: <sip:{}>\r\nContent-Length", "a".repeat(MAX_FIELD));
    assert!(malformed(base.replace("Content-Length", &huge)).contains("1024"));
    let device = base.replace("profile-type=user", "profile-type=\"device\"");
    assert_eq!(parse(&device), Err(Unreadable::NotUser));
    let json = base.replace("Content-Length", "Accept: application/json\r\nContent-Length");
    assert_eq!(parse(&json), Err(Unreadable::NotAcceptable));
    let xml = base.replace("Content-Length", "Accept: text/plain, application/xml;q=0.5\r\nContent-Length");
    assert!(parse(&xml).is_ok(), "an Accept naming XML among others");
    let bare = base.replace(";profile-type=user", "");
    assert!(parse(&bare).is_ok(), "no profile type: the user's");
}

#[test]
fn a_subscription_is_answered_200_then_a_notify_with_the_document() {
    let (mut profiles, _queue) = profiles();
    let doc = document("sip:10.0.0.1:5060");
    let answer = profiles.subscribe(&request(1, Some(600), None), true, Some(&doc), NOW);
    assert_eq!(answer.to, CLIENT.parse().unwrap());
    assert_eq!(status(&answer.response), 200);
    assert_eq!(header(&answer.response, HeaderKind::Expires), "600");
    assert_eq!(header(&answer.response, HeaderKind::Contact), format!("<sip:{SERVICE}>"));
    let our_tag = tag(&header(&answer.response, HeaderKind::To)).unwrap().to_owned();
    let notify = answer.notify.expect("the first NOTIFY");
    assert_eq!(notify.state, State::Active(600));
    assert_eq!(notify.body.as_deref(), Some(doc.body.as_str()));
    assert_eq!((notify.subscription.tag.as_str(), notify.subscription.notify_cseq), (our_tag.as_str(), 1));
    assert_eq!(profiles.kept(), 1);
    assert_eq!(count(&profiles.counters.subscribed), 1);

    let bytes = notify.bytes("192.0.2.1:5060".parse().unwrap(), "z9hG4bK-rdr-notify-1");
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.method(), Some("NOTIFY"));
    assert!(String::from_utf8_lossy(&bytes).starts_with(&format!("NOTIFY sip:alice@{CLIENT} SIP/2.0\r\n")));
    assert_eq!(header(&bytes, HeaderKind::From), format!("<{ALICE}>;tag={our_tag}"));
    assert_eq!(header(&bytes, HeaderKind::To), format!("<{ALICE}>;tag=s1"));
    assert_eq!(header(&bytes, HeaderKind::CallId), "p1@client");
    assert_eq!(message.cseq().unwrap(), (1, "NOTIFY".to_owned()));
    assert_eq!(header(&bytes, HeaderKind::Event), "ua-profile;profile-type=user");
    assert_eq!(header(&bytes, HeaderKind::ContentType), CONTENT_TYPE);
    assert_eq!(header(&bytes, HeaderKind::Contact), format!("<sip:{SERVICE}>"), "refreshes come to the service");
    assert_eq!(named(&bytes, "Subscription-State").as_deref(), Some("active;expires=600"));
    assert_eq!(message.body, doc.body.as_bytes());
    assert!(header(&bytes, HeaderKind::Via).contains("192.0.2.1:5060;branch=z9hG4bK-rdr-notify-1;rport"));
}

#[test]
fn expires_zero_is_a_one_time_fetch() {
    let (mut profiles, _queue) = profiles();
    let doc = document("sip:10.0.0.1:5060");
    let answer = profiles.subscribe(&request(1, Some(0), None), true, Some(&doc), NOW);
    assert_eq!((status(&answer.response), header(&answer.response, HeaderKind::Expires)), (200, "0".into()));
    let notify = answer.notify.expect("one NOTIFY");
    assert_eq!((notify.state, notify.body.as_deref()), (State::Timeout, Some(doc.body.as_str())));
    assert!(notify.ends());
    let bytes = notify.bytes("192.0.2.1:5060".parse().unwrap(), "z9hG4bK-x");
    assert_eq!(named(&bytes, "Subscription-State").as_deref(), Some("terminated;reason=timeout"));
    assert_eq!(profiles.kept(), 0, "nothing kept");
    assert_eq!(count(&profiles.counters.fetched), 1);
}

#[test]
fn only_a_clients_own_profile_from_its_own_socket_is_served() {
    let (mut profiles, _queue) = profiles();
    let doc = document("sip:10.0.0.1:5060");
    let foreign = parse(&subscribe_text("sip:mallory@example.net", &format!("{ALICE}>"), 1, "")).unwrap();
    let elsewhere = request(1, None, None);
    let two_vias =
        parse(&subscribe_text(ALICE, &format!("{ALICE}>"), 1, "Via: SIP/2.0/UDP 203.0.113.1;branch=z9hG4bKx\r\n"))
            .unwrap();
    for (what, request, authorized) in [
        ("another AOR", &foreign, true),
        ("a socket not on the fast path", &elsewhere, false),
        ("a proxy", &two_vias, true),
    ] {
        let answer = profiles.subscribe(request, authorized, Some(&doc), NOW);
        assert_eq!(status(&answer.response), 403, "{what}");
        assert_eq!(answer.notify, None, "{what}");
    }
    assert_eq!((profiles.kept(), count(&profiles.counters.forbidden)), (0, 3));
    let unassigned = profiles.subscribe(&request(1, None, None), true, None, NOW);
    assert_eq!(status(&unassigned.response), 404, "no document");
}

#[test]
fn a_repeated_subscribe_gets_the_same_answer_and_no_second_notify() {
    let (mut profiles, _queue) = profiles();
    let our_tag = subscribed(&mut profiles);
    let again = profiles.subscribe(&request(1, Some(600), None), true, Some(&document("sip:10.0.0.1:5060")), NOW + 5);
    assert_eq!(status(&again.response), 200);
    assert_eq!(tag(&header(&again.response, HeaderKind::To)), Some(our_tag.as_str()), "the same dialog");
    assert_eq!(header(&again.response, HeaderKind::Expires), "595");
    assert_eq!(again.notify, None);
    assert_eq!(count(&profiles.counters.repeated), 1);
}

#[test]
fn a_repeat_from_where_the_rule_refuses_gets_403_not_the_dialogs_tag() {
    let (mut profiles, _queue) = profiles();
    let our_tag = subscribed(&mut profiles);
    let replayed =
        profiles.subscribe(&request(1, Some(600), None), false, Some(&document("sip:10.0.0.1:5060")), NOW + 5);
    assert_eq!(status(&replayed.response), 403);
    assert_ne!(tag(&header(&replayed.response, HeaderKind::To)), Some(our_tag.as_str()), "our tag stays secret");
    assert_eq!((count(&profiles.counters.repeated), count(&profiles.counters.forbidden)), (0, 1));
}

#[test]
fn refreshes_and_unsubscribes_within_the_dialog() {
    let (mut profiles, _queue) = profiles();
    let our_tag = subscribed(&mut profiles);
    let doc = document("sip:10.0.0.1:5060");
    // From anywhere: the dialog's tags are the proof (its fast-path entry may have idled out).
    let refresh = profiles.subscribe(&request(2, Some(1200), Some(&our_tag)), false, Some(&doc), NOW + 100);
    assert_eq!((status(&refresh.response), header(&refresh.response, HeaderKind::Expires)), (200, "1200".into()));
    let notify = refresh.notify.expect("a refresh is notified");
    assert_eq!((notify.state, notify.subscription.notify_cseq), (State::Active(1200), 2));
    let capped = profiles.subscribe(&request(3, Some(999_999), Some(&our_tag)), false, Some(&doc), NOW + 100);
    assert_eq!(header(&capped.response, HeaderKind::Expires), "3600", "max_expires caps it");
    let brief = profiles.subscribe(&request(4, Some(10), Some(&our_tag)), false, Some(&doc), NOW + 100);
    assert_eq!((status(&brief.response), named(&brief.response, "Min-Expires")), (423, Some("60".into())));
    let stale = profiles.subscribe(&request(2, Some(600), Some(&our_tag)), false, Some(&doc), NOW + 100);
    assert_eq!(status(&stale.response), 500, "a lower CSeq");

    let unsubscribe = profiles.subscribe(&request(5, Some(0), Some(&our_tag)), false, Some(&doc), NOW + 200);
    assert_eq!(status(&unsubscribe.response), 200);
    let last = unsubscribe.notify.expect("the final NOTIFY");
    assert_eq!((last.state, last.subscription.notify_cseq), (State::Timeout, 4));
    assert_eq!(profiles.kept(), 0);
    let gone = profiles.subscribe(&request(6, Some(600), Some(&our_tag)), false, Some(&doc), NOW + 200);
    assert_eq!(status(&gone.response), 481);
    let wrong_tag = profiles.subscribe(&request(1, Some(600), Some("not-ours")), true, Some(&doc), NOW);
    assert_eq!(status(&wrong_tag.response), 481);
}

#[test]
fn a_changed_document_is_notified_and_an_unchanged_one_is_not() {
    let (mut profiles, mut queue) = profiles();
    subscribed(&mut profiles);
    let aor = Aor::from_uri(ALICE, "To").unwrap();
    profiles.changed(&aor, Some(&document("sip:10.0.0.1:5060")), NOW + 10);
    assert!(queued(&mut queue).is_empty(), "the same document");
    let moved = document("sip:10.0.0.2:5060");
    profiles.changed(&aor, Some(&moved), NOW + 10);
    let notifies = queued(&mut queue);
    assert_eq!(notifies.len(), 1);
    assert_eq!((notifies[0].state, notifies[0].subscription.notify_cseq), (State::Active(590), 2));
    assert_eq!(notifies[0].body.as_deref(), Some(moved.body.as_str()));
    profiles.changed(&aor, Some(&moved), NOW + 20);
    assert!(queued(&mut queue).is_empty(), "told once");
    let other = Aor::from_uri("sip:bob@example.net", "To").unwrap();
    profiles.changed(&other, None, NOW);
    assert!(queued(&mut queue).is_empty(), "no subscription of bob's");

    profiles.changed(&aor, None, NOW + 30);
    let ended = queued(&mut queue);
    assert_eq!((ended[0].state, ended[0].body.as_ref()), (State::NoResource, None), "its assignment expired");
    assert_eq!(profiles.kept(), 0);
}

#[test]
fn a_subscription_not_refreshed_in_time_expires_with_a_notify() {
    let (mut profiles, mut queue) = profiles();
    let our_tag = subscribed(&mut profiles);
    profiles.expire(NOW + 599);
    assert!(queued(&mut queue).is_empty());
    let doc = document("sip:10.0.0.1:5060");
    profiles.subscribe(&request(2, Some(600), Some(&our_tag)), false, Some(&doc), NOW + 300);
    profiles.expire(NOW + 600);
    assert!(queued(&mut queue).is_empty(), "refreshed until NOW + 900");
    profiles.expire(NOW + 900);
    let expired = queued(&mut queue);
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].state, expired[0].subscription.notify_cseq), (State::Timeout, 3));
    assert_eq!((profiles.kept(), count(&profiles.counters.expired)), (0, 1));
    assert!(profiles.expiring.is_empty(), "refreshes replace their place in the expiry order");
}

#[test]
fn a_refused_notify_ends_its_subscription() {
    let (mut profiles, _queue) = profiles();
    subscribed(&mut profiles);
    profiles.refused(&ProfileId { call_id: "p1@client".into(), subscriber_tag: "s1".into() });
    assert_eq!(profiles.kept(), 0);
}

/// A store that keeps what `take_changes` hands it, as the daemon's does.
fn saved(profiles: &mut Profiles, store: &mut BTreeMap<String, String>) {
    let changes = profiles.take_changes();
    store.extend(changes.kept);
    changes.removed.iter().for_each(|key| drop(store.remove(key)));
}

#[test]
fn subscriptions_read_back_from_the_store_are_notified_and_expire() {
    let (mut profiles, _queue) = profiles();
    let mut store = BTreeMap::new();
    subscribed(&mut profiles);
    let aor = Aor::from_uri(ALICE, "To").unwrap();
    profiles.changed(&aor, Some(&document("sip:10.0.0.2:5060")), NOW + 10);
    saved(&mut profiles, &mut store);
    assert_eq!(store.len(), 1);
    assert!(profiles.take_changes().is_empty(), "nothing changed since");

    let (mut restarted, mut queue) = self::profiles();
    assert_eq!(restarted.restore(store.clone().into_iter().collect()), (1, 0));
    restarted.changed(&aor, Some(&document("sip:10.0.0.2:5060")), NOW + 20);
    assert!(queued(&mut queue).is_empty(), "the document last sent was kept");
    restarted.changed(&aor, Some(&document("sip:10.0.0.3:5060")), NOW + 20);
    let notifies = queued(&mut queue);
    assert_eq!(notifies[0].subscription.notify_cseq, 3, "CSeq goes on from the stored one");
    restarted.expire(NOW + 600);
    assert_eq!(queued(&mut queue)[0].state, State::Timeout, "the expiry was kept too");
    saved(&mut restarted, &mut store);
    assert!(store.is_empty(), "{store:?}");
}
