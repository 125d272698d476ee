//! The HTTP listener, axum on hyper: `/metrics` for Prometheus, the routing
//! table (`/routes`, `/routes?since=V`, `/routes/stream`) for clients and
//! upstream proxies, and the status page (`/`, fed by `/status`). Every
//! endpoint but `/metrics` asks for the bearer token, in an `Authorization:
//! Bearer` header or (for a browser's page and its event stream, which
//! cannot set headers) the `access_token` query parameter (RFC 6750 §2.3).
//!
//! Handlers ask the state owner through its channel and await the answer;
//! no tokio worker waits on the owner's work.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::info;

use crate::{
    edge::routes::RouteVersion,
    ops::{
        api::{RecentMove, Reply, Request as Control, RouteTable, Stats},
        documents::{self, Template},
        metrics,
        owner::Owner,
        stats::Latest,
    },
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the HTTP bearer token from {path} ([http] token_file): {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0} ([http] token_file) has no token on its first line: write one (e.g. 32 random hex digits)")]
    Empty(std::path::PathBuf),
}

/// The bearer token: the first line of `path`, trimmed.
pub fn read_token(path: &std::path::Path) -> Result<Arc<str>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.into(), source })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(TokenError::Empty(path.into()));
    }
    Ok(token.into())
}

/// What the handlers share.
#[derive(Clone)]
pub struct Shared {
    pub owner: Owner,
    pub latest: Arc<Latest>,
    /// The routing table's version, as the owner last published it.
    pub versions: watch::Receiver<RouteVersion>,
    /// `[documents] template`, if configured.
    pub template: Option<Arc<Template>>,
}

/// `/metrics` alone (what `[stats] prometheus` serves).
pub fn metrics_only(latest: Arc<Latest>) -> Router {
    Router::new().route("/metrics", get(serve_metrics)).with_state(latest)
}

/// Every endpoint, all but `/metrics` behind `token`.
pub fn router(shared: Shared, token: Arc<str>) -> Router {
    let guarded = Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/routes", get(routes))
        .route("/routes/stream", get(route_stream))
        .route("/config/{aor}", get(document))
        .with_state(shared.clone())
        .layer(middleware::from_fn_with_state(token, authorize));
    guarded.merge(metrics_only(shared.latest))
}

/// Binds `address` (at start, so a taken port fails the start).
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(address = %listener.local_addr()?, "serving HTTP");
    axum::serve(listener, router).await
}

async fn serve_metrics(State(latest): State<Arc<Latest>>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics::exposition(&latest)).into_response()
}

/// Lets a request through with the token, in its header or query; a
/// `401` naming both ways otherwise.
async fn authorize(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    if presented(request.headers(), request.uri().query()).is_some_and(|given| same(given, &token)) {
        return next.run(request).await;
    }
    let challenge = HeaderValue::from_static("Bearer realm=\"redirector\"");
    let body = "a bearer token is needed ([http] token_file): `Authorization: Bearer TOKEN` or ?access_token=TOKEN\n";
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], body).into_response()
}

/// The token a request presents.
fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    from_header.or_else(|| query?.split('&').find_map(|pair| pair.strip_prefix("access_token=")))
}

/// Compares in time independent of where they differ.
fn same(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A failure, as the client sees it.
fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, format!("{}\n", message.into())).into_response()
}

/// The owner's answer to `request`, or the response saying why there is none.
async fn ask(owner: &Owner, request: Control) -> Result<Reply, Response> {
    match owner.control(request).await {
        Ok(Reply::Error(error)) => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, error)),
        Ok(reply) => Ok(reply),
        Err(gone) => Err(failure(StatusCode::SERVICE_UNAVAILABLE, gone.to_string())),
    }
}

async fn route_table(owner: &Owner, since: Option<RouteVersion>) -> Result<RouteTable, Response> {
    match ask(owner, Control::RouteTable { since }).await? {
        Reply::RouteTable(table) => Ok(table),
        other => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

#[derive(Debug, Default, Deserialize)]
struct RoutesQuery {
    since: Option<String>,
    #[serde(default)]
    format: Format,
}

/// How `/routes` writes the table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Compact,
}

/// `GET /routes[?since=V][&format=compact]`.
async fn routes(State(shared): State<Shared>, Query(query): Query<RoutesQuery>) -> Response {
    let since = match query.since.as_deref().map(str::parse::<RouteVersion>).transpose() {
        Ok(since) => since,
        Err(bad) => return failure(StatusCode::BAD_REQUEST, bad.to_string()),
    };
    match route_table(&shared.owner, since).await {
        Ok(table) if query.format == Format::Compact => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], compact(&table)).into_response()
        }
        Ok(table) => Json(table).into_response(),
        Err(response) => response,
    }
}

/// The compact form: a `version V` line (and `since S`), then `reload`
/// when a full fetch is needed, else one line per route, `+ AOR SERVER
/// ADDRESS GENERATION` (`-` for a server without an address), and `- AOR`
/// for each AOR no longer assigned.
fn compact(table: &RouteTable) -> String {
    let mut text = format!("version {}\n", table.version);
    if let Some(since) = table.since {
        text += &format!("since {since}\n");
    }
    if table.reload {
        text += "reload\n";
    }
    for route in &table.routes {
        let address = route.address.map_or_else(|| "-".to_owned(), |a| a.to_string());
        text += &format!("+ {} {} {address} {}\n", route.aor, route.server, route.generation);
    }
    for aor in &table.removed {
        text += &format!("- {aor}\n");
    }
    text
}

/// A route stream's position: where the next event starts from.
struct Follow {
    owner: Owner,
    versions: watch::Receiver<RouteVersion>,
    /// The version the client has; `None` before the first event.
    last: Option<RouteVersion>,
}

