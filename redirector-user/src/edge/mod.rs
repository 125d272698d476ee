//! The edge's decisions, without sockets or clocks of their own: first
//! contact, home-server health, watchers and their NOTIFYs, clients'
//! own configuration-document subscriptions (`profiles`), rebalancing,
//! expiry.

pub mod admission;
pub mod assignments;
pub mod dialogs;
pub mod expiry;
pub mod first_contact;
pub mod health;
pub mod notifier;
pub mod pool;
pub mod profiles;
pub mod rebalance;
pub mod rendezvous;
pub mod routes;
pub mod servers;
pub mod watchers;
