//! Client-driven home selection (issue #14): a client probes several
//! servers at once with a tag; each answers, in XDP, with the tag, its
//! identity (the address the probe was sent to) and a cookie; the client
//! keeps the earliest answer and presents its cookie at first contact.
//!
//! Everything here is pure and shared: the XDP responders run it on a copy
//! of the probe, the daemon verifies cookies and the client parses answers
//! with the same functions. The byte layout (all multi-byte integers big
//! endian), `PROBE_LEN` bytes of UDP payload either way:
//!
//! | bytes  | probe                  | answer                                    |
//! |--------|------------------------|-------------------------------------------|
//! | 0..4   | `RDRP`                 | `RDRP`                                    |
//! | 4      | version, 1             | version, 1                                |
//! | 5      | kind, 1 (probe)        | kind, 2 (answer)                          |
//! | 6      | 0                      | family of the server address, 4 or 6      |
//! | 7      | 0                      | 0                                         |
//! | 8..16  | tag, chosen by client  | the probe's tag                           |
//! | 16..32 | 0                      | server address (IPv4 in 16..20, rest 0)   |
//! | 32..40 | 0                      | cookie expiry, seconds since the epoch    |
//! | 40..48 | 0                      | cookie MAC                                |
//!
//! Anything else sent to the probe port (another length, version, kind,
//! non-zero reserved bytes) is malformed: dropped and counted. The answer
//! is exactly as long as the probe, so the responder amplifies nothing.
//!
//! The cookie MAC is SipHash-2-4 (`siphash24`) keyed with the current
//! period's key (`period_key`) over 48 bytes (`mac`): server address,
//! client address, expiry and the two families. The client address
//! is the probe's source address (no port: the SIP socket is another one).
//!
//! An edge also tells each home its state, so that a draining or down home
//! stops answering probes: a **state message** (kind 3), the same length,
//! sent to the home's probe port. The home's XDP program passes it up;
//! `redirector decap` verifies it (`parse_state`, `StateMessage::signed_by`).
//!
//! | bytes  | state message                                             |
//! |--------|-----------------------------------------------------------|
//! | 0..4   | `RDRP`                                                    |
//! | 4      | version, 1                                                |
//! | 5      | kind, 3 (state)                                           |
//! | 6      | family of the home address, 4 or 6                        |
//! | 7      | state: 1 active, 2 draining, 3 down                       |
//! | 8..16  | sent at, milliseconds since the epoch (freshness, replay) |
//! | 16..32 | the home's address (IPv4 in 16..20, rest 0)               |
//! | 32..40 | 0                                                         |
//! | 40..48 | MAC                                                       |
//!
//! Its MAC is SipHash-2-4 keyed with `state_key` (derived from the pool's
//! secret, never equal to a period key) over 32 bytes (`state_mac`): home
//! address, sent at (little endian), family, state, six zero bytes.

use bytemuck::{Pod, Zeroable};

use crate::{Endpoint, FAMILY_V4, FAMILY_V6};

/// UDP payload bytes of a probe and of its answer.
pub const PROBE_LEN: usize = 48;
pub const MAGIC: [u8; 4] = *b"RDRP";
pub const VERSION: u8 = 1;
pub const KIND_PROBE: u8 = 1;
pub const KIND_ANSWER: u8 = 2;
/// An edge telling a home its state (see the module's second table).
pub const KIND_STATE: u8 = 3;

/// A state message's state byte: the home takes new clients (answers probes).
pub const HOME_ACTIVE: u8 = 1;
/// It keeps its clients but takes no new ones (silent).
pub const HOME_DRAINING: u8 = 2;
/// It is down or failing its health checks (silent).
pub const HOME_DOWN: u8 = 3;

const TAG_AT: usize = 8;
const SERVER_AT: usize = 16;
const EXPIRY_AT: usize = 32;
const MAC_AT: usize = 40;

