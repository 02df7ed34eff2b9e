//! The ADS client: one stream to discovery (delta by default, state of the world on request)
//! for listeners, clusters and their endpoints. Every resource of a response is checked; the
//! good ones are used and all rejections go back in one NACK. When discovery is away the last
//! good configuration keeps serving while the client reconnects with jittered backoff.

use crate::config::{ProxyConfig, ResourceError, XdsResources};
use crate::retry::retry_delays;
use causeway_xds::resources::{CLUSTER, ENDPOINT, LISTENER};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(30);
/// gRPC's INVALID_ARGUMENT, the code Envoy puts in a NACK.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Delta,
    StateOfTheWorld,
}

#[derive(Clone, Debug)]
pub struct AdsSettings {
    /// `host:port` of discovery.
    pub address: String,
    /// TLS to discovery (15012) with this server name, verified with the mesh roots; plaintext
    /// (15010) when `None`.
    pub tls_server_name: Option<String>,
    pub root_cert: PathBuf,
    pub node: Node,
    pub protocol: Protocol,
    /// The socket mark of the proxy's own connections.
    pub mark: u32,
}

/// What the admin port shows about the stream.
#[derive(Default)]
pub struct AdsStatus {
    pub connected: AtomicBool,
    /// The configuration has been complete (every cluster with its endpoints) at least once.
    pub warm: AtomicBool,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub connects: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub last_rejection: Mutex<Option<String>>,
    /// The resources held now, for `/config_dump`.
    pub resources: Mutex<XdsResources>,
}

impl AdsStatus {
    fn set(&self, slot: &Mutex<Option<String>>, value: String) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect to discovery at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the stream to discovery failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("discovery closed the stream")]
    Closed,
    #[error("the request queue closed")]
    RequestQueue,
}

/// Runs the client until the returned task is aborted. The config watch starts empty and
/// changes with every accepted response once the first complete configuration arrived.
pub fn start(
    settings: AdsSettings,
) -> (
    watch::Receiver<Arc<ProxyConfig>>,
    Arc<AdsStatus>,
    tokio::task::JoinHandle<()>,
) {
    let (publish, config) = watch::channel(Arc::new(ProxyConfig::default()));
    let status = Arc::new(AdsStatus::default());
    let task = tokio::spawn(run(settings, publish, status.clone()));
    (config, status, task)
}

async fn run(
    settings: AdsSettings,
    publish: watch::Sender<Arc<ProxyConfig>>,
    status: Arc<AdsStatus>,
) {
    let mut resources = XdsResources::default();
    let mut delays = retry_delays();
    loop {
        let mut session = Session {
            resources: &mut resources,
            publish: &publish,
            status: &status,
            received: false,
        };
        let outcome = match connect(&settings).await {
            Ok(channel) => {
                let connects = status.connects.fetch_add(1, Ordering::Relaxed) + 1;
                status.connected.store(true, Ordering::Relaxed);
                tracing::info!(address = %settings.address, connects, "stream to discovery open");
                match settings.protocol {
                    Protocol::Delta => session.delta(channel, &settings.node).await,
                    Protocol::StateOfTheWorld => session.sotw(channel, &settings.node).await,
                }
            }
            Err(error) => Err(error),
        };
        let received = session.received;
        status.connected.store(false, Ordering::Relaxed);
        if received {
            delays = retry_delays();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        let error = match outcome {
            Ok(()) => StreamError::Closed,
            Err(error) => error,
        };
        tracing::warn!(%error, retry_in = ?delay, "no stream to discovery; serving the last configuration");
        status.set(&status.last_error, error.to_string());
        tokio::time::sleep(delay).await;
    }
}

async fn connect(settings: &AdsSettings) -> Result<Channel, StreamError> {
    let failed = |reason: String| StreamError::Connect {
        address: settings.address.clone(),
        reason,
    };
    let scheme = if settings.tls_server_name.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", settings.address))
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(server_name) = &settings.tls_server_name {
        let roots = std::fs::read(&settings.root_cert).map_err(|error| {
            failed(format!(
                "cannot read the mesh roots {}: {error}; pass --root-cert",
                settings.root_cert.display()
            ))
        })?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots))
            .domain_name(server_name.clone());
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| failed(e.to_string()))?;
    }
    crate::control_channel::marked_channel(&endpoint, settings.mark)
        .await
        .map_err(|e| failed(crate::identity::describe_error(&e)))
}

