//! Named event counters shared between tasks: relaxed atomics, read as a
//! snapshot of (name, value) pairs for stats and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// `counters! { Name, "doc", /// field doc \n field, … }` defines a struct
/// of `AtomicU64` fields with a `snapshot()`.
macro_rules! counters {
    ($type:ident, $doc:literal, $($(#[doc = $field_doc:literal])* $name:ident,)*) => {
        #[doc = $doc]
        #[derive(Debug, Default)]
        pub struct $type { $($(#[doc = $field_doc])* pub $name: std::sync::atomic::AtomicU64,)* }

        impl $type {
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(std::sync::atomic::Ordering::Relaxed)),)*]
            }
        }
    };
}
pub(crate) use counters;

pub fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
