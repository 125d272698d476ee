//! The shared scans the XDP program runs over SIP, on the host:
//! * where nat mode adds `;rport` (`redirector_ebpf::via`), against
//!   redirector's own SIP parser on requests as user agents write them, and
//!   on arbitrary bytes; and the checksum difference it applies, against
//!   etherparse;
//! * the hash of a REGISTER's `To` (`redirector_ebpf::register`), against
//!   an independent reading of the same bytes and the parser's `To`.
//!
//! The program runs the same code: `fixtures.rs` and
//! `malformed_properties.rs` check the kernel's frames byte for byte.

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, UdpHeader};
use proptest::prelude::*;
use redirector::sip::{HeaderKind, Message, Via};
use redirector_ebpf::{
    register::{RegisterTo, register_to},
    via::{RPORT, TopVia, VIA_SCAN, rport_checksum_diff, top_via},
};

/// Bytes before the SIP message in the scanned buffer, as a frame's
/// Ethernet, IP and UDP headers would be.
const HEADERS: usize = 42;

/// `message` where a frame's headers would put it, and where it ends.
fn framed(message: &[u8]) -> ([u8; VIA_SCAN], usize) {
    let mut buffer = [0u8; VIA_SCAN];
    let end = (HEADERS + message.len()).min(VIA_SCAN);
    buffer[HEADERS..end].copy_from_slice(&message[..end - HEADERS]);
    (buffer, end)
}

fn scan(message: &[u8]) -> TopVia {
    let (buffer, end) = framed(message);
    top_via(&buffer, HEADERS, end)
}

fn register_hash(message: &[u8]) -> RegisterTo {
    let (buffer, end) = framed(message);
    register_to(&buffer, HEADERS, end)
}

/// FNV-1a over the bytes after the colon of the first header line named
/// `To` or `t` (any case, spaces before the colon), to its line's end:
/// written here from the definition, with string operations.
fn independent_to_hash(message: &str) -> Option<(u64, String)> {
    let head = message.split("\r\n\r\n").next()?;
    let value = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        matches!(name.trim_end().to_ascii_lowercase().as_str(), "to" | "t").then_some(value)
    })?;
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    Some((hash, value.trim().to_string()))
}

fn header_name() -> impl Strategy<Value = String> {
    (prop_oneof![Just("Via"), Just("via"), Just("VIA"), Just("v"), Just("V")], 0..3usize)
        .prop_map(|(name, spaces)| format!("{name}{}:", " ".repeat(spaces)))
}

fn sent_by() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("10.0.0.2"), Just("10.0.0.2:5062"), Just("pc.example.net"), Just("[2001:db8::7]:5060")]
}

fn param() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just("branch=z9hG4bK776asdhds"),
        1 => Just("rport"),
        1 => Just("RPort"),
        1 => Just("rport=5066"),
        1 => Just("rportx"),
        1 => Just("x=rport"),
        1 => Just("received=192.0.2.1"),
        1 => Just("maddr=10.1.1.1"),
    ]
}

/// Header lines a UA may put before its Via, one of them named like it.
fn earlier_headers() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop_oneof![Just("Max-Forwards: 70"), Just("Vias: x;rport"), Just("Route: <sip:p;lr>"), Just("User-Agent: v")],
        0..3,
    )
}

/// A request line, earlier headers, the top Via (one or two values), and
/// the rest of a valid request.
fn request() -> impl Strategy<Value = String> {
    let top = (header_name(), sent_by(), prop::collection::vec(param(), 0..4), any::<bool>(), any::<bool>());
    (earlier_headers(), top).prop_map(|(earlier, (name, sent_by, params, spaced, second))| {
        let params: String = params.iter().map(|p| if spaced { format!(" ; {p}") } else { format!(";{p}") }).collect();
        let second = if second { ", SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKb" } else { "" };
        let earlier: String = earlier.iter().map(|h| format!("{h}\r\n")).collect();
        format!(
            "REGISTER sip:example.net SIP/2.0\r\n{earlier}{name} SIP/2.0/UDP {sent_by}{params}{second}\r\n\
             From: <sip:a@example.net>;tag=1\r\nTo: <sip:a@example.net>\r\nCall-ID: c@x\r\nCSeq: 1 REGISTER\r\n\
             Content-Length: 0\r\n\r\n"
        )
    })
}

fn top_via_of(message: &str) -> (bool, String, Option<u16>, Option<String>) {
    let parsed = Message::parse(message.as_bytes()).expect("a valid request");
    let value = parsed.via_values().next().expect("a Via").into_owned();
    let via = Via::parse(&value).expect("a valid Via");
    (via.param("rport").is_some(), via.host.to_string(), via.port, via.branch().map(str::to_string))
}

