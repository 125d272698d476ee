//! `redirector home`: a minimal registrar for tests and the demo. Keeps
//! bindings in memory, answers REGISTER with 200 and the current contacts
//! with their expiry (RFC 3261 §10.3, simplified: no authentication, no
//! Call-ID/CSeq ordering), OPTIONS with 200, SUBSCRIBE with 200 naming the
//! address it arrived at in its Contact (so a test can tell which home
//! server took a subscription; no NOTIFYs are sent), and other methods with
//! 405.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;
use xxhash_rust::xxh3::xxh3_64;

use crate::sip::{
    Aor, HeaderKind, Message, NameAddr, StartLine,
    response::{self, Basis},
    split_list, unfold,
};

const DEFAULT_EXPIRES: u32 = 3600;
const ALLOW: &str = "REGISTER, OPTIONS, SUBSCRIBE";

#[derive(Debug, Default)]
pub struct Registrar {
    bindings: Mutex<HashMap<Aor, Vec<Binding>>>,
    /// REGISTERs answered with 200.
    pub registered: AtomicU64,
}

#[derive(Debug, Clone)]
struct Binding {
    contact: String,
    expires_at: Instant,
}

impl Registrar {
    /// The answer to a datagram from `source` to `local`, if it deserves one.
    pub fn on_datagram(&self, datagram: &[u8], source: SocketAddr, local: SocketAddr) -> Option<(SocketAddr, Vec<u8>)> {
        let message = match Message::parse(datagram) {
            Ok(message) => message,
            Err(error) if response::looks_like_request(datagram) => {
                return Some(answer(&mut Basis::salvage(datagram), source, 400, &error.to_string(), &[]));
            }
            Err(_) => return None,
        };
        let StartLine::Request { method, .. } = message.start else { return None };
        let mut basis = Basis::of(&message);
        match method {
            "REGISTER" => Some(self.register(&message, &mut basis, source)),
            "OPTIONS" => Some(answer(&mut basis, source, 200, "OK", &[("Allow", ALLOW.into())])),
            "SUBSCRIBE" => Some(subscribe(&message, &mut basis, source, local)),
            "ACK" => None,
            _ => Some(answer(&mut basis, source, 405, "Method Not Allowed", &[("Allow", ALLOW.into())])),
        }
    }

    /// The current contacts of `aor`.
    pub fn contacts(&self, aor: &Aor) -> Vec<String> {
        let now = Instant::now();
        let bindings = self.bindings.lock().expect("bindings lock");
        bindings
            .get(aor)
            .map_or_else(Vec::new, |b| b.iter().filter(|b| b.expires_at > now).map(|b| b.contact.clone()).collect())
    }

    fn register(&self, message: &Message<'_>, basis: &mut Basis, source: SocketAddr) -> (SocketAddr, Vec<u8>) {
        let aor = match message.value(HeaderKind::To).ok_or("Missing To Header").and_then(|to| {
            let uri = NameAddr::parse(&to, "To").map_err(|_| "Malformed To Header")?.uri;
            Aor::from_uri(uri, "To").map_err(|_| "Malformed To Header")
        }) {
            Ok(aor) => aor,
            Err(reason) => return answer(basis, source, 400, reason, &[]),
        };
        let default_expires =
            message.value(HeaderKind::Expires).and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_EXPIRES);
        let now = Instant::now();
        let mut bindings = self.bindings.lock().expect("bindings lock");
        let current = bindings.entry(aor.clone()).or_default();
        current.retain(|b| b.expires_at > now);
        for header in message.headers_of(HeaderKind::Contact) {
            for value in split_list(header.value) {
                let value = unfold(value);
                if value.trim() == "*" {
                    current.clear();
                    continue;
                }
                let Ok(contact) = NameAddr::parse(&value, "Contact") else {
                    return answer(basis, source, 400, "Malformed Contact Header", &[]);
                };
                let expires = expires_param(contact.params).unwrap_or(default_expires);
                current.retain(|b| b.contact != contact.uri);
                if expires > 0 {
                    let expires_at = now + Duration::from_secs(expires.into());
                    current.push(Binding { contact: contact.uri.to_owned(), expires_at });
                }
            }
        }
        let extra: Vec<(&str, String)> = current
            .iter()
            .map(|b| {
                (
                    "Contact",
                    format!("<{}>;expires={}", b.contact, b.expires_at.saturating_duration_since(now).as_secs()),
                )
            })
            .collect();
        self.registered.fetch_add(1, Ordering::Relaxed);
        answer(basis, source, 200, "OK", &extra)
    }
}

/// 200 for any SUBSCRIBE, granting at most an hour.
fn subscribe(message: &Message<'_>, basis: &mut Basis, source: SocketAddr, local: SocketAddr) -> (SocketAddr, Vec<u8>) {
    let requested = message.value(HeaderKind::Expires).and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_EXPIRES);
    let extra = [("Contact", format!("<sip:{local}>")), ("Expires", requested.min(DEFAULT_EXPIRES).to_string())];
    answer(basis, source, 200, "OK", &extra)
}

fn expires_param(params: &str) -> Option<u32> {
    params.split(';').find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.trim().eq_ignore_ascii_case("expires").then(|| value.trim().parse().ok())?
    })
}

