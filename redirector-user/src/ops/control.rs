//! The daemon's local control API: a Unix socket (mode 0600, so root only)
//! speaking JSON lines — one request object per line, one reply object per
//! line. `{"command":"stats"}` → `{"stats":{…}}`; failures come back as
//! `{"error":"…"}` naming what failed.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
};

pub use crate::ops::api::{Reply, Request};
use crate::ops::{api::ServerStatus, owner::Owner, stats::Latest};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the redirector daemon at {path}: {source} (is `redirector run` running? pass --socket if it uses another path)"
    )]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("talking to the redirector daemon at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the daemon's reply is not understood: {0}")]
    Reply(#[from] serde_json::Error),
}

/// `stats` is the statistics stream's newest reading (a fresh one, without
/// rates, before the first); `servers` carries its rates; everything else
/// acts or reads now, on the state owner.
pub async fn answer(owner: &Owner, latest: &Latest, request: Request) -> Reply {
    let wants_rates = request == Request::Servers;
    if request == Request::Stats
        && let Some(stats) = latest.get()
    {
        return Reply::Stats(stats.as_ref().clone());
    }
    match owner.control(request).await {
        Ok(Reply::Servers(servers)) if wants_rates => Reply::Servers(with_latest_rates(servers, latest)),
        Ok(reply) => reply,
        Err(gone) => Reply::Error(gone.to_string()),
    }
}

/// Current server states and counts, with the load (rates) of the stats
/// stream's newest reading.
fn with_latest_rates(mut servers: Vec<ServerStatus>, latest: &Latest) -> Vec<ServerStatus> {
    let Some(reading) = latest.get() else { return servers };
    for server in &mut servers {
        if let Some(rated) = reading.servers.iter().find(|s| s.name == server.name) {
            server.packets_per_second = rated.packets_per_second;
            server.bytes_per_second = rated.bytes_per_second;
        }
    }
    servers
}

/// Binds the socket (replacing a stale one), root-only.
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves connections until the task is dropped.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    owner: Owner,
    latest: Arc<Latest>,
) -> std::io::Result<()> {
    let listener = UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (owner, latest) = (owner.clone(), latest.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(request) => answer(&owner, &latest, request).await,
                    Err(error) => Reply::Error(format!("not a request: {error}")),
                };
                let mut text = serde_json::to_string(&reply).expect("replies serialize");
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request and waits for its reply: at most 30 s, except for a
/// drain or a removal, which answers once every client has moved (a large
/// pool's can take minutes).
pub fn request(path: &Path, request: &Request) -> Result<Reply, ControlError> {
    let unreachable = |source| ControlError::Unreachable { path: path.to_owned(), source };
    let io = |source| ControlError::Io { path: path.to_owned(), source };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    let moves_all = matches!(request, Request::Drain { .. } | Request::RemoveServer { .. });
    let wait = if moves_all { None } else { Some(Duration::from_secs(30)) };
    stream.set_read_timeout(wait).map_err(io)?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    Ok(serde_json::from_str(&reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines_with_a_command_tag() {
        let text = serde_json::to_string(&Request::Assign { aor: "sip:a@b".into(), server: "home1".into() }).unwrap();
        assert_eq!(text, r#"{"command":"assign","aor":"sip:a@b","server":"home1"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"command":"stats"}"#).unwrap(), Request::Stats);
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
    }

    #[test]
    fn servers_carry_the_newest_rates_but_their_own_state() {
        use crate::{model::ServerState, ops::api::Stats, ops::stats::tests::server};
        let latest = Latest::default();
        let fresh = vec![ServerStatus { state: ServerState::Draining, ..server("home0", 10, 100) }];
        assert_eq!(with_latest_rates(fresh.clone(), &latest), fresh, "no reading yet: no rates");
        let rated = ServerStatus { packets_per_second: Some(5.0), ..server("home0", 8, 80) };
        latest.publish(Stats { servers: vec![rated], ..Stats::default() });
        let shown = &with_latest_rates(fresh, &latest)[0];
        assert_eq!((shown.state, shown.packets, shown.packets_per_second), (ServerState::Draining, 10, Some(5.0)));
    }

    #[test]
    fn an_absent_daemon_is_named_with_its_socket() {
        let error = request(Path::new("/nonexistent/control.sock"), &Request::Stats).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/control.sock") && text.contains("redirector run"), "{text}");
    }
}
