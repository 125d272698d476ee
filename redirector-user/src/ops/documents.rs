//! Configuration documents: per-client XML rendered from the operator's
//! template (`[documents] template`), served at `GET /config/{aor}` by
//! `ops::http` and in ua-profile NOTIFYs by the state owner
//! (`edge::profiles`): one renderer for both. The template is the document with placeholders, each
//! replaced by the client's value, XML-escaped:
//!
//! | placeholder | value |
//! | --- | --- |
//! | `{{aor}}` | the client's address of record |
//! | `{{server}}` | its home server's name |
//! | `{{home_host}}` | the home's address (an IPv6 one in brackets) |
//! | `{{home_port}}` | the home's SIP port |
//! | `{{registrar}}` | the home as a SIP URI, `sip:HOST:PORT` |
//! | `{{generation}}` | the assignment's generation (bumped by each move) |
//!
//! A document's entity tag is a hash of its bytes: it changes exactly when
//! the document does.

use std::path::{Path, PathBuf};

pub use crate::edge::profiles::{CONTENT_TYPE, Document};
use crate::ops::api::Route;

const PLACEHOLDERS: [&str; 6] =
    ["{{aor}}", "{{server}}", "{{home_host}}", "{{home_port}}", "{{registrar}}", "{{generation}}"];

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

    /// `route`'s document; `None` when its home has no address.
    pub fn render(&self, route: &Route) -> Option<Document> {
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
        ];
        let mut body = self.0.clone();
        for (placeholder, value) in PLACEHOLDERS.iter().zip(&values) {
            body = body.replace(placeholder, &escape(value));
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
        let v4 = template.render(&route("sip:a&b@x", "192.0.2.21:5060", 2)).unwrap();
        assert_eq!(
            v4.body,
            "<p aor=\"sip:a&amp;b@x\" s=\"home1\"><r>sip:192.0.2.21:5060</r><h>192.0.2.21</h><p>5060</p><g>2</g></p>"
        );
        let v6 = template.render(&route("sip:a@x", "[2001:db8::21]:5080", 1)).unwrap();
        assert!(v6.body.contains("<r>sip:[2001:db8::21]:5080</r><h>[2001:db8::21]</h><p>5080</p>"), "{}", v6.body);
        let without_address = Route { address: None, ..route("sip:a@x", "192.0.2.21:5060", 1) };
        assert_eq!(template.render(&without_address), None);
    }

    #[test]
    fn the_etag_changes_exactly_when_the_document_does() {
        let template = Template("<r>{{registrar}}</r>".into());
        let one = template.render(&route("sip:a@x", "192.0.2.21:5060", 1)).unwrap();
        let same = template.render(&route("sip:b@x", "192.0.2.21:5060", 7)).unwrap();
        let moved = template.render(&route("sip:a@x", "192.0.2.22:5060", 2)).unwrap();
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
