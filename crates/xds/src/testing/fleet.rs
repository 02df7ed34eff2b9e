//! A fleet of light ADS clients, for load tests and the discovery benchmark.
//!
//! One core has to play thousands of proxies, so a client does only what a measurement needs:
//! it scans each response as its bytes arrive, one field at a time (`scan`), counts resources
//! and names only the endpoint assignments it watches. It never holds a whole response: 1,500
//! state-of-the-world clients each holding a 3.6 MB EDS response while it arrived took the
//! benchmark driver to 6 GB, and fully decoding them kept its one thread busy for so long that
//! discovery's HTTP/2 keepalive (a PING answered within 10 s) gave up on whole connections.
//!
//! Like Envoy, a client whose stream ends (the server closed it, a keepalive timed out, the
//! connection broke) says so and reconnects after `reconnect_delay`, subscribing afresh. The
//! clients of the benchmark before this one gave up instead, and the benchmark waited for them
//! for ever.

mod scan;

pub use scan::{ScanError, ScannedResponse};

use crate::resources::{CLUSTER, ENDPOINT};
use crate::server::GRPC_PREFIX_BYTES;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::StreamExt;
use http_body_util::BodyExt;
use prost::Message;
use scan::ResponseScanner;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::codegen::http;
use tonic::transport::Channel;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Which protocol variant each client speaks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    Sotw,
    Delta,
    /// Even-numbered clients state of the world, odd ones delta.
    Alternate,
}

impl Variant {
    fn is_delta(self, client: usize) -> bool {
        match self {
            Variant::Sotw => false,
            Variant::Delta => true,
            Variant::Alternate => client % 2 == 1,
        }
    }
}

/// When clients send their ACKs. A real fleet's proxies ACK in parallel, each on its own CPU;
/// one core playing thousands, sending ACKs as each response arrives, would delay every later
/// client's receipt of a change and so time itself. A timed change's ACKs can therefore wait
/// until the measurement says every client has it (`release`).
#[derive(Clone)]
pub struct AckRelease {
    at_once: bool,
    /// The timed change under way (0 before the first).
    change: watch::Receiver<u64>,
    /// The last timed change every client has.
    completed: watch::Receiver<u64>,
}

/// The measurement's side of `AckRelease`.
pub struct AckControl {
    change: watch::Sender<u64>,
    completed: watch::Sender<u64>,
}

impl AckRelease {
    /// ACKs go out as responses arrive.
    pub fn at_once() -> AckRelease {
        let (_, change) = watch::channel(0);
        let (_, completed) = watch::channel(0);
        AckRelease {
            at_once: true,
            change,
            completed,
        }
    }

    /// ACKs of a timed change wait for `AckControl::completed`.
    pub fn held() -> (AckRelease, AckControl) {
        let (change_tx, change) = watch::channel(0);
        let (completed_tx, completed) = watch::channel(0);
        (
            AckRelease {
                at_once: false,
                change,
                completed,
            },
            AckControl {
                change: change_tx,
                completed: completed_tx,
            },
        )
    }

    async fn wait_for_release(&mut self) {
        if self.at_once {
            return;
        }
        let change = *self.change.borrow();
        if *self.completed.borrow() < change {
            let _ = self
                .completed
                .wait_for(|completed| *completed >= change)
                .await;
        }
    }
}

impl AckControl {
    /// A timed change (numbered from 1) is about to be made: its ACKs wait.
    pub fn timing(&self, change: u64) {
        self.change.send_replace(change);
    }

    /// Every client has the change: its ACKs go out.
    pub fn completed(&self, change: u64) {
        self.completed.send_replace(change);
    }
}

pub struct FleetConfig {
    /// `host:port` of a plaintext ADS server.
    pub address: String,
    pub clients: usize,
    /// Clients that share one HTTP/2 connection.
    pub clients_per_connection: usize,
    pub variant: Variant,
    /// The endpoint assignments every client subscribes to; responses say which of them (by
    /// index) they carried.
    pub watched: Arc<Vec<String>>,
    /// The node of client `i` (sent on each stream's first request).
    pub node: Box<dyn Fn(usize) -> Node + Send + Sync>,
    pub acks: AckRelease,
    pub reconnect_delay: Duration,
}

/// What the fleet's clients report.
#[derive(Debug)]
pub enum FleetEvent {
    Response(Received),
    /// The client's stream ended; it reconnects after the configured delay.
    StreamEnded {
        client: usize,
        reason: String,
    },
}

#[derive(Debug)]
pub struct Received {
    pub client: usize,
    pub at: Instant,
    pub response: ScannedResponse,
}

impl Received {
    pub fn is_clusters(&self) -> bool {
        self.response.type_url == CLUSTER
    }

    pub fn is_endpoints(&self) -> bool {
        self.response.type_url == ENDPOINT
    }
}

