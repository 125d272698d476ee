//! The shared scans the XDP program runs over SIP, on the host:
//! * where nat mode adds `;rport` (`redirector_ebpf::via`), against
//!   redirector's own SIP parser on requests as user agents write them, and
//!   on arbitrary bytes; and the checksum difference it applies, against
//!   etherparse;
//! * the AOR hash of a request (`redirector_ebpf::aor`), against the
//!   daemon's parser and `identity` on the same bytes: on To / From values
//!   as user agents write them (and some they should not), and on mutated
//!   and arbitrary bytes, it gives the daemon's AOR's hash or declines;
//! * the Via count (`redirector_ebpf::vias`): `Several` only where the
//!   daemon reads two or more Via values, on requests as proxies write
//!   them (lines, compact names, comma lists) and on mutated bytes; what
//!   it cannot be sure of (a fold, a quoted comma) is `Unknown`.
//!
//! And, through the real program (BPF_PROG_TEST_RUN, dsr, `AORS` filled),
//! requests as an upstream proxy forwards them and mutations of them, from
//! a source on no fast path: never `XDP_ABORTED`, exactly one counter
//! moved, and one forwarded (`forwarded_by_aor`) goes to the home `AORS`
//! names for the daemon's AOR of that datagram, unchanged inside its
//! tunnel, and only when the daemon reads more than one Via in it.
//!
//! And from a socket that carries several lines (`CLIENT_SHARED`, its
//! entry line1's): requests and responses of its lines and mutations of
//! them, and random bytes, never `XDP_ABORTED`, exactly one counter moved;
//! one forwarded goes to the home `AORS` names for the daemon's AOR of
//! that datagram (a response's: its `To`), its own line's alone by the
//! entry (`forwarded`), another's by `AORS` (`forwarded_other_aor`). The
//! same from a nat edge, where each line leaves from its own edge port
//! (line1 from the entry's), and a line whose port another socket holds
//! is never sent.
//!
//! The program runs the same code: `fixtures.rs` and
//! `malformed_properties.rs` check the kernel's frames byte for byte.

use std::{collections::BTreeMap, net::Ipv4Addr};

use etherparse::{IpNumber, Ipv4Header, UdpHeader};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use redirector::{
    edge::first_contact::identity,
    sip::{Aor, HeaderKind, Message, NameAddr, Via},
};
use redirector_ebpf::{
    AorRoute, CLIENT_CHECKS_REGISTER, CLIENT_SHARED, ClientEntry, Counter, FAMILY_V4, NatEntry, NatKey,
    aor::{RequestAor, aor_hash, message_aor, request_aor},
    via::{RPORT, TopVia, VIA_SCAN, rport_checksum_diff, top_via},
    vias::{Vias, count_vias},
};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture},
    packets::{Datagram, ethernet},
    privileged,
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

fn read_aor(message: &[u8]) -> RequestAor {
    let (buffer, end) = framed(message);
    request_aor(&buffer, HEADERS, end)
}

/// The hash of the AOR the daemon routes a request by, if it reads one.
fn daemon_aor(message: &[u8]) -> Option<u64> {
    let parsed = Message::parse(message).ok().filter(Message::is_request)?;
    Some(aor_hash(identity(&parsed).ok()?.as_str().as_bytes()))
}

