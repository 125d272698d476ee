use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::{Announcement, CLOCK_WINDOW_MS, Follower, HomeState, StateCounts, StateRejected, announcements};
use crate::{
    model::{HomeServer, ServerSpec, ServerState},
    probe::Keys,
};

const SECRET: &str = "000102030405060708090a0b0c0d0e0f";
/// Some moment, in milliseconds since the epoch.
const NOW_MS: u64 = 1_780_000_000_000;
const HOME: &str = "10.0.0.11";

fn keys() -> Keys {
    Keys::from_hex(SECRET, 300).unwrap()
}

fn home() -> IpAddr {
    HOME.parse().unwrap()
}

fn follower() -> Follower {
    Follower::new(&keys(), &[home(), "fd00::11".parse().unwrap()])
}

fn message(state: HomeState, sent_ms: u64) -> [u8; 48] {
    keys().state_message(home(), state, sent_ms)
}

#[test]
fn a_home_answers_until_told_otherwise_and_follows_each_newer_state() {
    let mut follower = follower();
    assert!(follower.answering(), "before any message");
    let told = [(HomeState::Draining, false), (HomeState::Active, true), (HomeState::Down, false)];
    for (step, (state, answering)) in told.into_iter().enumerate() {
        assert_eq!(follower.receive(&message(state, NOW_MS + step as u64), NOW_MS), Ok(state));
        assert_eq!(follower.answering(), answering, "after {state:?}");
    }
    let v6 = keys().state_message("fd00::11".parse().unwrap(), HomeState::Active, NOW_MS + 10);
    assert_eq!(follower.receive(&v6, NOW_MS), Ok(HomeState::Active), "any of its addresses names it");
    assert!(follower.answering());
    assert_eq!(follower.counts, StateCounts { accepted: 4, ..StateCounts::default() });
}

#[test]
fn a_replayed_or_older_message_changes_nothing() {
    let mut follower = follower();
    let draining = message(HomeState::Draining, NOW_MS);
    follower.receive(&draining, NOW_MS).unwrap();
    assert_eq!(follower.receive(&draining, NOW_MS + 5), Err(StateRejected::Replayed), "the same again");
    let older = message(HomeState::Active, NOW_MS - 1);
    assert_eq!(follower.receive(&older, NOW_MS + 5), Err(StateRejected::Replayed), "an older one");
    assert!(!follower.answering(), "still draining");
    assert_eq!(follower.counts.replayed, 2);
}

#[test]
fn a_message_far_from_the_homes_clock_is_refused() {
    let mut follower = follower();
    for sent in [NOW_MS - CLOCK_WINDOW_MS - 1, NOW_MS + CLOCK_WINDOW_MS + 1] {
        assert_eq!(follower.receive(&message(HomeState::Down, sent), NOW_MS), Err(StateRejected::OutOfWindow));
    }
    assert!(follower.answering());
    let edge_of_window = message(HomeState::Down, NOW_MS - CLOCK_WINDOW_MS);
    assert_eq!(follower.receive(&edge_of_window, NOW_MS), Ok(HomeState::Down));
    assert_eq!(follower.counts.out_of_window, 2);
}

#[test]
fn a_message_for_another_home_or_from_another_pool_is_refused() {
    let mut follower = follower();
    let other_home = keys().state_message("10.0.0.12".parse().unwrap(), HomeState::Down, NOW_MS);
    assert_eq!(follower.receive(&other_home, NOW_MS), Err(StateRejected::OtherHome));
    let other_pool = Keys::from_hex("ffeeddccbbaa99887766554433221100", 300).unwrap();
    let forged = other_pool.state_message(home(), HomeState::Down, NOW_MS);
    assert_eq!(follower.receive(&forged, NOW_MS), Err(StateRejected::Forged));
    assert!(follower.answering());
    assert_eq!((follower.counts.other_home, follower.counts.forged, follower.counts.rejected()), (1, 1, 2));
}

#[test]
fn the_readers_signature_passes_signed_messages_only() {
    let signature = follower().signature();
    assert!(signature.signs(&message(HomeState::Down, NOW_MS)), "the edge's");
    let other_pool = Keys::from_hex("ffeeddccbbaa99887766554433221100", 300).unwrap();
    assert!(!signature.signs(&other_pool.state_message(home(), HomeState::Down, NOW_MS)), "forged");
    let mut tampered = message(HomeState::Active, NOW_MS);
    tampered[7] = 3;
    assert!(!signature.signs(&tampered), "tampered");
    assert!(!signature.signs(b"not a state message"), "malformed");
}

