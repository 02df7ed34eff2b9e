//! What an API server is started with.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::store::StoreOptions;

/// The port of the API server on its node's address, as on a kind node.
pub const NODE_API_PORT: u16 = 6443;

#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    pub cluster: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub service_subnet: Ipv4Net,
    /// More addresses the serving certificate must name.
    pub extra_addresses: Vec<IpAddr>,
    /// The node's address, where the API server also listens on [`NODE_API_PORT`] for what runs
    /// in the lab: the `kubernetes` Service routes there. Without a node (an API server alone, in
    /// tests) the Service points at the host's listener.
    pub node_address: Option<Ipv4Addr>,
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
            node_address: None,
            history_limit: StoreOptions::default().history_limit,
            bookmark_interval: Duration::from_secs(30),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}
