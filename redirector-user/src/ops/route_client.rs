//! `redirector routes --from URL [--follow]`: the routing table fetched
//! from an edge's HTTP listener (`ops::http`), once or followed through
//! its event stream, and written as Kamailio's `htable` reads it from a
//! `db_text` file. Plain `http://` only: the listener has no TLS, so reach
//! it over a trusted network or through a TLS proxy.

use std::collections::BTreeMap;

use http_body_util::{BodyExt, Empty};
use hyper::{
    Request, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;

use crate::ops::api::{Route, RouteTable};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("\"{0}\" is not a URL this client reads: write http://HOST:PORT (no TLS; no path needed)")]
    BadUrl(String),
    #[error("connecting to {authority}: {source}")]
    Connect { authority: String, source: std::io::Error },
    #[error("HTTP with {authority}: {source}")]
    Http { authority: String, source: hyper::Error },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: StatusCode, body: String },
    #[error("{url} sent what is not a route table: {source}")]
    Json { url: String, source: serde_json::Error },
    #[error("the route stream from {0} ended (the edge stopped or restarted)")]
    StreamEnded(String),
    #[error("the route stream from {url} sent changes since {since} to a table at {have}: fetch it again")]
    OutOfStep { url: String, since: String, have: String },
}

/// An edge's HTTP listener, and the token it asks for.
#[derive(Debug, Clone)]
pub struct Source {
    authority: String,
    token: Option<String>,
}

impl Source {
    /// `url` is `http://HOST:PORT` (a trailing `/` or path is ignored).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, FetchError> {
        let bad = || FetchError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.split('/').next().filter(|a| !a.is_empty()).ok_or_else(bad)?;
        Ok(Self { authority: authority.to_owned(), token })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    /// The response to `GET path`, its status a success.
    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, FetchError> {
        let authority = self.authority.clone();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|source| FetchError::Connect { authority: authority.clone(), source })?;
        let http = |source| FetchError::Http { authority: authority.clone(), source };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
        // Ends with the response's body (or the connection's failure, which
        // the body's reader sees).
        tokio::spawn(connection);
        let mut request = Request::get(path).header(header::HOST, &authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|_| FetchError::BadUrl(self.url(path)))?;
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        Err(FetchError::Status { url: self.url(path), status, body })
    }

    /// `GET path`'s body as text.
    pub async fn text(&self, path: &str) -> Result<(StatusCode, String), FetchError> {
        let response = self.get(path).await?;
        let status = response.status();
        let http = |source| FetchError::Http { authority: self.authority.clone(), source };
        let body = response.into_body().collect().await.map_err(http)?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The whole routing table.
    pub async fn routes(&self) -> Result<RouteTable, FetchError> {
        let (_, body) = self.text("/routes").await?;
        serde_json::from_str(&body).map_err(|source| FetchError::Json { url: self.url("/routes"), source })
    }

    /// Follows `/routes/stream`: `each` gets the table after every event
    /// (the whole table first). Returns when `each` fails or the stream ends.
    pub async fn follow<E: From<FetchError>>(&self, mut each: impl FnMut(&Table) -> Result<(), E>) -> Result<(), E> {
        let url = self.url("/routes/stream");
        let mut body = self.get("/routes/stream").await?.into_body();
        let mut events = Events::default();
        let mut table = Table::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| FetchError::Http { authority: self.authority.clone(), source })?;
            let Some(data) = frame.data_ref() else { continue };
            for (kind, data) in events.push(data) {
                let update: RouteTable =
                    serde_json::from_str(&data).map_err(|source| FetchError::Json { url: url.clone(), source })?;
                match kind.as_str() {
                    "routes" => table = Table::whole(update),
                    "changes" => table.apply(update, &url)?,
                    _ => continue,
                }
                each(&table)?;
            }
        }
        Err(FetchError::StreamEnded(url).into())
    }
}

/// Server-sent events, split from the bytes as they arrive.
#[derive(Debug, Default)]
struct Events {
    pending: String,
}

impl Events {
    /// The complete events in `bytes` (with what came before): each one's
    /// `event` name and `data` (its lines joined); comments are skipped.
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.push_str(&String::from_utf8_lossy(bytes).replace("\r\n", "\n"));
        let mut events = Vec::new();
        while let Some(end) = self.pending.find("\n\n") {
            let block: String = self.pending.drain(..end + 2).collect();
            let (mut kind, mut data) = ("message".to_owned(), Vec::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    kind = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if !data.is_empty() {
                events.push((kind, data.join("\n")));
            }
        }
        events
    }
}

/// The routing table a follower holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub version: String,
    pub routes: BTreeMap<String, Route>,
}

