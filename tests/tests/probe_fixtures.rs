//! The probe responders (`redirector_ebpf::probe`, `xdp/probe.rs`) pinned
//! by BPF_PROG_TEST_RUN, as a table like `fixtures.rs`: the edge answers
//! probes to the service addresses, the home-side program (`decap`)
//! probes to its own addresses and passes the edge's state messages up,
//! answering or not. Each expected answer is built here from
//! the README's byte layout, its MAC computed with the `siphasher` crate,
//! and its frame with etherparse, so neither the layout, the MAC nor a
//! checksum is taken from the code under test.

use std::{hash::Hasher, net::IpAddr};

use redirector::probe::Keys;
use redirector_ebpf::{Counter, DECAP_PROGRAM, probe::ProbeConfig};
use redirector_tests::{
    fixture::{CLIENT_MAC, Case, EDGE_MAC, Fixture, config_text},
    packets::{Datagram, ethernet},
    privileged,
};
use siphasher::sip::SipHasher24;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const PROBE_PORT: u16 = 5099;
const SECRET: [u8; 16] = *b"fixture-secret-1";
const PERIOD: u64 = 300;
/// Some moment: the responder's key and expiry are those of its period.
const NOW: u64 = 1_780_000_000;

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";
const HOME1: &str = "10.0.0.11";

#[test]
fn probe_fixtures() {
    if !privileged() {
        return;
    }
    let mut fx = fixture();
    fx.dataplane().add_decap_address(HOME1.parse().unwrap()).unwrap();
    fx.dataplane().add_decap_address("fd00::11".parse().unwrap()).unwrap();
    let answering = keys().config_at(NOW, PROBE_PORT, true);
    fx.dataplane().set_probe(answering).unwrap();
    let answering_cases = [answered(&answering), malformed(), not_probes(), at_a_home(&answering), state_messages()];
    run_table(&mut fx, "answering", answering_cases);
    let silent = keys().config_at(NOW, PROBE_PORT, false);
    fx.dataplane().set_probe(silent).unwrap();
    run_table(&mut fx, "silent", [silent_cases(), state_messages()]);
}

fn fixture() -> Fixture {
    let probe = format!("\n[probe]\nport = {PROBE_PORT}\nsecret_file = \"/etc/redirector/probe.secret\"\n");
    Fixture::with_config(&format!("{}{probe}", config_text("dsr")))
}

fn keys() -> Keys {
    Keys::new(SECRET, PERIOD)
}

