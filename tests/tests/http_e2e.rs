//! The edge's HTTP listener end to end (`[http] listen`, `ops::http`): the
//! bearer token, `/metrics` without it, the routing table with its version
//! and changes, and `redirector routes --from` as its client, once and
//! following the stream.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    process::{Child, Stdio},
    time::Duration,
};

use redirector::ops::api::{Route, RouteTable};
use redirector_tests::{
    operator::{cli_ok, routes, wait_until},
    privileged,
    sip_pool::{Registrar, sipp_clients, start_registrars},
    topology::{Attach, Topology, kill_group, redirector_binary},
};

const HTTP: &str = "127.0.0.1:8080";
const PROMETHEUS: &str = "127.0.0.1:9464";
const TOKEN: &str = "0123456789abcdef";

/// An answer: status code, head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// `GET path` on `address` inside the edge's namespace, over a plain socket
/// (an HTTP client independent of redirector's), with `token` if given.
fn get(topology: &Topology, address: &str, path: &str, token: Option<&str>) -> Answer {
    get_with(topology, address, path, token, "")
}

/// `get` with more header lines (each ending in CRLF).
fn get_with(topology: &Topology, address: &str, path: &str, token: Option<&str>, headers: &str) -> Answer {
    let _inside = topology.edge.enter();
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
    let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: edge\r\n{authorization}{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {response:?}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

fn table(topology: &Topology, query: &str) -> RouteTable {
    let answer = get(topology, HTTP, &format!("/routes{query}"), Some(TOKEN));
    assert_eq!(answer.status, 200, "{}\n{}", answer.head, answer.body);
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body))
}

fn sorted(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort_by(|a, b| a.aor.cmp(&b.aor));
    routes
}

/// The operator's document template of these tests.
const TEMPLATE: &str = "<profile aor=\"{{aor}}\"><registrar>{{registrar}}</registrar></profile>\n";

/// An edge with `[http]`, `[documents]` and `[stats] prometheus`, 2 homes,
/// and `clients` SIPp clients registered through it.
fn edge_with_clients(clients: u16) -> Topology {
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    let token_file = topology.scratch("http.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let template = topology.scratch("profile.xml");
    std::fs::write(&template, TEMPLATE).unwrap();
    topology.extra_config = format!(
        "[stats]\ninterval = 0.2\nprometheus = \"{PROMETHEUS}\"\n[http]\nlisten = \"{HTTP}\"\ntoken_file = \"{}\"\n\
         [documents]\ntemplate = \"{}\"\n",
        token_file.display(),
        template.display()
    );
    start_registrars(&mut topology, Registrar::Own);
    topology.start(&[]);
    assert!(sipp_clients(&topology, "register_follow_redirect.xml", clients, 6000, "web"), "sipp clients");
    topology
}

/// `redirector ARGS` inside the edge's namespace (where the listener is).
fn cli_in_edge(topology: &Topology, args: &[&str]) -> std::process::Command {
    let mut command = topology.edge.command(redirector_binary().to_str().unwrap(), args);
    command.stdin(Stdio::null());
    command
}

#[test]
fn the_listener_asks_for_the_token_and_serves_metrics_and_the_route_table() {
    if !privileged() {
        return;
    }
    let topology = edge_with_clients(3);

    for address in [HTTP, PROMETHEUS] {
        let metrics = get(&topology, address, "/metrics", None);
        assert_eq!(metrics.status, 200, "/metrics needs no token on {address}: {}", metrics.head);
        assert!(metrics.head.to_lowercase().contains("content-type: application/openmetrics-text"), "{}", metrics.head);
        let redirected = "redirector_first_contact_total{event=\"redirected\"} 3";
        let scraped = || get(&topology, address, "/metrics", None).body.lines().any(|l| l == redirected);
        wait_until(scraped, "the statistics stream's reading has every redirect");
    }
    assert_eq!(
        get(&topology, PROMETHEUS, "/routes", Some(TOKEN)).status,
        404,
        "[stats] prometheus serves /metrics alone"
    );
    for token in [None, Some("0123456789abcdeX"), Some("")] {
        let refused = get(&topology, HTTP, "/routes", token);
        assert_eq!(refused.status, 401, "token {token:?}: {}", refused.body);
        assert!(refused.head.to_lowercase().contains("www-authenticate: bearer"), "{}", refused.head);
    }
    let by_query = get(&topology, HTTP, &format!("/routes?access_token={TOKEN}"), None);
    assert_eq!(by_query.status, 200, "the token in the query: {}", by_query.body);

    let whole = table(&topology, "");
    assert_eq!(sorted(whole.routes.clone()), sorted(routes(&topology)), "the same table as the control socket's");
    assert_eq!(whole.routes.len(), 3);
    assert!(!whole.reload && whole.since.is_none());
    let unchanged = table(&topology, &format!("?since={}", whole.version));
    assert_eq!((unchanged.version, unchanged.routes.len(), unchanged.removed.len()), (whole.version, 0, 0));

    let busy = whole.routes[0].server.clone();
    let drained = cli_ok(&topology, &["drain", &busy]);
    let moved: Vec<&Route> = whole.routes.iter().filter(|r| r.server == busy).collect();
    assert!(drained.contains(&format!("{} client(s) moved", moved.len())), "{drained}");
    let changes = table(&topology, &format!("?since={}", whole.version));
    assert_eq!(changes.since, Some(whole.version));
    assert_eq!(changes.version.seq, whole.version.seq + moved.len() as u64, "each move takes a version");
    let now = routes(&topology);
    let expected: Vec<Route> = now.iter().filter(|r| moved.iter().any(|m| m.aor == r.aor)).cloned().collect();
    assert_eq!(sorted(changes.routes.clone()), sorted(expected), "exactly the moved clients, as they are now");

    let reload = table(&topology, "?since=1-0");
    assert!(reload.reload && reload.routes.is_empty(), "another epoch's version needs a reload: {reload:?}");
    let bad = get(&topology, HTTP, "/routes?since=yesterday", Some(TOKEN));
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("EPOCH-SEQ"), "{}", bad.body);
    let compact = get(&topology, HTTP, &format!("/routes?format=compact&since={}", whole.version), Some(TOKEN));
    let first_moved = changes.routes.first().expect("a moved client");
    let line = format!(
        "+ {} {} {} {}",
        first_moved.aor,
        first_moved.server,
        first_moved.address.unwrap(),
        first_moved.generation
    );
    assert!(compact.body.starts_with(&format!("version {}\nsince {}\n", changes.version, whole.version)));
    assert!(compact.body.lines().any(|l| l == line), "{line} in:\n{}", compact.body);
}

