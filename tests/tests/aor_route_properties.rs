//! Requests through an upstream proxy, routed by their AOR:
//! * on the host, the shared Via count (`redirector_ebpf::vias`) against
//!   the daemon's parser: `Several` only where the daemon reads two or
//!   more Via values, on requests as proxies write them (lines, compact
//!   names, comma lists) and on mutated bytes; what it cannot be sure of
//!   (a fold, a quoted comma) is `Unknown`;
//! * through the real program (BPF_PROG_TEST_RUN, dsr, `AORS` filled),
//!   the same requests and mutations of them from a source on no fast
//!   path: never `XDP_ABORTED`, exactly one counter moved, and one
//!   forwarded (`forwarded_by_aor`) goes to the home `AORS` names for the
//!   daemon's AOR of that datagram, unchanged inside its tunnel, and only
//!   when the daemon reads more than one Via in it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use redirector::{
    edge::first_contact::identity,
    sip::{Aor, Message},
};
use redirector_ebpf::{
    AorRoute, Counter,
    aor::aor_hash,
    via::VIA_SCAN,
    vias::{Vias, count_vias},
};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture},
    packets::{Datagram, ethernet},
    privileged,
};

const XDP_ABORTED: u32 = 0;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Bytes before the SIP message in a frame (Ethernet, IPv4, UDP).
const HEADERS: usize = 42;

fn count(message: &[u8]) -> Vias {
    let mut buffer = [0u8; VIA_SCAN];
    let end = (HEADERS + message.len()).min(VIA_SCAN);
    buffer[HEADERS..end].copy_from_slice(&message[..end - HEADERS]);
    count_vias(&buffer, HEADERS, end)
}

/// How many Via values the daemon reads, if it parses the message.
fn daemon_vias(message: &[u8]) -> Option<usize> {
    Message::parse(message).ok().map(|parsed| parsed.via_values().count())
}

/// A request as an upstream proxy forwards it, and what it was made of.
#[derive(Debug, Clone)]
struct Proxied {
    text: String,
    /// Via values written.
    vias: usize,
    /// Written so that the Via count cannot be sure (a quoted comma in the
    /// first value, a folded Via line).
    unsure: bool,
}

/// A Via value as proxies and phones write them.
fn via_value(i: usize) -> String {
    format!("SIP/2.0/UDP 10.9.{i}.1:5060;branch=z9hG4bK{i}x;rport")
}

/// `n` Via values: each on its own line (names as user agents write
/// them), or all in one header separated by commas as written.
fn via_block() -> impl Strategy<Value = (String, usize, bool)> {
    let name = prop_oneof![Just("Via"), Just("via"), Just("VIA"), Just("v"), Just("V")];
    let separator = prop_oneof![Just(","), Just(", "), Just(" , "), Just(" ,\t")];
    let unsure = prop_oneof![4 => Just(""), 1 => Just("quote"), 1 => Just("fold")];
    (1..4usize, name, 0..2usize, any::<bool>(), separator, unsure).prop_map(
        |(n, name, spaces, one_header, separator, unsure)| {
            let mut values: Vec<String> = (0..n).map(via_value).collect();
            match unsure {
                "quote" => values[0] += ";x=\"a,b\"",
                "fold" => values[0] += "\r\n ;y=1",
                _ => {}
            }
            let head = format!("{name}{}:", " ".repeat(spaces));
            let block = if one_header {
                format!("{head} {}\r\n", values.join(separator))
            } else {
                values.iter().map(|value| format!("{head} {value}\r\n")).collect()
            };
            (block, n, !unsure.is_empty())
        },
    )
}

