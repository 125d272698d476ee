//! The leadership of a pool's decisions (health verdicts and the moves
//! they cause, rebalancing, expiry): etcd's election on `<prefix>leader`,
//! held through a lease this edge keeps alive. An edge that stops keeping
//! it alive (it died, or lost etcd) loses the leadership when the lease
//! runs out, `LEASE` at most, and another edge's campaign wins; the edge
//! itself stops leading as soon as a keep-alive goes unanswered, or a
//! write fenced with its term is refused (it lost the lease before it
//! knew): it revokes its lease then and campaigns again.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::{
    counters::bump,
    store::{Leadership, Term},
};

/// The lease's time to live, in seconds: how long a dead leader holds on.
pub const LEASE: i64 = 2;

/// How long a campaign waits before it starts again after a failure.
const RETRY: Duration = Duration::from_millis(500);

pub struct Campaign {
    /// The endpoints and options of a client of its own, without the
    /// store's timeout per request: a campaign waits as long as it must.
    pub connect: (Vec<String>, ConnectOptions),
    /// The election's name.
    pub name: String,
    /// This edge's name, the leader's value.
    pub edge: String,
    pub sink: Leadership,
    pub counters: std::sync::Arc<crate::store::StoreCounters>,
    /// The last term a fenced write found ended.
    pub deposed: tokio::sync::watch::Receiver<Option<Term>>,
}

impl Campaign {
    /// Campaigns, leads while the lease lives, and campaigns again, until
    /// the store's runtime ends.
    pub async fn run(self) {
        loop {
            let (endpoints, options) = self.connect.clone();
            let term = match Client::connect(endpoints, Some(options)).await {
                Ok(client) => self.term(&client).await,
                Err(error) => Err(error),
            };
            if let Err(error) = term {
                tracing::warn!(%error, "the leadership campaign failed; campaigning again");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One lease: a campaign, then leadership until the lease is lost or
    /// a fenced write finds the term over.
    async fn term(&self, client: &Client) -> Result<(), etcd_client::Error> {
        let mut leases = client.lease_client();
        let lease = leases.grant(LEASE, None).await?.id();
        let (mut keeper, mut answers) = leases.keep_alive(lease).await?;
        let alive = async move {
            loop {
                keeper.keep_alive().await?;
                let answered = tokio::time::timeout(keep_alive_every(), answers.message()).await;
                match answered {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                    Ok(Err(error)) => return Err::<(), _>(error),
                    _ => return Err(etcd_client::Error::LeaseKeepAliveError("the lease ran out".into())),
                }
                tokio::time::sleep(keep_alive_every()).await;
            }
        };
        tokio::pin!(alive);
        let mut election = client.election_client();
        let won = tokio::select! {
            won = election.campaign(self.name.as_str(), self.edge.as_str(), lease) => won?,
            lost = &mut alive => return lost,
        };
        let Some(key) = won.leader() else {
            return Err(etcd_client::Error::ElectError("the campaign won without an election key".into()));
        };
        let term = Term::Elected { key: key.key().to_vec(), created: key.rev() };
        bump(&self.counters.terms_led);
        tracing::info!(edge = self.edge, "leading the pool's decisions");
        (self.sink)(Some(term.clone()));
        let mut deposed = self.deposed.clone();
        // The value it reads is dropped here: it must not live across an await.
        let deposed = async { drop(deposed.wait_for(|ended| ended.as_ref() == Some(&term)).await) };
        let lost = tokio::select! {
            lost = &mut alive => lost,
            () = deposed => {
                // Let the next leader take over now, not when the lease ends.
                let _ = leases.revoke(lease).await;
                Ok(())
            }
        };
        (self.sink)(None);
        tracing::warn!(edge = self.edge, "no longer leading the pool's decisions");
        lost
    }
}

/// A third of the lease: two keep-alives may be lost before it runs out.
fn keep_alive_every() -> Duration {
    Duration::from_millis(LEASE as u64 * 1000 / 3)
}
