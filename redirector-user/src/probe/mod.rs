//! Client-driven home selection: the secret and period keys probes are
//! answered with, the cookie a client presents at first contact (the
//! `Redirector-Cookie` header) and its verification, the client side
//! (`select`, sans-IO; `client`, over tokio) and a responder in user space
//! (`responder`). The wire format and the MAC
//! are `redirector_ebpf::probe`'s, shared with the XDP responders.

pub mod client;
pub mod responder;
pub mod select;
pub mod state;

use std::{net::IpAddr, path::Path};

use redirector_ebpf::{
    Endpoint, FAMILY_V4,
    probe::{COOKIE_LEN, Cookie, ProbeConfig, expiry_of, period_key, period_of},
};

use crate::sip::HeaderKind;

/// The SIP header a REGISTER carries its cookie in.
pub const COOKIE_HEADER: &str = HeaderKind::RedirectorCookie.canonical_name();

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the probe secret {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "the probe secret {path} is not 32 hex digits (16 bytes); make one with `od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'`"
    )]
    Format { path: String },
}

/// The operator's secret, shared by every edge and home of a pool, and
/// the length of a period: everything needed to answer probes and to check
/// cookies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    secret: [u64; 2],
    pub period_secs: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("period_secs", &self.period_secs).finish_non_exhaustive()
    }
}

/// Why a cookie was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the cookie is not {} hex digits", 2 * COOKIE_LEN)]
    Malformed,
    #[error("the cookie has expired")]
    Expired,
    #[error("the cookie's MAC does not match (tampered with, another pool's, or another client address's)")]
    Forged,
}

impl Keys {
    /// `period_secs` must be at least 1.
    pub fn new(secret: [u8; 16], period_secs: u64) -> Self {
        let word = |at: usize| u64::from_le_bytes(secret[at..at + 8].try_into().expect("8 bytes"));
        Self { secret: [word(0), word(8)], period_secs: period_secs.max(1) }
    }

    pub fn from_hex(text: &str, period_secs: u64) -> Option<Self> {
        let bytes = from_hex(text.trim())?;
        Some(Self::new(bytes.try_into().ok()?, period_secs))
    }

    pub fn read(path: &Path, period_secs: u64) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read { path: shown.clone(), source })?;
        Self::from_hex(&text, period_secs).ok_or(SecretError::Format { path: shown })
    }

    /// What the responder answers with at `now` (seconds since the epoch).
    pub fn config_at(&self, now: u64, port: u16, answering: bool) -> ProbeConfig {
        let period = now / self.period_secs;
        ProbeConfig {
            key: period_key(&self.secret, period),
            expiry: expiry_of(period, self.period_secs),
            port_be: port.to_be(),
            answering: u8::from(answering),
            _pad: [0; 5],
        }
    }

    /// Seconds from `now` until the next period starts (when the
    /// responder's key must change).
    pub fn until_next_period(&self, now: u64) -> u64 {
        self.period_secs - now % self.period_secs
    }

    /// The server a cookie names, if it was issued to `client` by a
    /// responder with these keys and is still good at `now`. A cookie
    /// outlives the period it was issued in by one period, no more.
    pub fn verify(&self, cookie: &str, client: IpAddr, now: u64) -> Result<IpAddr, Rejected> {
        let bytes: [u8; COOKIE_LEN] =
            from_hex(cookie.trim()).and_then(|b| b.try_into().ok()).ok_or(Rejected::Malformed)?;
        let cookie = Cookie::from_bytes(&bytes).ok_or(Rejected::Malformed)?;
        if now >= cookie.expiry {
            return Err(Rejected::Expired);
        }
        let issued = period_of(cookie.expiry, self.period_secs);
        // An expiry no responder gives (not a period boundary, or beyond the next) is forged.
        let well_formed = expiry_of(issued, self.period_secs) == cookie.expiry && issued <= now / self.period_secs;
        let key = period_key(&self.secret, issued);
        if !well_formed || !cookie.signed_by(&key, &address(client)) {
            return Err(Rejected::Forged);
        }
        Ok(ip_of(&cookie.server))
    }
}

/// A cookie as the header carries it: hex of `Cookie::to_bytes`.
pub fn cookie_text(cookie: &Cookie) -> String {
    cookie.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// An address as the MAC covers it (port 0).
pub fn address(ip: IpAddr) -> Endpoint {
    match ip {
        IpAddr::V4(v4) => Endpoint::v4(v4.octets(), 0),
        IpAddr::V6(v6) => Endpoint::v6(v6.octets(), 0),
    }
}

pub fn ip_of(endpoint: &Endpoint) -> IpAddr {
    if endpoint.family == FAMILY_V4 {
        let [a, b, c, d, ..] = endpoint.addr;
        IpAddr::from([a, b, c, d])
    } else {
        IpAddr::from(endpoint.addr)
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests;
