use std::net::SocketAddr;

use super::*;

const REGISTER: &str = "REGISTER sip:example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@Example.NET>\r\n\
From: Bob <sip:bob@example.net>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@10.0.0.2:5060>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

fn parse(text: &str) -> Result<Message<'_>, ParseError> {
    Message::parse(text.as_bytes())
}

#[test]
fn a_register_is_scanned_without_copies() {
    let message = parse(REGISTER).unwrap();
    assert_eq!(message.start, StartLine::Request { method: "REGISTER", uri: "sip:example.net" });
    assert_eq!(message.via_values().count(), 1);
    assert_eq!(message.cseq().unwrap(), (1826, "REGISTER".to_owned()));
    assert_eq!(message.max_forwards().unwrap(), Some(70));
    assert!(message.body.is_empty());
    let to = message.value(HeaderKind::To).unwrap();
    assert!(matches!(to, std::borrow::Cow::Borrowed(_)), "no copy for an unfolded value");
    let aor = Aor::from_uri(NameAddr::parse(&to, "To").unwrap().uri, "To").unwrap();
    assert_eq!(aor.as_str(), "sip:bob@example.net");
}

#[test]
fn compact_and_case_insensitive_header_names() {
    let compact = "INVITE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nT: <sip:a@b>\r\nf: <sip:c@d>;tag=1\r\n\
        I: id\r\ncseq: 1 INVITE\r\nm: <sip:c@1.2.3.4>\r\nL: 0\r\no: presence\r\nk: path\r\ns: hi\r\nE: gzip\r\nc: text/plain\r\n\r\n";
    let message = parse(compact).unwrap();
    for kind in [
        HeaderKind::Via,
        HeaderKind::To,
        HeaderKind::From,
        HeaderKind::CallId,
        HeaderKind::Contact,
        HeaderKind::Event,
        HeaderKind::Supported,
        HeaderKind::Subject,
        HeaderKind::ContentEncoding,
        HeaderKind::ContentType,
        HeaderKind::ContentLength,
    ] {
        assert!(message.header(kind).is_some(), "{kind:?}");
    }
    assert_eq!(message.value(HeaderKind::CallId).unwrap(), "id");
}

#[test]
fn vias_count_the_same_as_lines_or_comma_lists() {
    let lines = REGISTER.replace(
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n",
        "Via: SIP/2.0/UDP p1:5060;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP p2;branch=z9hG4bKb\r\nv: SIP/2.0/UDP c;branch=z9hG4bKc\r\n",
    );
    let lists = REGISTER.replace(
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n",
        "Via: SIP/2.0/UDP p1:5060;branch=z9hG4bKa , SIP/2.0/UDP p2;branch=z9hG4bKb\r\nVia: SIP/2.0/UDP c;branch=z9hG4bKc\r\n",
    );
    for text in [lines, lists] {
        let message = parse(&text).unwrap();
        let hosts: Vec<String> = message.via_values().map(|v| Via::parse(&v).unwrap().host.to_owned()).collect();
        assert_eq!(hosts, ["p1", "p2", "c"]);
    }
}

#[test]
fn folded_lines_and_spaced_vias_are_understood() {
    let text = REGISTER
        .replace("To: Bob <sip:bob@Example.NET>\r\n", "To: Bob\r\n   <sip:bob@Example.NET>\r\n")
        .replace("Via: SIP/2.0/UDP 10.0.0.2:5060;", "Via: SIP / 2.0 / UDP 10.0.0.2 : 5060\r\n\t;");
    let message = parse(&text).unwrap();
    assert_eq!(message.value(HeaderKind::To).unwrap(), "Bob <sip:bob@Example.NET>");
    let via = message.via_values().next().unwrap();
    let via = Via::parse(&via).unwrap();
    assert_eq!((via.transport, via.host, via.port), ("UDP", "10.0.0.2", Some(5060)));
    assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
}

