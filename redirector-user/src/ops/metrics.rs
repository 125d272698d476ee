//! The statistics stream's newest reading in OpenMetrics text (which
//! Prometheus scrapes), served at `GET /metrics` by `ops::http` on
//! `[http] listen` and `[stats] prometheus`. Encoding is
//! `prometheus-client`'s.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{model::ServerState, ops::stats::Latest};

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
        counters(&mut encoder, "watchers", help, Some("event"), watchers.iter().map(|(k, v)| (k.as_str(), *v)))?;
        let profiles = named(&stats.profiles);
        let help = "What was done with clients' ua-profile subscriptions, by event";
        counters(&mut encoder, "profiles", help, Some("event"), profiles.iter().map(|(k, v)| (k.as_str(), *v)))
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
            profiles: BTreeMap::from([("malformed".into(), 2)]),
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
            "redirector_profiles_total{event=\"malformed\"} 2",
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
}
