//! The NOTIFY requests the edge sends in a subscription's dialog (RFC 6665
//! §4.2.2): a watcher's "deactivated" one and a ua-profile document.

use std::net::SocketAddr;

/// A NOTIFY in a dialog, as sent from `sent_by` (its Via: answers come
/// back there) in transaction `branch`.
pub struct Notify<'a> {
    /// The subscriber's Contact: the Request-URI.
    pub target: &'a str,
    pub sent_by: SocketAddr,
    pub branch: &'a str,
    /// The dialog's route set, in order: one Route each.
    pub route_set: &'a [String],
    /// The notifier's side of the dialog (its name-addr) and tag.
    pub from: &'a str,
    pub from_tag: &'a str,
    /// The subscriber's side, tag included.
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    /// Where the notifier takes the dialog's next requests.
    pub contact: String,
    pub event: &'a str,
    pub subscription_state: &'a str,
    /// The body and its content type.
    pub body: Option<(&'a str, &'a str)>,
}

impl Notify<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        let routes: String = self.route_set.iter().map(|route| format!("Route: {route}\r\n")).collect();
        let (content_type, body) = match self.body {
            Some((content_type, body)) => (format!("Content-Type: {content_type}\r\n"), body),
            None => (String::new(), ""),
        };
        format!(
            "NOTIFY {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {sent_by};branch={branch};rport\r\n\
             {routes}\
             Max-Forwards: 70\r\n\
             From: {from};tag={from_tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} NOTIFY\r\n\
             Contact: <sip:{contact}>\r\n\
             Event: {event}\r\n\
             Subscription-State: {state}\r\n\
             {content_type}\
             Content-Length: {length}\r\n\r\n{body}",
            target = self.target,
            sent_by = self.sent_by,
            branch = self.branch,
            from = self.from,
            from_tag = self.from_tag,
            to = self.to,
            call_id = self.call_id,
            cseq = self.cseq,
            contact = self.contact,
            event = self.event,
            state = self.subscription_state,
            length = body.len(),
        )
        .into_bytes()
    }
}
