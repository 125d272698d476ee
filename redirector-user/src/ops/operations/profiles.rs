//! Clients' ua-profile subscriptions (`edge::profiles`), as the state owner
//! keeps them: each SUBSCRIBE is answered with the access rule's verdict
//! (its source is a socket the fast path installed for its AOR) and the
//! AOR's document, rendered by the one renderer `GET /config` uses; every
//! change of a client's document (a move, whichever way it was made, or a
//! change of its home's address) notifies its subscriptions; they are
//! kept in the store, and expire.

use std::net::{IpAddr, SocketAddr};

use super::Operations;
use crate::{
    counters::add,
    edge::profiles::{Document, ProfileAnswer, ProfileId, ProfileRequest},
    kernel::loader,
    model::ServerState,
    ops::documents::Common,
    sip::Aor,
    store::{DialogKind, unix_seconds},
};

impl Operations {
    /// Answers ua-profile SUBSCRIBEs, in order; their subscriptions are
    /// saved before the answers leave.
    pub fn subscribe_profiles(&mut self, requests: Vec<ProfileRequest>) -> Vec<ProfileAnswer> {
        let now = unix_seconds();
        let answers = requests
            .iter()
            .map(|request| {
                let source = loader::endpoint(request.source.ip(), request.source.port());
                let authorized = self.fast_path.installed(&request.aor).contains(&source);
                let document = self.document(&request.aor);
                self.profiles.subscribe(request, authorized, document.as_ref(), now)
            })
            .collect();
        self.save_profiles();
        answers
    }

    /// `aor`'s document as this edge has it now: `None` without an
    /// assignment (or documents, or an address for its home).
    pub fn document(&self, aor: &Aor) -> Option<Document> {
        self.document_with(aor, &self.common())
    }

    fn document_with(&self, aor: &Aor, common: &Common) -> Option<Document> {
        let template = self.template.as_ref()?;
        let cached = self.assignments.current(aor)?;
        template.render(&self.route(aor, &cached), common)
    }

    /// What every document shares now: the timers, and the homes an
    /// operator has taking new clients as probe targets (their health is
    /// left out: a flapping home would change every document).
    fn common(&self) -> Common {
        let mut common = self.documents.clone();
        if let Some(port) = common.probe_port {
            let pool = self.pool.load();
            let active = pool.servers().iter().filter(|home| home.state == ServerState::Active);
            common.probe_servers = active
                .flat_map(|home| [home.ipv4.map(IpAddr::from), home.ipv6.map(IpAddr::from)])
                .flatten()
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
        }
        common
    }

    /// `aor` moved (or lost its assignment): its watchers are told, and its
    /// profile subscriptions get the new document. Every move path comes
    /// here: first contact's reassignment, the owner's moves (drain,
    /// assign, failover, removal, rebalancing) and other edges' moves.
    pub(super) fn client_moved(&mut self, aor: &Aor) {
        self.watchers.client_moved(aor);
        self.document_changed(aor);
    }

    /// `aor`'s document may have changed: its subscriptions whose document
    /// differs are notified (and saved with the next `save_profiles`).
    pub(super) fn document_changed(&mut self, aor: &Aor) {
        if self.profiles.has(aor) {
            self.notify_document(aor, &self.common());
        }
    }

    fn notify_document(&mut self, aor: &Aor, common: &Common) {
        let document = self.document_with(aor, common);
        self.profiles.changed(aor, document.as_ref(), unix_seconds());
    }

    /// Every subscribed document, rendered again: after a change of the pool
    /// (a home's address or port, the homes taking new clients) and at
    /// start (moves made while this daemon was down); only those that
    /// differ are notified.
    pub fn refresh_profiles(&mut self) {
        let common = self.common();
        for aor in self.profiles.subscribed_aors() {
            self.notify_document(&aor, &common);
        }
        self.save_profiles();
    }

    /// Ends the subscriptions that were not refreshed in time.
    pub fn expire_profiles(&mut self) {
        self.profiles.expire(unix_seconds());
        self.save_profiles();
    }

    /// A NOTIFY of subscription `id` was refused: it ends.
    pub fn profile_refused(&mut self, id: &ProfileId) {
        self.profiles.refused(id);
        self.save_profiles();
    }

    /// Writes the subscriptions that changed to the store, so a restarted
    /// daemon still notifies them. A failure is logged: they stay in
    /// memory and are written with the next change.
    pub(super) fn save_profiles(&mut self) {
        let changes = self.profiles.take_changes();
        if changes.is_empty() {
            return;
        }
        let (kept, removed) = (changes.kept.len(), changes.removed.len());
        match self.assignments.store().save_dialogs(DialogKind::Profiles, &changes.kept, &changes.removed) {
            Ok(()) => add(&self.profiles.counters.dialogs_saved, (kept + removed) as u64),
            Err(error) => {
                tracing::warn!(%error, kept, removed, "saving ua-profile subscriptions failed; retried with the next change");
                self.profiles.retry(changes);
            }
        }
    }
}