impl Table {
    pub fn whole(table: RouteTable) -> Self {
        let routes = table.routes.into_iter().map(|route| (route.aor.clone(), route)).collect();
        Self { version: table.version.to_string(), routes }
    }

    /// Applies changes since this table's version.
    fn apply(&mut self, changes: RouteTable, url: &str) -> Result<(), FetchError> {
        let since = changes.since.map(|v| v.to_string()).unwrap_or_default();
        if since != self.version {
            return Err(FetchError::OutOfStep { url: url.to_owned(), since, have: self.version.clone() });
        }
        for aor in &changes.removed {
            self.routes.remove(aor);
        }
        self.routes.extend(changes.routes.into_iter().map(|route| (route.aor.clone(), route)));
        self.version = changes.version.to_string();
        Ok(())
    }
}

/// The db_text header line of Kamailio's `htable` table.
const KAMAILIO_COLUMNS: &str = "key_name(str) key_type(int) value_type(int) key_value(str) expires(int)";

/// `routes` as a Kamailio `db_text` table for `htable`: one row per AOR,
/// its key the AOR, its value the home's SIP URI (`sip:ADDRESS:PORT`),
/// string-typed, never expiring. Routes whose home has no address are left
/// out.
pub fn kamailio<'a>(routes: impl IntoIterator<Item = &'a Route>) -> String {
    let mut text = format!("{KAMAILIO_COLUMNS}\n");
    for route in routes {
        let Some(address) = route.address else { continue };
        let value = format!("sip:{address}");
        text += &format!("{}:0:0:{}:0\n", db_text_escape(&route.aor), db_text_escape(&value));
    }
    text
}

/// A string as a db_text field: its separator and escapes escaped.
fn db_text_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            ':' => escaped.push_str("\\:"),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::routes::RouteVersion;

    fn route(aor: &str, address: Option<&str>) -> Route {
        Route { aor: aor.into(), server: "home0".into(), address: address.map(|a| a.parse().unwrap()), generation: 1 }
    }

    #[test]
    fn urls_are_http_with_an_authority() {
        assert_eq!(Source::new("http://127.0.0.1:8080/", None).unwrap().authority, "127.0.0.1:8080");
        assert_eq!(Source::new("http://[::1]:8080/routes", None).unwrap().authority, "[::1]:8080");
        for bad in ["https://x:1", "127.0.0.1:8080", "http://", "http:///routes"] {
            assert!(Source::new(bad, None).unwrap_err().to_string().contains("http://HOST:PORT"), "{bad}");
        }
    }

    #[test]
    fn events_are_split_as_they_arrive() {
        let mut events = Events::default();
        assert_eq!(events.push(b": keep-alive\n\nevent: routes\ndata: {\"a\""), vec![]);
        assert_eq!(events.push(b"\ndata: :1}\r\n\r\nevent: x\n"), vec![("routes".into(), "{\"a\"\n:1}".into())]);
        assert_eq!(events.push(b"data: y\n\n"), vec![("x".into(), "y".into())]);
    }

    #[test]
    fn changes_apply_only_to_the_version_they_follow() {
        let at = |seq| RouteVersion { epoch: 1, seq };
        let whole = RouteTable {
            version: at(2),
            since: None,
            reload: false,
            routes: vec![route("sip:a@x", Some("192.0.2.1:5060")), route("sip:b@x", Some("192.0.2.1:5060"))],
            removed: vec![],
        };
        let mut table = Table::whole(whole);
        let changes = RouteTable {
            version: at(4),
            since: Some(at(2)),
            reload: false,
            routes: vec![route("sip:a@x", Some("192.0.2.2:5060"))],
            removed: vec!["sip:b@x".into()],
        };
        table.apply(changes.clone(), "u").unwrap();
        assert_eq!(table.version, "1-4");
        assert_eq!(table.routes.keys().collect::<Vec<_>>(), ["sip:a@x"]);
        assert_eq!(table.routes["sip:a@x"].address, Some("192.0.2.2:5060".parse().unwrap()));
        let error = table.apply(changes, "u").unwrap_err().to_string();
        assert!(error.contains("since 1-2") && error.contains("at 1-4"), "{error}");
    }

    #[test]
    fn the_kamailio_file_escapes_colons_and_skips_routes_without_an_address() {
        let routes = [
            route("sip:alice@example.test", Some("192.0.2.21:5060")),
            route("sip:bob@example.test", None),
            route("sip:carol@example.test", Some("[2001:db8::21]:5060")),
        ];
        assert_eq!(
            kamailio(&routes),
            "key_name(str) key_type(int) value_type(int) key_value(str) expires(int)\n\
             sip\\:alice@example.test:0:0:sip\\:192.0.2.21\\:5060:0\n\
             sip\\:carol@example.test:0:0:sip\\:[2001\\:db8\\:\\:21]\\:5060:0\n"
        );
    }
}
