//! The edge's decisions, without sockets or clocks of their own: first
//! contact, home-server health, watchers and their NOTIFYs, rebalancing,
//! expiry.

pub mod admission;
pub mod assignments;
pub mod expiry;
pub mod first_contact;
pub mod health;
pub mod notifier;
pub mod pool;
pub mod rebalance;
pub mod rendezvous;
pub mod routes;
pub mod servers;
pub mod watchers;
