//! What an API server is started with.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::store::StoreOptions;

#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    pub cluster: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub service_subnet: Ipv4Net,
    /// More addresses the serving certificate must name (the node address, later).
    pub extra_addresses: Vec<IpAddr>,
    /// Recent changes kept for watches to resume from; older resourceVersions get `410 Gone`.
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    pub max_body_bytes: usize,
}

impl ApiServerConfig {
    pub fn new(
        cluster: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        service_subnet: Ipv4Net,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            service_subnet,
            extra_addresses: Vec::new(),
            history_limit: StoreOptions::default().history_limit,
            bookmark_interval: Duration::from_secs(30),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}
