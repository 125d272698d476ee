//! Configuration documents: per-client XML rendered from the operator's
//! template (`[documents] template`), served at `GET /config/{aor}` by
//! `ops::http` and in ua-profile NOTIFYs (`edge::profiles`), both rendered
//! here, by the state owner. The template is the document with
//! placeholders, each replaced by the client's value, XML-escaped:
//!
//! | placeholder | value |
//! | --- | --- |
//! | `{{aor}}` | the client's address of record |
//! | `{{server}}` | its home server's name |
//! | `{{home_host}}` | the home's address (an IPv6 one in brackets) |
//! | `{{home_port}}` | the home's SIP port |
//! | `{{registrar}}` | the home as a SIP URI, `sip:HOST:PORT` |
//! | `{{generation}}` | the assignment's generation (bumped by each move) |
//! | `{{probe_port}}` | `[probe] port`, empty with probes off |
//! | `{{probe_servers}}` | the homes taking new clients (active), `HOST:PROBE_PORT` comma-separated, empty with probes off |
//! | `{{idle_timeout}}` | seconds a silent client stays on the fast path |
//! | `{{assignment_expires}}` | seconds an unseen client keeps its home (`[store] expire_after`; 0: forever) |
//! | `{{redirect_expires}}` | seconds a 302's Contact is good for |
//! | `{{subscription_expires}}` | seconds a ua-profile subscription is granted at most |
//!
//! A document's entity tag is a hash of its bytes: it changes exactly when
//! the document does.

use std::path::{Path, PathBuf};

pub use crate::edge::profiles::{CONTENT_TYPE, Document};
use crate::ops::api::Route;

const PLACEHOLDERS: [&str; 12] = [
    "{{aor}}",
    "{{server}}",
    "{{home_host}}",
    "{{home_port}}",
    "{{registrar}}",
    "{{generation}}",
    "{{probe_port}}",
    "{{probe_servers}}",
    "{{idle_timeout}}",
    "{{assignment_expires}}",
    "{{redirect_expires}}",
    "{{subscription_expires}}",
];

/// What every client's document shares: the pool's probe targets and the
/// edge's timers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Common {
    /// `[probe] port`, when probes are on.
    pub probe_port: Option<u16>,
    /// The homes taking new clients, at the probe port.
    pub probe_servers: Vec<std::net::SocketAddr>,
    /// `[fast_path] idle_timeout`, seconds.
    pub idle_timeout: u64,
    /// `[store] expire_after`, seconds (0: never).
    pub assignment_expires: u64,
    /// `[sip] redirect_expires`, seconds.
    pub redirect_expires: u32,
    /// `[documents] max_expires`, seconds.
    pub subscription_expires: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the document template {path} ([documents] template): {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the document template {path} ([documents] template) has no placeholder: write e.g. {{{{registrar}}}}")]
    NoPlaceholder { path: PathBuf },
}

/// The operator's template.
#[derive(Debug, Clone)]
pub struct Template(String);

impl Template {
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read { path: path.into(), source })?;
        if !PLACEHOLDERS.iter().any(|placeholder| text.contains(placeholder)) {
            return Err(TemplateError::NoPlaceholder { path: path.into() });
        }
        Ok(Self(text))
    }

    /// `route`'s document, with what every document shares; `None` when
    /// its home has no address.
    pub fn render(&self, route: &Route, common: &Common) -> Option<Document> {
        let address = route.address?;
        let host = match address.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let values = [
            route.aor.clone(),
            route.server.clone(),
            host,
            address.port().to_string(),
            format!("sip:{address}"),
            route.generation.to_string(),
            common.probe_port.map(|port| port.to_string()).unwrap_or_default(),
            common.probe_servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            common.idle_timeout.to_string(),
            common.assignment_expires.to_string(),
            common.redirect_expires.to_string(),
            common.subscription_expires.to_string(),
        ];
        let mut body = self.0.clone();
        for (placeholder, value) in PLACEHOLDERS.iter().zip(&values) {
            if body.contains(placeholder) {
                body = body.replace(placeholder, &escape(value));
            }
        }
        let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
        Some(Document { body, etag })
    }
}