/// `GET /routes/stream`: server-sent events. First a `routes` event with
/// the whole table, then a `changes` event (the JSON of `/routes?since=`)
/// whenever the table changes; a `routes` event again if the changes were
/// lost (a reload). The stream ends if the owner stops.
async fn route_stream(
    State(shared): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let follow = Follow { owner: shared.owner, versions: shared.versions, last: None };
    let events = futures_util::stream::unfold(follow, |mut follow| async move {
        let table = next_table(&mut follow).await?;
        let kind = if table.since.is_some() { "changes" } else { "routes" };
        let event = Event::default().event(kind).id(table.version.to_string()).json_data(&table).ok()?;
        Some((Ok(event), follow))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// The next table to send: the whole one first (and after a reload), then
/// the changes once the version moves; `None` once the owner is gone.
async fn next_table(follow: &mut Follow) -> Option<RouteTable> {
    loop {
        if follow.last.is_some() {
            follow.versions.changed().await.ok()?;
        }
        let mut table = route_table(&follow.owner, follow.last).await.ok()?;
        if table.reload {
            table = route_table(&follow.owner, None).await.ok()?;
        }
        if Some(table.version) != follow.last {
            follow.last = Some(table.version);
            return Some(table);
        }
    }
}

/// The longest a document request waits for a change.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
struct DocumentQuery {
    /// With `If-None-Match`: seconds to wait for the document to change.
    #[serde(default)]
    wait: u64,
}

/// `GET /config/{aor}`: the client's configuration document, with its
/// `ETag`. With `If-None-Match` of the current tag: `304`, or with
/// `?wait=SECONDS` (60 at most) the new document as soon as it changes (a
/// move of the client), `304` if it has not by then (long poll).
async fn document(
    State(shared): State<Shared>,
    axum::extract::Path(aor): axum::extract::Path<String>,
    Query(query): Query<DocumentQuery>,
    headers: HeaderMap,
) -> Response {
    if shared.template.is_none() {
        return failure(StatusCode::NOT_FOUND, "no configuration documents here: [documents] template is not set");
    }
    let known = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait).min(LONGEST_WAIT);
    let mut versions = shared.versions.clone();
    loop {
        versions.borrow_and_update();
        let current = match render(&shared.owner, &aor).await {
            Ok(current) => current,
            Err(response) => return response,
        };
        let etag = HeaderValue::from_str(&current.etag).expect("a hex tag is a header value");
        if known.as_deref() != Some(current.etag.as_str()) {
            let headers =
                [(header::CONTENT_TYPE, HeaderValue::from_static(documents::CONTENT_TYPE)), (header::ETAG, etag)];
            return (headers, current.body).into_response();
        }
        match tokio::time::timeout_at(deadline, versions.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return failure(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
            Err(_) => return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response(),
        }
    }
}

/// `aor`'s document (the state owner renders it, as for its ua-profile
/// NOTIFYs), or the response saying why there is none.
async fn render(owner: &Owner, aor: &str) -> Result<documents::Document, Response> {
    match ask(owner, Control::Document { aor: aor.to_owned() }).await? {
        Reply::Document(Some(document)) => Ok(document),
        Reply::Document(None) => Err(failure(
            StatusCode::NOT_FOUND,
            format!("{aor} has no assignment (it gets one at its first contact), or its home has no address"),
        )),
        other => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

/// What the status page shows: the statistics stream's newest reading
/// (`null` before the first) and the last moves, newest first.
#[derive(Debug, Serialize)]
struct Status<'a> {
    stats: Option<&'a Stats>,
    moves: Vec<RecentMove>,
}

/// `GET /status`: the status page's data, as JSON.
async fn status(State(shared): State<Shared>) -> Response {
    let moves = match ask(&shared.owner, Control::RecentMoves).await {
        Ok(Reply::RecentMoves(moves)) => moves,
        Ok(other) => return failure(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")),
        Err(response) => return response,
    };
    let stats = shared.latest.get();
    Json(Status { stats: stats.as_deref(), moves }).into_response()
}

/// `GET /`: the status page, self-contained (no CDN: its script and
/// styles are inline), polling `/status` with the token it was opened with.
async fn page() -> Html<&'static str> {
    Html(include_str!("status_page.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_taken_from_the_header_or_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers, Some("a=1&access_token=xyz")), Some("xyz"));
        assert_eq!(presented(&headers, Some("a=1")), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&headers, None), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&headers, None), None);
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc") && !same("ab", "abc") && !same("", "abc"));
    }

    #[test]
    fn the_token_file_gives_its_first_line_or_a_named_error() {
        let dir = std::env::temp_dir().join(format!("redirector-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, " s3cret \nignored\n").unwrap();
        assert_eq!(&*read_token(&path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).unwrap_err().to_string().contains("no token"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_token(&path).unwrap_err().to_string().contains("token_file"));
    }

    #[test]
    fn the_compact_form_lists_routes_and_removals() {
        let version = RouteVersion { epoch: 5, seq: 9 };
        let table = RouteTable {
            version,
            since: Some(RouteVersion { epoch: 5, seq: 7 }),
            reload: false,
            routes: vec![crate::ops::api::Route {
                aor: "sip:a@x".into(),
                server: "home0".into(),
                address: Some("192.0.2.1:5060".parse().unwrap()),
                generation: 2,
            }],
            removed: vec!["sip:b@x".into()],
        };
        assert_eq!(compact(&table), "version 5-9\nsince 5-7\n+ sip:a@x home0 192.0.2.1:5060 2\n- sip:b@x\n");
        let reload = RouteTable { reload: true, routes: vec![], removed: vec![], ..table };
        assert_eq!(compact(&reload), "version 5-9\nsince 5-7\nreload\n");
    }
}