/// A proxied request for `line<user>@example.net`: its AOR in the To of
/// a REGISTER, the From of the others.
fn proxied_request() -> impl Strategy<Value = Proxied> {
    let method = prop_oneof![Just("REGISTER"), Just("INVITE"), Just("MESSAGE"), Just("OPTIONS"), Just("BYE")];
    let aor = prop_oneof![
        Just("<sip:line{}@example.net>"),
        Just("\"L\" <sip:line{}@Example.NET:5060>"),
        Just("sip:line{}@example.net")
    ];
    (method, aor, 1..60u32, via_block()).prop_map(|(method, aor, user, (vias, n, unsure))| {
        let aor = aor.replace("{}", &user.to_string());
        let (from, to) = if method == "REGISTER" {
            ("<sip:proxy@example.net>".to_owned(), aor)
        } else {
            (aor, "<sip:x@example.net>".to_owned())
        };
        let text = format!(
            "{method} sip:example.net SIP/2.0\r\n{vias}Max-Forwards: 69\r\nFrom: {from};tag=1\r\nTo: {to}\r\n\
             Call-ID: c@x\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        Proxied { text, vias: n, unsure }
    })
}

/// A proxied request with a few bytes overwritten, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0..3u8);
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b" \t\r\n:;,<>\"@vVia".to_vec())];
    (proxied_request(), prop::collection::vec((edit, byte), 1..4)).prop_map(|(proxied, edits)| {
        let mut bytes = proxied.text.into_bytes();
        for ((at, kind), byte) in edits {
            let at = at.index(bytes.len());
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// As proxies write them: two or more values are `Several`, one is
    /// not, and what the count cannot be sure of is `Unknown`.
    #[test]
    fn written_vias_are_counted_or_unknown(proxied in proxied_request()) {
        let counted = count(proxied.text.as_bytes());
        let daemon = daemon_vias(proxied.text.as_bytes());
        prop_assert_eq!(daemon, Some(proxied.vias), "the daemon reads what was written: {}", proxied.text);
        let expected = match proxied.vias {
            _ if proxied.unsure => Vias::Unknown,
            1 => Vias::NotSeveral,
            _ => Vias::Several,
        };
        prop_assert_eq!(counted, expected, "{}", proxied.text);
    }

    /// Mutated: `Several` only where the daemon reads two or more values,
    /// `NotSeveral` only where it reads at most one.
    #[test]
    fn mutated_vias_are_never_miscounted(message in mutated()) {
        if let Some(daemon) = daemon_vias(&message) {
            match count(&message) {
                Vias::Several => prop_assert!(daemon >= 2, "{}", String::from_utf8_lossy(&message)),
                Vias::NotSeveral => prop_assert!(daemon <= 1, "{}", String::from_utf8_lossy(&message)),
                Vias::Unknown => {}
            }
        }
    }
}

#[test]
fn vias_the_count_cannot_be_sure_of_are_unknown() {
    let line = "REGISTER sip:example.net SIP/2.0\r\n";
    for text in [
        format!("{line}Via x: SIP/2.0/UDP c\r\n\r\n"),
        format!("{line}Via: SIP/2.0/UDP c\rX\r\n\r\n"),
        format!("{line}Via: SIP/2.0/UDP c\r\n\rVia: SIP/2.0/UDP d\r\n\r\n"),
        format!("{line}Via: SIP/2.0/UDP c;x=<a,b>\r\n\r\n"),
        format!("{line}Via: SIP/2.0/UDP c\r\n"),
        format!("{line}Subject: {}\r\nVia: SIP/2.0/UDP c\r\nVia: SIP/2.0/UDP d\r\n\r\n", "s".repeat(VIA_SCAN)),
    ] {
        assert_eq!(count(text.as_bytes()), Vias::Unknown, "{text:?}");
    }
    let empty_elements = format!(
        "{line}Via: SIP/2.0/UDP c;branch=z9hG4bK1,  , \r\nVia-Extra: a, b\r\nVia:\r\nFrom: <sip:a@x>;tag=1\r\n\
         To: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\r\n"
    );
    assert_eq!(count(empty_elements.as_bytes()), Vias::NotSeveral);
    assert_eq!(daemon_vias(empty_elements.as_bytes()), Some(1));
}

/// The fixture's homes (tests/src/fixture.rs): slot, address, forwards.
const HOMES: [(u32, Ipv4Addr, bool); 3] = [
    (0, Ipv4Addr::new(10, 0, 0, 11), true),
    (1, Ipv4Addr::new(10, 0, 0, 12), true),
    (2, Ipv4Addr::new(10, 0, 0, 13), false),
];

/// `line<n>@example.net` for n below this is assigned, to the homes in
/// turn (the third is down); the rest are not.
const ROUTED_LINES: u32 = 45;

fn routes() -> BTreeMap<u64, u32> {
    (1..ROUTED_LINES)
        .map(|n| (aor_hash(format!("sip:line{n}@example.net").as_bytes()), HOMES[n as usize % HOMES.len()].0))
        .collect()
}

/// The home `AORS` names for the daemon's AOR of `message`, and how many
/// Via values the daemon reads: `None` if the daemon cannot parse it.
fn daemon_route(message: &[u8]) -> Option<(Option<u32>, usize)> {
    let parsed = Message::parse(message).ok().filter(Message::is_request)?;
    let aor: Aor = identity(&parsed).ok()?;
    Some((routes().get(&aor_hash(aor.as_str().as_bytes())).copied(), parsed.via_values().count()))
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let datagram = Datagram::new("10.0.0.9:5060", "192.0.2.10:5060").with(|d| d.payload = payload.to_vec());
    ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet())
}

/// One payload from the proxy through the program; the counter it moved.
fn check(fx: &mut Fixture, payload: &[u8]) -> Result<Counter, TestCaseError> {
    let input = frame(payload);
    let before = fx.counters();
    let outcome = fx.run(&input);
    let moved: Vec<Counter> = before.iter().zip(fx.counters()).filter(|(b, a)| a.1 != b.1).map(|(b, _)| b.0).collect();
    prop_assert_eq!(moved.len(), 1, "exactly one counter moves: {:?}", moved);
    prop_assert_ne!(outcome.action, XDP_ABORTED);
    let counter = moved[0];
    let text = String::from_utf8_lossy(payload);
    if counter != Counter::ForwardedByAor {
        prop_assert_eq!(outcome.action, XDP_PASS, "{}: {}", counter.label(), text);
        prop_assert_eq!(&outcome.frame, &input, "passed frames are untouched");
        return Ok(counter);
    }
    prop_assert_eq!(outcome.action, XDP_TX);
    let home = Ipv4Addr::from(<[u8; 4]>::try_from(&outcome.frame[30..34]).unwrap());
    prop_assert_eq!(&outcome.frame[34..], &input[14..], "the request goes unchanged inside the tunnel");
    if let Some((route, vias)) = daemon_route(payload) {
        let slot = route.ok_or_else(|| TestCaseError::fail(format!("forwarded an AOR AORS lacks: {text}")))?;
        let (_, address, forwards) = HOMES[slot as usize];
        prop_assert!(forwards, "forwarded to a home that is down: {}", text);
        prop_assert_eq!(home, address, "forwarded to another home than the daemon's AOR's: {}", text);
        prop_assert!(vias >= 2, "forwarded with {} Via values: {}", vias, text);
    }
    Ok(counter)
}

fn run(fx: &mut Fixture, strategy: impl Strategy<Value = Vec<u8>>, cases: u32) -> BTreeMap<&'static str, u32> {
    let fx = std::cell::RefCell::new(fx);
    let reached = std::cell::RefCell::new(BTreeMap::new());
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |payload| {
            let counter = check(&mut fx.borrow_mut(), &payload)?;
            *reached.borrow_mut().entry(counter.label()).or_default() += 1;
            Ok(())
        })
        .unwrap();
    reached.into_inner()
}

#[test]
fn proxied_requests_go_to_their_aors_home_or_up() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    let routes = routes();
    let values: Vec<AorRoute> = routes.values().map(|&server| AorRoute { server, _pad: 0 }).collect();
    fx.dataplane().route_aors(&routes.keys().copied().collect::<Vec<_>>(), &values).unwrap();
    let written = run(&mut fx, proxied_request().prop_map(|proxied| proxied.text.into_bytes()), 1500);
    eprintln!("written: {written:?}");
    let mutated = run(&mut fx, mutated(), 3000);
    eprintln!("mutated: {mutated:?}");
    let random = run(&mut fx, prop::collection::vec(any::<u8>(), 0..600), 500);
    eprintln!("random: {random:?}");
    for outcome in ["forwarded_by_aor", "pass_miss", "pass_server_down", "pass_vias_unseen"] {
        assert!(written.get(outcome).copied().unwrap_or(0) >= 15, "{outcome} reached: {written:?}");
        assert!(mutated.get(outcome).copied().unwrap_or(0) >= 30, "{outcome} reached: {mutated:?}");
    }
}