/// One stream's worth of work on the shared, long-lived resources.
struct Session<'a> {
    resources: &'a mut XdsResources,
    publish: &'a watch::Sender<Arc<ProxyConfig>>,
    status: &'a AdsStatus,
    received: bool,
}

fn nack_status(errors: &[ResourceError]) -> Option<RpcStatus> {
    if errors.is_empty() {
        return None;
    }
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Some(RpcStatus {
        code: INVALID_ARGUMENT,
        message,
        ..RpcStatus::default()
    })
}

impl Session<'_> {
    /// Counts the outcome, and publishes the configuration once it is complete.
    fn settle(&mut self, type_url: &str, errors: &[ResourceError]) {
        self.received = true;
        if let Some(status) = nack_status(errors) {
            self.status.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(type_url, rejected = %status.message, "rejected resources (NACK)");
            self.status.set(&self.status.last_rejection, status.message);
        } else {
            self.status.acks.fetch_add(1, Ordering::Relaxed);
        }
        let warm = self.resources.warm();
        if warm {
            self.status.warm.store(true, Ordering::Relaxed);
        }
        if warm || self.status.warm.load(Ordering::Relaxed) {
            let config = Arc::new(self.resources.build());
            self.publish.send_if_modified(|current| {
                let changed = **current != *config;
                if changed {
                    *current = config;
                }
                changed
            });
        }
        *self
            .status
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.resources.clone();
    }

    async fn delta(&mut self, channel: Channel, node: &Node) -> Result<(), StreamError> {
        let (requests, outgoing) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let mut node = Some(node.clone());
        let mut subscribe =
            |type_url: &str, names: Vec<String>, resources: &XdsResources| DeltaDiscoveryRequest {
                node: node.take(),
                type_url: type_url.to_owned(),
                resource_names_subscribe: names,
                initial_resource_versions: resources.versions(type_url).into_iter().collect(),
                ..DeltaDiscoveryRequest::default()
            };
        // Wildcards for clusters and listeners; endpoints by name, for the clusters already known.
        let mut eds_names = self.resources.eds_cluster_names();
        let mut opening = vec![
            subscribe(CLUSTER, Vec::new(), self.resources),
            subscribe(LISTENER, Vec::new(), self.resources),
        ];
        if !eds_names.is_empty() {
            let mut eds = subscribe(
                ENDPOINT,
                eds_names.iter().cloned().collect(),
                self.resources,
            );
            eds.initial_resource_versions
                .retain(|name, _| eds_names.contains(name));
            opening.push(eds);
        }
        for request in opening {
            requests
                .try_send(request)
                .map_err(|_| StreamError::RequestQueue)?;
        }
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .delta_aggregated_resources(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        while let Some(response) = responses.message().await? {
            let errors = self.apply_delta(&response);
            if response.type_url == CLUSTER {
                let wanted = self.resources.eds_cluster_names();
                let added: Vec<String> = wanted.difference(&eds_names).cloned().collect();
                let removed: Vec<String> = eds_names.difference(&wanted).cloned().collect();
                for name in &removed {
                    self.resources.remove(ENDPOINT, name);
                }
                if !added.is_empty() || !removed.is_empty() {
                    let request = DeltaDiscoveryRequest {
                        type_url: ENDPOINT.to_owned(),
                        resource_names_subscribe: added,
                        resource_names_unsubscribe: removed,
                        ..DeltaDiscoveryRequest::default()
                    };
                    requests
                        .send(request)
                        .await
                        .map_err(|_| StreamError::RequestQueue)?;
                }
                eds_names = wanted;
            }
            let reply = DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: nack_status(&errors),
                ..DeltaDiscoveryRequest::default()
            };
            requests
                .send(reply)
                .await
                .map_err(|_| StreamError::RequestQueue)?;
            self.settle(&response.type_url, &errors);
        }
        Ok(())
    }

    fn apply_delta(&mut self, response: &DeltaDiscoveryResponse) -> Vec<ResourceError> {
        let type_url = response.type_url.as_str();
        let mut errors = Vec::new();
        for entry in &response.resources {
            match &entry.resource {
                Some(resource) => {
                    if let Err(error) =
                        self.resources
                            .apply(type_url, &entry.name, &entry.version, resource)
                    {
                        errors.push(error);
                    }
                }
                None => errors.push(ResourceError {
                    kind: causeway_xds::resources::short_name(type_url),
                    name: entry.name.clone(),
                    reason: "sent without a body".into(),
                }),
            }
        }
        for name in &response.removed_resources {
            self.resources.remove(type_url, name);
        }
        errors
    }

    async fn sotw(&mut self, channel: Channel, node: &Node) -> Result<(), StreamError> {
        let (requests, outgoing) = mpsc::channel::<DiscoveryRequest>(16);
        // Per type: the version last accepted and the nonce last seen.
        let mut accepted: BTreeMap<String, String> = BTreeMap::new();
        let mut nonces: BTreeMap<String, String> = BTreeMap::new();
        let mut eds_names: BTreeSet<String> = self.resources.eds_cluster_names();
        let mut node = Some(node.clone());
        for (type_url, names) in [
            (CLUSTER, Vec::new()),
            (LISTENER, Vec::new()),
            (ENDPOINT, eds_names.iter().cloned().collect()),
        ] {
            if type_url == ENDPOINT && names.is_empty() {
                continue;
            }
            let request = DiscoveryRequest {
                node: node.take(),
                type_url: type_url.to_owned(),
                resource_names: names,
                ..DiscoveryRequest::default()
            };
            requests
                .try_send(request)
                .map_err(|_| StreamError::RequestQueue)?;
        }
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .stream_aggregated_resources(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        while let Some(response) = responses.message().await? {
            let type_url = response.type_url.clone();
            let errors = self.apply_sotw(&response);
            nonces.insert(type_url.clone(), response.nonce.clone());
            if errors.is_empty() {
                accepted.insert(type_url.clone(), response.version_info.clone());
            }
            let eds_request = |eds_names: &BTreeSet<String>,
                               accepted: &BTreeMap<String, String>,
                               nonces: &BTreeMap<String, String>,
                               error_detail| DiscoveryRequest {
                type_url: ENDPOINT.to_owned(),
                version_info: accepted.get(ENDPOINT).cloned().unwrap_or_default(),
                response_nonce: nonces.get(ENDPOINT).cloned().unwrap_or_default(),
                resource_names: eds_names.iter().cloned().collect(),
                error_detail,
                ..DiscoveryRequest::default()
            };
            if type_url == CLUSTER {
                let wanted = self.resources.eds_cluster_names();
                if wanted != eds_names {
                    for name in eds_names.difference(&wanted) {
                        self.resources.remove(ENDPOINT, name);
                    }
                    eds_names = wanted;
                    requests
                        .send(eds_request(&eds_names, &accepted, &nonces, None))
                        .await
                        .map_err(|_| StreamError::RequestQueue)?;
                }
            }
            let reply = if type_url == ENDPOINT {
                eds_request(&eds_names, &accepted, &nonces, nack_status(&errors))
            } else {
                DiscoveryRequest {
                    type_url: type_url.clone(),
                    version_info: accepted.get(&type_url).cloned().unwrap_or_default(),
                    response_nonce: response.nonce.clone(),
                    error_detail: nack_status(&errors),
                    ..DiscoveryRequest::default()
                }
            };
            requests
                .send(reply)
                .await
                .map_err(|_| StreamError::RequestQueue)?;
            self.settle(&type_url, &errors);
        }
        Ok(())
    }

    fn apply_sotw(&mut self, response: &DiscoveryResponse) -> Vec<ResourceError> {
        let type_url = response.type_url.as_str();
        let mut errors = Vec::new();
        let mut names = BTreeSet::new();
        for (index, resource) in response.resources.iter().enumerate() {
            // The name lives inside the resource; decode just enough to read it.
            let name = resource_name(type_url, &resource.value);
            let Some(name) = name else {
                errors.push(ResourceError {
                    kind: causeway_xds::resources::short_name(type_url),
                    name: format!("resource {} of the response", index + 1),
                    reason: "cannot be decoded, so its name is unknown".into(),
                });
                continue;
            };
            names.insert(name.clone());
            if let Err(error) =
                self.resources
                    .apply(type_url, &name, &response.version_info, resource)
            {
                errors.push(error);
            }
        }
        // State of the world: listeners and clusters not named are gone. Endpoints are sent
        // per name and only for subscribed clusters.
        if type_url != ENDPOINT {
            self.resources.retain(type_url, &names);
        }
        errors
    }
}

fn resource_name(type_url: &str, value: &[u8]) -> Option<String> {
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    };
    use prost::Message;
    match type_url {
        LISTENER => Listener::decode(value).ok().map(|l| l.name),
        CLUSTER => Cluster::decode(value).ok().map(|c| c.name),
        ENDPOINT => ClusterLoadAssignment::decode(value)
            .ok()
            .map(|a| a.cluster_name),
        _ => None,
    }
}