/// A REGISTER for `user` as `request()` writes them, with its `To` named
/// and spaced as user agents do.
fn register_for() -> impl Strategy<Value = String> {
    let name = prop_oneof![Just("To"), Just("to"), Just("TO"), Just("t"), Just("T")];
    (earlier_headers(), name, 0..2usize, 1..50u32, any::<bool>()).prop_map(|(earlier, name, spaces, user, display)| {
        let earlier: String = earlier.iter().map(|h| format!("{h}\r\n")).collect();
        let display = if display { "\"Line\" " } else { "" };
        format!(
            "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKa;rport\r\n{earlier}\
             {name}{}: {display}<sip:line{user}@example.net>\r\nFrom: <sip:line{user}@example.net>;tag=1\r\n\
             Call-ID: c@x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
            " ".repeat(spaces)
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// `;rport` goes into the top Via exactly when the parser finds none
    /// there; after it, the parser finds one, and nothing else changed.
    #[test]
    fn rport_is_added_to_the_top_via_exactly_when_it_has_none(message in request()) {
        let (has_rport, host, port, branch) = top_via_of(&message);
        match scan(message.as_bytes()) {
            TopVia::Unchanged => prop_assert!(has_rport, "left a Via without rport: {message}"),
            TopVia::AddRportAt(at) => {
                prop_assert!(!has_rport, "added rport to a Via with one: {message}");
                let at = at - HEADERS;
                let added = format!("{}{}{}", &message[..at], std::str::from_utf8(&RPORT).unwrap(), &message[at..]);
                prop_assert_eq!(top_via_of(&added), (true, host, port, branch), "{}", added);
                prop_assert_eq!(scan(added.as_bytes()), TopVia::Unchanged, "added once: {}", added);
            }
            TopVia::NotFound => prop_assert!(false, "no Via found in {message}"),
        }
    }

    /// The kernel's hash of a REGISTER's `To` is the definition's, over the
    /// line the parser reads as `To`.
    #[test]
    fn a_register_hashes_its_to_line(message in register_for()) {
        let (expected, value) = independent_to_hash(&message).expect("a To line");
        prop_assert_eq!(register_hash(message.as_bytes()), RegisterTo::Hash(expected));
        let parsed = Message::parse(message.as_bytes()).expect("a valid REGISTER");
        prop_assert_eq!(parsed.value(HeaderKind::To).map(|v| v.into_owned()), Some(value));
    }

    /// Two lines of one phone hash apart; other requests are not read.
    #[test]
    fn lines_hash_apart_and_other_requests_are_not_registers(a in 1..1000u32, b in 1..1000u32) {
        let line = |n: u32| format!("REGISTER sip:x SIP/2.0\r\nTo: <sip:line{n}@x>\r\n\r\n");
        prop_assert_eq!(register_hash(line(a).as_bytes()) == register_hash(line(b).as_bytes()), a == b);
        let invite = line(a).replacen("REGISTER", "INVITE", 1);
        prop_assert_eq!(register_hash(invite.as_bytes()), RegisterTo::NotRegister);
    }

    /// Responses carry other hops' Vias: never changed.
    #[test]
    fn responses_are_left_alone(message in request()) {
        let response = message.replacen("REGISTER sip:example.net SIP/2.0", "SIP/2.0 200 OK", 1);
        prop_assert_eq!(scan(response.as_bytes()), TopVia::Unchanged);
    }

    /// Any bytes, any bounds: no panic, and an offset inside what was scanned.
    #[test]
    fn any_bytes_give_an_answer_inside_the_scanned_bytes(
        bytes in prop::collection::vec(any::<u8>(), VIA_SCAN),
        start in 0..VIA_SCAN + 8,
        end in 0..VIA_SCAN + 64,
    ) {
        let buffer: [u8; VIA_SCAN] = bytes.try_into().unwrap();
        if let TopVia::AddRportAt(at) = top_via(&buffer, start, end) {
            prop_assert!(at >= start && at < end.min(VIA_SCAN), "{} outside {}..{}", at, start, end);
        }
        register_to(&buffer, start, end);
    }

    /// The incremental UDP checksum after inserting `;rport` at any offset
    /// equals etherparse's from scratch.
    #[test]
    fn the_rport_checksum_difference_matches_a_recomputation(
        payload in prop::collection::vec(any::<u8>(), 1..300),
        at in any::<prop::sample::Index>(),
        (src, dst) in (any::<u32>(), any::<u32>()),
    ) {
        let at = at.index(payload.len() + 1);
        let mut grown = payload.clone();
        grown.splice(at..at, RPORT);
        let (src, dst) = (Ipv4Addr::from(src).octets(), Ipv4Addr::from(dst).octets());
        let checksum = |payload: &[u8]| {
            let ip = Ipv4Header::new((8 + payload.len()) as u16, 64, IpNumber::UDP, src, dst).unwrap();
            UdpHeader::with_ipv4_checksum(5060, 5060, &ip, payload).unwrap().checksum
        };
        let before = checksum(&payload);
        // The offset counts from the UDP header, 8 bytes before the payload.
        let updated = redirector_ebpf::checksum::apply_udp_diff(before, rport_checksum_diff((8 + at) % 2 == 1));
        prop_assert_eq!(updated, checksum(&grown));
    }
}

#[test]
fn a_via_past_the_scanned_bytes_is_not_found() {
    let long = format!("REGISTER sip:x SIP/2.0\r\nSubject: {}\r\nVia: SIP/2.0/UDP h\r\n\r\n", "x".repeat(VIA_SCAN));
    assert_eq!(scan(long.as_bytes()), TopVia::NotFound);
    let endless = format!("REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch={}\r\n\r\n", "b".repeat(VIA_SCAN));
    assert_eq!(scan(endless.as_bytes()), TopVia::NotFound);
    assert_eq!(scan(b"REGISTER sip:x SIP/2.0\r\nCSeq: 1 REGISTER\r\n\r\nVia: SIP/2.0/UDP h\r\n"), TopVia::NotFound);
}

#[test]
fn a_to_past_the_scanned_bytes_or_the_headers_is_unknown() {
    let late = format!("REGISTER sip:x SIP/2.0\r\nSubject: {}\r\nTo: <sip:a@x>\r\n\r\n", "x".repeat(VIA_SCAN));
    assert_eq!(register_hash(late.as_bytes()), RegisterTo::Unknown);
    assert_eq!(
        register_hash(b"REGISTER sip:x SIP/2.0\r\nCSeq: 1 REGISTER\r\n\r\nTo: <sip:a@x>\r\n"),
        RegisterTo::Unknown
    );
    assert_eq!(register_hash(b"REGISTER sip:x SIP/2.0\r\nTimestamp: 1\r\nTo: <sip:a@x>"), RegisterTo::Unknown);
}
