//! One Via value (RFC 3261 §20.42) with whitespace allowed around `/` and
//! `:`, plus the received / rport rules (§18.2.1, RFC 3581).

use std::{
    fmt::Write,
    net::{IpAddr, SocketAddr},
};

use super::ParseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// The transport, e.g. `UDP`.
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    /// Everything after the first `;`, unparsed.
    pub params: &'a str,
}

const MALFORMED: ParseError = ParseError::Malformed("Via");

impl<'a> Via<'a> {
    pub fn parse(value: &'a str) -> Result<Self, ParseError> {
        let (sent, params) = value.split_once(';').unwrap_or((value, ""));
        let mut protocol = sent.splitn(3, '/');
        let (Some(name), Some(version), Some(rest)) = (protocol.next(), protocol.next(), protocol.next()) else {
            return Err(MALFORMED);
        };
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return Err(MALFORMED);
        }
        let rest = rest.trim_start();
        let split = rest.find(char::is_whitespace).ok_or(MALFORMED)?;
        let (transport, sent_by) = (&rest[..split], rest[split..].trim());
        let (host, port) = split_host_port(sent_by)?;
        if transport.is_empty() || host.is_empty() {
            return Err(MALFORMED);
        }
        Ok(Self { transport, host, port, params: params.trim() })
    }

    /// `Some(value)` for `name=value`, `Some("")` for a bare `name`.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.split(';').map(str::trim).find_map(|param| {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").filter(|b| !b.is_empty())
    }

    /// This value as sent on by a server that received it from `source`:
    /// `received` when the source address differs from the sent-by host
    /// (or rport was asked for), `rport` filled in when asked for.
    pub fn stamped(&self, source: SocketAddr) -> String {
        let wants_rport = self.param("rport").is_some();
        let host_matches = self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip == source.ip());
        let kept = self.params.split(';').map(str::trim).filter(|p| !p.is_empty()).filter(|p| {
            let key = p.split('=').next().unwrap_or("").trim();
            !key.eq_ignore_ascii_case("rport") && !key.eq_ignore_ascii_case("received")
        });
        // Written in place: this runs for every request answered.
        let mut out = String::with_capacity(self.host.len() + self.params.len() + 80);
        out.push_str("SIP/2.0/");
        out.push_str(self.transport);
        out.push(' ');
        out.push_str(self.host);
        // Writing to a String cannot fail.
        if let Some(port) = self.port {
            let _ = write!(out, ":{port}");
        }
        for param in kept {
            out.push(';');
            out.push_str(param);
        }
        if !host_matches || wants_rport {
            let _ = write!(out, ";received={}", source.ip());
        }
        if wants_rport {
            let _ = write!(out, ";rport={}", source.port());
        }
        out
    }

    /// Where a response goes once this value is `stamped` for `source`,
    /// without reading the stamped value again: the source's address
    /// (`received`, or the sent-by host that equals it), at the source's
    /// port if rport was asked for, else at the sent-by port.
    pub fn stamped_response_address(&self, source: SocketAddr) -> SocketAddr {
        let port = if self.param("rport").is_some() { source.port() } else { self.port.unwrap_or(5060) };
        SocketAddr::new(source.ip(), port)
    }

    /// Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581).
    pub fn response_address(&self) -> Option<SocketAddr> {
        let host = self.param("received").filter(|r| !r.is_empty()).unwrap_or(self.host);
        let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
        let port = self.param("rport").and_then(|p| p.parse().ok()).or(self.port).unwrap_or(5060);
        Some(SocketAddr::new(ip, port))
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, with whitespace around `:`.
fn split_host_port(sent_by: &str) -> Result<(&str, Option<u16>), ParseError> {
    let (host, port) = if let Some(rest) = sent_by.strip_prefix('[') {
        let close = rest.find(']').ok_or(MALFORMED)?;
        let port = rest[close + 1..].trim();
        (&sent_by[..close + 2], port.strip_prefix(':').map(str::trim))
    } else {
        match sent_by.split_once(':') {
            Some((host, port)) => (host.trim(), Some(port.trim())),
            None => (sent_by, None),
        }
    };
    if host.contains(char::is_whitespace) {
        return Err(MALFORMED);
    }
    let port = port.map(|p| p.parse::<u16>().map_err(|_| MALFORMED)).transpose()?;
    Ok((host, port))
}