/// `PROBE[0]`: what the responder answers with. Written by the daemon (on
/// the edge) or by `redirector decap` (on a home), rewritten each period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ProbeConfig {
    /// This period's SipHash key (`period_key`).
    pub key: [u64; 2],
    /// The expiry every answer carries (seconds since the epoch): the end
    /// of the period after this one, so a cookie is good for at least one
    /// whole period.
    pub expiry: u64,
    /// UDP port probes are sent to; 0: probes are off.
    pub port_be: u16,
    /// Non-zero: answer. Zero (draining, down, no active home): probes are
    /// dropped unanswered, counted `probe_silent`.
    pub answering: u8,
    pub _pad: [u8; 5],
}

/// Whether `bytes` is a well-formed probe.
#[inline(always)]
pub fn is_probe(bytes: &[u8; PROBE_LEN]) -> bool {
    let header_ok = starts_as(bytes, KIND_PROBE) && bytes[6] == 0 && bytes[7] == 0;
    let mut zero = 0u8;
    let mut i = SERVER_AT;
    while i < PROBE_LEN {
        zero |= bytes[i];
        i += 1;
    }
    header_ok && zero == 0
}

/// Whether `bytes` starts as a state message does (magic, version, kind):
/// the XDP program passes such a datagram up to `decap`, which checks the
/// rest and the MAC.
#[inline(always)]
pub fn is_state(bytes: &[u8; PROBE_LEN]) -> bool {
    starts_as(bytes, KIND_STATE)
}

/// Whether `bytes` starts with the magic, this version and `kind`.
#[inline(always)]
fn starts_as(bytes: &[u8; PROBE_LEN], kind: u8) -> bool {
    bytes[0] == MAGIC[0]
        && bytes[1] == MAGIC[1]
        && bytes[2] == MAGIC[2]
        && bytes[3] == MAGIC[3]
        && bytes[4] == VERSION
        && bytes[5] == kind
}

/// A probe carrying `tag`.
pub fn probe(tag: u64) -> [u8; PROBE_LEN] {
    let mut bytes = [0u8; PROBE_LEN];
    bytes[..4].copy_from_slice(&MAGIC);
    bytes[4] = VERSION;
    bytes[5] = KIND_PROBE;
    bytes[TAG_AT..SERVER_AT].copy_from_slice(&tag.to_be_bytes());
    bytes
}

/// Turns a well-formed probe into its answer, in place: the server
/// `server` answers `client` (their ports are not read).
#[inline(always)]
pub fn answer(bytes: &mut [u8; PROBE_LEN], config: &ProbeConfig, server: &Endpoint, client: &Endpoint) {
    let mac = mac(&config.key, server, client, config.expiry);
    bytes[5] = KIND_ANSWER;
    bytes[6] = server.family;
    bytes[SERVER_AT..EXPIRY_AT].copy_from_slice(&server.addr);
    bytes[EXPIRY_AT..MAC_AT].copy_from_slice(&config.expiry.to_be_bytes());
    bytes[MAC_AT..].copy_from_slice(&mac.to_be_bytes());
}

/// What an answer says: its tag and the cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub tag: u64,
    pub cookie: Cookie,
}

/// A cookie: the server that issued it (address, port 0), until when it is
/// good, and the MAC that proves both for one client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    pub server: Endpoint,
    pub expiry: u64,
    pub mac: u64,
}

/// Bytes of a cookie as carried in SIP (`Cookie::to_bytes`): family,
/// address, expiry, MAC.
pub const COOKIE_LEN: usize = 1 + 16 + 8 + 8;

impl Cookie {
    pub fn to_bytes(&self) -> [u8; COOKIE_LEN] {
        let mut out = [0u8; COOKIE_LEN];
        out[0] = self.server.family;
        out[1..17].copy_from_slice(&self.server.addr);
        out[17..25].copy_from_slice(&self.expiry.to_be_bytes());
        out[25..].copy_from_slice(&self.mac.to_be_bytes());
        out
    }

