//! The statistics stream's newest reading in OpenMetrics text (which
//! Prometheus scrapes), at `GET /metrics` on `[stats].prometheus`; off
//! unless configured. Encoding is `prometheus-client`'s; the endpoint is a
//! minimal HTTP/1.1 responder (one request per connection, bounded in size
//! and time), which is all a scraper needs.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::{model::ServerState, ops::stats::Latest};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONCURRENT_SCRAPES: usize = 8;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct StatsCollector(Arc<Latest>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let dropped = self.0.load_samples_dropped.load(std::sync::atomic::Ordering::Relaxed);
        let help = "Load samples the rebalancer had no room for";
        counters(&mut encoder, "load_samples_dropped", help, None, [("", dropped)])?;
        let Some(stats) = self.0.get() else { return Ok(()) };
        let servers = &stats.servers;
        let by_server = |value: fn(&crate::ops::api::ServerStatus) -> u64| {
            servers.iter().map(move |s| (s.name.as_str(), value(s))).collect::<Vec<_>>()
        };
        let help = "Packets the fast path sent to the home server";
        counters(&mut encoder, "server_packets", help, Some("server"), by_server(|s| s.packets))?;
        let help = "Bytes the fast path sent to the home server";
        counters(&mut encoder, "server_bytes", help, Some("server"), by_server(|s| s.bytes))?;
        let help = "Clients assigned to the home server";
        gauges(
            &mut encoder,
            "server_clients",
            help,
            "server",
            by_server(|s| s.clients).iter().map(|(n, v)| (*n, *v as f64)),
        )?;
        let rates = servers.iter().filter_map(|s| Some((s.name.as_str(), s.packets_per_second?)));
        let help = "Fast-path packets per second over the last stats interval";
        gauges(&mut encoder, "server_packets_per_second", help, "server", rates)?;
        let up =
            servers.iter().map(|s| (s.name.as_str(), f64::from(u8::from(s.healthy && s.state != ServerState::Down))));
        gauges(&mut encoder, "server_up", "1 when the home server is healthy and not down", "server", up)?;
        let named = |map: &std::collections::BTreeMap<String, u64>| {
            map.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>()
        };
        let verdicts = named(&stats.verdicts);
        let help = "Packets the XDP program saw, by verdict";
        counters(&mut encoder, "verdicts", help, Some("verdict"), verdicts.iter().map(|(k, v)| (k.as_str(), *v)))?;
        let first_contact = named(&stats.first_contact);
        let help = "What first contact did, by event";
        counters(
            &mut encoder,
            "first_contact",
            help,
            Some("event"),
            first_contact.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        let watchers = named(&stats.watchers);
        let help = "What was done for watchers, by event";
        counters(&mut encoder, "watchers", help, Some("event"), watchers.iter().map(|(k, v)| (k.as_str(), *v)))
    }
}

/// One counter family; with `label`, one series per row named by it.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: Option<&str>,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in rows {
        match label {
            Some(key) => {
                metric.encode_family(&[(key, value_label)])?.encode_counter::<NoLabelSet, _, u64>(&value, None)?
            }
            None => metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
        }
    }
    Ok(())
}

/// One gauge family, one series per row, labelled `label`.
fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, f64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value_label, value) in rows {
        metric.encode_family(&[(label, value_label)])?.encode_gauge(&value)?;
    }
    Ok(())
}

/// The exposition text of `latest`.
pub fn exposition(latest: &Arc<Latest>) -> String {
    let mut registry = Registry::with_prefix("redirector");
    registry.register_collector(Box::new(StatsCollector(latest.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// Binds the endpoint's address (at start, so a taken port fails the start).
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `GET /metrics` until the task is dropped, a few scrapes at a
/// time; a failed accept (out of descriptors, say) is logged, not fatal.
pub async fn serve(listener: std::net::TcpListener, latest: Arc<Latest>) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    info!(address = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    let slots = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a metrics connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let latest = latest.clone();
        tokio::spawn(async move {
            if let Err(error) = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, &latest)).await {
                debug!(%peer, %error, "metrics request timed out");
            }
            drop(slot);
        });
    }
}

async fn respond(mut stream: TcpStream, latest: &Arc<Latest>) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let (status, content_type, body) = answer(&request, latest);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Status line, content type and body for a raw request head.
fn answer(request: &[u8], latest: &Arc<Latest>) -> (&'static str, &'static str, String) {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(line).unwrap_or_default().split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", CONTENT_TYPE, exposition(latest)),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "only /metrics is served here\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ops::api::{ServerStatus, Stats};

    fn latest() -> Arc<Latest> {
        let latest = Arc::new(Latest::default());
        let server = ServerStatus {
            clients: 3,
            packets_per_second: Some(2.5),
            ..crate::ops::stats::tests::server("home0", 42, 4200)
        };
        latest.publish(Stats {
            servers: vec![server],
            verdicts: BTreeMap::from([("forwarded".into(), 42)]),
            first_contact: BTreeMap::from([("redirected".into(), 1)]),
            ..Stats::default()
        });
        latest
    }

    #[test]
    fn the_exposition_carries_the_same_figures() {
        let text = exposition(&latest());
        for line in [
            "redirector_server_packets_total{server=\"home0\"} 42",
            "redirector_server_bytes_total{server=\"home0\"} 4200",
            "redirector_server_clients{server=\"home0\"} 3.0",
            "redirector_server_packets_per_second{server=\"home0\"} 2.5",
            "redirector_server_up{server=\"home0\"} 1.0",
            "redirector_verdicts_total{verdict=\"forwarded\"} 42",
            "redirector_first_contact_total{event=\"redirected\"} 1",
            "redirector_load_samples_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Every metric the Grafana dashboard (grafana/redirector.json) queries
    /// is one the endpoint exports.
    #[test]
    fn the_dashboard_queries_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../grafana/redirector.json")).expect("dashboard JSON");
        let exported: Vec<String> = exposition(&latest())
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .map(|(family, kind)| if kind == "counter" { format!("{family}_total") } else { family.to_owned() })
            .collect();
        let mut queried = Vec::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                queried.extend(
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with("redirector_"))
                        .map(str::to_owned),
                );
            }
        }
        assert!(queried.len() >= 8, "{queried:?}");
        for metric in &queried {
            assert!(exported.contains(metric), "the dashboard queries {metric}, which is not exported: {exported:?}");
        }
    }

    #[test]
    fn only_get_metrics_is_served() {
        let latest = latest();
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &latest).0, "200 OK");
        assert_eq!(answer(b"GET / HTTP/1.1\r\n\r\n", &latest).0, "404 Not Found");
        assert_eq!(answer(b"POST /metrics HTTP/1.1\r\n\r\n", &latest).0, "405 Method Not Allowed");
        assert_eq!(answer(b"\xff\xfe", &latest).0, "405 Method Not Allowed");
    }
}