/// The kernel never names another AOR than the daemon's.
fn agrees(message: &[u8]) -> Result<(), TestCaseError> {
    if let (RequestAor::Hash(kernel), Some(daemon)) = (read_aor(message), daemon_aor(message)) {
        prop_assert_eq!(kernel, daemon, "{}", String::from_utf8_lossy(message));
    }
    Ok(())
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

/// A To / From value, and whether it is of the forms the kernel reads
/// (display name plain or quoted without escapes, `<>` or a bare
/// addr-spec, `sip`/`sips` in any case, a user or none, a host in any
/// case after a user, a port after a user, URI and header parameters).
fn name_addr(user: u32) -> impl Strategy<Value = (String, bool)> {
    let display = prop_oneof![
        Just(("", true)),
        Just(("Line 1 ", true)),
        Just(("\"Line, <1>\" ", true)),
        Just(("\"a\\\"b\" ", false)),
        Just(("\"x\"", true)),
        Just(("sip ", true)),
        Just(("Bob \"x\" ", false))
    ];
    let scheme = prop_oneof![
        Just(("sip", true)),
        Just(("SIP", true)),
        Just(("sips", true)),
        Just(("Sip", true)),
        Just(("tel", false)),
        Just(("sipx", false))
    ];
    let userpart = prop_oneof![
        Just((format!("line{user}@"), true)),
        Just((format!("Line{user}@"), true)),
        Just((String::new(), true)),
        Just((format!("line{user}:pw@"), false)),
        Just((format!("a@line{user}@"), false)),
        Just(("@".to_owned(), false))
    ];
    let host = prop_oneof![
        Just(("example.net", true)),
        Just(("EXAMPLE.Net", true)),
        Just(("[2001:db8::1]", false)),
        Just(("", false)),
        Just(("exa mple", false))
    ];
    let port = prop_oneof![Just(""), Just(":5060")];
    let uri_params = prop_oneof![Just(""), Just(";transport=udp"), Just(";user=phone?x=1")];
    let header_params =
        prop_oneof![Just(""), Just(";tag=abc"), Just(" ;tag=x"), Just(";tag=a\r\n b"), Just(", <sip:z@y>")];
    let brackets = prop_oneof![Just(("<", ">")), Just(("< ", " >")), Just(("", "")), Just(("<", ""))];
    (display, scheme, userpart, host, port, uri_params, header_params, brackets, 0..3usize).prop_map(
        |(
            (display, d),
            (scheme, s),
            (user, u),
            (host, h),
            port,
            uri_params,
            header_params,
            (open, close),
            trailing,
        )| {
            let bare = open.is_empty();
            let value = if bare {
                format!("{scheme}:{user}{host}{port}{header_params}")
            } else {
                format!("{display}{open}{scheme}:{user}{host}{port}{uri_params}{close}{header_params}")
            };
            let common = d
                && s
                && u
                && h
                && (!bare || display.is_empty())
                && close.len() == open.len()
                && (port.is_empty() || !user.is_empty())
                && !(bare && uri_params.contains('?'))
                && !header_params.contains('\n')
                && !header_params.contains(',')
                && !(bare && (header_params.starts_with(' ') || trailing > 0))
                && !(user.is_empty() && host.bytes().any(|b| b.is_ascii_uppercase()));
            (format!("{value}{}", " ".repeat(trailing)), common)
        },
    )
}

/// A request whose AOR header (To of a REGISTER, From of the others) has
/// a `name_addr` value, the other one another line's, with the header
/// names written as user agents do.
fn request_with_aor() -> impl Strategy<Value = (String, bool)> {
    let method = prop_oneof![Just("REGISTER"), Just("INVITE"), Just("MESSAGE"), Just("OPTIONS"), Just("BYE")];
    let to_name = prop_oneof![Just("To"), Just("to"), Just("TO"), Just("t"), Just("T")];
    let from_name = prop_oneof![Just("From"), Just("from"), Just("FROM"), Just("f"), Just("F")];
    (method, to_name, from_name, 0..2usize, 1..50u32, name_addr(7), earlier_headers(), any::<bool>()).prop_map(
        |(method, to_name, from_name, spaces, other, (value, common), earlier, to_first)| {
            let earlier: String = earlier.iter().map(|h| format!("{h}\r\n")).collect();
            let spaces = " ".repeat(spaces);
            let other = format!("<sip:other{other}@example.net>");
            let (to, from) =
                if method == "REGISTER" { (value.as_str(), other.as_str()) } else { (other.as_str(), value.as_str()) };
            let to = format!("{to_name}{spaces}: {to}\r\n");
            let from = format!("{from_name}{spaces}: {from};tag=1\r\n");
            let (first, second) = if to_first { (to, from) } else { (from, to) };
            let message = format!(
                "{method} sip:line7@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKa;rport\r\n\
                 {earlier}{first}{second}Call-ID: c@x\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
            );
            (message, common)
        },
    )
}

/// A request of `base` with a few bytes overwritten, inserted or removed.
fn mutated_from(base: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b" \t\r\n:;<>\"\\@[]?sipSIPtfTF,vVa".to_vec())];
    (base, prop::collection::vec((edit, byte), 1..4)).prop_map(|(message, edits)| {
        let mut bytes = message.into_bytes();
        for ((at, _, kind), byte) in edits {
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

/// `request_with_aor`'s requests, mutated.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    mutated_from(request_with_aor().prop_map(|(message, _)| message))
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

    /// On To / From values of every form: where the kernel reads an AOR
    /// it is the daemon's, and the common forms it does read.
    #[test]
    fn the_kernel_reads_the_daemons_aor_or_declines((message, common) in request_with_aor()) {
        agrees(message.as_bytes())?;
        if common {
            let daemon = daemon_aor(message.as_bytes());
            prop_assert!(daemon.is_some(), "the daemon reads an AOR: {}", message);
            prop_assert_eq!(read_aor(message.as_bytes()), RequestAor::Hash(daemon.unwrap()), "{}", message);
        }
    }

    /// Requests with bytes changed, added or taken away: never another AOR.
    #[test]
    fn mutated_requests_never_give_another_aor(message in mutated()) {
        agrees(&message)?;
    }

    /// Two lines of one phone hash apart; responses, keepalives and STUN
    /// are no requests, none of the check's.
    #[test]
    fn lines_hash_apart_and_what_is_no_request_is_not_read(
        a in 1..1000u32,
        b in 1..1000u32,
        stun in proptest::collection::vec(any::<u8>(), 20..60),
    ) {
        let line = |n: u32| format!("INVITE sip:x SIP/2.0\r\nFrom: <sip:line{n}@x>;tag=1\r\nTo: <sip:y@x>\r\n\r\n");
        prop_assert_eq!(read_aor(line(a).as_bytes()) == read_aor(line(b).as_bytes()), a == b);
        let response = line(a).replacen("INVITE sip:x SIP/2.0", "SIP/2.0 200 OK", 1);
        prop_assert_eq!(read_aor(response.as_bytes()), RequestAor::NotRequest);
        for keepalive in [&b"\r\n\r\n"[..], b"\r\n"] {
            prop_assert_eq!(read_aor(keepalive), RequestAor::NotRequest);
        }
        // A STUN message starts with two zero bits (RFC 5389 §6).
        let stun = [&[stun[0] & 0x01][..], &stun[1..]].concat();
        prop_assert_eq!(read_aor(&stun), RequestAor::NotRequest);
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
        let buffer: [u8; VIA_SCAN] = bytes.clone().try_into().unwrap();
        if let TopVia::AddRportAt(at) = top_via(&buffer, start, end) {
            prop_assert!(at >= start && at < end.min(VIA_SCAN), "{} outside {}..{}", at, start, end);
        }
        request_aor(&buffer, start, end);
        let (framed, end) = framed(&bytes);
        if let RequestAor::Hash(kernel) = request_aor(&framed, HEADERS, end)
            && let Some(daemon) = daemon_aor(&bytes[..end - HEADERS])
        {
            prop_assert_eq!(kernel, daemon);
        }
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


    /// As proxies write them: two or more values are `Several`, one is
    /// not, and what the count cannot be sure of is `Unknown`.
    #[test]
    fn written_vias_are_counted_or_unknown(proxied in proxied_request()) {
        let counted = count(proxied.text.as_bytes());
        let daemon = daemon_vias(proxied.text.as_bytes());
        prop_assert_eq!(daemon, Some(proxied.vias), "the daemon reads what was written: {}", proxied.text);
        // One value is followed by Max-Forwards: the count stops there.
        let expected = match proxied.vias {
            _ if proxied.unsure => Vias::Unknown,
            1 => Vias::Alone,
            _ => Vias::Several,
        };
        prop_assert_eq!(counted, expected, "{}", proxied.text);
    }

    /// Mutated: `Several` only where the daemon reads two or more values,
    /// `NotSeveral` (the headers' end) only where it reads at most one.
    #[test]
    fn mutated_vias_are_never_miscounted(message in mutated_proxied()) {
        if let Some(daemon) = daemon_vias(&message) {
            match count(&message) {
                Vias::Several => prop_assert!(daemon >= 2, "{}", String::from_utf8_lossy(&message)),
                Vias::NotSeveral => prop_assert!(daemon <= 1, "{}", String::from_utf8_lossy(&message)),
                Vias::Alone | Vias::Unknown => {}
            }
        }
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
fn an_aor_past_the_scanned_bytes_or_the_headers_or_folded_is_unknown() {
    let late = format!("INVITE sip:x SIP/2.0\r\nSubject: {}\r\nFrom: <sip:a@x>\r\n\r\n", "x".repeat(VIA_SCAN));
    assert_eq!(read_aor(late.as_bytes()), RequestAor::Unknown);
    assert_eq!(read_aor(b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\nFrom: <sip:a@x>\r\n"), RequestAor::Unknown);
    assert_eq!(read_aor(b"INVITE sip:x SIP/2.0\r\nFrom: <sip:a@x>\r\n"), RequestAor::Unknown, "one byte past the line");
    assert_eq!(read_aor(b"INVITE sip:x SIP/2.0\r\nFrom: <sip:a@x>\r\n ;tag=1\r\n\r\n"), RequestAor::Unknown);
    assert_eq!(read_aor(b"register sip:x SIP/2.0\r\nTo: <sip:a@x>\r\n\r\n"), RequestAor::Unknown);
    assert_eq!(read_aor(b"\r\nINVITE sip:x SIP/2.0\r\nFrom: <sip:a@x>\r\n\r\n"), RequestAor::Unknown);
    let hash = |aor: &str| RequestAor::Hash(aor_hash(aor.as_bytes()));
    assert_eq!(
        read_aor(b"INVITE sip:x SIP/2.0\r\nf : \"A\" <SIPS:Alice@Example.NET:5061;x=y>;tag=1\r\n\r\n"),
        hash("sip:Alice@example.net")
    );
    assert_eq!(read_aor(b"REGISTER sip:x SIP/2.0\r\nFrom: <sip:b@x>\r\nt: sip:a@x;tag=1\r\n\r\n"), hash("sip:a@x"));
}

const XDP_ABORTED: u32 = 0;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn count(message: &[u8]) -> Vias {
    let (buffer, end) = framed(message);
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

/// `proxied_request`'s requests, mutated.
fn mutated_proxied() -> impl Strategy<Value = Vec<u8>> {
    mutated_from(proxied_request().prop_map(|proxied| proxied.text))
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
    assert_eq!(count(empty_elements.as_bytes()), Vias::Alone);
    let one = format!("{line}Via: SIP/2.0/UDP c;branch=z9hG4bK1\r\n\r\n");
    assert_eq!(count(one.as_bytes()), Vias::NotSeveral);
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

fn frame(source: &str, payload: &[u8]) -> Vec<u8> {
    let datagram = Datagram::new(source, "192.0.2.10:5060").with(|d| d.payload = payload.to_vec());
    ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet())
}

/// How the program sends what it forwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sends {
    /// dsr: tunnelled, the datagram unchanged inside.
    Tunnelled,
    /// nat: rewritten from an edge port, the payload unchanged (the
    /// fixtures' shared socket asked for rport).
    Rewritten,
}

/// One payload from `source` through the program: the counter it moved,
/// and the home a forwarded one was sent to with the edge port it left
/// from (nat; 0 in dsr); anything else is passed untouched.
fn run_one(
    fx: &mut Fixture,
    sends: Sends,
    source: &str,
    payload: &[u8],
    forwarded: &[Counter],
) -> Result<(Counter, Option<(Ipv4Addr, u16)>), TestCaseError> {
    let input = frame(source, payload);
    let before = fx.counters();
    let outcome = fx.run(&input);
    let moved: Vec<Counter> = before.iter().zip(fx.counters()).filter(|(b, a)| a.1 != b.1).map(|(b, _)| b.0).collect();
    prop_assert_eq!(moved.len(), 1, "exactly one counter moves: {:?}", moved);
    prop_assert_ne!(outcome.action, XDP_ABORTED);
    let counter = moved[0];
    if !forwarded.contains(&counter) {
        prop_assert_eq!(outcome.action, XDP_PASS, "{}: {}", counter.label(), String::from_utf8_lossy(payload));
        prop_assert_eq!(&outcome.frame, &input, "passed frames are untouched");
        return Ok((counter, None));
    }
    prop_assert_eq!(outcome.action, XDP_TX);
    let home = Ipv4Addr::from(<[u8; 4]>::try_from(&outcome.frame[30..34]).unwrap());
    if sends == Sends::Tunnelled {
        prop_assert_eq!(&outcome.frame[34..], &input[14..], "the datagram goes unchanged inside the tunnel");
        return Ok((counter, Some((home, 0))));
    }
    prop_assert_eq!(&outcome.frame[42..], &input[42..], "the payload goes unchanged");
    Ok((counter, Some((home, u16::from_be_bytes([outcome.frame[34], outcome.frame[35]])))))
}

/// One payload from the proxy through the program; the counter it moved.
fn check(fx: &mut Fixture, payload: &[u8]) -> Result<Counter, TestCaseError> {
    let (counter, home) = run_one(fx, Sends::Tunnelled, "10.0.0.9:5060", payload, &[Counter::ForwardedByAor])?;
    let Some((home, _)) = home else { return Ok(counter) };
    let text = String::from_utf8_lossy(payload);
    if let Some((route, vias)) = daemon_route(payload) {
        let slot = route.ok_or_else(|| TestCaseError::fail(format!("forwarded an AOR AORS lacks: {text}")))?;
        let (_, address, forwards) = HOMES[slot as usize];
        prop_assert!(forwards, "forwarded to a home that is down: {}", text);
        prop_assert_eq!(home, address, "forwarded to another home than the daemon's AOR's: {}", text);
        prop_assert!(vias >= 2, "forwarded with {} Via values: {}", vias, text);
    }
    Ok(counter)
}

type Check = fn(&mut Fixture, &[u8]) -> Result<Counter, TestCaseError>;

fn run(
    fx: &mut Fixture,
    check: Check,
    strategy: impl Strategy<Value = Vec<u8>>,
    cases: u32,
) -> BTreeMap<&'static str, u32> {
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

/// `check` over payloads as written, mutated ones and random bytes; the
/// counters the first two reached.
fn run_each(
    fx: &mut Fixture,
    check: Check,
    written: impl Strategy<Value = Vec<u8>>,
    mutated: impl Strategy<Value = Vec<u8>>,
) -> (BTreeMap<&'static str, u32>, BTreeMap<&'static str, u32>) {
    let written = run(fx, check, written, 1500);
    eprintln!("written: {written:?}");
    let mutated = run(fx, check, mutated, 3000);
    eprintln!("mutated: {mutated:?}");
    let random = run(fx, check, prop::collection::vec(any::<u8>(), 0..600), 500);
    eprintln!("random: {random:?}");
    (written, mutated)
}

#[test]
fn proxied_requests_go_to_their_aors_home_or_up() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    route_lines(&mut fx);
    fx.dataplane().add_proxy("10.0.0.9".parse().unwrap()).unwrap();
    let written = proxied_request().prop_map(|proxied| proxied.text.into_bytes());
    let (written, mutated) = run_each(&mut fx, check, written, mutated_proxied());
    for outcome in ["forwarded_by_aor", "pass_miss", "pass_server_down", "pass_vias_unseen"] {
        assert!(written.get(outcome).copied().unwrap_or(0) >= 15, "{outcome} reached: {written:?}");
        assert!(mutated.get(outcome).copied().unwrap_or(0) >= 30, "{outcome} reached: {mutated:?}");
    }
}

/// `AORS` as `routes` has it.
fn route_lines(fx: &mut Fixture) {
    let routes = routes();
    let values: Vec<AorRoute> = routes.values().map(|&server| AorRoute { server, ..AorRoute::default() }).collect();
    fx.dataplane().route_aors(&routes.keys().copied().collect::<Vec<_>>(), &values).unwrap();
}

/// A socket that carries several lines, put on the fast path for line1
/// (at its home, as `routes` has it).
const SHARED_SOCKET: &str = "10.0.0.2:5081";

fn line1() -> u64 {
    aor_hash(b"sip:line1@example.net")
}

/// The hash of the daemon's AOR of a shared socket's datagram: a
/// request's (`identity`), a response's `To`.
fn daemon_line(message: &[u8]) -> Option<u64> {
    let parsed = Message::parse(message).ok()?;
    let aor = if parsed.is_request() {
        identity(&parsed).ok()?
    } else {
        let value = parsed.value(HeaderKind::To)?;
        Aor::from_uri(NameAddr::parse(&value, "To").ok()?.uri, "To").ok()?
    };
    Some(aor_hash(aor.as_str().as_bytes()))
}

/// A request of a line (`proxied_request`'s, one Via or several) or a
/// response with a line's AOR in its `To`.
fn line_message() -> impl Strategy<Value = String> {
    (proxied_request(), any::<bool>()).prop_map(|(proxied, response)| {
        if !response {
            return proxied.text;
        }
        // The line's AOR is where the request had it: moved to the To.
        let (line, rest) = proxied.text.split_once("\r\n").unwrap();
        let method = line.split(' ').next().unwrap();
        let rest = if method == "REGISTER" {
            rest.to_owned()
        } else {
            rest.replacen("From: ", "X-From: ", 1).replacen("To: ", "From: ", 1).replacen("X-From: ", "To: ", 1)
        };
        format!("SIP/2.0 200 OK\r\n{rest}")
    })
}

/// One payload from the shared socket through the program; the counter
/// it moved. What is forwarded (and the daemon parses) goes to the home
/// of the daemon's line for it as `AORS` routes it (the entry's own line
/// by the entry); what names no routed line is forwarded only if it is no
/// SIP message, by the entry, never by AOR.
fn check_shared(fx: &mut Fixture, payload: &[u8]) -> Result<Counter, TestCaseError> {
    check_shared_sent(fx, Sends::Tunnelled, payload, routes()).map(|(counter, _)| counter)
}

/// `check_shared` for a nat edge, whose lines leave from their own edge
/// ports: those on this socket (`line_ports`) do, to their homes; a line
/// whose port another socket holds goes up, as one `AORS` lacks.
fn check_shared_nat(fx: &mut Fixture, payload: &[u8]) -> Result<Counter, TestCaseError> {
    let ours: BTreeMap<u64, u32> =
        routes().into_iter().filter(|(line, _)| *line == line1() || line_ports()[line].1).collect();
    let (counter, sent) = check_shared_sent(fx, Sends::Rewritten, payload, ours)?;
    if let (Some(port), Some(line)) = (sent, daemon_line(payload)) {
        let expected = if line == line1() { ENTRY_PORT } else { line_ports()[&line].0 };
        prop_assert_eq!(port, expected, "left from another port than its line's: {}", String::from_utf8_lossy(payload));
    }
    Ok(counter)
}

/// One payload from the shared socket through the program, checked
/// against the lines the daemon would send by `routes`; the counter it
/// moved, and the edge port a datagram the daemon parses left from.
fn check_shared_sent(
    fx: &mut Fixture,
    sends: Sends,
    payload: &[u8],
    routes: BTreeMap<u64, u32>,
) -> Result<(Counter, Option<u16>), TestCaseError> {
    let forwarded = [Counter::Forwarded, Counter::ForwardedOtherAor];
    let (counter, sent) = run_one(fx, sends, SHARED_SOCKET, payload, &forwarded)?;
    // A datagram the daemon does not parse at all is the home's to refuse
    // (as `check`): the program reads only its first bytes.
    let Some((home, port)) = sent.filter(|_| Message::parse(payload).is_ok()) else { return Ok((counter, None)) };
    let text = String::from_utf8_lossy(payload);
    let routed = daemon_line(payload).and_then(|line| Some((line, routes.get(&line).copied()?)));
    let Some((line, slot)) = routed else {
        prop_assert_eq!(counter, Counter::Forwarded, "routed by AOR, no line the daemon routes: {}", text);
        prop_assert_eq!(home, HOMES[routes[&line1()] as usize].1, "not the entry's home: {}", text);
        let (buffer, end) = framed(payload);
        let no_request = matches!(message_aor(&buffer, HEADERS, end), RequestAor::NotRequest);
        prop_assert!(no_request, "a message for no routed line forwarded: {}", text);
        return Ok((counter, None));
    };
    let (_, address, forwards) = HOMES[slot as usize];
    prop_assert!(forwards, "forwarded to a home that is down: {}", text);
    prop_assert_eq!(home, address, "forwarded to another home than the daemon's line's: {}", text);
    prop_assert_eq!(counter == Counter::Forwarded, line == line1(), "only its own line takes the entry: {}", text);
    Ok((counter, Some(port)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A shared socket's responses are read by their `To`: where the
    /// kernel reads an AOR it is the daemon's.
    #[test]
    fn the_kernel_reads_a_shared_sockets_line_as_the_daemon_does(message in mutated_from(line_message())) {
        let (buffer, end) = framed(&message);
        if let (RequestAor::Hash(kernel), Some(daemon)) = (message_aor(&buffer, HEADERS, end), daemon_line(&message)) {
            prop_assert_eq!(kernel, daemon, "{}", String::from_utf8_lossy(&message));
        }
    }
}

#[test]
fn a_shared_sockets_lines_go_to_their_own_homes_or_up() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("dsr");
    route_lines(&mut fx);
    install_shared_socket(&mut fx, 0);
    let written = line_message().prop_map(String::into_bytes);
    let (written, mutated) = run_each(&mut fx, check_shared, written, mutated_from(line_message()));
    for outcome in ["forwarded", "forwarded_other_aor", "pass_other_aor", "pass_server_down"] {
        assert!(written.get(outcome).copied().unwrap_or(0) >= 10, "{outcome} reached: {written:?}");
        assert!(mutated.get(outcome).copied().unwrap_or(0) >= 10, "{outcome} reached: {mutated:?}");
    }
    assert!(mutated.get("pass_aor_unseen").copied().unwrap_or(0) >= 10, "pass_aor_unseen reached: {mutated:?}");
}

/// The shared socket's entry, line1's at its home (nat: from `nat_port`).
fn install_shared_socket(fx: &mut Fixture, nat_port: u16) {
    let entry = ClientEntry {
        server: routes()[&line1()],
        flags: CLIENT_CHECKS_REGISTER | CLIENT_SHARED,
        aor_hash: line1(),
        nat_port_be: nat_port.to_be(),
        ..ClientEntry::default()
    };
    fx.dataplane().install_client(endpoint_of(SHARED_SOCKET), entry).unwrap();
}

fn endpoint_of(socket: &str) -> redirector_ebpf::Endpoint {
    let socket = socket.parse::<std::net::SocketAddr>().unwrap();
    redirector::kernel::loader::endpoint(socket.ip(), socket.port())
}

/// The shared socket's edge port in nat mode.
const ENTRY_PORT: u16 = 20051;

/// nat: each routed line's own edge port, and whether its reply entry
/// names the shared socket (every fifth line's names another socket, the
/// AOR registered from there).
fn line_ports() -> BTreeMap<u64, (u16, bool)> {
    (1..ROUTED_LINES)
        .map(|n| (aor_hash(format!("sip:line{n}@example.net").as_bytes()), (21000 + n as u16, n % 5 != 0)))
        .collect()
}

/// nat: `AORS` as `routes` has it, each route with its line's port, whose
/// reply entry names the line's home and its socket.
fn route_line_ports(fx: &mut Fixture) {
    let (routes, ports) = (routes(), line_ports());
    let (shared, elsewhere) = (endpoint_of(SHARED_SOCKET), endpoint_of("10.0.0.2:5999"));
    let service = endpoint_of("192.0.2.10:5060");
    let mut keys = Vec::new();
    let mut replies = Vec::new();
    let mut values = Vec::new();
    for (line, &server) in &routes {
        let (port, ours) = ports[line];
        keys.push(NatKey { edge_port_be: port.to_be(), family: FAMILY_V4, _pad: 0 });
        replies.push(NatEntry { client: if ours { shared } else { elsewhere }, service, server });
        values.push(AorRoute { server, nat_port_be: port.to_be(), ..AorRoute::default() });
    }
    fx.dataplane().install_nat_replies(&keys, &replies).unwrap();
    fx.dataplane().route_aors(&routes.keys().copied().collect::<Vec<_>>(), &values).unwrap();
}

/// nat: a shared socket's lines leave from their own edge ports to their
/// own homes (line1 from the entry's), or go up; a line whose port is
/// another socket's is never sent with it.
#[test]
fn a_shared_sockets_lines_in_nat_mode_go_to_their_own_homes_by_their_own_ports_or_up() {
    if !privileged() {
        return;
    }
    let mut fx = Fixture::new("nat");
    route_line_ports(&mut fx);
    install_shared_socket(&mut fx, ENTRY_PORT);
    let written = line_message().prop_map(String::into_bytes);
    let (written, mutated) = run_each(&mut fx, check_shared_nat, written, mutated_from(line_message()));
    for outcome in ["forwarded", "forwarded_other_aor", "pass_other_aor", "pass_server_down"] {
        assert!(written.get(outcome).copied().unwrap_or(0) >= 10, "{outcome} reached: {written:?}");
        assert!(mutated.get(outcome).copied().unwrap_or(0) >= 10, "{outcome} reached: {mutated:?}");
    }
}