    /// `None` for a family other than 4 or 6, or an IPv4 address with
    /// bytes past its fourth.
    pub fn from_bytes(bytes: &[u8; COOKIE_LEN]) -> Option<Self> {
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&bytes[1..17]);
        let server = endpoint(bytes[0], addr)?;
        let expiry = u64::from_be_bytes(word(bytes, 17));
        let mac = u64::from_be_bytes(word(bytes, 25));
        Some(Self { server, expiry, mac })
    }

    /// Whether the MAC is `key`'s for this server, `client` and expiry.
    pub fn signed_by(&self, key: &[u64; 2], client: &Endpoint) -> bool {
        mac(key, &self.server, client, self.expiry) == self.mac
    }
}

/// Parses an answer; `None` if `bytes` is not one.
pub fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let bytes: &[u8; PROBE_LEN] = bytes.try_into().ok()?;
    if bytes[..4] != MAGIC || bytes[4] != VERSION || bytes[5] != KIND_ANSWER || bytes[7] != 0 {
        return None;
    }
    let mut cookie = [0u8; COOKIE_LEN];
    cookie[0] = bytes[6];
    cookie[1..].copy_from_slice(&bytes[SERVER_AT..]);
    let tag = u64::from_be_bytes(word(bytes, TAG_AT));
    Some(Answer { tag, cookie: Cookie::from_bytes(&cookie)? })
}

/// What a state message says: the home it is for (address, port 0), its
/// state (`HOME_*`), when it was sent (milliseconds since the epoch) and
/// the MAC proving all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMessage {
    pub home: Endpoint,
    pub state: u8,
    pub sent_ms: u64,
    pub mac: u64,
}

impl StateMessage {
    /// The message `home` is told `state` by, signed with `key` (`state_key`).
    pub fn signed(key: &[u64; 2], home: Endpoint, state: u8, sent_ms: u64) -> Self {
        Self { home, state, sent_ms, mac: state_mac(key, &home, state, sent_ms) }
    }

    pub fn to_bytes(&self) -> [u8; PROBE_LEN] {
        let mut bytes = [0u8; PROBE_LEN];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4] = VERSION;
        bytes[5] = KIND_STATE;
        bytes[6] = self.home.family;
        bytes[7] = self.state;
        bytes[TAG_AT..SERVER_AT].copy_from_slice(&self.sent_ms.to_be_bytes());
        bytes[SERVER_AT..EXPIRY_AT].copy_from_slice(&self.home.addr);
        bytes[MAC_AT..].copy_from_slice(&self.mac.to_be_bytes());
        bytes
    }

    /// Whether the MAC is `key`'s for this home, state and time.
    pub fn signed_by(&self, key: &[u64; 2]) -> bool {
        state_mac(key, &self.home, self.state, self.sent_ms) == self.mac
    }
}

/// Parses a state message; `None` if `bytes` is not one (another length,
/// header, family or state, or non-zero reserved bytes). The MAC is the
/// caller's to check.
pub fn parse_state(bytes: &[u8]) -> Option<StateMessage> {
    let bytes: &[u8; PROBE_LEN] = bytes.try_into().ok()?;
    let state = bytes[7];
    if !is_state(bytes) || !(HOME_ACTIVE..=HOME_DOWN).contains(&state) || bytes[EXPIRY_AT..MAC_AT] != [0; 8] {
        return None;
    }
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&bytes[SERVER_AT..EXPIRY_AT]);
    Some(StateMessage {
        home: endpoint(bytes[6], addr)?,
        state,
        sent_ms: u64::from_be_bytes(word(bytes, TAG_AT)),
        mac: u64::from_be_bytes(word(bytes, MAC_AT)),
    })
}

/// The MAC of a state message: SipHash-2-4 of 32 bytes, home address (16),
/// sent at (8, little endian), the home's family, the state, six zero bytes.
pub fn state_mac(key: &[u64; 2], home: &Endpoint, state: u8, sent_ms: u64) -> u64 {
    siphash24(key, &[le_word(&home.addr, 0), le_word(&home.addr, 8), sent_ms, home.family as u64 | (state as u64) << 8])
}

