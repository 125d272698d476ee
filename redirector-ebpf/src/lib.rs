//! Types and constants shared by redirector's XDP programs and user space.
//!
//! Every map key and value is `#[repr(C)]` and derives bytemuck's `Pod`, so
//! implicit padding is a compile error and both sides agree byte for byte.
//! Multi-byte fields named `*_be` hold network byte order, exactly as they
//! appear on the wire, so the data plane compares them without swapping.
#![no_std]

pub mod aor;
pub mod checksum;
pub mod counters;
pub mod maps;
pub mod probe;
pub mod throttle;
pub mod via;
pub mod vias;

pub use counters::{COUNTER_COUNT, Counter};
pub use maps::*;
pub use throttle::{MAX_THROTTLED, THROTTLE_WINDOW_NS, Throttle, source_prefix};