fn run_table<const GROUPS: usize>(fx: &mut Fixture, what: &str, groups: [Vec<Case>; GROUPS]) {
    let cases: Vec<Case> = groups.into_iter().flatten().collect();
    let failures = fx.run_table(&cases);
    assert!(failures.is_empty(), "{} of {} {what} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A probe as the README lays it out.
fn probe(tag: u64) -> Vec<u8> {
    let mut bytes = b"RDRP\x01\x01\0\0".to_vec();
    bytes.extend_from_slice(&tag.to_be_bytes());
    bytes.resize(48, 0);
    bytes
}

/// The answer `server` gives `client`, from the README's layout and MAC.
fn answer(tag: u64, config: &ProbeConfig, server: IpAddr, client: IpAddr) -> Vec<u8> {
    let (family, server_bytes) = family_and_bytes(server);
    let mut bytes = b"RDRP\x01\x02".to_vec();
    bytes.extend_from_slice(&[family, 0]);
    bytes.extend_from_slice(&tag.to_be_bytes());
    bytes.extend_from_slice(&server_bytes);
    bytes.extend_from_slice(&config.expiry.to_be_bytes());
    bytes.extend_from_slice(&mac(config, server, client).to_be_bytes());
    bytes
}

fn family_and_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (4, bytes)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

/// SipHash-2-4 over server address, client address, expiry (little
/// endian), the two families and six zero bytes.
fn mac(config: &ProbeConfig, server: IpAddr, client: IpAddr) -> u64 {
    let (server_family, server_bytes) = family_and_bytes(server);
    let (client_family, client_bytes) = family_and_bytes(client);
    let mut message = Vec::new();
    message.extend_from_slice(&server_bytes);
    message.extend_from_slice(&client_bytes);
    message.extend_from_slice(&config.expiry.to_le_bytes());
    message.extend_from_slice(&[server_family, client_family, 0, 0, 0, 0, 0, 0]);
    let mut hasher = SipHasher24::new_with_keys(config.key[0], config.key[1]);
    hasher.write(&message);
    hasher.finish()
}

/// The period's key is SipHash-2-4 of (period, 0) and (period, 1) under the secret.
#[test]
fn the_period_key_and_expiry_are_as_documented() {
    let config = keys().config_at(NOW, PROBE_PORT, true);
    let period = NOW / PERIOD;
    let word = |at: usize| u64::from_le_bytes(SECRET[at..at + 8].try_into().unwrap());
    for (index, key) in config.key.iter().enumerate() {
        let mut hasher = SipHasher24::new_with_keys(word(0), word(8));
        hasher.write(&period.to_le_bytes());
        hasher.write(&(index as u64).to_le_bytes());
        assert_eq!(*key, hasher.finish(), "key word {index}");
    }
    assert_eq!(config.expiry, (period + 2) * PERIOD);
}

fn from_client(datagram: &Datagram, vlan: Option<u16>) -> Vec<u8> {
    ethernet(CLIENT_MAC, EDGE_MAC, vlan, datagram.ethertype(), &datagram.ip_packet())
}

fn socket(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

/// A probe from `client` to `server`'s probe port and its exact answer:
/// endpoints swapped, TOS, TTL and IP id kept.
fn probe_and_answer(config: &ProbeConfig, client: &str, server: &str, edit: fn(&mut Datagram)) -> (Datagram, Datagram) {
    let tag = 0x0123_4567_89ab_cdef;
    let sent = Datagram::new(client, &socket(server, PROBE_PORT)).with(|d| d.payload = probe(tag)).with(edit);
    let reply = answer(tag, config, sent.dst.ip(), sent.src.ip());
    let answered = Datagram { src: sent.dst, dst: sent.src, payload: reply, ..sent.clone() };
    (sent, answered)
}

fn answered_case(name: &str, config: &ProbeConfig, client: &str, server: &str, edit: fn(&mut Datagram)) -> Case {
    let (sent, answered) = probe_and_answer(config, client, server, edit);
    let input = from_client(&sent, None);
    let output = ethernet(EDGE_MAC, CLIENT_MAC, None, answered.ethertype(), &answered.ip_packet());
    Case::new(name, input, XDP_TX, output, Counter::ProbeAnswered)
}

fn answered(config: &ProbeConfig) -> Vec<Case> {
    let (sent, answered) = probe_and_answer(config, "10.0.0.2:40000", VIP4, |_| {});
    let tagged = Case::new(
        "a VLAN-tagged probe is answered with its tag",
        from_client(&sent, Some(42)),
        XDP_TX,
        ethernet(EDGE_MAC, CLIENT_MAC, Some(42), answered.ethertype(), &answered.ip_packet()),
        Counter::ProbeAnswered,
    );
    vec![
        answered_case("a v4 probe to the service is answered for the pool", config, "10.0.0.2:40000", VIP4, |_| {}),
        answered_case("a v6 probe to the service is answered for the pool", config, "[fd00::2]:40000", VIP6, |_| {}),
        answered_case("a probe from a stranger is answered too", config, "198.51.100.7:1024", VIP4, |_| {}),
        answered_case("a probe with IPv4 options keeps them", config, "10.0.0.2:40000", VIP4, |d| {
            d.ipv4_options = vec![0x01, 0x01, 0x01, 0x00]
        }),
        answered_case("a probe without a UDP checksum is answered without one", config, "10.0.0.2:40000", VIP4, |d| {
            d.zero_udp_checksum = true
        }),
        tagged,
    ]
}

fn dropped_probe(name: &str, payload: Vec<u8>) -> Case {
    let datagram = Datagram::new("10.0.0.2:40000", &socket(VIP4, PROBE_PORT)).with(|d| d.payload = payload);
    Case::untouched(name, from_client(&datagram, None), XDP_DROP, Counter::ProbeMalformed)
}

fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = probe(7);
    edit(&mut bytes);
    bytes
}

/// Anything but a well-formed probe to the probe port is dropped, counted:
/// never answered, so nothing is amplified or reflected.
fn malformed() -> Vec<Case> {
    let v6_no_checksum = Datagram::new("[fd00::2]:40000", &socket(VIP6, PROBE_PORT)).with(|d| d.payload = probe(7));
    let mut v6_no_checksum = from_client(&v6_no_checksum, None);
    let at = 14 + 40 + 6;
    v6_no_checksum[at..at + 2].copy_from_slice(&[0, 0]);
    vec![
        dropped_probe("an empty datagram to the probe port is dropped", Vec::new()),
        dropped_probe("a probe one byte short is dropped", probe(7)[..47].to_vec()),
        dropped_probe("a probe one byte long is dropped", edited(|b| b.push(0))),
        dropped_probe("a probe twice as long is dropped", [probe(7), probe(7)].concat()),
        dropped_probe("another magic is dropped", edited(|b| b[0] = b'X')),
        dropped_probe("version 2 is dropped", edited(|b| b[4] = 2)),
        dropped_probe("an answer sent to the responder is dropped (no loops)", edited(|b| b[5] = 2)),
        dropped_probe("a non-zero family byte is dropped", edited(|b| b[6] = 4)),
        dropped_probe("a non-zero reserved byte is dropped", edited(|b| b[7] = 1)),
        dropped_probe("a non-zero byte in the answer's fields is dropped", edited(|b| b[47] = 1)),
        dropped_probe("a SIP request to the probe port is dropped", redirector_tests::packets::REGISTER.to_vec()),
        Case::untouched(
            "a v6 probe without a UDP checksum is dropped",
            v6_no_checksum,
            XDP_DROP,
            Counter::ProbeMalformed,
        ),
    ]
}

/// Probes elsewhere are not the responder's business.
fn not_probes() -> Vec<Case> {
    let to = |dst: &str| from_client(&Datagram::new("10.0.0.2:40000", dst).with(|d| d.payload = probe(7)), None);
    vec![
        // Up to first contact, unread: its source is no upstream proxy's
        // (`PROXIES`), the only misses dsr reads.
        Case::untouched(
            "a probe to the SIP port is first contact's",
            to(&socket(VIP4, 5060)),
            XDP_PASS,
            Counter::PassMiss,
        ),
        Case::untouched(
            "a probe to the edge's own address is not answered",
            to(&socket("10.0.0.1", PROBE_PORT)),
            XDP_PASS,
            Counter::NotService,
        ),
        Case::untouched(
            "a probe to a home's address is the home's to answer",
            to(&socket(HOME1, PROBE_PORT)),
            XDP_PASS,
            Counter::NotService,
        ),
    ]
}

/// The home-side program answers for its own addresses, naming itself.
fn at_a_home(config: &ProbeConfig) -> Vec<Case> {
    let home = |case: Case| case.on_program(DECAP_PROGRAM);
    let to_other = Datagram::new("10.0.0.2:40000", &socket("10.0.0.12", PROBE_PORT)).with(|d| d.payload = probe(7));
    let other_port = Datagram::new("10.0.0.2:40000", &socket(HOME1, 5060)).with(|d| d.payload = probe(7));
    vec![
        home(answered_case("a home answers a v4 probe to itself", config, "10.0.0.2:40000", HOME1, |_| {})),
        home(answered_case("a home answers a v6 probe to itself", config, "[fd00::2]:40000", "fd00::11", |_| {})),
        home(Case::untouched(
            "a home drops a malformed probe to itself",
            from_client(
                &Datagram::new("10.0.0.2:40000", &socket(HOME1, PROBE_PORT)).with(|d| d.payload = edited(|b| b[4] = 9)),
                None,
            ),
            XDP_DROP,
            Counter::ProbeMalformed,
        )),
        home(Case::untouched(
            "a home passes a probe to another address",
            from_client(&to_other, None),
            XDP_PASS,
            Counter::NotService,
        )),
        home(Case::untouched(
            "a home passes a probe to another port",
            from_client(&other_port, None),
            XDP_PASS,
            Counter::NotService,
        )),
    ]
}

/// A state message as the README lays it out: an edge telling the home at
/// `home` it is draining (the MAC is `decap`'s to check, not the kernel's).
fn state_message(home: [u8; 4]) -> Vec<u8> {
    let mut bytes = b"RDRP\x01\x03\x04\x02".to_vec();
    bytes.extend_from_slice(&1_780_000_000_000u64.to_be_bytes());
    bytes.extend_from_slice(&home);
    bytes.resize(40, 0);
    bytes.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
    bytes
}

/// A home passes its edge's state messages up, whether it answers probes
/// or not; only a whole message with the state header is passed, and the
/// edge, which is never sent one, drops it as malformed.
fn state_messages() -> Vec<Case> {
    let home1 = [10, 0, 0, 11];
    let to = |dst: &str, payload: Vec<u8>| {
        from_client(&Datagram::new("10.0.0.1:40000", &socket(dst, PROBE_PORT)).with(|d| d.payload = payload), None)
    };
    let short = state_message(home1)[..47].to_vec();
    let mut version_2 = state_message(home1);
    version_2[4] = 2;
    vec![
        Case::untouched(
            "a home passes a state message up",
            to(HOME1, state_message(home1)),
            XDP_PASS,
            Counter::ProbeState,
        )
        .on_program(DECAP_PROGRAM),
        Case::untouched(
            "a home drops a state message one byte short",
            to(HOME1, short),
            XDP_DROP,
            Counter::ProbeMalformed,
        )
        .on_program(DECAP_PROGRAM),
        Case::untouched(
            "a home drops a state message of version 2",
            to(HOME1, version_2),
            XDP_DROP,
            Counter::ProbeMalformed,
        )
        .on_program(DECAP_PROGRAM),
        Case::untouched(
            "the edge drops a state message",
            to(VIP4, state_message(home1)),
            XDP_DROP,
            Counter::ProbeMalformed,
        ),
    ]
}

/// Not answering (a draining or down server, a pool without an active
/// home): well-formed probes are dropped unanswered, malformed ones still
/// counted as malformed.
fn silent_cases() -> Vec<Case> {
    let probe_to = |dst: &str| {
        from_client(&Datagram::new("10.0.0.2:40000", &socket(dst, PROBE_PORT)).with(|d| d.payload = probe(7)), None)
    };
    vec![
        Case::untouched("a silent edge drops a probe", probe_to(VIP4), XDP_DROP, Counter::ProbeSilent),
        Case::untouched("a silent home drops a probe", probe_to(HOME1), XDP_DROP, Counter::ProbeSilent)
            .on_program(DECAP_PROGRAM),
        dropped_probe("a silent edge still counts a malformed probe", edited(|b| b[5] = 3)),
    ]
}