/// The key state messages are signed with: SipHash-2-4 of (2^64 - 1, 2)
/// and (2^64 - 1, 3) under the pool's secret. A period key's second word
/// is 0 or 1, so no cookie key ever signs a state message or the reverse.
pub fn state_key(secret: &[u64; 2]) -> [u64; 2] {
    [siphash24(secret, &[u64::MAX, 2]), siphash24(secret, &[u64::MAX, 3])]
}

fn word(bytes: &[u8], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[at..at + 8]);
    out
}

fn endpoint(family: u8, addr: [u8; 16]) -> Option<Endpoint> {
    match family {
        FAMILY_V4 if addr[4..] == [0; 12] => Some(Endpoint::v4([addr[0], addr[1], addr[2], addr[3]], 0)),
        FAMILY_V6 => Some(Endpoint::v6(addr, 0)),
        _ => None,
    }
}

/// The cookie MAC of `server` for `client` until `expiry` (ports are not
/// covered): SipHash-2-4 of a 48-byte message, server address (16 bytes),
/// client address (16), expiry (8, little endian), the server's and the
/// client's family, six zero bytes. A BPF subprogram of its own: inlined,
/// its spilled state would take the responder past the stack limit.
#[inline(never)]
pub fn mac(key: &[u64; 2], server: &Endpoint, client: &Endpoint, expiry: u64) -> u64 {
    let mut state = SipHash::new(key);
    state.compress(le_word(&server.addr, 0));
    state.compress(le_word(&server.addr, 8));
    state.compress(le_word(&client.addr, 0));
    state.compress(le_word(&client.addr, 8));
    state.compress(expiry);
    state.compress(server.family as u64 | (client.family as u64) << 8);
    state.finish(6)
}

#[inline(always)]
fn le_word(bytes: &[u8; 16], at: usize) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < 8 {
        word |= (bytes[at + i] as u64) << (8 * i);
        i += 1;
    }
    word
}

/// The key of period `period` (seconds since the epoch divided by the
/// period length) derived from the operator's secret: every edge and home
/// sharing the secret derives the same keys, and a leaked period key
/// reveals neither the secret nor other periods' keys.
pub fn period_key(secret: &[u64; 2], period: u64) -> [u64; 2] {
    [siphash24(secret, &[period, 0]), siphash24(secret, &[period, 1])]
}

/// The expiry answers carry during `period`: the end of the next one.
pub const fn expiry_of(period: u64, period_secs: u64) -> u64 {
    (period + 2) * period_secs
}

/// The period whose key signed a cookie expiring at `expiry`.
pub const fn period_of(expiry: u64, period_secs: u64) -> u64 {
    (expiry / period_secs).saturating_sub(2)
}

/// SipHash-2-4 (Aumasson and Bernstein) of a message of `N` little-endian
/// 64-bit words, keyed by `key` (the 16 key bytes as two little-endian
/// words). Whole words only: no branch on lengths, which suits the verifier.
#[inline(always)]
pub fn siphash24<const N: usize>(key: &[u64; 2], words: &[u64; N]) -> u64 {
    let mut state = SipHash::new(key);
    let mut i = 0;
    while i < N {
        state.compress(words[i]);
        i += 1;
    }
    state.finish(N)
}

struct SipHash {
    v: [u64; 4],
}

impl SipHash {
    #[inline(always)]
    const fn new(key: &[u64; 2]) -> Self {
        Self {
            v: [
                key[0] ^ 0x736f_6d65_7073_6575,
                key[1] ^ 0x646f_7261_6e64_6f6d,
                key[0] ^ 0x6c79_6765_6e65_7261,
                key[1] ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    /// The hash of the `words` words compressed so far.
    #[inline(always)]
    fn finish(mut self, words: usize) -> u64 {
        self.compress(((words as u64 * 8) & 0xff) << 56);
        self.v[2] ^= 0xff;
        let mut round = 0;
        while round < 4 {
            self.round();
            round += 1;
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
}
