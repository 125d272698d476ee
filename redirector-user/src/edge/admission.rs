//! Who may become a new client: anyone who reaches the service address can
//! name any AOR, and each new one costs a durable assignment. New AORs are
//! rate-limited per source prefix (a token bucket per IPv4 /24 and IPv6
//! /64), and capped in all; a client already assigned is never refused.
//! A prefix refused for its rate is also to be throttled in the kernel
//! (`take_throttled`), so that its flood stops reaching the daemon.
//! Sans-IO: it is given the time.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use redirector_ebpf::{Endpoint, source_prefix};

use crate::kernel::loader::endpoint;

/// Why a new client was refused (it gets 503 with Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No home server takes new clients.
    NoServer,
    /// Its source prefix brought in new clients faster than allowed.
    RateLimited,
    /// The pool holds as many assignments as it may.
    AtCapacity,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// New clients a second, per source prefix.
    pub per_prefix: f64,
    /// How many a prefix may bring in at once.
    pub burst: f64,
    /// Assignments the store may hold.
    pub max_assignments: u64,
    /// How long a prefix refused for its rate is throttled in the kernel
    /// (zero: never).
    pub throttle_for: Duration,
    /// First-contact datagrams a second a throttled prefix may still send.
    pub throttled_datagrams: u32,
}

/// Prefixes tracked at most, in two generations: when the current one
/// fills, it becomes the previous one and the oldest is forgotten (a
/// prefix seen in either keeps its bucket), at no cost per lookup.
const MAX_PREFIXES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Until when the kernel throttles the prefix, as last asked.
    throttled_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    buckets: HashMap<Endpoint, Bucket>,
    previous: HashMap<Endpoint, Bucket>,
    /// Prefixes to throttle in the kernel (anew), not yet taken.
    to_throttle: Vec<Endpoint>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self { limits, buckets: HashMap::new(), previous: HashMap::new(), to_throttle: Vec::new() }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The prefixes to throttle in the kernel for `Limits::throttle_for`
    /// from now: each refused for its rate, once per half of that time.
    pub fn take_throttled(&mut self) -> Vec<Endpoint> {
        std::mem::take(&mut self.to_throttle)
    }

    /// Whether a new client from `source` may be assigned now, the store
    /// holding `assignments` already. A refusal for the prefix's rate
    /// throttles it in the kernel only if `direct` (the source is the
    /// client's own, not a proxy's).
    pub fn admit(&mut self, source: IpAddr, direct: bool, assignments: u64, now: Instant) -> Result<(), Refused> {
        if assignments >= self.limits.max_assignments {
            return Err(Refused::AtCapacity);
        }
        let (key, limits) = (prefix(source), self.limits);
        let carried = self.previous.remove(&key);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_PREFIXES / 2 {
            self.previous = std::mem::take(&mut self.buckets);
        }
        let fresh = Bucket { tokens: limits.burst, at: now, throttled_until: None };
        let bucket = self.buckets.entry(key).or_insert(carried.unwrap_or(fresh));
        bucket.tokens = refilled(bucket, &limits, now);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            if direct && renews_throttle(bucket, &limits, now) {
                bucket.throttled_until = Some(now + limits.throttle_for);
                self.to_throttle.push(key);
            }
            return Err(Refused::RateLimited);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

fn refilled(bucket: &Bucket, limits: &Limits, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * limits.per_prefix).min(limits.burst)
}

/// Whether a prefix refused now is to be throttled (again): it is not, or
/// its throttle has less than half its time left.
fn renews_throttle(bucket: &Bucket, limits: &Limits, now: Instant) -> bool {
    !limits.throttle_for.is_zero()
        && bucket.throttled_until.is_none_or(|until| until.saturating_duration_since(now) < limits.throttle_for / 2)
}

