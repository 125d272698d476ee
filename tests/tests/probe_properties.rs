//! Property tests of the probe protocol (`redirector_ebpf::probe`): on the
//! host, SipHash-2-4, the cookie MAC and the state message (layout, MAC,
//! key) against the `siphasher` crate, and the parsers on arbitrary bytes; in the kernel (BPF_PROG_TEST_RUN), the
//! edge's responder on random and mutated probes: it answers exactly the
//! well-formed ones, in place and never larger, and drops the rest.

use std::{
    cell::RefCell,
    hash::Hasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use redirector::probe::{Keys, address, state::HomeState};
use redirector_ebpf::{
    Counter,
    probe::{PROBE_LEN, answer, is_probe, is_state, mac, parse_answer, parse_state, probe, siphash24},
};
use redirector_tests::{
    fixture::{CLIENT_MAC, EDGE_MAC, Fixture, config_text},
    packets::{Datagram, ethernet},
    privileged,
};
use siphasher::sip::SipHasher24;

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const PROBE_PORT: u16 = 5099;

fn reference(key: [u64; 2], message: &[u8]) -> u64 {
    let mut hasher = SipHasher24::new_with_keys(key[0], key[1]);
    hasher.write(message);
    hasher.finish()
}

fn ip(v4: bool, bits: u128) -> IpAddr {
    if v4 { IpAddr::V4(Ipv4Addr::from(bits as u32)) } else { IpAddr::V6(Ipv6Addr::from(bits)) }
}

proptest! {
    #[test]
    fn siphash_is_siphash_2_4(key in any::<[u64; 2]>(), words in any::<[u64; 6]>(), pair in any::<[u64; 2]>()) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        prop_assert_eq!(siphash24(&key, &words), reference(key, &bytes));
        let bytes: Vec<u8> = pair.iter().flat_map(|w| w.to_le_bytes()).collect();
        prop_assert_eq!(siphash24(&key, &pair), reference(key, &bytes));
    }

    /// The MAC covers exactly the documented 48 bytes.
    #[test]
    fn the_mac_is_siphash_of_the_documented_message(
        key in any::<[u64; 2]>(), expiry in any::<u64>(),
        server in any::<u128>(), client in any::<u128>(), server_v4 in any::<bool>(), client_v4 in any::<bool>(),
    ) {
        let (server, client) = (address(ip(server_v4, server)), address(ip(client_v4, client)));
        let mut message = Vec::new();
        message.extend_from_slice(&server.addr);
        message.extend_from_slice(&client.addr);
        message.extend_from_slice(&expiry.to_le_bytes());
        message.extend_from_slice(&[server.family, client.family, 0, 0, 0, 0, 0, 0]);
        prop_assert_eq!(mac(&key, &server, &client, expiry), reference(key, &message));
    }

    /// Arbitrary bytes never panic the parsers; a probe is only what the
    /// layout says; an answer is recognised only with its exact length.
    #[test]
    fn parsers_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let answered = parse_answer(&bytes);
        prop_assert!(answered.is_none() || bytes.len() == PROBE_LEN);
        prop_assert!(parse_state(&bytes).is_none() || bytes.len() == PROBE_LEN);
        if let Ok(array) = <[u8; PROBE_LEN]>::try_from(bytes.as_slice()) {
            let layout = array[..8] == *b"RDRP\x01\x01\0\0" && array[16..].iter().all(|&b| b == 0);
            prop_assert_eq!(is_probe(&array), layout);
            prop_assert_eq!(is_state(&array), array[..6] == *b"RDRP\x01\x03");
        }
    }

    /// A state message is the README's 48 bytes, its MAC SipHash-2-4 of
    /// the documented 32 bytes under the documented key, and it parses back.
    #[test]
    fn a_state_message_is_laid_out_and_signed_as_documented(
        secret in any::<[u8; 16]>(), home in any::<u128>(), v4 in any::<bool>(), state in 0usize..3, sent_ms in any::<u64>(),
    ) {
        // The README's state bytes: 1 active, 2 draining, 3 down.
        let (state, byte) = [(HomeState::Active, 1), (HomeState::Draining, 2), (HomeState::Down, 3)][state];
        let home = address(ip(v4, home));
        let bytes = Keys::new(secret, 300).state_message(redirector::probe::ip_of(&home), state, sent_ms);
        let word = |at: usize| u64::from_le_bytes(secret[at..at + 8].try_into().unwrap());
        let key_word = |second: u64| reference([word(0), word(8)], &[u64::MAX.to_le_bytes(), second.to_le_bytes()].concat());
        let mut signed = home.addr.to_vec();
        signed.extend_from_slice(&sent_ms.to_le_bytes());
        signed.extend_from_slice(&[home.family, byte, 0, 0, 0, 0, 0, 0]);
        let mut expected = b"RDRP\x01\x03".to_vec();
        expected.extend_from_slice(&[home.family, byte]);
        expected.extend_from_slice(&sent_ms.to_be_bytes());
        expected.extend_from_slice(&home.addr);
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&reference([key_word(2), key_word(3)], &signed).to_be_bytes());
        prop_assert_eq!(bytes.to_vec(), expected);
        let parsed = parse_state(&bytes).expect("a state message");
        prop_assert_eq!((parsed.home, parsed.state, parsed.sent_ms), (home, byte, sent_ms));
    }

    /// An answer keeps the probe's tag and length and carries a cookie its
    /// client can present, and no other client.
    #[test]
    fn an_answer_carries_the_tag_and_a_cookie_for_its_client_only(
        tag in any::<u64>(), server in any::<u128>(), client in any::<u128>(), v4 in any::<bool>(),
    ) {
        let keys = Keys::new(*b"property-secret!", 300);
        let now = 1_780_000_000;
        let other = ip(v4, client ^ 1);
        let (server, client) = (ip(v4, server), ip(v4, client));
        let mut bytes = probe(tag);
        answer(&mut bytes, &keys.config_at(now, PROBE_PORT, true), &address(server), &address(client));
        let parsed = parse_answer(&bytes).expect("an answer");
        prop_assert_eq!(parsed.tag, tag);
        let cookie = redirector::probe::cookie_text(&parsed.cookie);
        prop_assert_eq!(keys.verify(&cookie, client, now), Ok(server));
        prop_assert!(keys.verify(&cookie, other, now).is_err(), "another client's address");
    }
}

