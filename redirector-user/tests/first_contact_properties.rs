//! First contact against mutated requests and responses: every malformed
//! request gets exactly one 400 whose reason is the scanner's, nothing
//! panics, and whatever is not answered is counted as dropped.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, LazyLock, atomic::Ordering},
};

mod common;

use common::mutate;
use proptest::prelude::*;
use redirector::{
    edge::{
        assignments::Assigned,
        first_contact::{Action, Counters, FirstContact, Settings},
        pool::{self, Pool},
    },
    model::{HomeServer, Policy, ServerState},
    sip::{Message, response::looks_like_request},
    store::{Assignment, Cache},
};

const REGISTER: &[u8] = b"REGISTER sip:example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:alice@example.net>\r\nFrom: <sip:alice@example.net>;tag=a1\r\n\
Call-ID: c1@x\r\nCSeq: 7 REGISTER\r\nContact: <sip:alice@203.0.113.7:5062>\r\nContent-Length: 0\r\n\r\n";

const RESPONSE: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-rdr-0123456789abcdef\r\n\
Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKp1\r\n\
To: <sip:alice@example.net>;tag=h\r\nFrom: <sip:alice@example.net>;tag=a1\r\nCall-ID: c1@x\r\nCSeq: 7 REGISTER\r\n\r\n";

/// One instance per property, shared by its cases.
static FOR_REQUESTS: LazyLock<FirstContact> = LazyLock::new(first_contact);
static FOR_RESPONSES: LazyLock<FirstContact> = LazyLock::new(first_contact);

fn first_contact() -> FirstContact {
    let home = HomeServer {
        name: "home1".into(),
        index: 0,
        ipv4: Some("198.51.100.11".parse().unwrap()),
        ipv6: None,
        port: 5060,
        state: ServerState::Active,
        healthy: true,
        weight: 1.0,
    };
    let settings = Settings {
        policy: Policy::Auto,
        redirect_expires: 60,
        retry_after: 5,
        proxies: vec!["198.51.100.1:5060".parse().unwrap()],
        services: vec!["192.0.2.10:5060".parse().unwrap()],
        // Cookies are read from whatever the datagrams carry.
        probe: Some(redirector::probe::Keys::new(*b"properties-key16", 300)),
        // ua-profile SUBSCRIBEs are read too (the properties hold for them).
        profiles: Some(Arc::default()),
    };
    let pool = pool::view(Pool::new(vec![home]));
    FirstContact::new(settings, pool, Arc::new(Cache::default()), Arc::default(), Arc::new(Counters::default()))
}

/// First contact's answers, the owner assigning every new client to home1.
fn answer(fc: &FirstContact, datagram: &[u8], source: SocketAddr) -> Vec<Action> {
    let read = fc.read([(datagram, source)], "192.0.2.10:5060".parse().unwrap());
    let assigned: HashMap<_, _> = read
        .unassigned()
        .into_iter()
        .map(|client| {
            let assignment = Assignment::new(client.aor.clone(), "home1".into());
            (client.aor, Ok(Assigned { assignment, moved: false }))
        })
        .collect();
    fc.answer(read, Ok(&assigned))
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    let byte = prop_oneof![prop::sample::select(b"\r\n :;,<>\"/0".to_vec()), any::<u8>()];
    prop::collection::vec((any::<usize>(), byte, common::EDIT_KINDS), 1..6)
}

fn status_line(action: &Action) -> String {
    let (Action::Reply { bytes, .. } | Action::Forward { bytes, .. } | Action::Relay { bytes, .. }) = action else {
        return String::new();
    };
    String::from_utf8_lossy(bytes).lines().next().unwrap_or_default().to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn malformed_requests_get_400_naming_the_problem(edits in edits()) {
        let fc = &*FOR_REQUESTS;
        let datagram = mutate(REGISTER, edits);
        let source: SocketAddr = "203.0.113.7:5062".parse().unwrap();
        let dropped = fc.counters.dropped.load(Ordering::Relaxed);
        let actions = answer(fc, &datagram, source);
        match Message::parse(&datagram) {
            Err(error) if looks_like_request(&datagram) => {
                prop_assert_eq!(actions.len(), 1);
                prop_assert_eq!(status_line(&actions[0]), format!("SIP/2.0 400 {error}"));
            }
            Err(_) => {
                prop_assert!(actions.is_empty());
                prop_assert_eq!(fc.counters.dropped.load(Ordering::Relaxed), dropped + 1);
            }
            Ok(message) if !message.is_request() => prop_assert!(actions.is_empty()),
            Ok(message) if actions.is_empty() => {
                prop_assert_eq!(message.method(), Some("ACK"), "only an ACK goes unanswered");
            }
            Ok(_) => {
                let status = status_line(&actions[0]);
                // Every client gets a home here: no 503; and only a CANCEL gets 200.
                let answered = ["SIP/2.0 302", "SIP/2.0 400", "SIP/2.0 483", "REGISTER "]
                    .iter()
                    .any(|prefix| status.starts_with(prefix));
                prop_assert!(answered, "unexpected first action {status:?}");
            }
        }
    }

    #[test]
    fn malformed_responses_are_dropped_and_counted(edits in edits()) {
        let fc = &*FOR_RESPONSES;
        let datagram = mutate(RESPONSE, edits);
        let (relayed_before, dropped_before) =
            (fc.counters.relayed.load(Ordering::Relaxed), fc.counters.dropped.load(Ordering::Relaxed));
        let actions = fc.on_proxy_datagram(&datagram, "198.51.100.11:5060".parse().unwrap());
        let relayed = fc.counters.relayed.load(Ordering::Relaxed) - relayed_before;
        let dropped = fc.counters.dropped.load(Ordering::Relaxed) - dropped_before;
        prop_assert_eq!(relayed + dropped, 1, "every response is relayed or counted as dropped");
        if Message::parse(&datagram).is_err() {
            prop_assert!(actions.is_empty());
            prop_assert_eq!(dropped, 1);
        }
    }
}
