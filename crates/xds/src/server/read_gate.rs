//! Holds back reading from xDS connections while a push is being fanned out.
//!
//! After a change every stream builds and queues its response, and meanwhile the proxies served
//! first ACK theirs. A state-of-the-world EDS ACK repeats every name the proxy watches (50 KB
//! for a thousand), and reading and decoding those ACKs was about half of discovery's CPU per
//! change, interleaved with the fan-out: the last proxy got its config about twice as late as
//! the work for it needed. So the gate closes when a stream receives a push that other streams
//! have yet to receive, and opens when every stream has it; the ACKs are read then. Writes are
//! never held back.
//!
//! A gate closed for longer than `MAX_CLOSED` is overridden, and stays open until every stream
//! has caught up with every push. A full push to a thousand streams takes longer than that, and
//! reads then interleave with the rest of it as they would without the gate. And a stream can be
//! stuck behind a proxy that does not read, whose WINDOW_UPDATE that would free it is itself a
//! read: without the override it would hold every connection's reads.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a fan-out holds reads back. A thousand streams take tens of milliseconds.
pub(crate) const MAX_CLOSED: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Open,
    Closed {
        since: Instant,
        generation: u64,
    },
    /// Closed for too long: open until no push is left unreceived.
    Overridden,
}

struct State {
    phase: Phase,
    generation: u64,
    /// Connections that found the gate closed, to wake when it opens.
    waiting: Vec<Waker>,
}

pub(crate) struct ReadGate {
    /// Mirrors `phase == Closed`, so that reads on an open gate take no lock.
    closed: AtomicBool,
    state: Mutex<State>,
    /// Tells the watchdog that the gate closed (or that the gate is gone).
    closing: Arc<Notify>,
    overrides: Counter,
}

impl ReadGate {
    /// A gate, and the watchdog that overrides long closures (on the current tokio runtime).
    /// `overrides` counts the closures the watchdog ended.
    pub(crate) fn start(overrides: Counter) -> Arc<ReadGate> {
        Self::with_watchdog(overrides).0
    }

    fn with_watchdog(overrides: Counter) -> (Arc<ReadGate>, tokio::task::JoinHandle<()>) {
        let closing = Arc::new(Notify::new());
        let gate = Arc::new(ReadGate {
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Open,
                generation: 0,
                waiting: Vec::new(),
            }),
            closing: closing.clone(),
            overrides,
        });
        let watchdog = tokio::spawn(watchdog(Arc::downgrade(&gate), closing));
        (gate, watchdog)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a stream after it received a push, or left: `unreceived` tells whether any
    /// stream has a push still to receive. It is evaluated under the gate's lock, so that two
    /// streams deciding at once cannot leave the gate closed with no stream left to open it.
    pub(crate) fn after_receive(&self, unreceived: impl FnOnce() -> bool) {
        let woken = {
            let mut state = self.state();
            match (state.phase, unreceived()) {
                (Phase::Open, true) => {
                    state.generation += 1;
                    state.phase = Phase::Closed {
                        since: Instant::now(),
                        generation: state.generation,
                    };
                    self.closed.store(true, Ordering::Release);
                    self.closing.notify_one();
                    Vec::new()
                }
                (Phase::Closed { .. } | Phase::Overridden, false) => {
                    state.phase = Phase::Open;
                    self.closed.store(false, Ordering::Release);
                    std::mem::take(&mut state.waiting)
                }
                _ => Vec::new(),
            }
        };
        woken.into_iter().for_each(Waker::wake);
    }

    /// Ready when reads may go ahead. `registered` is the caller's record of the closure it last
    /// left a waker for, so that a connection polled again while closed does not queue another.
    pub(crate) fn poll_open(
        &self,
        cx: &mut Context<'_>,
        registered: &mut Option<(u64, Waker)>,
    ) -> Poll<()> {
        if !self.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut state = self.state();
        let Phase::Closed { generation, .. } = state.phase else {
            return Poll::Ready(());
        };
        let already = matches!(registered, Some((at, waker)) if *at == generation && waker.will_wake(cx.waker()));
        if !already {
            state.waiting.push(cx.waker().clone());
            *registered = Some((generation, cx.waker().clone()));
        }
        Poll::Pending
    }

    /// Opens a closure that outlived `MAX_CLOSED`, unless a newer one replaced it.
    fn override_if_still(&self, closed_generation: u64) {
        let woken = {
            let mut state = self.state();
            match state.phase {
                Phase::Closed { generation, .. } if generation == closed_generation => {
                    self.overrides.inc();
                    state.phase = Phase::Overridden;
                    self.closed.store(false, Ordering::Release);
                    std::mem::take(&mut state.waiting)
                }
                _ => Vec::new(),
            }
        };
        if !woken.is_empty() {
            tracing::debug!(
                connections = woken.len(),
                "a push fan-out held reads back for {MAX_CLOSED:?}; reading again"
            );
        }
        woken.into_iter().for_each(Waker::wake);
    }

    fn closed_since(&self) -> Option<(Instant, u64)> {
        match self.state().phase {
            Phase::Closed { since, generation } => Some((since, generation)),
            _ => None,
        }
    }
}

impl Drop for ReadGate {
    fn drop(&mut self) {
        // Lets the watchdog see that the gate is gone and end.
        self.closing.notify_one();
    }
}

async fn watchdog(gate: Weak<ReadGate>, closing: Arc<Notify>) {
    loop {
        closing.notified().await;
        let Some(closed) = gate.upgrade().and_then(|gate| gate.closed_since()) else {
            if gate.strong_count() == 0 {
                return;
            }
            continue;
        };
        let (since, generation) = closed;
        tokio::time::sleep_until(since + MAX_CLOSED).await;
        match gate.upgrade() {
            Some(gate) => gate.override_if_still(generation),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watchdog_ends_with_the_gate() {
        for closed in [false, true] {
            let (gate, watchdog) = ReadGate::with_watchdog(Counter::default());
            if closed {
                gate.after_receive(|| true);
            }
            drop(gate);
            tokio::time::timeout(MAX_CLOSED * 10, watchdog)
                .await
                .expect("the watchdog ends once its gate is dropped")
                .unwrap();
        }
    }
}