#[test]
fn the_cli_fetches_the_table_and_follows_its_changes_into_a_kamailio_file() {
    if !privileged() {
        return;
    }
    let topology = edge_with_clients(2);
    let token_file = topology.scratch("http.token");
    let token_file = token_file.to_str().unwrap();
    let from = format!("http://{HTTP}");
    let fetched =
        cli_in_edge(&topology, &["routes", "--from", &from, "--token-file", token_file, "--json"]).output().unwrap();
    assert!(fetched.status.success(), "{}", String::from_utf8_lossy(&fetched.stderr));
    let fetched: Vec<Route> = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(sorted(fetched), sorted(routes(&topology)));
    let refused = cli_in_edge(&topology, &["routes", "--from", &from, "--json"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{}", String::from_utf8_lossy(&refused.stderr));

    let file = topology.scratch("routes");
    let reloads = topology.scratch("reloads");
    let then = format!("echo reloaded >> {}", reloads.display());
    let args = ["routes", "--from", &from, "--token-file", token_file, "--format", "kamailio", "--follow", "--output"];
    let mut follower: Child =
        cli_in_edge(&topology, &args).args([file.to_str().unwrap(), "--then", &then]).process_group(0).spawn().unwrap();
    let rows = |file: &std::path::Path| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut rows: Vec<String> = text.lines().skip(1).map(str::to_owned).collect();
        rows.sort();
        rows
    };
    let row = |route: &Route| {
        let address = route.address.unwrap().to_string().replace(':', "\\:");
        format!("{}:0:0:sip\\:{address}:0", route.aor.replace(':', "\\:"))
    };
    let expected = |routes: &[Route]| {
        let mut rows: Vec<String> = routes.iter().map(row).collect();
        rows.sort();
        rows
    };
    let before = routes(&topology);
    wait_until(|| rows(&file) == expected(&before), "the follower writes the whole table");
    let header = std::fs::read_to_string(&file).unwrap();
    assert!(header.starts_with("key_name(str) key_type(int) value_type(int) key_value(str) expires(int)\n"));

    let client = &before[0];
    let other = if client.server == "home0" { "home1" } else { "home0" };
    cli_ok(&topology, &["assign", &client.aor, other]);
    let after = routes(&topology);
    assert_ne!(expected(&after), expected(&before));
    wait_until(|| rows(&file) == expected(&after), "the follower writes the move");
    let reloaded = std::fs::read_to_string(&reloads).unwrap_or_default();
    assert!(reloaded.lines().count() >= 2, "--then ran after each write: {reloaded:?}");
    kill_group(&mut follower);
}

#[test]
fn documents_carry_an_etag_answer_304_and_long_polls_see_a_move() {
    if !privileged() {
        return;
    }
    let topology = edge_with_clients(2);
    let client = routes(&topology)[0].clone();
    let path = format!("/config/{}", client.aor);
    let document = get(&topology, HTTP, &path, Some(TOKEN));
    assert_eq!(document.status, 200, "{}", document.body);
    let expected =
        format!("<profile aor=\"{}\"><registrar>sip:{}</registrar></profile>\n", client.aor, client.address.unwrap());
    assert_eq!(document.body, expected);
    let head = document.head.to_lowercase();
    assert!(head.contains("content-type: application/xml"), "{head}");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).expect("an ETag").to_owned();
    let if_none_match = format!("If-None-Match: {etag}\r\n");

    assert_eq!(get_with(&topology, HTTP, &path, Some(TOKEN), &if_none_match).status, 304);
    let waited = get_with(&topology, HTTP, &format!("{path}?wait=1"), Some(TOKEN), &if_none_match);
    assert_eq!(waited.status, 304, "no change within the wait: {}", waited.body);
    assert_eq!(get(&topology, HTTP, &path, None).status, 401);
    assert_eq!(get(&topology, HTTP, "/config/sip:nobody@example.net", Some(TOKEN)).status, 404);

    let other = if client.server == "home0" { "home1" } else { "home0" };
    let moved = std::thread::scope(|scope| {
        let poll = scope.spawn(|| get_with(&topology, HTTP, &format!("{path}?wait=30"), Some(TOKEN), &if_none_match));
        cli_ok(&topology, &["assign", &client.aor, other]);
        poll.join().unwrap()
    });
    assert_eq!(moved.status, 200, "the long poll answers the move: {}", moved.body);
    let now = routes(&topology).into_iter().find(|r| r.aor == client.aor).unwrap();
    assert!(moved.body.contains(&format!("<registrar>sip:{}</registrar>", now.address.unwrap())), "{}", moved.body);
    assert!(!moved.head.to_lowercase().contains(&etag), "a new tag: {}", moved.head);
}

