//! name-addr / addr-spec values (To, From, Contact) and the address of
//! record a client is known by.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use super::{ParseError, message::find_unquoted};

/// A To / From / Contact value split into its URI and header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub uri: &'a str,
    /// Parameters after the URI (`;tag=…`), unparsed.
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a str, header: &'static str) -> Result<Self, ParseError> {
        let malformed = ParseError::Malformed(header);
        let value = value.trim();
        if let Some(open) = find_unquoted(value, |c| c == '<') {
            let close = value[open..].find('>').ok_or(malformed.clone())? + open;
            let uri = value[open + 1..close].trim();
            let params = value[close + 1..].trim();
            if uri.is_empty() || !(params.is_empty() || params.starts_with(';')) {
                return Err(malformed);
            }
            return Ok(Self { uri, params });
        }
        // addr-spec without brackets: parameters belong to the header.
        let (uri, params) = value.split_once(';').map_or((value, ""), |(u, p)| (u, p));
        if uri.is_empty() || uri.contains(char::is_whitespace) {
            return Err(malformed);
        }
        Ok(Self { uri: uri.trim(), params: params.trim() })
    }
}

/// The `tag` parameter of a To / From value, if any.
pub fn tag(value: &str) -> Option<&str> {
    let params = NameAddr::parse(value, "To").ok()?.params;
    params.split(';').find_map(|p| {
        let (key, val) = p.split_once('=')?;
        key.trim().eq_ignore_ascii_case("tag").then(|| val.trim()).filter(|v| !v.is_empty())
    })
}

/// A To / From value without its `tag` parameter.
pub fn without_tag(value: &str) -> String {
    let value = value.trim();
    let Ok(name_addr) = NameAddr::parse(value, "To") else {
        return value.to_owned();
    };
    let head = value[..value.len() - name_addr.params.len()].trim_end().trim_end_matches(';');
    let is_tag = |p: &str| p.split('=').next().unwrap_or_default().trim().eq_ignore_ascii_case("tag");
    let kept: String = name_addr
        .params
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_tag(p))
        .map(|p| format!(";{p}"))
        .collect();
    format!("{head}{kept}")
}

/// User (without password), host (IPv6 in brackets) and port of a SIP URI
/// after its scheme; parameters and headers are cut off.
fn user_host_port(rest: &str) -> (Option<&str>, &str, Option<&str>) {
    let rest = rest.split([';', '?']).next().unwrap_or("");
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((user, hostport)) => (Some(user.split(':').next().unwrap_or(user)), hostport),
        None => (None, rest),
    };
    let (host, port) = if hostport.starts_with('[') {
        let host = hostport.split_inclusive(']').next().unwrap_or(hostport);
        (host, hostport[host.len()..].strip_prefix(':'))
    } else {
        hostport.split_once(':').map_or((hostport, None), |(host, port)| (host, Some(port)))
    };
    (user, host, port)
}

/// The address a `sip:` / `sips:` URI with an IP literal host names (port
/// 5060 or 5061 when absent); `None` for host names and other schemes.
pub fn socket_address(uri: &str) -> Option<SocketAddr> {
    let (scheme, rest) = uri.split_once(':')?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "sip" => 5060,
        "sips" => 5061,
        _ => return None,
    };
    let (_, host, port) = user_host_port(rest);
    let ip: IpAddr = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok()?.into(),
        None => host.parse::<std::net::Ipv4Addr>().ok()?.into(),
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    Some(SocketAddr::new(ip, port))
}

/// An address of record in canonical form (RFC 3261 §10.3): scheme (`sips`
/// folded into `sip`), user as given, host lower-cased; no port, no
/// parameters, no headers. The key a client's assignment is stored under.
/// Stored (serde) as its canonical text, read back as trusted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Aor(String);

/// Longest AOR kept: every assignment lives in memory and on disk, and its
/// key is whatever a client sends.
pub const MAX_AOR: usize = 256;

impl Aor {
    pub fn from_uri(uri: &str, header: &'static str) -> Result<Self, ParseError> {
        let malformed = ParseError::Malformed(header);
        let (scheme, rest) = uri.split_once(':').ok_or(malformed.clone())?;
        if scheme.eq_ignore_ascii_case("tel") {
            let number = rest.split([';', '?']).next().unwrap_or("");
            return if number.is_empty() { Err(malformed) } else { Self::bounded(format!("tel:{number}"), header) };
        }
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return Err(malformed);
        }
        let (user, host, _) = user_host_port(rest);
        if host.is_empty() || user.is_some_and(str::is_empty) {
            return Err(malformed);
        }
        // Built in one allocation: every request's AOR is read this way.
        let mut aor = String::with_capacity(5 + user.map_or(0, |u| u.len() + 1) + host.len());
        aor.push_str("sip:");
        if let Some(user) = user {
            aor.push_str(user);
            aor.push('@');
        }
        aor.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        Self::bounded(aor, header)
    }

    fn bounded(aor: String, header: &'static str) -> Result<Self, ParseError> {
        if aor.len() > MAX_AOR {
            return Err(ParseError::TooLong(header));
        }
        Ok(Self(aor))
    }

    /// Parses a stored canonical AOR back (trusted input).
    pub fn from_canonical(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Aor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
