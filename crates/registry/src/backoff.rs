//! Retry delays for watches of clusters that are away: quick first retries so that a restarted API
//! server is picked up within about a second, capped so that a long outage costs little.

use kube::runtime::utils::Backoff;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RetryBackoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl RetryBackoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        RetryBackoff {
            initial,
            max,
            next: initial,
        }
    }
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = RetryBackoff::default();
        let delays: Vec<u128> = backoff.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
    }
}
