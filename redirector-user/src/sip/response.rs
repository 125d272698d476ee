//! Building responses (RFC 3261 §8.2.6) from what a request carried, even
//! when the request itself was malformed.

use std::{borrow::Cow, fmt::Write, net::SocketAddr};

use super::{HeaderKind, Message, StartLine, Via, split_list, tag, unfold};

/// The request headers a response copies. From a parsed message, borrowed
/// from its datagram (a folded value is unfolded into a copy); or, for a
/// request that failed to parse, salvaged line by line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Basis<'a> {
    pub vias: Vec<Cow<'a, str>>,
    pub from: Option<Cow<'a, str>>,
    pub to: Option<Cow<'a, str>>,
    pub call_id: Option<Cow<'a, str>>,
    pub cseq: Option<Cow<'a, str>>,
}

impl<'a> Basis<'a> {
    pub fn of(message: &Message<'a>) -> Self {
        Self {
            vias: message.via_values().collect(),
            from: message.value(HeaderKind::From),
            to: message.value(HeaderKind::To),
            call_id: message.value(HeaderKind::CallId),
            cseq: message.value(HeaderKind::CSeq),
        }
    }

    /// Whatever response headers can be read from a datagram that did not
    /// parse: every line that looks like `Name: value` is tried.
    pub fn salvage(datagram: &[u8]) -> Basis<'static> {
        let text = String::from_utf8_lossy(datagram);
        let mut basis = Basis::default();
        for line in text.lines().skip(1).take_while(|l| !l.trim().is_empty()) {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            let owned = || Some(Cow::Owned(value.to_owned()));
            match HeaderKind::of(name.trim()) {
                HeaderKind::Via => basis.vias.extend(split_list(value).map(|v| Cow::Owned(unfold(v).into_owned()))),
                HeaderKind::From => basis.from = basis.from.or_else(owned),
                HeaderKind::To => basis.to = basis.to.or_else(owned),
                HeaderKind::CallId => basis.call_id = basis.call_id.or_else(owned),
                HeaderKind::CSeq => basis.cseq = basis.cseq.or_else(owned),
                _ => {}
            }
        }
        basis
    }

    /// The basis with every header copied, to outlive its datagram.
    pub fn into_owned(self) -> Basis<'static> {
        let owned = |value: Option<Cow<'_, str>>| value.map(|v| Cow::Owned(v.into_owned()));
        Basis {
            vias: self.vias.into_iter().map(|v| Cow::Owned(v.into_owned())).collect(),
            from: owned(self.from),
            to: owned(self.to),
            call_id: owned(self.call_id),
            cseq: owned(self.cseq),
        }
    }

    /// The top Via stamped with where the request really came from, so the
    /// response can be routed back (§18.2.1, RFC 3581); returns where the
    /// response goes (`response_address` of the stamped basis).
    pub fn stamp_top_via(&mut self, source: SocketAddr) -> SocketAddr {
        let Some(top) = self.vias.first_mut() else { return source };
        let Ok(via) = Via::parse(top) else { return source };
        let to = via.stamped_response_address(source);
        *top = Cow::Owned(via.stamped(source));
        to
    }

    /// Where the response goes: the stamped top Via, else the source.
    pub fn response_address(&self, source: SocketAddr) -> SocketAddr {
        self.vias.first().and_then(|v| Via::parse(v).ok()?.response_address()).unwrap_or(source)
    }
}

/// A response with the basis headers, `to_tag` added to To when it has
/// none, then `extra` headers, and an empty body.
pub fn build(basis: &Basis<'_>, code: u16, reason: &str, to_tag: &str, extra: &[(&str, String)]) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    // Pushed piece by piece: the formatting machinery cost more than the
    // rest of a 302 (this runs for every request answered).
    let mut line = |name: &str, parts: &[&str]| {
        out.push_str(name);
        out.push_str(": ");
        parts.iter().for_each(|part| out.push_str(part));
        out.push_str("\r\n");
    };
    for via in &basis.vias {
        line("Via", &[via.as_ref()]);
    }
    if let Some(from) = basis.from.as_deref() {
        line("From", &[from]);
    }
    if let Some(to) = basis.to.as_deref() {
        if tag(to).is_none() && code > 100 {
            line("To", &[to, ";tag=", to_tag]);
        } else {
            line("To", &[to]);
        }
    }
    if let Some(call_id) = basis.call_id.as_deref() {
        line("Call-ID", &[call_id]);
    }
    if let Some(cseq) = basis.cseq.as_deref() {
        line("CSeq", &[cseq]);
    }
    for (name, value) in extra {
        line(name, &[value]);
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Whether a datagram at least starts like a SIP request (so a malformed
/// one deserves a 400 rather than silence).
pub fn looks_like_request(datagram: &[u8]) -> bool {
    let first_line = datagram.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first_line = String::from_utf8_lossy(first_line);
    let mut parts = first_line.split_whitespace();
    let (method, uri, version) = (parts.next(), parts.next(), parts.next());
    method.is_some_and(|m| m.bytes().all(|b| b.is_ascii_uppercase()))
        && uri.is_some_and(|u| u.contains(':'))
        && version.is_some_and(|v| v.starts_with("SIP/"))
}

/// Whether a parsed message is a response (for routing on the proxy socket).
pub fn is_response(message: &Message<'_>) -> bool {
    matches!(message.start, StartLine::Response { .. })
}