/// The /24 of an IPv4 address, the /64 of an IPv6 one: the kernel's key.
fn prefix(ip: IpAddr) -> Endpoint {
    source_prefix(&endpoint(ip, 0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            per_prefix: 10.0,
            burst: 3.0,
            max_assignments: 100,
            throttle_for: Duration::from_secs(10),
            throttled_datagrams: 5,
        }
    }

    #[test]
    fn a_prefix_gets_its_burst_then_its_rate() {
        let mut admission = Admission::new(limits());
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for _ in 0..3 {
            assert_eq!(admission.admit(ip("198.51.100.7"), true, 0, t0), Ok(()));
        }
        assert_eq!(admission.admit(ip("198.51.100.200"), true, 0, t0), Err(Refused::RateLimited), "the same /24");
        assert_eq!(admission.admit(ip("198.51.101.7"), true, 0, t0), Ok(()), "another /24");
        assert_eq!(admission.admit(ip("2001:db8::1"), true, 0, t0), Ok(()));
        assert_eq!(
            admission.admit(ip("198.51.100.7"), true, 0, t0 + Duration::from_millis(100)),
            Ok(()),
            "10/s: one more"
        );
        assert_eq!(
            admission.admit(ip("198.51.100.7"), true, 0, t0 + Duration::from_millis(100)),
            Err(Refused::RateLimited)
        );
    }

    #[test]
    fn a_prefix_refused_for_its_rate_is_throttled_once_per_half_period() {
        let mut admission = Admission::new(limits());
        let t0 = Instant::now();
        let busy: IpAddr = "198.51.100.7".parse().unwrap();
        while admission.admit(busy, true, 0, t0).is_ok() {}
        assert_eq!(admission.take_throttled(), [prefix(busy)]);
        assert_eq!(admission.admit("198.51.100.99".parse().unwrap(), true, 0, t0), Err(Refused::RateLimited));
        assert_eq!(admission.take_throttled(), [], "already throttled");
        assert_eq!(admission.admit("192.0.2.1".parse().unwrap(), true, 100, t0), Err(Refused::AtCapacity));
        assert_eq!(admission.take_throttled(), [], "the cap throttles no prefix");
        let later = t0 + Duration::from_secs(6);
        while admission.admit(busy, true, 0, later).is_ok() {}
        assert_eq!(admission.take_throttled(), [prefix(busy)], "renewed with less than half its time left");
    }

    #[test]
    fn a_proxys_prefix_is_refused_but_never_throttled() {
        let mut admission = Admission::new(limits());
        let proxy: IpAddr = "203.0.113.9".parse().unwrap();
        while admission.admit(proxy, false, 0, Instant::now()).is_ok() {}
        assert_eq!(admission.admit(proxy, false, 0, Instant::now()), Err(Refused::RateLimited));
        assert_eq!(admission.take_throttled(), [], "its clients would all be held to the allowance");
    }

    #[test]
    fn no_prefix_is_throttled_when_throttling_is_off() {
        let mut admission = Admission::new(Limits { throttle_for: Duration::ZERO, ..limits() });
        let busy: IpAddr = "2001:db8::1".parse().unwrap();
        while admission.admit(busy, true, 0, Instant::now()).is_ok() {}
        assert_eq!(admission.take_throttled(), []);
    }

    #[test]
    fn ipv6_prefixes_are_slash_64() {
        let mut admission = Admission::new(limits());
        let t0 = Instant::now();
        for host in 1..=3 {
            assert_eq!(admission.admit(format!("2001:db8:0:1::{host}").parse().unwrap(), true, 0, t0), Ok(()));
        }
        assert_eq!(admission.admit("2001:db8:0:1:ffff::9".parse().unwrap(), true, 0, t0), Err(Refused::RateLimited));
        assert_eq!(admission.admit("2001:db8:0:2::1".parse().unwrap(), true, 0, t0), Ok(()));
    }

    #[test]
    fn the_cap_refuses_whatever_the_prefix() {
        let mut admission = Admission::new(limits());
        assert_eq!(admission.admit("192.0.2.1".parse().unwrap(), true, 100, Instant::now()), Err(Refused::AtCapacity));
    }

    #[test]
    fn prefixes_tracked_stay_bounded() {
        let mut admission = Admission::new(limits());
        let t0 = Instant::now();
        for i in 0..(MAX_PREFIXES as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(i << 8);
            assert_eq!(admission.admit(IpAddr::V4(ip), true, 0, t0), Ok(()));
        }
        assert!(admission.buckets.len() + admission.previous.len() <= MAX_PREFIXES);
    }

    #[test]
    fn an_exhausted_prefix_stays_exhausted_across_a_generation() {
        let mut admission = Admission::new(limits());
        let t0 = Instant::now();
        let busy: IpAddr = "203.0.113.1".parse().unwrap();
        while admission.admit(busy, true, 0, t0).is_ok() {}
        for i in 0..(MAX_PREFIXES as u32 / 2) {
            admission.admit(IpAddr::V4(std::net::Ipv4Addr::from((i + 1) << 8)), true, 0, t0).unwrap();
        }
        assert!(admission.previous.contains_key(&prefix(busy)), "the generation turned over");
        assert_eq!(admission.admit(busy, true, 0, t0), Err(Refused::RateLimited), "its empty bucket came along");
    }
}
