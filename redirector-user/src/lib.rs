//! redirector's user-space side, in layers. Each layer uses only the ones
//! below it (`cargo xtask layers` checks this and draws the graph):
//!
//! 5. `daemon`: the wiring of sockets, tasks and the state owner.
//! 4. `ops`: what operators do and see (operations, control API, stats, metrics).
//! 3. `edge`: the sans-IO core (first contact, health, watchers, rebalancing);
//!    `home`, a minimal registrar for tests and demos.
//! 2. `kernel` (loader, typed maps, the fast path), `store` (assignments)
//!    and `probe` (probes, cookies, the client that picks a home by them,
//!    and a home's state as the edge tells it).
//! 1. `config`: the TOML configuration, validated.
//! 0. `model` (concepts every layer shares), `sip` (the scanner and
//!    responses), `counters`.

pub mod config;
pub mod counters;
pub mod daemon;
pub mod edge;
pub mod home;
pub mod kernel;
pub mod model;
pub mod ops;
pub mod probe;
pub mod sip;
pub mod store;
