//! Graceful shutdown, as pilot-agent drives Envoy when Kubernetes stops a pod: on SIGTERM the
//! proxy stops taking new connections on the listeners that serve the pod's callers (inbound,
//! router ports), reports not-ready on 15021, closes idle HTTP keep-alive connections and asks
//! clients to close the busy ones after their current response, and keeps its outbound side
//! working for the application's own shutdown. It exits once its drain policy says so:
//! `terminationDrainDuration` later (5 s by default), or, with `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`,
//! as soon as no connection is left once `MINIMUM_DRAIN_DURATION` has passed.
//!
//! Every accepted connection holds an [`ActiveConnection`] for its life, so that the count the
//! policy reads is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Istio's `terminationDrainDuration` default.
pub const DEFAULT_TERMINATION_DRAIN_DURATION: Duration = Duration::from_secs(5);
/// Istio's `MINIMUM_DRAIN_DURATION` default: how long clients get to learn that this pod is
/// going before "no connection left" may end the drain.
pub const DEFAULT_MINIMUM_DRAIN_DURATION: Duration = Duration::from_secs(5);

/// The drain signal and the connection count every listener and handler shares.
#[derive(Clone)]
pub struct Drain {
    draining: Arc<watch::Sender<bool>>,
    active: Arc<AtomicUsize>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: Arc::new(watch::channel(false).0),
            active: Arc::default(),
        }
    }
}

impl Drain {
    /// Starts draining; later calls change nothing.
    pub fn start(&self) {
        self.draining
            .send_if_modified(|draining| !std::mem::replace(draining, true));
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once draining has started (at once if it has).
    pub async fn started(&self) {
        let mut receiver = self.draining.subscribe();
        // The sender lives in `self`, so this only ends when draining starts.
        let _ = receiver.wait_for(|draining| *draining).await;
    }

    /// Connections accepted and not yet closed, on every listener.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one connection until the value is dropped.
    pub fn track(&self) -> ActiveConnection {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection {
            active: self.active.clone(),
        }
    }
}

/// One open connection, counted in [`Drain::active_connections`] while it lives.
pub struct ActiveConnection {
    active: Arc<AtomicUsize>,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a draining proxy may exit (pilot-agent's settings of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPolicy {
    /// `terminationDrainDuration`: how long the drain lasts without `exit_on_zero_active`.
    pub termination_drain_duration: Duration,
    /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: end the drain when no connection is left.
    pub exit_on_zero_active: bool,
    /// `MINIMUM_DRAIN_DURATION`: with `exit_on_zero_active`, the drain lasts at least this long.
    pub minimum_drain_duration: Duration,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            termination_drain_duration: DEFAULT_TERMINATION_DRAIN_DURATION,
            exit_on_zero_active: false,
            minimum_drain_duration: DEFAULT_MINIMUM_DRAIN_DURATION,
        }
    }
}

impl DrainPolicy {
    /// Whether a drain that began `elapsed` ago with `active` connections open is over. Without
    /// `exit_on_zero_active` the drain lasts its duration whatever is open, as Envoy's drain
    /// time does; the kubelet's SIGKILL at the end of the grace period bounds both forms.
    pub fn is_over(&self, elapsed: Duration, active: usize) -> bool {
        if self.exit_on_zero_active {
            elapsed >= self.minimum_drain_duration && active == 0
        } else {
            elapsed >= self.termination_drain_duration
        }
    }

    /// Drains `drain` until this policy says it is over, checking the count every 100 ms.
    pub async fn run(&self, drain: &Drain) {
        drain.start();
        let started = tokio::time::Instant::now();
        loop {
            let active = drain.active_connections();
            if self.is_over(started.elapsed(), active) {
                tracing::info!(
                    active,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "drain over; exiting"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_ends_the_drain_as_pilot_agent_does() {
        let s = Duration::from_secs;
        let fixed = DrainPolicy::default();
        let on_zero = DrainPolicy {
            exit_on_zero_active: true,
            minimum_drain_duration: s(1),
            ..DrainPolicy::default()
        };
        let table = [
            // policy, elapsed, active connections, over
            (fixed, s(0), 0, false),
            (fixed, s(4), 0, false),
            (fixed, s(5), 3, true),
            (on_zero, s(0), 0, false),
            (on_zero, s(1), 0, true),
            (on_zero, s(1), 1, false),
            (on_zero, s(60), 1, false),
        ];
        for (policy, elapsed, active, over) in table {
            assert_eq!(
                policy.is_over(elapsed, active),
                over,
                "{policy:?} after {elapsed:?} with {active} open"
            );
        }
    }

    #[tokio::test]
    async fn connections_are_counted_while_they_live_and_the_signal_reaches_every_waiter() {
        let drain = Drain::default();
        let first = drain.track();
        let second = drain.track();
        assert_eq!(drain.active_connections(), 2);
        drop(first);
        assert_eq!(drain.active_connections(), 1);

        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.started().await }
        });
        assert!(!drain.is_draining());
        drain.start();
        drain.start();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter hears the drain")
            .unwrap();
        assert!(drain.is_draining());
        // A waiter that comes late returns at once.
        tokio::time::timeout(Duration::from_secs(1), drain.started())
            .await
            .unwrap();
        drop(second);
        assert_eq!(drain.active_connections(), 0);
    }

    #[tokio::test]
    async fn exit_on_zero_waits_for_the_last_connection() {
        let drain = Drain::default();
        let open = drain.track();
        let policy = DrainPolicy {
            exit_on_zero_active: true,
            minimum_drain_duration: Duration::from_millis(200),
            ..DrainPolicy::default()
        };
        let run = tokio::spawn({
            let drain = drain.clone();
            async move { policy.run(&drain).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !run.is_finished(),
            "an open connection keeps the drain going"
        );
        drop(open);
        tokio::time::timeout(Duration::from_secs(1), run)
            .await
            .expect("the drain ends once the last connection closed")
            .unwrap();
    }
}