#[test]
fn commas_inside_quotes_and_brackets_do_not_split() {
    let items: Vec<&str> = split_list(r#""Doe, John" <sip:j@x;a=1,2>, <sip:k@y>,,  sip:z@w"#).collect();
    assert_eq!(items, [r#""Doe, John" <sip:j@x;a=1,2>"#, "<sip:k@y>", "sip:z@w"]);
}

#[test]
fn content_length_is_checked_against_the_datagram() {
    let with_body = REGISTER.replace("Content-Length: 0", "Content-Length: 4") + "abcdEXTRA";
    assert_eq!(parse(&with_body).unwrap().body, b"abcd");
    let lying = REGISTER.replace("Content-Length: 0", "Content-Length: 40");
    assert_eq!(parse(&lying).unwrap_err(), ParseError::ContentLengthTooLarge);
    let garbage = REGISTER.replace("Content-Length: 0", "l: zero");
    assert_eq!(parse(&garbage).unwrap_err(), ParseError::ContentLength);
    let twice = REGISTER.replace("Content-Length: 0", "Content-Length: 0\r\nl: 4") + "abcd";
    assert_eq!(parse(&twice).unwrap_err(), ParseError::ContentLength, "disagreeing repeats");
    let agreeing = REGISTER.replace("Content-Length: 0", "Content-Length: 0\r\nl: 0");
    assert!(parse(&agreeing).is_ok());
}

#[test]
fn every_rejection_names_its_problem() {
    let cases = [
        (REGISTER.replace("Call-ID: 843817637684230@998sdasdh09\r\n", ""), "Missing Call-ID Header"),
        (REGISTER.replace("SIP/2.0/UDP 10.0.0.2:5060", "SIP/3.0/UDP 10.0.0.2:5060"), "Malformed Via Header"),
        (REGISTER.replace("CSeq: 1826 REGISTER", "CSeq: 1826 INVITE"), "CSeq Method Mismatch"),
        (REGISTER.replace("CSeq: 1826 REGISTER", "CSeq: many REGISTER"), "Malformed CSeq Header"),
        (REGISTER.replace("Max-Forwards: 70", "Max-Forwards: -1"), "Malformed Max-Forwards Header"),
        (
            REGISTER.replace("REGISTER sip:example.net SIP/2.0", "REGISTER sip:example.net SIP/1.0"),
            "Unsupported SIP Version",
        ),
        (REGISTER.replace("REGISTER sip:example.net SIP/2.0", "REGISTER"), "Malformed Start Line"),
        (REGISTER.replace("Expires: 7200", "Expires 7200"), "Malformed Header Line"),
        (REGISTER.replace("\r\n\r\n", "\r\n"), "No Blank Line After Headers"),
    ];
    for (text, reason) in cases {
        assert_eq!(parse(&text).unwrap_err().to_string(), reason);
    }
}

#[test]
fn responses_are_scanned_too() {
    let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nTo: <sip:a@b>;tag=9\r\nFrom: <sip:a@b>;tag=1\r\n\
        Call-ID: x\r\nCSeq: 2 REGISTER\r\n\r\n";
    let message = parse(response).unwrap();
    assert_eq!(message.start, StartLine::Response { code: 200, reason: "OK" });
    assert_eq!(tag(&message.value(HeaderKind::To).unwrap()), Some("9"));
}

#[test]
fn stamping_a_via_adds_received_and_rport() {
    let via = Via::parse("SIP/2.0/UDP client.example:5070;branch=z9hG4bK1;rport").unwrap();
    let source: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let stamped = via.stamped(source);
    assert_eq!(stamped, "SIP/2.0/UDP client.example:5070;branch=z9hG4bK1;received=203.0.113.5;rport=40000");
    assert_eq!(Via::parse(&stamped).unwrap().response_address(), Some(source));
    let same_host = Via::parse("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK2").unwrap();
    assert_eq!(same_host.stamped(source), "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK2");
    assert_eq!(same_host.response_address(), Some("203.0.113.5:5060".parse().unwrap()));
}

proptest::proptest! {
    /// First contact answers to where the stamped Via says without reading
    /// it again: `stamped_response_address` must be what reading it gives.
    #[test]
    fn a_stamped_via_sends_its_response_where_reading_it_again_would(
        host in proptest::prop_oneof!["203\\.0\\.113\\.5", "[a-z]{1,8}\\.example", "\\[2001:db8::1\\]", "10\\.0\\.0\\.[0-9]"],
        port in proptest::option::of(1u16..),
        params in "(;(rport|rport=[0-9]{1,5}|received=10\\.9\\.9\\.9|branch=z9hG4bK[0-9]{1,4}|lr| RPort ))*",
        source in proptest::prop_oneof![
            proptest::strategy::Just("203.0.113.5"), proptest::strategy::Just("2001:db8::1"), proptest::strategy::Just("10.0.0.7")
        ],
        source_port in 1u16..,
    ) {
        let value = match port {
            Some(port) => format!("SIP/2.0/UDP {host}:{port}{params}"),
            None => format!("SIP/2.0/UDP {host}{params}"),
        };
        let via = Via::parse(&value).unwrap();
        let source = SocketAddr::new(source.parse().unwrap(), source_port);
        let stamped = via.stamped(source);
        proptest::prop_assert_eq!(
            Via::parse(&stamped).unwrap().response_address(),
            Some(via.stamped_response_address(source)),
            "{} stamped for {} is {}", value, source, stamped
        );
    }
}

#[test]
fn aors_are_canonical() {
    for (uri, aor) in [
        ("sip:Alice@Atlanta.COM:5060;transport=udp", "sip:Alice@atlanta.com"),
        ("sips:alice:secret@atlanta.com?subject=x", "sip:alice@atlanta.com"),
        ("SIP:atlanta.com", "sip:atlanta.com"),
        ("tel:+15551234;phone-context=x", "tel:+15551234"),
        ("sip:bob@[2001:DB8::1]:5060", "sip:bob@[2001:db8::1]"),
    ] {
        assert_eq!(Aor::from_uri(uri, "To").unwrap().as_str(), aor, "{uri}");
    }
    for bad in ["mailto:a@b", "sip:", "sip:@host", "nocolon"] {
        assert!(Aor::from_uri(bad, "To").is_err(), "{bad}");
    }
}

#[test]
fn uris_with_ip_literals_name_socket_addresses() {
    let address = |text: &str| text.parse::<SocketAddr>().unwrap();
    for (uri, expected) in [
        ("sip:192.0.2.10;lr", address("192.0.2.10:5060")),
        ("sip:edge@192.0.2.10:5070;transport=udp", address("192.0.2.10:5070")),
        ("sips:192.0.2.10", address("192.0.2.10:5061")),
        ("sip:[2001:db8::10]:5062;lr", address("[2001:db8::10]:5062")),
        ("SIP:[2001:DB8::10]", address("[2001:db8::10]:5060")),
    ] {
        assert_eq!(socket_address(uri), Some(expected), "{uri}");
    }
    for other in ["sip:edge.example.net;lr", "tel:+1555", "sip:192.0.2.10:x", "sip:[2001:db8::10", "nocolon"] {
        assert_eq!(socket_address(other), None, "{other}");
    }
}

#[test]
fn tags_are_cut_from_to_headers_with_other_parameters() {
    assert_eq!(without_tag("<sip:b@x>;tag=abc"), "<sip:b@x>");
    assert_eq!(without_tag("<sip:b@x>;foo=1;tag=abc;bar"), "<sip:b@x>;foo=1;bar");
    assert_eq!(without_tag("sip:b@x;tag=abc"), "sip:b@x");
    assert_eq!(without_tag(" <sip:b@x> "), "<sip:b@x>");
}