/// `value` safe in XML text and attribute values.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(aor: &str, address: &str, generation: u64) -> Route {
        Route { aor: aor.into(), server: "home1".into(), address: Some(address.parse().unwrap()), generation }
    }

    #[test]
    fn placeholders_take_the_clients_values_escaped() {
        let template = Template(
            "<p aor=\"{{aor}}\" s=\"{{server}}\"><r>{{registrar}}</r><h>{{home_host}}</h><p>{{home_port}}</p><g>{{generation}}</g></p>"
                .into(),
        );
        let common = Common::default();
        let v4 = template.render(&route("sip:a&b@x", "192.0.2.21:5060", 2), &common).unwrap();
        assert_eq!(
            v4.body,
            "<p aor=\"sip:a&amp;b@x\" s=\"home1\"><r>sip:192.0.2.21:5060</r><h>192.0.2.21</h><p>5060</p><g>2</g></p>"
        );
        let v6 = template.render(&route("sip:a@x", "[2001:db8::21]:5080", 1), &common).unwrap();
        assert!(v6.body.contains("<r>sip:[2001:db8::21]:5080</r><h>[2001:db8::21]</h><p>5080</p>"), "{}", v6.body);
        let without_address = Route { address: None, ..route("sip:a@x", "192.0.2.21:5060", 1) };
        assert_eq!(template.render(&without_address, &common), None);
    }

    #[test]
    fn the_probe_targets_and_timers_are_every_documents() {
        let template = Template(
            "<p probe=\"{{probe_port}}\" servers=\"{{probe_servers}}\"><idle>{{idle_timeout}}</idle>\
             <keep>{{assignment_expires}}</keep><redirect>{{redirect_expires}}</redirect>\
             <subscribe>{{subscription_expires}}</subscribe></p>"
                .into(),
        );
        let common = Common {
            probe_port: Some(5099),
            probe_servers: vec!["192.0.2.21:5099".parse().unwrap(), "[2001:db8::22]:5099".parse().unwrap()],
            idle_timeout: 900,
            assignment_expires: 2_592_000,
            redirect_expires: 3600,
            subscription_expires: 86_400,
        };
        let document = template.render(&route("sip:a@x", "192.0.2.21:5060", 1), &common).unwrap();
        assert_eq!(
            document.body,
            "<p probe=\"5099\" servers=\"192.0.2.21:5099,[2001:db8::22]:5099\"><idle>900</idle>\
             <keep>2592000</keep><redirect>3600</redirect><subscribe>86400</subscribe></p>"
        );
        let off = template.render(&route("sip:a@x", "192.0.2.21:5060", 1), &Common::default()).unwrap();
        assert!(off.body.starts_with("<p probe=\"\" servers=\"\">"), "probes off: empty: {}", off.body);
    }

    #[test]
    fn the_etag_changes_exactly_when_the_document_does() {
        let template = Template("<r>{{registrar}}</r>".into());
        let common = Common::default();
        let one = template.render(&route("sip:a@x", "192.0.2.21:5060", 1), &common).unwrap();
        let same = template.render(&route("sip:b@x", "192.0.2.21:5060", 7), &common).unwrap();
        let moved = template.render(&route("sip:a@x", "192.0.2.22:5060", 2), &common).unwrap();
        assert_eq!(one.etag, same.etag, "same bytes, same tag");
        assert_ne!(one.etag, moved.etag);
        assert!(one.etag.starts_with('"') && one.etag.ends_with('"'));
    }

    #[test]
    fn a_template_must_be_readable_and_have_a_placeholder() {
        let dir = std::env::temp_dir().join(format!("redirector-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("profile.xml");
        std::fs::write(&path, "<profile/>").unwrap();
        assert!(Template::load(&path).unwrap_err().to_string().contains("no placeholder"));
        std::fs::write(&path, "<profile registrar=\"{{registrar}}\"/>").unwrap();
        assert!(Template::load(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Template::load(&path).unwrap_err().to_string().contains("[documents] template"));
    }
}
