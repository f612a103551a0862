//! Test support shared by Herald's crates (a dev-dependency only; never published).
//!
//! Herald's tests run real services as real processes rather than mocks (see the style guide):
//! [`redis::RedisServer`] starts a `redis-server` child on a free loopback port, optionally
//! with a password and a TLS port whose certificate a fresh test CA signed, and kills it when
//! dropped. `kill()` and `restart()` stand for a crashed Redis and one restarted empty.
//! [`redis_cluster::RedisCluster`] starts six of them as a Redis Cluster (3 masters, 3 replicas).
//!
//! Everything here is synchronous and uses only the standard library, so any test runtime
//! (or none) can use it; a test on a tokio runtime that calls `kill` or `restart` mid-traffic
//! wraps them in `tokio::task::block_in_place`.
//!
//! ```no_run
//! use herald_testkit::redis::RedisServer;
//!
//! let redis = RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:<port>
//! # drop(url);
//! ```

pub mod redis;
pub mod redis_cluster;
