//! Requests a home server sends the edge: the terminating leg of a call
//! between clients of different homes. A home that has no registration for
//! a request's target (a stock registrar's `lookup("location")` failing)
//! sends it to the edge's proxy address; the edge proxies it to the home
//! the target is assigned to.
//!
//! * The target is the Request-URI's AOR (the `To` of a REGISTER, whose
//!   Request-URI names only a domain), never `From`: `From` names the
//!   caller, whose own home sent the request.
//! * Always proxied, never redirected: the home's transaction stays in
//!   the path, and a 302 would send it looking for the callee itself.
//! * Never back to the home it came from, and never to a new home: a target
//!   without an assignment gets `404`, one assigned to the sender (which
//!   has just failed to find it) or to a down home gets `480`, statelessly.
//!   With `Max-Forwards` (`483` at zero) that bounds every path through
//!   the pool: home → edge → home, at most once more back to the edge.
//! * Nothing is assigned, installed or recorded: a home speaks for many
//!   clients.
//! * An OPTIONS to the edge itself (no user part: a `dispatcher` set's
//!   keepalive) is answered `200`.

use std::net::SocketAddr;

use super::{Action, FirstContact, identity};
use crate::{
    counters::bump,
    model::{HomeServer, ServerState},
    sip::{Aor, Message, ParseError, StartLine, response::Basis},
};

/// An OPTIONS to the edge itself (a Request-URI without a user part),
/// as a home's `dispatcher` pings the edges it routes to: not a request
/// for any client.
fn is_keepalive(message: &Message<'_>) -> bool {
    match message.start {
        StartLine::Request { method: "OPTIONS", uri, .. } => !uri.contains('@'),
        _ => false,
    }
}

/// Why a home's request goes nowhere.
enum Unroutable {
    /// No target can be read from it: `400`.
    Malformed(ParseError),
    /// The target has no assignment: `404`.
    Unknown,
    /// It is the sender's own client, or its home is down: `480`.
    Unavailable,
}

impl FirstContact {
    /// A request from the home server at `source` (it arrived at `local`):
    /// proxied to its target's home, or answered.
    pub(super) fn route_home_request(
        &self,
        message: &Message<'_>,
        source: SocketAddr,
        local: SocketAddr,
    ) -> Vec<Action> {
        if message.method() == Some("ACK") {
            return self.ack_from_home(message, source, local);
        }
        let mut basis = Basis::of(message);
        if message.max_forwards().ok().flatten() == Some(0) {
            return self.reject(&mut basis, source, 483, "Too Many Hops", &self.counters.too_many_hops);
        }
        if is_keepalive(message) {
            return self.reject(&mut basis, source, 200, "OK", &self.counters.pings_from_homes_answered);
        }
        let home = target(message).map_err(Unroutable::Malformed).and_then(|aor| self.target_home(&aor, source));
        let unroutable = &self.counters.unroutable_for_homes;
        match home {
            Ok(home) => self
                .proxy_for_home(message, source, &home, local)
                .unwrap_or_else(|| self.unavailable(&mut basis, source, "No Home Server Of This Family")),
            Err(Unroutable::Malformed(error)) => {
                self.reject(&mut basis, source, 400, &error.to_string(), &self.counters.bad_request)
            }
            Err(Unroutable::Unknown) => self.reject(&mut basis, source, 404, "Not Found", unroutable),
            Err(Unroutable::Unavailable) => self.reject(&mut basis, source, 480, "Temporarily Unavailable", unroutable),
        }
    }

    /// An ACK from a home acknowledges a non-2xx answer (a 2xx's ACK
    /// follows the dialog's route set, past the edge): it goes where its
    /// INVITE went, or nowhere. It is never answered.
    fn ack_from_home(&self, message: &Message<'_>, source: SocketAddr, local: SocketAddr) -> Vec<Action> {
        let spent = message.max_forwards().ok().flatten() == Some(0);
        let home = target(message).ok().and_then(|aor| self.target_home(&aor, source).ok());
        match home {
            Some(home) if !spent => {
                self.proxy_for_home(message, source, &home, local).unwrap_or_else(|| self.absorb_ack())
            }
            _ => self.absorb_ack(),
        }
    }

    /// Proxies to `home`'s address of `source`'s family; `None` when it
    /// has none, or the edge has no proxy address of that family.
    fn proxy_for_home(
        &self,
        message: &Message<'_>,
        source: SocketAddr,
        home: &HomeServer,
        local: SocketAddr,
    ) -> Option<Vec<Action>> {
        let proxied = self.proxy(message, source, home.address_for(source)?, local)?;
        bump(&self.counters.proxied_for_homes);
        Some(proxied)
    }

    /// The home `aor` is assigned to, unless that is the home at `source`
    /// (it has just failed to find the target itself) or a down one.
    fn target_home(&self, aor: &Aor, source: SocketAddr) -> Result<HomeServer, Unroutable> {
        let cached = self.cache.get(aor).ok_or(Unroutable::Unknown)?;
        let pool = self.pool.load();
        let home = pool.server(&cached.server).ok_or(Unroutable::Unknown)?;
        if home.has_address(source.ip()) || home.effective_state() == ServerState::Down {
            return Err(Unroutable::Unavailable);
        }
        Ok(home.clone())
    }
}

/// Whom a home's request is for: the Request-URI's AOR, or the `To` of a
/// REGISTER.
fn target(message: &Message<'_>) -> Result<Aor, ParseError> {
    match message.start {
        _ if message.method() == Some("REGISTER") => identity(message),
        StartLine::Request { uri, .. } => Aor::from_uri(uri, "Request-URI"),
        StartLine::Response { .. } => Err(ParseError::Missing("Request-URI")),
    }
}