#[test]
fn the_operators_hold_silences_whatever_the_edge_says_and_its_release_follows_the_edge_again() {
    let mut follower = follower();
    follower.hold(true);
    assert!(!follower.answering(), "held before any message");
    follower.receive(&message(HomeState::Active, NOW_MS), NOW_MS).unwrap();
    assert!(!follower.answering(), "held while the edge says active");
    follower.hold(false);
    assert!(follower.answering(), "released: the edge says active");
    follower.receive(&message(HomeState::Draining, NOW_MS + 1), NOW_MS).unwrap();
    follower.hold(true);
    follower.hold(false);
    assert!(!follower.answering(), "released: the edge says draining");
}

fn server(state: ServerState, healthy: bool) -> HomeServer {
    let spec = ServerSpec {
        name: "home1".into(),
        ipv4: Some(Ipv4Addr::new(10, 0, 0, 11)),
        ipv6: Some(Ipv6Addr::LOCALHOST),
        port: 5060,
        state,
        weight: 1.0,
    };
    HomeServer { healthy, ..HomeServer::new(spec, 1) }
}

#[test]
fn a_home_is_told_the_state_the_edge_acts_on() {
    let cases = [
        (ServerState::Active, true, HomeState::Active),
        (ServerState::Draining, true, HomeState::Draining),
        (ServerState::Removing, true, HomeState::Draining),
        (ServerState::Down, true, HomeState::Down),
        (ServerState::Active, false, HomeState::Down),
        (ServerState::Draining, false, HomeState::Down),
    ];
    for (state, healthy, told) in cases {
        assert_eq!(HomeState::of(&server(state, healthy)), told, "{state:?}, healthy {healthy}");
    }
}

#[test]
fn only_the_leading_edge_tells_the_homes_each_ones_state() {
    let servers = [server(ServerState::Active, true), server(ServerState::Draining, true)];
    let told: Vec<HomeState> = announcements(&servers, true).iter().map(|a| a.state).collect();
    assert_eq!(told, [HomeState::Active, HomeState::Draining]);
    assert_eq!(announcements(&servers, false), [], "a following edge says nothing");
}

#[test]
fn a_home_is_told_at_its_address_in_a_family_the_edge_sends() {
    let announcement = Announcement::of(&server(ServerState::Active, true));
    assert_eq!(announcement.address(true, true), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11))));
    assert_eq!(announcement.address(false, true), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!(announcement.address(false, false), None);
    let v6_only = Announcement { ipv4: None, ..announcement };
    assert_eq!(v6_only.address(true, false), None);
}

proptest! {
    /// Any change to a genuine message (a flipped bit anywhere, a cut or
    /// a longer datagram) is refused and counted, and changes nothing.
    #[test]
    fn a_tampered_or_truncated_message_is_refused(at in 0usize..48, bit in 0u8..8, cut in 0usize..48) {
        let mut follower = follower();
        let genuine = message(HomeState::Down, NOW_MS);
        let mut flipped = genuine;
        flipped[at] ^= 1 << bit;
        prop_assert!(follower.receive(&flipped, NOW_MS).is_err());
        prop_assert_eq!(follower.receive(&genuine[..cut], NOW_MS), Err(StateRejected::Malformed));
        let longer = [&genuine[..], &[0]].concat();
        prop_assert_eq!(follower.receive(&longer, NOW_MS), Err(StateRejected::Malformed));
        prop_assert!(follower.answering());
        prop_assert_eq!(follower.counts.rejected(), 3);
        prop_assert_eq!(follower.receive(&genuine, NOW_MS), Ok(HomeState::Down));
    }

    /// Arbitrary bytes never panic and are never accepted.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut follower = follower();
        prop_assert!(follower.receive(&bytes, NOW_MS).is_err());
        prop_assert_eq!(follower.counts.rejected(), 1);
        prop_assert!(follower.answering());
    }

    /// A message in the shape of a state message (its header, a valid
    /// family and state, this home) at any time, with any MAC but its
    /// own, is refused for its MAC.
    #[test]
    fn arbitrary_well_shaped_messages_are_forged(sent in any::<u64>(), mac in any::<u64>()) {
        let mut bytes = message(HomeState::Down, NOW_MS);
        bytes[8..16].copy_from_slice(&sent.to_be_bytes());
        bytes[40..].copy_from_slice(&mac.to_be_bytes());
        let mut follower = follower();
        let verdict = follower.receive(&bytes, NOW_MS);
        prop_assert!(verdict == Err(StateRejected::Forged), "{:?}", verdict);
    }
}
