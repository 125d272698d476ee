//! SIP over UDP: a zero-copy message scanner (RFC 3261 §7, §20, §25) and
//! the few header grammars first contact needs (Via, name-addr URIs, CSeq).

mod message;
mod notify;
pub mod response;
mod uri;
mod via;

pub use message::{Header, HeaderKind, Message, ParseError, StartLine, split_list, unfold};
pub use notify::Notify;
pub use uri::{Aor, NameAddr, socket_address, tag, without_tag};
pub use via::Via;

#[cfg(test)]
mod tests;