/// Running clients; dropping the fleet stops them.
pub struct Fleet {
    pub events: mpsc::UnboundedReceiver<FleetEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What every client reads: encoded once, since thousands of clients send the same bytes.
struct Shared {
    config: FleetConfig,
    /// `resource_names` (field 3) of a `DiscoveryRequest` naming every watched assignment.
    sotw_names: Bytes,
    /// `resource_names_subscribe` (field 3) of a `DeltaDiscoveryRequest`, the same names.
    delta_names: Bytes,
    watched_index: HashMap<Vec<u8>, u32>,
}

impl Fleet {
    /// Starts every client (on the current runtime). A connection that cannot be made yet is
    /// retried like a broken one; only an address that makes no URI is refused.
    pub fn start(config: FleetConfig) -> Result<Fleet, http::uri::InvalidUri> {
        let sotw_names = DiscoveryRequest {
            resource_names: config.watched.to_vec(),
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        let delta_names = DeltaDiscoveryRequest {
            resource_names_subscribe: config.watched.to_vec(),
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        let watched_index = config
            .watched
            .iter()
            .enumerate()
            .map(|(index, name)| (name.as_bytes().to_vec(), index as u32))
            .collect();
        let endpoint = Channel::from_shared(format!("http://{}", config.address))?;
        let per_connection = config.clients_per_connection.max(1);
        let clients = config.clients;
        let shared = Arc::new(Shared {
            config,
            sotw_names,
            delta_names,
            watched_index,
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(clients);
        let mut channel = None;
        for client in 0..clients {
            if client % per_connection == 0 {
                channel = Some(endpoint.connect_lazy());
            }
            let channel = channel.clone().expect("made for the first client");
            tasks.push(tokio::spawn(run_client(
                client,
                channel,
                shared.clone(),
                events_tx.clone(),
            )));
        }
        Ok(Fleet { events, tasks })
    }
}

async fn run_client(
    client: usize,
    channel: Channel,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<FleetEvent>,
) {
    let mut acks = shared.config.acks.clone();
    loop {
        let reason = match session(client, channel.clone(), &shared, &events, &mut acks).await {
            Ok(()) => "the server ended the stream".to_owned(),
            Err(reason) => reason,
        };
        if events
            .send(FleetEvent::StreamEnded { client, reason })
            .is_err()
        {
            return;
        }
        tokio::time::sleep(shared.config.reconnect_delay).await;
    }
}

/// A gRPC message: the 5-byte prefix, `head` encoded, then `tail` (pre-encoded fields). One
/// contiguous buffer, as Envoy's codec writes it, so that it arrives in one DATA frame.
fn framed(head: &impl Message, tail: &[u8]) -> Bytes {
    let length = head.encoded_len() + tail.len();
    let mut framed = Vec::with_capacity(GRPC_PREFIX_BYTES + length);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    head.encode_raw(&mut framed);
    framed.extend_from_slice(tail);
    framed.into()
}

/// A request of either variant, framed; `names` are pre-encoded name fields of that variant.
/// Delta requests have no `version_info`: `version` is then unused.
fn discovery_request(
    delta: bool,
    node: Option<Node>,
    type_url: &str,
    version: &str,
    nonce: &str,
    names: &[u8],
) -> Bytes {
    if delta {
        framed(
            &DeltaDiscoveryRequest {
                node,
                type_url: type_url.to_owned(),
                response_nonce: nonce.to_owned(),
                ..Default::default()
            },
            names,
        )
    } else {
        framed(
            &DiscoveryRequest {
                node,
                type_url: type_url.to_owned(),
                version_info: version.to_owned(),
                response_nonce: nonce.to_owned(),
                ..Default::default()
            },
            names,
        )
    }
}

/// One stream, from opening it to its end; `Err` says why it ended.
async fn session(
    client: usize,
    mut channel: Channel,
    shared: &Shared,
    events: &mpsc::UnboundedSender<FleetEvent>,
    acks: &mut AckRelease,
) -> Result<(), String> {
    let delta = shared.config.variant.is_delta(client);
    let (requests, outgoing) = mpsc::unbounded_channel::<Bytes>();
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(
        tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing)
            .map(|chunk| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk))),
    ));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(if delta { DELTA_PATH } else { SOTW_PATH })
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)
        .map_err(|e| format!("cannot build the request: {e}"))?;
    std::future::poll_fn(|cx| tonic::client::GrpcService::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| format!("the connection is not ready: {e}"))?;
    let response = tonic::client::GrpcService::call(&mut channel, request)
        .await
        .map_err(|e| format!("the stream did not open: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("the server answered HTTP {}", response.status()));
    }
    if let Some(status) = tonic::Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(format!("the server refused the stream: {status}"));
    }
    let send = |message: Bytes| {
        requests
            .send(message)
            .map_err(|_| "the request body was dropped".to_owned())
    };
    let node = Some((shared.config.node)(client));
    let endpoint_names: &[u8] = if delta {
        &shared.delta_names
    } else {
        &shared.sotw_names
    };
    send(discovery_request(delta, node, CLUSTER, "", "", &[]))?;
    send(discovery_request(
        delta,
        None,
        ENDPOINT,
        "",
        "",
        endpoint_names,
    ))?;
    let mut body = response.into_body();
    let mut scanner = ResponseScanner::new(delta, &shared.watched_index);
    let mut scanned = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|status| format!("the stream failed: {status}"))?;
        let frame = match frame.into_data() {
            Ok(data) => {
                scanner
                    .feed(&data, &mut scanned)
                    .map_err(|e| format!("a response could not be read: {e}"))?;
                for response in scanned.drain(..) {
                    // Like Envoy, a SotW ACK of EDS repeats every name it watches.
                    let names: &[u8] = if !delta && response.type_url == ENDPOINT {
                        &shared.sotw_names
                    } else {
                        &[]
                    };
                    let ack = discovery_request(
                        delta,
                        None,
                        &response.type_url,
                        &response.version,
                        &response.nonce,
                        names,
                    );
                    let received = Received {
                        client,
                        at: Instant::now(),
                        response,
                    };
                    if events.send(FleetEvent::Response(received)).is_err() {
                        return Ok(());
                    }
                    acks.wait_for_release().await;
                    send(ack)?;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers()
            && let Some(status) = tonic::Status::from_header_map(&trailers)
            && status.code() != tonic::Code::Ok
        {
            return Err(format!("the stream ended with {status}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{XdsMetrics, XdsServer};
    use causeway_model::{MeshSnapshot, Push};
    use tokio::sync::broadcast;

    /// A plaintext ADS server on 127.0.0.1:0 whose HTTP/2 keepalive gives a client `timeout` to
    /// answer a PING (discovery's own: 30 s between PINGs, 10 s to answer).
    async fn server(keepalive: Duration, timeout: Duration) -> (String, JoinHandle<()>) {
        let (_snapshots_tx, snapshots) = watch::channel(Arc::new(MeshSnapshot::default()));
        let (pushes, _) = broadcast::channel::<Arc<Push>>(16);
        let (_ready_tx, ready) = watch::channel(true);
        let xds = XdsServer::new(snapshots, pushes, ready, XdsMetrics::default(), "cluster01");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            // Keep the registry's ends alive with the server.
            let _held = (_snapshots_tx, _ready_tx);
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(keepalive))
                .http2_keepalive_timeout(Some(timeout))
                .add_service(xds.service())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (address, task)
    }

    fn config(address: String, clients: usize) -> FleetConfig {
        FleetConfig {
            address,
            clients,
            clients_per_connection: 2,
            variant: Variant::Alternate,
            watched: Arc::new(vec!["outbound|80||a.b.svc.cluster.local".into()]),
            node: Box::new(|client| {
                super::super::node(
                    "sidecar",
                    &format!("10.0.0.{}", client + 1),
                    &format!("client-{client}"),
                    "b",
                    &[],
                    &[],
                )
            }),
            acks: AckRelease::at_once(),
            reconnect_delay: Duration::from_millis(50),
        }
    }

    async fn next_event(fleet: &mut Fleet) -> FleetEvent {
        tokio::time::timeout(Duration::from_secs(10), fleet.events.recv())
            .await
            .expect("the fleet reports in time")
            .expect("the fleet is running")
    }

    /// The benchmark's stall: a driver too busy to answer the server's keepalive PINGs lost
    /// whole connections, and its clients never came back. These clients come back.
    #[test]
    fn clients_dropped_by_the_servers_keepalive_reconnect_and_resync() {
        const CLIENTS: usize = 4;
        let server_runtime = tokio::runtime::Runtime::new().unwrap();
        let (address, _server) = server_runtime.block_on(server(
            Duration::from_millis(100),
            Duration::from_millis(100),
        ));
        // The fleet on a runtime of its own, which the test can make unresponsive.
        let fleet_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        fleet_runtime.block_on(async {
            let mut fleet = Fleet::start(config(address, CLIENTS)).unwrap();
            let mut synced = [false; CLIENTS];
            while !synced.iter().all(|s| *s) {
                if let FleetEvent::Response(received) = next_event(&mut fleet).await
                    && received.is_clusters()
                {
                    synced[received.client] = true;
                }
            }
            // Busy for 10 keepalive rounds: no PING is answered and the server gives up.
            std::thread::sleep(Duration::from_secs(1));
            let mut ended = [false; CLIENTS];
            let mut resynced = [false; CLIENTS];
            while !resynced.iter().all(|s| *s) {
                match next_event(&mut fleet).await {
                    FleetEvent::StreamEnded { client, .. } => ended[client] = true,
                    FleetEvent::Response(received) => {
                        if ended[received.client] && received.is_clusters() {
                            resynced[received.client] = true;
                        }
                    }
                }
            }
            assert!(ended.iter().all(|e| *e), "every connection was dropped");
        });
    }
}
