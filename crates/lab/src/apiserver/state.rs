//! What every part of a running API server shares: its configuration, its objects, its signing
//! keys and allocators, and the signal to stop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::watch;

use super::config::ApiServerConfig;
use super::node_ports::NodePorts;
use super::pod_runtime::PodRuntime;
use super::service_ips::ServiceIps;
use super::store::Store;
use super::tokens::TokenSigner;

pub struct ApiState {
    pub config: ApiServerConfig,
    pub store: Store,
    pub tokens: TokenSigner,
    pub admin_token: String,
    pub ca_pem: String,
    pub service_ips: Mutex<ServiceIps>,
    pub node_ports: Mutex<NodePorts>,
    /// The address of the host's listener (`127.0.0.1:<port>`).
    pub address: SocketAddr,
    pub shutdown: watch::Receiver<bool>,
    /// The kubelet running this cluster's pods, once it started.
    pub pod_runtime: OnceLock<Arc<dyn PodRuntime>>,
    /// How the API server reaches into the lab (admission webhooks): from its node once it has
    /// one, else from where it runs.
    pub dialer: OnceLock<super::writes::mutating_webhooks::Dialer>,
}

impl ApiState {
    /// The NodePort allocator; like the ClusterIP one, consistent through a panic elsewhere.
    pub fn node_ports(&self) -> MutexGuard<'_, NodePorts> {
        self.node_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ClusterIP allocator. Its state stays consistent through a panic elsewhere: every
    /// operation on it is a single set insert or remove.
    pub fn service_ips(&self) -> MutexGuard<'_, ServiceIps> {
        self.service_ips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
