//! Delays between attempts to reach discovery or the CA: exponential from 200 ms to 30 s, with
//! jitter, so that a thousand proxies that lost discovery together do not return together.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

pub fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}
