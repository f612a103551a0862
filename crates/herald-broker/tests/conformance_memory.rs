//! The `Broker` contract (`conformance/`) against the memory broker.
//!
//! Every node of the "cluster" is the same [`MemoryBroker`], each with its own sink. Tests run
//! on a paused clock: the broker reads tokio's clock, so letting a history TTL pass is
//! `tokio::time::advance`, exact and instant.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use conformance::{Check, Cluster};
use herald_broker::memory::MemoryBroker;
use herald_broker::Broker;

/// One memory broker shared by every node.
struct Memory(Arc<MemoryBroker>);

fn memory() -> Memory {
    Memory(Arc::new(MemoryBroker::new()))
}

impl Cluster for Memory {
    async fn node(&self, _id: &str) -> Arc<dyn Broker> {
        self.0.clone()
    }

    /// Exact: still there a millisecond before the TTL, gone at it.
    async fn outlive(&self, ttl: Duration, mut expired: Check) {
        let early = ttl - Duration::from_millis(1);
        tokio::time::advance(early).await;
        assert!(!expired().await, "expired before its TTL");
        tokio::time::advance(ttl - early).await;
        assert!(expired().await, "not expired once its TTL passed");
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_secs(5)
    }
}

conformance::conformance_tests!(
    #[tokio::test(start_paused = true)]
    memory()
);
