//! Rate limits and per-client budgets: what one client may cost a node.
//!
//! Token buckets (`governor`, GCRA) are kept at three scopes:
//!
//! * **per connection** ([`ConnectionLimits`]): every WebSocket frame a client sends counts
//!   against `command_rate` per second, publishes also against `publish_rate` (bursts of twice
//!   the rate). An op over the rate is refused with error 112 `rate_limited`; when the client
//!   stays over it for `rate_close_after` seconds the connection is closed with 4029.
//! * **per client address** ([`IpLimits`]): new WebSocket and SSE connections count against
//!   `connect_rate_per_ip`, and each poll and `POST /publish` against a bucket of
//!   `command_rate` (HTTP 429 with `Retry-After`, close 4029); `max_connections_per_ip` open
//!   connections at once.
//! * **per user**: `max_connections_per_user` open connections at once (authenticated users).
//!
//! The client address is the peer's, unless the peer is one of `trusted_proxies`: then the
//! nearest address in `X-Forwarded-For` that is not a trusted proxy (or `X-Real-IP`) is used.
//! Nobody else can choose the address they are counted under.
//!
//! Buckets run on tokio's clock ([`TokioClock`]) so tests can pause and advance time. The keyed
//! buckets forget idle addresses when [`IpLimits::sweep`] runs (the node's background task):
//! their memory is bounded by the addresses seen within one refill period.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::Clock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::cidr::Cidr;
use crate::config::LimitsConfig;

/// governor's clock on tokio's time (paused and advanced in tests).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type NoOp = governor::middleware::NoOpMiddleware<std::time::Instant>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOp>;
type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, TokioClock, NoOp>;

/// A bucket of `per_second` with a burst of twice that.
fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).expect("at least 2");
    Quota::per_second(rate).allow_burst(burst)
}

/// How long until `limiter` lets one more through (for `Retry-After`).
fn wait_time(not_until: &governor::NotUntil<std::time::Instant>) -> Duration {
    not_until.wait_time_from(TokioClock.now())
}

/// What a connection's rate check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate.
    Allow,
    /// Over the rate: refuse this op (error 112).
    Refuse,
    /// Over the rate for `rate_close_after`: close the connection (4029).
    Close,
}

/// One connection's buckets.
pub(crate) struct ConnectionLimits {
    commands: Direct,
    publishes: Direct,
    close_after: Duration,
    /// When the client went over the rate and has stayed over since (None: within it).
    excess_since: Option<tokio::time::Instant>,
    /// The last refused op: an excess ends only after a whole second without refusals (ops
    /// that slip through as the bucket refills do not end it).
    last_refusal: Option<tokio::time::Instant>,
    /// Whether the sustained excess was logged (once per connection).
    logged: bool,
}

impl ConnectionLimits {
    /// Buckets from the config.
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        Self {
            commands: RateLimiter::direct_with_clock(quota(limits.command_rate), TokioClock),
            publishes: RateLimiter::direct_with_clock(quota(limits.publish_rate), TokioClock),
            close_after: Duration::from_secs(limits.rate_close_after),
            excess_since: None,
            last_refusal: None,
            logged: false,
        }
    }

    /// Counts one command (and one publish when `publish`).
    pub(crate) fn check(&mut self, publish: bool) -> Verdict {
        let within = self.commands.check().is_ok() && (!publish || self.publishes.check().is_ok());
        let now = tokio::time::Instant::now();
        if within {
            let calm = match self.last_refusal {
                Some(t) => now.duration_since(t) >= Duration::from_secs(1),
                None => true,
            };
            if calm {
                self.excess_since = None;
            }
            return Verdict::Allow;
        }
        self.last_refusal = Some(now);
        let since = *self.excess_since.get_or_insert(now);
        if now.duration_since(since) >= self.close_after {
            if !self.logged {
                self.logged = true;
                tracing::info!(
                    over_secs = now.duration_since(since).as_secs_f64(),
                    "sustained excess over the rate limit: closing 4029"
                );
            }
            return Verdict::Close;
        }
        Verdict::Refuse
    }
}

/// A count of open connections per key, with a cap.
struct Counts<K> {
    cap: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: &K) -> bool {
        let mut open = self.open.lock().expect("counts lock");
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.cap {
            if *n == 0 {
                open.remove(key);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: &K) {
        let mut open = self.open.lock().expect("counts lock");
        if let Some(n) = open.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                open.remove(key);
            }
        }
    }
}

/// Why a client address or user was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over a rate; retry after this long.
    Rate(Duration),
    /// Over a cap of open connections.
    Connections,
}

/// The node's per-address and per-user limits.
pub(crate) struct IpLimits {
    connect: Keyed<IpAddr>,
    requests: Keyed<IpAddr>,
    per_ip: Counts<IpAddr>,
    per_user: Counts<Arc<str>>,
    trusted: Vec<Cidr>,
}