fn answer(
    basis: &mut Basis,
    source: SocketAddr,
    code: u16,
    reason: &str,
    extra: &[(&str, String)],
) -> (SocketAddr, Vec<u8>) {
    let to = basis.stamp_top_via(source);
    let key = format!("{:?}{:?}", basis.call_id, basis.from);
    let tag = format!("home{:08x}", xxh3_64(key.as_bytes()) as u32);
    (to, response::build(basis, code, reason, &tag, extra))
}

/// Answers on every `listen` address (replying from the socket a request
/// arrived on) until `shutdown` completes.
pub async fn serve(
    registrar: Arc<Registrar>,
    listen: &[SocketAddr],
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for &address in listen {
        let socket = UdpSocket::bind(address).await.map_err(|e| context(e, format!("binding {address}")))?;
        let registrar = registrar.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, source) =
                    socket.recv_from(&mut buf).await.map_err(|e| context(e, format!("receiving on {address}")))?;
                if let Some((to, bytes)) = registrar.on_datagram(&buf[..len], source, address) {
                    socket.send_to(&bytes, to).await.map_err(|e| context(e, format!("answering {to}")))?;
                }
            }
        });
    }
    tokio::select! {
        () = shutdown => Ok(()),
        Some(result) = tasks.join_next() => result.map_err(std::io::Error::other)?,
    }
}

/// The error with what was being done in front.
fn context(error: std::io::Error, what: String) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(contact: &str, expires: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bK1\r\n\
             To: <sip:alice@example.net>\r\nFrom: <sip:alice@example.net>;tag=1\r\nCall-ID: r@x\r\n\
             CSeq: 1 REGISTER\r\n{contact}{expires}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn source() -> SocketAddr {
        "203.0.113.7:5062".parse().unwrap()
    }

    fn answer_to(registrar: &Registrar, datagram: &[u8], source: SocketAddr) -> Option<(SocketAddr, Vec<u8>)> {
        registrar.on_datagram(datagram, source, "192.0.2.11:5060".parse().unwrap())
    }

    fn text(answer: Option<(SocketAddr, Vec<u8>)>) -> String {
        String::from_utf8(answer.unwrap().1).unwrap()
    }

    #[test]
    fn register_binds_and_answers_with_the_contact_and_expiry() {
        let registrar = Registrar::default();
        let ok = text(answer_to(
            &registrar,
            &register("Contact: <sip:alice@203.0.113.7:5062>\r\n", "Expires: 600\r\n"),
            source(),
        ));
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Contact: <sip:alice@203.0.113.7:5062>;expires=600\r\n"), "{ok}");
        let aor = Aor::from_uri("sip:alice@example.net", "To").unwrap();
        assert_eq!(registrar.contacts(&aor), ["sip:alice@203.0.113.7:5062"]);
        answer_to(&registrar, &register("Contact: <sip:alice@203.0.113.7:5062>;expires=0\r\n", ""), source());
        assert!(registrar.contacts(&aor).is_empty(), "expires=0 removes the binding");
    }

    #[test]
    fn options_other_methods_and_malformed_requests() {
        let registrar = Registrar::default();
        let options = String::from_utf8(register("", "")).unwrap().replace("REGISTER", "OPTIONS");
        assert!(text(answer_to(&registrar, options.as_bytes(), source())).contains("Allow: REGISTER, OPTIONS"));
        let subscribe = String::from_utf8(register("", "Expires: 7200\r\n")).unwrap().replace("REGISTER", "SUBSCRIBE");
        let ok = text(answer_to(&registrar, subscribe.as_bytes(), source()));
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nContact: <sip:192.0.2.11:5060>\r\nExpires: 3600\r\n"), "{ok}");
        let invite = String::from_utf8(register("", "")).unwrap().replace("REGISTER", "INVITE");
        assert!(text(answer_to(&registrar, invite.as_bytes(), source())).starts_with("SIP/2.0 405"));
        let broken = String::from_utf8(register("", "")).unwrap().replace("Call-ID: r@x\r\n", "");
        assert!(
            text(answer_to(&registrar, broken.as_bytes(), source())).starts_with("SIP/2.0 400 Missing Call-ID Header")
        );
        assert!(answer_to(&registrar, b"SIP/2.0 200 OK\r\n\r\n", source()).is_none());
    }

    /// RFC 3261 §18.2.2, as real registrars answer: to the source address
    /// (`received`) at the Via's sent-by port when the Via has no `rport`,
    /// at the source port when it asks for `rport` (RFC 3581), and to the
    /// sent-by itself when it is the source.
    #[test]
    fn answers_go_where_the_top_via_says_not_to_the_source() {
        let registrar = Registrar::default();
        let nat: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let (to, _) = answer_to(&registrar, &register("", ""), nat).unwrap();
        assert_eq!(to, "198.51.100.1:5062".parse().unwrap(), "received, at the sent-by port");
        let rport = String::from_utf8(register("", "")).unwrap().replace("branch=z9hG4bK1", "branch=z9hG4bK1;rport");
        let (to, ok) = answer_to(&registrar, rport.as_bytes(), nat).unwrap();
        assert_eq!(to, nat, "rport asked for: the source port");
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.contains(";received=198.51.100.1;rport=40000\r\n"), "{ok}");
        let (to, _) = answer_to(&registrar, &register("", ""), source()).unwrap();
        assert_eq!(to, source(), "sent-by is the source");
    }
}
