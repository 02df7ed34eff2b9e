//! What every connection handler shares: the workload, the current configuration and
//! certificates, the load balancer, telemetry, and the socket mark that lets the proxy's own
//! connections past capture.

use crate::access_log::AccessLog;
use crate::balancer::{Balancer, Pick};
use crate::bootstrap::Workload;
use crate::config::{ProxyConfig, UpstreamCluster};
use crate::drain::Drain;
use crate::identity::{MeshTls, TlsWatch};
use crate::passthrough::connect_marked;
use crate::peer_metadata::{OwnMetadata, app_and_version};
use crate::telemetry::{Telemetry, TrafficLabels};
use crate::upstream_pool::UpstreamPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connect attempts per connection, each to another endpoint (Envoy's TCP proxy retries
/// connect failures the same way with `max_connect_attempts`).
const CONNECT_ATTEMPTS: usize = 3;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DataPlane {
    pub workload: Arc<Workload>,
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    pub tls: TlsWatch,
    pub balancer: Balancer,
    pub telemetry: Arc<Telemetry>,
    pub mark: u32,
    pub access_log: Option<AccessLog>,
    /// This proxy's side of the HTTP metadata exchange.
    pub own_metadata: OwnMetadata,
    /// How long inbound waits for a client's first bytes on a PERMISSIVE port before taking
    /// the connection as plaintext (server-first protocols send nothing).
    pub protocol_detection_timeout: Duration,
    /// Idle HTTP/1.x connections to endpoints, shared by every client connection.
    pub upstream_pool: Arc<UpstreamPool>,
    /// Shutdown: the drain signal and the count of open connections.
    pub drain: Drain,
}

/// What a listener does once the proxy drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrain {
    /// The listeners the pod's callers reach (inbound, router ports): no new connection, so
    /// that callers pick another endpoint.
    StopAccepting,
    /// The application's own calls (outbound) work until the proxy exits.
    KeepAccepting,
}

/// Why no upstream connection was made, as Envoy's response flags say it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cluster `{cluster}` has no endpoints (UH)")]
    NoHealthyUpstream { cluster: String },
    #[error("cannot connect to any endpoint of `{cluster}`: {last} (UF)")]
    ConnectFailed { cluster: String, last: String },
}

impl UpstreamError {
    pub fn response_flag(&self) -> &'static str {
        match self {
            UpstreamError::NoHealthyUpstream { .. } => "UH",
            UpstreamError::ConnectFailed { .. } => "UF",
        }
    }
}

impl DataPlane {
    pub fn current_config(&self) -> Arc<ProxyConfig> {
        self.config.borrow().clone()
    }

    pub fn current_tls(&self) -> Option<Arc<MeshTls>> {
        self.tls.borrow().clone()
    }

    /// An endpoint of `cluster` and a connection to it, trying others when one fails.
    pub async fn connect_upstream(
        &self,
        cluster: &UpstreamCluster,
    ) -> Result<(Pick, TcpStream), UpstreamError> {
        self.connect_upstream_from(cluster, None).await
    }

    /// The same, trying `first` (an endpoint already picked) before asking the balancer.
    pub async fn connect_upstream_from(
        &self,
        cluster: &UpstreamCluster,
        mut first: Option<Pick>,
    ) -> Result<(Pick, TcpStream), UpstreamError> {
        let mut failed = Vec::new();
        let mut last = None;
        for _ in 0..CONNECT_ATTEMPTS {
            let Some(pick) = first
                .take()
                .or_else(|| self.balancer.pick(cluster, &failed))
            else {
                break;
            };
            let address = pick.endpoint.address;
            match tokio::time::timeout(cluster.connect_timeout, connect_marked(address, self.mark))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((pick, stream));
                }
                Ok(Err(error)) => {
                    tracing::debug!(cluster = %cluster.name, %address, %error, "upstream connect failed");
                    last = Some(format!("{address}: {error}"));
                }
                Err(_) => {
                    tracing::debug!(cluster = %cluster.name, %address, "upstream connect timed out");
                    last = Some(format!(
                        "{address}: no answer within {:?}",
                        cluster.connect_timeout
                    ));
                }
            }
            failed.push(address);
        }
        match last {
            None => Err(UpstreamError::NoHealthyUpstream {
                cluster: cluster.name.to_string(),
            }),
            Some(last) => Err(UpstreamError::ConnectFailed {
                cluster: cluster.name.to_string(),
                last,
            }),
        }
    }

    /// Where a captured connection was going (`SO_ORIGINAL_DST`); a connection that reached
    /// the listener without capture is counted and `None`.
    pub fn captured_destination(
        &self,
        stream: &TcpStream,
        listener: &'static str,
    ) -> Option<SocketAddr> {
        match crate::passthrough::original_destination(stream) {
            Ok(destination) => Some(SocketAddr::V4(destination)),
            Err(error) => {
                tracing::debug!(peer = %peer_of(stream), %error, listener, "connection without an original destination");
                self.telemetry.refuse(listener, "not_redirected");
                None
            }
        }
    }

    /// Labels with this workload filled in on the `side` it plays.
    pub fn labels(&self, reporter: &'static str) -> TrafficLabels {
        let mut labels = TrafficLabels::unknown(reporter);
        let workload = &self.workload;
        let (app, version) = app_and_version(&workload.labels);
        let principal = format!(
            "spiffe://{}/ns/{}/sa/{}",
            workload.trust_domain, workload.namespace, workload.service_account
        );
        if reporter == "source" {
            labels.source_workload = workload.canonical_workload();
            labels.source_workload_namespace = workload.namespace.clone();
            labels.source_principal = principal;
            labels.source_app = app;
            labels.source_version = version;
            labels.source_cluster = workload.cluster_id.clone();
        } else {
            labels.destination_workload = workload.canonical_workload();
            labels.destination_workload_namespace = workload.namespace.clone();
            labels.destination_principal = principal;
            labels.destination_app = app;
            labels.destination_version = version;
            labels.destination_cluster = workload.cluster_id.clone();
        }
        labels
    }
}

/// Accepts connections on `listener` until the task is dropped (or, with
/// [`OnDrain::StopAccepting`], until the proxy drains, closing the listening socket), each
/// handled on its own task with Nagle off and counted while it lives. `what` names the listener
/// in logs.
pub async fn accept_each<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    on_drain: OnDrain,
    dataplane: Arc<DataPlane>,
    handle: F,
) where
    F: Fn(TcpStream, Arc<DataPlane>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let drain = dataplane.drain.clone();
    let draining = async {
        match on_drain {
            OnDrain::StopAccepting => drain.started().await,
            OnDrain::KeepAccepting => std::future::pending().await,
        }
    };
    tokio::pin!(draining);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut draining => {
                tracing::info!(listener = what, "draining: no new connections");
                drop(listener);
                // The proxy's tasks end only when something fails; this one has not.
                return std::future::pending().await;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, usually: wait a little rather than spin.
                tracing::warn!(%error, listener = what, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let counted = drain.track();
        let handled = handle(stream, dataplane.clone());
        tokio::spawn(async move {
            handled.await;
            drop(counted);
        });
    }
}

/// The remote end of an accepted connection, or a placeholder when the socket is gone.
pub fn peer_of(stream: &TcpStream) -> SocketAddr {
    stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
