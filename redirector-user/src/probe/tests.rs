use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use redirector_ebpf::probe::{PROBE_LEN, answer, parse_answer, probe};

use super::{
    Keys, Rejected, address, cookie_text,
    select::{Outcome, Selection},
};

const SECRET: &str = "000102030405060708090a0b0c0d0e0f";
const PERIOD: u64 = 300;
/// A moment in the middle of period 5,000,000.
const NOW: u64 = 5_000_000 * PERIOD + 100;

fn keys() -> Keys {
    Keys::from_hex(SECRET, PERIOD).unwrap()
}

/// The answer `server` gives `client` at `now`, as the XDP responder builds it.
fn answer_of(keys: &Keys, tag: u64, server: &str, client: &str, now: u64) -> [u8; PROBE_LEN] {
    let mut bytes = probe(tag);
    let config = keys.config_at(now, 5099, true);
    answer(&mut bytes, &config, &address(server.parse().unwrap()), &address(client.parse().unwrap()));
    bytes
}

fn cookie_of(keys: &Keys, server: &str, client: &str, now: u64) -> String {
    cookie_text(&parse_answer(&answer_of(keys, 7, server, client, now)).unwrap().cookie)
}

#[test]
fn a_cookie_names_its_server_for_its_client_until_the_end_of_the_next_period() {
    let keys = keys();
    for (server, client) in [("10.0.0.11", "10.0.0.2"), ("fd00::11", "fd00::2")] {
        let cookie = cookie_of(&keys, server, client, NOW);
        let server: IpAddr = server.parse().unwrap();
        let client: IpAddr = client.parse().unwrap();
        assert_eq!(keys.verify(&cookie, client, NOW), Ok(server));
        let last_moment = (NOW / PERIOD + 2) * PERIOD - 1;
        assert_eq!(keys.verify(&cookie, client, last_moment), Ok(server), "the previous key is accepted one period");
        assert_eq!(keys.verify(&cookie, client, last_moment + 1), Err(Rejected::Expired));
    }
}

#[test]
fn a_cookie_for_another_client_another_secret_or_tampered_with_is_forged() {
    let keys = keys();
    let cookie = cookie_of(&keys, "10.0.0.11", "10.0.0.2", NOW);
    let client: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(keys.verify(&cookie, "10.0.0.3".parse().unwrap(), NOW), Err(Rejected::Forged), "foreign");
    let other = Keys::from_hex("ff0102030405060708090a0b0c0d0e0f", PERIOD).unwrap();
    assert_eq!(other.verify(&cookie, client, NOW), Err(Rejected::Forged), "another pool's");
    for at in 0..cookie.len() {
        let mut tampered = cookie.clone().into_bytes();
        tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        let verdict = keys.verify(&tampered, client, NOW);
        assert!(verdict.is_err(), "a cookie changed at hex digit {at} was honoured: {verdict:?}");
    }
    assert_eq!(keys.verify("zz", client, NOW), Err(Rejected::Malformed));
    assert_eq!(keys.verify(&cookie[2..], client, NOW), Err(Rejected::Malformed));
}

#[test]
fn a_cookie_with_an_expiry_no_responder_gives_is_forged() {
    let keys = keys();
    // Issued "in the future": a later period's key, which a leak of the
    // current key does not give away, signs nothing valid now.
    let future = cookie_of(&keys, "10.0.0.11", "10.0.0.2", NOW + 10 * PERIOD);
    assert_eq!(keys.verify(&future, "10.0.0.2".parse().unwrap(), NOW), Err(Rejected::Forged));
}

#[test]
fn keys_change_each_period_and_say_when() {
    let keys = keys();
    let (now, next) = (keys.config_at(NOW, 5099, true), keys.config_at(NOW + PERIOD, 5099, true));
    assert_ne!(now.key, next.key);
    assert_eq!(next.expiry, now.expiry + PERIOD);
    assert_eq!(keys.until_next_period(NOW), PERIOD - 100);
    assert_eq!(keys.config_at(NOW, 5099, false).answering, 0);
    assert_eq!(now.port_be, 5099u16.to_be());
}

#[test]
fn a_secret_must_be_16_bytes_of_hex() {
    assert!(Keys::from_hex(SECRET, PERIOD).is_some());
    assert!(Keys::from_hex(&format!("{SECRET}\n"), PERIOD).is_some(), "a trailing newline is fine");
    for bad in ["", "0001", &format!("{SECRET}00"), "g00102030405060708090a0b0c0d0e0f"] {
        assert!(Keys::from_hex(bad, PERIOD).is_none(), "{bad:?} taken as a secret");
    }
}

fn server(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn the_first_valid_answer_wins_and_a_late_one_with_the_same_tag_changes_nothing() {
    let keys = keys();
    let servers = vec![server("10.0.0.11:5099"), server("10.0.0.12:5099"), server("10.0.0.13:5099")];
    let start = Instant::now();
    let mut selection = Selection::new(42, servers.clone(), start);
    assert_eq!(selection.probe(), probe(42));
    let from = |index: usize| answer_of(&keys, 42, &servers[index].ip().to_string(), "10.0.0.2", NOW);
    let at = |ms| start + Duration::from_millis(ms);
    assert_eq!(selection.on_datagram(servers[1], &from(1), at(3)), Outcome::Chosen);
    assert_eq!(selection.on_datagram(servers[0], &from(0), at(9)), Outcome::Late);
    assert_eq!(selection.on_datagram(servers[0], &from(0), at(10)), Outcome::Ignored, "a second answer");
    assert!(!selection.complete());
    let report = selection.report();
    assert_eq!(report.chosen, Some(servers[1]));
    let expected = cookie_text(&parse_answer(&from(1)).unwrap().cookie);
    assert_eq!(report.cookie.as_deref(), Some(expected.as_str()));
    let times: Vec<_> = report.servers.iter().map(|s| (s.answered_ms, s.chosen)).collect();
    assert_eq!(times, [(Some(9.0), false), (Some(3.0), true), (None, false)]);
}

#[test]
fn only_answers_to_this_tag_from_the_server_probed_count() {
    let keys = keys();
    let servers = vec![server("10.0.0.11:5099"), server("10.0.0.12:5099")];
    let mut selection = Selection::new(42, servers.clone(), Instant::now());
    let now = Instant::now();
    let other_tag = answer_of(&keys, 43, "10.0.0.11", "10.0.0.2", NOW);
    assert_eq!(selection.on_datagram(servers[0], &other_tag, now), Outcome::Ignored, "another tag");
    let right = answer_of(&keys, 42, "10.0.0.11", "10.0.0.2", NOW);
    assert_eq!(selection.on_datagram(server("10.0.0.99:5099"), &right, now), Outcome::Ignored, "a stranger");
    assert_eq!(selection.on_datagram(servers[1], &right, now), Outcome::Ignored, "naming another server");
    assert_eq!(selection.on_datagram(servers[0], &probe(42), now), Outcome::Ignored, "a probe, not an answer");
    assert_eq!(selection.on_datagram(servers[0], &right[..40], now), Outcome::Ignored, "cut short");
    assert_eq!(selection.report().chosen, None);
    assert_eq!(selection.on_datagram(servers[0], &right, now), Outcome::Chosen);
}