impl IpLimits {
    /// The limits from the config (trusted proxies already validated).
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        Self {
            connect: RateLimiter::dashmap_with_clock(quota(limits.connect_rate_per_ip), TokioClock),
            requests: RateLimiter::dashmap_with_clock(quota(limits.command_rate), TokioClock),
            per_ip: Counts::new(limits.max_connections_per_ip),
            per_user: Counts::new(limits.max_connections_per_user),
            trusted: limits
                .trusted_proxies
                .iter()
                .filter_map(|c| Cidr::parse(c).ok())
                .collect(),
        }
    }

    /// The client's address: the peer's, or, from a trusted proxy, the nearest untrusted
    /// address it forwarded.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        if let Some(ip) = forwarded.iter().rev().find(|ip| !self.is_trusted(**ip)) {
            return *ip;
        }
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Counts a new WebSocket or SSE connection from `ip` and takes one of its connection
    /// slots; the guard gives the slot back.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refusal> {
        if let Err(not_until) = self.connect.check_key(&ip) {
            return Err(Refusal::Rate(wait_time(&not_until)));
        }
        if !self.per_ip.take(&ip) {
            return Err(Refusal::Connections);
        }
        Ok(IpGuard {
            limits: self.clone(),
            ip,
        })
    }

    /// Takes one of `ip`'s connection slots without counting a connect (polls, which are
    /// counted by [`IpLimits::request`]).
    pub(crate) fn admit_uncounted(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refusal> {
        if !self.per_ip.take(&ip) {
            return Err(Refusal::Connections);
        }
        Ok(IpGuard {
            limits: self.clone(),
            ip,
        })
    }

    /// Counts a poll or an HTTP publish from `ip` (command_rate per address).
    pub(crate) fn request(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.requests
            .check_key(&ip)
            .map_err(|not_until| Refusal::Rate(wait_time(&not_until)))
    }

    /// Takes one of `user`'s connection slots; the guard gives it back.
    pub(crate) fn admit_user(self: &Arc<Self>, user: Arc<str>) -> Option<UserGuard> {
        self.per_user.take(&user).then(|| UserGuard {
            limits: self.clone(),
            user,
        })
    }

    /// Forgets the buckets of addresses that have been idle for a refill period.
    pub(crate) fn sweep(&self) {
        self.connect.retain_recent();
        self.requests.retain_recent();
        self.connect.shrink_to_fit();
        self.requests.shrink_to_fit();
    }
}

/// An open connection counted against its address; dropping it gives the slot back.
pub(crate) struct IpGuard {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.limits.per_ip.give_back(&self.ip);
    }
}

/// An open connection counted against its user; dropping it gives the slot back.
pub(crate) struct UserGuard {
    limits: Arc<IpLimits>,
    user: Arc<str>,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        self.limits.per_user.give_back(&self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> Arc<IpLimits> {
        let config = LimitsConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            connect_rate_per_ip: 2,
            max_connections_per_ip: 3,
            max_connections_per_user: 1,
            ..LimitsConfig::default()
        };
        Arc::new(IpLimits::new(&config))
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let l = limits(&["127.0.0.1/32", "10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.9, 10.0.0.5".parse().unwrap());
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.1".parse().unwrap();
        // From a trusted proxy: the nearest untrusted address (10.0.0.5 is another proxy).
        assert_eq!(
            l.client_ip(proxy, &h),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        // From anyone else the header is ignored: they cannot choose their address.
        assert_eq!(l.client_ip(stranger, &h), stranger);
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", "198.51.100.7".parse().unwrap());
        assert_eq!(
            l.client_ip(proxy, &real),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l.client_ip(proxy, &HeaderMap::new()), proxy);
    }

    #[tokio::test(start_paused = true)]
    async fn connects_per_address_are_rated_and_capped() {
        let l = limits(&[]);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        // Rate 2/s with a burst of 4 (each dropped at once, so the cap is not what refuses),
        // then refused with a wait; another address is unaffected.
        for _ in 0..4 {
            drop(l.admit(a).unwrap());
        }
        match l.admit(a) {
            Err(Refusal::Rate(wait)) => {
                assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(l.admit(b).is_ok());
        // The cap: 3 open at once from one address, whatever the rate allows.
        tokio::time::advance(Duration::from_secs(5)).await;
        let kept: Vec<_> = (0..3).map(|_| l.admit(a).unwrap()).collect();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.admit(a).err(), Some(Refusal::Connections));
        drop(kept);
        assert!(l.admit(a).is_ok(), "slots come back");
        // Per user.
        let u: Arc<str> = Arc::from("ann");
        let g = l.admit_user(u.clone()).unwrap();
        assert!(l.admit_user(u.clone()).is_none());
        drop(g);
        assert!(l.admit_user(u).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_over_its_rate_is_refused_then_closed() {
        let config = LimitsConfig {
            command_rate: 10,
            publish_rate: 2,
            rate_close_after: 3,
            ..LimitsConfig::default()
        };
        let mut c = ConnectionLimits::new(&config);
        // Publishes: burst of 4, then refused while commands still pass.
        for _ in 0..4 {
            assert_eq!(c.check(true), Verdict::Allow);
        }
        assert_eq!(c.check(true), Verdict::Refuse);
        assert_eq!(c.check(false), Verdict::Allow);
        // Sustained excess of commands: refused, then closed after rate_close_after.
        let mut verdicts = Vec::new();
        for _ in 0..400 {
            verdicts.push(c.check(false));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(verdicts.contains(&Verdict::Refuse));
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
        let first_close = verdicts.iter().position(|v| *v == Verdict::Close).unwrap();
        assert!(
            first_close >= 250,
            "closed after {first_close} × 10 ms, before 3 s of excess"
        );
        // A client back within its rate is not punished for the past.
        let mut calm = ConnectionLimits::new(&config);
        for _ in 0..100 {
            assert_eq!(calm.check(false), Verdict::Allow);
            tokio::time::advance(Duration::from_millis(150)).await;
        }
    }
}
