//! Test helpers: a control plane on `127.0.0.1:0` ports.

use crate::DiscoveryConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// Loopback ports picked by the system, pushes without a debounce window, a short remote timeout.
pub fn config(cluster_id: &str, network: &str) -> DiscoveryConfig {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    DiscoveryConfig {
        network: network.to_owned(),
        xds_address: any_port,
        secure_xds_address: any_port,
        monitoring_address: any_port,
        debounce: Duration::ZERO,
        remote_cluster_timeout: Duration::from_secs(5),
        ..DiscoveryConfig::new(cluster_id)
    }
}