/// Chromium, headless as Debian ships it, run inside the edge's namespace
/// (where the listener is) with a fresh profile: `mode` is `--dump-dom` or
/// `--screenshot=FILE`. Bounded: killed with its process group after 90 s.
fn chromium(topology: &Topology, url: &str, mode: &str, profile: &str) -> String {
    let profile = topology.scratch(profile);
    let output = topology.scratch("chromium.out");
    let user_data = format!("--user-data-dir={}", profile.display());
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1100",
        // Long enough for several polls of /status (virtual time waits
        // for the network).
        "--virtual-time-budget=6000",
        &user_data,
        mode,
        url,
    ];
    let mut browser = topology
        .edge
        .command("chromium", &args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting chromium (apt-get install chromium)");
    let start = std::time::Instant::now();
    while browser.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished = browser.try_wait().unwrap();
    kill_group(&mut browser);
    assert!(finished.is_some_and(|status| status.success()), "chromium {mode} {url}: {finished:?}");
    std::fs::read_to_string(&output).unwrap()
}

#[test]
fn the_status_page_shows_a_drained_server_as_draining_in_a_real_browser() {
    if !privileged() {
        return;
    }
    let topology = edge_with_clients(2);
    let busy = routes(&topology)[0].server.clone();
    cli_ok(&topology, &["drain", &busy]);
    wait_until(
        || get(&topology, HTTP, "/status", Some(TOKEN)).body.contains("\"state\":\"draining\""),
        "the statistics stream reads the drain",
    );
    let page = get(&topology, HTTP, "/", None);
    assert_eq!(page.status, 401, "the page asks for the token too");

    let url = format!("http://{HTTP}/?access_token={TOKEN}");
    let dom = chromium(&topology, &url, "--dump-dom", "profile-dom");
    assert!(dom.contains("data-loaded=\"yes\""), "the page's script drew a reading:\n{dom}");
    let row = format!("<tr data-server=\"{busy}\" data-state=\"draining\" data-health=\"healthy\">");
    assert!(dom.contains(&row), "{busy} shows as draining:\n{dom}");
    assert!(dom.contains("<td>drained</td>"), "the moves say why:\n{dom}");
    assert!(dom.contains("data-counter=\"redirected\""), "first contact's rates:\n{dom}");
    assert!(dom.contains("<polyline"), "the load chart:\n{dom}");
    assert!(dom.contains("<span id=\"updated\" class=\"\">updated "), "the last poll succeeded:\n{dom}");

    // The README's picture, when asked for (REDIRECTOR_SCREENSHOT=path).
    if let Ok(path) = std::env::var("REDIRECTOR_SCREENSHOT") {
        chromium(&topology, &url, &format!("--screenshot={path}"), "profile-shot");
    }
}
