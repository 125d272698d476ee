//! The SIP scanner against arbitrary, mutated and generated datagrams.

mod common;

use common::mutate;
use proptest::prelude::*;
use redirector::sip::{HeaderKind, Message, Via};

const REGISTER: &[u8] = b"REGISTER sip:example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.net>\r\n\
From: \"Bob, Jr\" <sip:bob@example.net>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@10.0.0.2:5060>\r\n\
Content-Length: 4\r\n\r\nbody";

/// The body by a second reading: what follows the first empty line (after
/// any leading blank lines), cut to the last Content-Length value if any.
fn expected_body(datagram: &[u8]) -> &[u8] {
    let text = &datagram[datagram.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(datagram.len())..];
    // A line end followed by an empty line, CRLF or bare LF either way.
    let crlf = text.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
    let lf = text.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let start = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).expect("a parsed message has an empty line"),
    };
    let (head, body) = text.split_at(start);
    let length = String::from_utf8_lossy(head).lines().rev().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        (name == "content-length" || name == "l").then(|| value.trim().parse::<usize>().ok())?
    });
    length.map_or(body, |length| &body[..length])
}

/// What any parse result must satisfy, whatever the input.
fn check_outcome(datagram: &[u8]) -> Result<(), TestCaseError> {
    match Message::parse(datagram) {
        Ok(message) => {
            prop_assert!(message.via_values().count() >= 1);
            for via in message.via_values() {
                prop_assert!(Via::parse(&via).is_ok());
            }
            prop_assert_eq!(message.body, expected_body(datagram), "the body as Content-Length cuts it");
            prop_assert!(message.cseq().is_ok());
        }
        Err(error) => {
            let reason = error.to_string();
            prop_assert!(!reason.is_empty() && reason.len() <= 40, "reason {reason:?}");
            prop_assert!(reason.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "status-line safe: {reason:?}");
        }
    }
    Ok(())
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let interesting =
        prop::sample::select(vec![b'\r', b'\n', b' ', b'\t', b',', b'"', b'<', b'>', b';', b':', b'/', 0xff, 0]);
    let edit = (any::<usize>(), prop_oneof![interesting, any::<u8>()], common::EDIT_KINDS);
    prop::collection::vec(edit, 1..8).prop_map(|edits| mutate(REGISTER, edits))
}

/// A valid REGISTER with random header-name spellings, folds, and its Vias
/// spread over lines and comma lists.
fn generated() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (1usize..6, any::<[bool; 8]>(), any::<[bool; 6]>()).prop_map(|(vias, spelling, layout)| {
        let name = |full: &str, compact: &str, i: usize| -> String {
            match (spelling[i % 8], spelling[(i + 3) % 8]) {
                (true, _) => compact.to_owned(),
                (false, true) => full.to_ascii_uppercase(),
                _ => full.to_owned(),
            }
        };
        let mut text = String::from("REGISTER sip:example.net SIP/2.0\r\n");
        let values: Vec<String> =
            (0..vias).map(|i| format!("SIP / 2.0 / UDP host{i} : 50{i:02};branch=z9hG4bK{i}")).collect();
        let mut i = 0;
        while i < values.len() {
            let take = if layout[i % 6] { 2 } else { 1 };
            let chunk: Vec<&str> = values[i..(i + take).min(values.len())].iter().map(String::as_str).collect();
            text += &format!("{}: {}\r\n", name("Via", "v", i), chunk.join(" ,\r\n  "));
            i += take;
        }
        text += &format!("{}: Bob\r\n\t<sip:bob@example.net>\r\n", name("To", "t", 1));
        text += &format!("{}: <sip:bob@example.net>;tag=1\r\n", name("From", "f", 2));
        text += &format!("{}: abc\r\n", name("Call-ID", "i", 3));
        text += "CSeq: 1 REGISTER\r\n\r\n";
        (text.into_bytes(), vias)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(datagram in prop::collection::vec(any::<u8>(), 0..600)) {
        check_outcome(&datagram)?;
    }

    #[test]
    fn mutated_registers_never_panic(datagram in mutated()) {
        check_outcome(&datagram)?;
    }

    #[test]
    fn generated_messages_keep_their_via_count((datagram, vias) in generated()) {
        let message = Message::parse(&datagram).unwrap();
        prop_assert_eq!(message.via_values().count(), vias);
        prop_assert_eq!(message.value(HeaderKind::To).unwrap(), "Bob <sip:bob@example.net>");
        prop_assert_eq!(message.value(HeaderKind::CallId).unwrap(), "abc");
    }
}
