//! Delays between attempts to reach discovery or the CA: exponential from 200 ms to at most 30 s
//! (Envoy's cap for xDS retries), with jitter, so that a thousand proxies that lost discovery
//! together do not return together.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// The longest a proxy waits before trying again: how late it may notice that discovery is back.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

pub fn retry_delays() -> impl Iterator<Item = Duration> {
    // backon's jitter adds up to one more whole delay on top of the capped one, so the cap it is
    // given is half of ours: late delays fall between 15 and 30 s instead of 30 and 60 s.
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_RETRY_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
        .map(|delay| delay.min(MAX_RETRY_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_small_grow_and_never_pass_the_cap() {
        for _ in 0..50 {
            let delays: Vec<Duration> = retry_delays().take(40).collect();
            assert!(delays[0] >= Duration::from_millis(200), "{:?}", delays[0]);
            assert!(delays[0] <= Duration::from_millis(400), "{:?}", delays[0]);
            assert!(
                delays.iter().all(|delay| *delay <= MAX_RETRY_DELAY),
                "{delays:?}"
            );
            // Once grown, a delay is at least half the cap, and the late ones are not all equal.
            let late = &delays[20..];
            assert!(
                late.iter().all(|delay| *delay >= MAX_RETRY_DELAY / 2),
                "{late:?}"
            );
            assert!(late.iter().any(|delay| *delay != late[0]), "{late:?}");
        }
    }
}
