//! What operators and clients do and see: operations on a running edge,
//! the control API and its wire types, the statistics stream, Prometheus
//! metrics, the HTTP listener (routing table, status page, configuration
//! documents), the routing table's client and the CLI's tables.

pub mod api;
pub mod control;
pub mod documents;
pub mod http;
pub mod metrics;
pub mod operations;
pub mod owner;
pub mod report;
pub mod route_client;
pub mod stats;
pub mod status;