/// A probe with some bytes changed, or random bytes of any length.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec((0..PROBE_LEN, any::<u8>()), 0..3)).prop_map(|(tag, edits)| {
            let mut bytes = probe(tag).to_vec();
            for (at, value) in edits {
                bytes[at] = value;
            }
            bytes
        }),
        proptest::collection::vec(any::<u8>(), 0..120),
    ]
}

/// The edge answers exactly the well-formed probes, with `XDP_TX`, a frame
/// of the same length and the probe's tag; everything else sent to the
/// probe port is dropped untouched, counted `probe_malformed`. One fixture
/// (a namespace and a loaded program) serves every case.
#[test]
fn the_responder_answers_well_formed_probes_only() {
    if !privileged() {
        return;
    }
    let probe = format!("\n[probe]\nport = {PROBE_PORT}\nsecret_file = \"/etc/redirector/probe.secret\"\n");
    let mut fx = Fixture::with_config(&format!("{}{probe}", config_text("dsr")));
    let keys = Keys::new(*b"property-secret!", 300);
    fx.dataplane().set_probe(keys.config_at(1_780_000_000, PROBE_PORT, true)).unwrap();
    let fx = RefCell::new(fx);
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner.run(&(payloads(), any::<bool>()), |(payload, v4)| check(&mut fx.borrow_mut(), &payload, v4)).unwrap();
}

fn check(fx: &mut Fixture, payload: &[u8], v4: bool) -> Result<(), TestCaseError> {
    let (src, dst) =
        if v4 { ("10.0.0.2:40000", "192.0.2.10:5099") } else { ("[fd00::2]:40000", "[2001:db8::10]:5099") };
    let datagram = Datagram::new(src, dst).with(|d| d.payload = payload.to_vec());
    let frame = ethernet(CLIENT_MAC, EDGE_MAC, None, datagram.ethertype(), &datagram.ip_packet());
    let before = fx.counters();
    let outcome = fx.run(&frame);
    let moved: Vec<Counter> =
        before.iter().zip(fx.counters()).filter(|((_, was), (_, now))| now != was).map(|((c, _), _)| *c).collect();
    let well_formed = <[u8; PROBE_LEN]>::try_from(payload).is_ok_and(|p| is_probe(&p));
    prop_assert_eq!(outcome.frame.len(), frame.len(), "never larger (or smaller)");
    if well_formed {
        prop_assert_eq!(outcome.action, XDP_TX);
        prop_assert_eq!(moved, vec![Counter::ProbeAnswered]);
        let at = outcome.frame.len() - PROBE_LEN;
        let answer = parse_answer(&outcome.frame[at..]).expect("an answer");
        prop_assert_eq!(answer.tag.to_be_bytes(), <[u8; 8]>::try_from(&payload[8..16]).unwrap());
    } else {
        prop_assert_eq!(outcome.action, XDP_DROP);
        prop_assert_eq!(moved, vec![Counter::ProbeMalformed]);
        prop_assert_eq!(outcome.frame, frame, "a dropped frame is untouched");
    }
    Ok(())
}
