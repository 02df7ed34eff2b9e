//! 15001: connections the application made, captured by iptables. A service VIP and port go
//! to an endpoint of the service (mTLS when it has a sidecar, through its network's gateway
//! when it is on another network); anything else goes where it was going, untouched.

use crate::access_log::Entry;
use crate::balancer::Pick;
use crate::config::{ClusterKind, PortProtocol, UpstreamCluster, UpstreamEndpoint};
use crate::dataplane::{DataPlane, HANDSHAKE_TIMEOUT, OnDrain, accept_each, peer_of};
use crate::http_proxy::{self, Exchange, Routed, StreamRoutes};
use crate::http1::{self, NoUpstream, Upstreams};
use crate::identity::MeshTls;
use crate::passthrough::connect_marked;
use crate::relay::relay_tcp;
use crate::sniff::{Detected, Rewind, detect};
use crate::tcp_peer_exchange;
use crate::telemetry::TrafficLabels;
use crate::upstream_pool::{Destination, EndpointStream, PoolKey};
use rustls_pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long a client on a port declared HTTP may stay silent before its connection is taken as
/// opaque TCP.
const DECLARED_HTTP_WAIT: Duration = Duration::from_secs(30);
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;

pub async fn serve(listener: TcpListener, dataplane: Arc<DataPlane>) {
    accept_each(
        listener,
        "outbound",
        OnDrain::KeepAccepting,
        dataplane,
        handle,
    )
    .await;
}

/// What a connection's log line and metrics need, filled in as it goes.
struct Outcome {
    labels: TrafficLabels,
    upstream_host: Option<SocketAddr>,
    upstream_local: Option<SocketAddr>,
    upstream_cluster: Option<String>,
    response_flags: &'static str,
    failure: Option<String>,
    bytes: (u64, u64),
    /// Requests were logged one by one (HTTP); no connection line.
    logged_per_request: bool,
}

/// Relays the connection to its original destination, as bytes.
async fn pass_through(
    downstream: TcpStream,
    destination: SocketAddr,
    dataplane: &DataPlane,
    outcome: &mut Outcome,
) {
    outcome.upstream_host = Some(destination);
    match connect_marked(destination, dataplane.mark).await {
        Ok(upstream) => {
            let _ = upstream.set_nodelay(true);
            outcome.upstream_local = upstream.local_addr().ok();
            match relay_tcp(downstream, upstream, &dataplane.telemetry, &outcome.labels).await {
                Ok(bytes) => outcome.bytes = bytes,
                Err(error) => tracing::debug!(%destination, %error, "passthrough ended"),
            }
        }
        Err(error) => {
            outcome.response_flags = "UF";
            outcome.failure = Some(error.to_string());
        }
    }
}

async fn handle(downstream: TcpStream, dataplane: Arc<DataPlane>) {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let peer = peer_of(&downstream);
    let Some(destination) = dataplane.captured_destination(&downstream, "outbound") else {
        return;
    };
    let mut outcome = Outcome {
        labels: dataplane.labels("source"),
        upstream_host: None,
        upstream_local: None,
        upstream_cluster: None,
        response_flags: "-",
        failure: None,
        bytes: (0, 0),
        logged_per_request: false,
    };
    let config = dataplane.current_config();
    match config.outbound_route(destination) {
        None => {
            outcome.labels.destination_service = destination.ip().to_string();
            outcome.upstream_cluster = config.outbound_fallback.as_deref().map(str::to_owned);
            pass_through(downstream, destination, &dataplane, &mut outcome).await;
        }
        Some(route) => {
            outcome.labels.set_destination_service(&route.hostname);
            outcome.upstream_cluster = Some(route.cluster.to_string());
            match config.cluster(&route.cluster) {
                None => {
                    outcome.response_flags = "NC";
                    tracing::warn!(cluster = %route.cluster, %destination, "the route names a cluster discovery has not sent");
                }
                // A ServiceEntry with `resolution: NONE`: named by the entry, sent where it was
                // going.
                Some(cluster) if cluster.kind == ClusterKind::OriginalDestination => {
                    pass_through(downstream, destination, &dataplane, &mut outcome).await;
                }
                Some(cluster) => {
                    let wait = if route.protocol == PortProtocol::Unknown {
                        dataplane.protocol_detection_timeout
                    } else {
                        DECLARED_HTTP_WAIT
                    };
                    let (detected, downstream) = if route.protocol.sniffed() {
                        detect(downstream, wait).await
                    } else {
                        (Detected::Tcp, Rewind::new(Vec::new(), downstream))
                    };
                    let connection = Connection {
                        downstream,
                        detected,
                        peer,
                        destination,
                    };
                    to_cluster(connection, &dataplane, cluster, &mut outcome).await;
                }
            }
        }
    }
    if outcome.response_flags != "-" {
        tracing::info!(%peer, %destination, flags = outcome.response_flags, reason = outcome.failure.as_deref().unwrap_or("-"), "outbound connection failed");
    }
    if let Some(log) = dataplane
        .access_log
        .as_ref()
        .filter(|_| !outcome.logged_per_request)
    {
        log.write(&Entry {
            start_time: Some(start_time),
            duration: started.elapsed(),
            response_flags: outcome.response_flags,
            bytes_received: outcome.bytes.0,
            bytes_sent: outcome.bytes.1,
            downstream_local: Some(destination),
            downstream_remote: Some(peer),
            upstream_host: outcome.upstream_host,
            upstream_local: outcome.upstream_local,
            upstream_cluster: outcome.upstream_cluster.as_deref(),
            upstream_failure: outcome.failure.as_deref(),
            ..Entry::default()
        });
    }
}

/// A captured connection whose protocol is known (its first bytes are kept for replay).
struct Connection {
    downstream: Rewind<TcpStream>,
    detected: Detected,
    peer: SocketAddr,
    destination: SocketAddr,
}

/// Who a captured connection's requests go between, as far as `outcome` knows.
fn outbound_exchange(
    dataplane: &Arc<DataPlane>,
    connection: &Connection,
    outcome: &Outcome,
) -> Exchange {
    Exchange {
        dataplane: dataplane.clone(),
        labels: outcome.labels.clone(),
        downstream_local: connection.destination,
        downstream_remote: connection.peer,
        upstream_host: outcome.upstream_host,
        upstream_local: outcome.upstream_local,
        upstream_cluster: outcome.upstream_cluster.clone(),
        requested_server_name: None,
        route_name: Some("default"),
        forwarded_client_cert: None,
        peer: Default::default(),
        series: Default::default(),
    }
}

/// The destination side of `labels` as endpoint discovery describes `endpoint`.
fn label_endpoint(labels: &mut TrafficLabels, endpoint: &UpstreamEndpoint) {
    if !endpoint.cluster.is_empty() {
        labels.destination_cluster = endpoint.cluster.clone();
    }
    if let Some(workload) = &endpoint.workload {
        let or_unknown = |value: &str| {
            if value.is_empty() {
                crate::telemetry::UNKNOWN.to_owned()
            } else {
                value.to_owned()
            }
        };
        labels.destination_workload = workload.name.clone();
        labels.destination_workload_namespace = or_unknown(&workload.namespace);
        labels.destination_app = or_unknown(&workload.app);
        labels.destination_version = or_unknown(&workload.version);
    }
    if let Some(identity) = &endpoint.identity {
        labels.destination_principal = identity.clone();
        if let Ok(id) = identity.parse::<causeway_ca::SpiffeId>() {
            labels.destination_workload_namespace = id.namespace().to_owned();
        }
    }
}

async fn to_cluster(
    connection: Connection,
    dataplane: &Arc<DataPlane>,
    cluster: &UpstreamCluster,
    outcome: &mut Outcome,
) {
    if connection.detected != Detected::Tcp {
        outcome.logged_per_request = true;
        let endpoints = EndpointConnector {
            dataplane: dataplane.clone(),
            cluster: cluster.clone(),
            base: Arc::new(outbound_exchange(dataplane, &connection, outcome)),
        };
        let ended = if connection.detected == Detected::Http2 {
            let routes = PerStream {
                endpoints,
                senders: Default::default(),
            };
            http_proxy::proxy_http2(connection.downstream, routes)
                .await
                .map_err(|error| error.to_string())
        } else {
            let upstreams = PerRequest {
                endpoints,
                current: None,
                in_use: None,
                failed: Vec::new(),
            };
            http1::relay_to(connection.downstream, upstreams)
                .await
                .map_err(|error| error.to_string())
        };
        if let Err(error) = ended {
            tracing::debug!(cluster = %cluster.name, %error, "outbound HTTP connection ended");
        }
        return;
    }
    let (pick, upstream) = match dataplane.connect_upstream(cluster).await {
        Ok(connected) => connected,
        Err(error) => {
            outcome.response_flags = error.response_flag();
            outcome.failure = Some(error.to_string());
            return;
        }
    };
    let endpoint = &pick.endpoint;
    outcome.upstream_host = Some(endpoint.address);
    outcome.upstream_local = upstream.local_addr().ok();
    label_endpoint(&mut outcome.labels, endpoint);
    let result = match (&cluster.tls, endpoint.mtls) {
        (Some(tls), true) => {
            let Some(mesh) = dataplane.current_tls() else {
                outcome.response_flags = "UF";
                outcome.failure = Some("no workload certificate yet".into());
                return;
            };
            outcome.labels.connection_security_policy = "mutual_tls";
            let config = mesh.client_peer_exchange.clone();
            let secured = handshake(config, upstream, &tls.sni, &tls.identities).await;
            match secured {
                Ok((stream, identity)) => {
                    outcome.labels.destination_principal = identity;
                    let agreed =
                        stream.get_ref().1.alpn_protocol() == Some(tcp_peer_exchange::ALPN);
                    let preface = &dataplane.own_metadata.tcp_preface;
                    let labels = &mut outcome.labels;
                    match tcp_peer_exchange::after_handshake(stream, agreed, preface, labels).await
                    {
                        Ok(stream) => carry(connection, stream, dataplane, outcome).await,
                        Err(error) => Err(format!("metadata exchange failed: {error}")),
                    }
                }
                Err(reason) => {
                    outcome.response_flags = "UF";
                    outcome.failure = Some(reason);
                    return;
                }
            }
        }
        _ => carry(connection, upstream, dataplane, outcome).await,
    };
    if let Err(error) = result {
        tracing::debug!(cluster = %cluster.name, %error, "outbound connection ended");
    }
}

/// Relays an opaque TCP connection, counted into the TCP series.
async fn carry<U>(
    connection: Connection,
    upstream: U,
    dataplane: &Arc<DataPlane>,
    outcome: &mut Outcome,
) -> Result<(), String>
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    outcome.bytes = relay_tcp(
        connection.downstream,
        upstream,
        &dataplane.telemetry,
        &outcome.labels,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Mutual TLS to an endpoint (or its gateway, which routes by the SNI), then the identity
/// check. The error says why, for the log and `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
async fn handshake(
    config: Arc<rustls::ClientConfig>,
    upstream: TcpStream,
    sni: &str,
    identities: &[String],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), String> {
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|_| format!("`{sni}` cannot be sent as an SNI"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, upstream))
        .await
        .map_err(|_| format!("TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|error| format!("TLS error: {error}"))?;
    let identity = MeshTls::check_server(stream.get_ref().1.peer_certificates(), identities)?;
    Ok((stream, identity.to_string()))
}

/// Connections to the endpoints of one service, for the HTTP requests of one client connection.
struct EndpointConnector {
    dataplane: Arc<DataPlane>,
    cluster: UpstreamCluster,
    base: Arc<Exchange>,
}

/// HTTP/1.x to a service, balanced per request as Envoy balances HTTP: each request goes to the
/// endpoint the balancer picks for it, over an idle connection to that endpoint from the proxy's
/// pool (left by any client), or a new one.
struct PerRequest {
    endpoints: EndpointConnector,
    /// The connection of the request in flight (or of the last one), and this client's exchange
    /// over it, kept for as long as the client's requests keep getting that connection.
    current: Option<(Arc<Destination>, Arc<Exchange>)>,
    /// The endpoint of the request in flight (counted as active for least-request balancing).
    in_use: Option<Pick>,
    /// Endpoints that failed the request in flight, which its retries avoid.
    failed: Vec<SocketAddr>,
}

/// HTTP/2 (gRPC) to a service, balanced per request as Envoy balances it: each stream goes to
/// the endpoint the balancer picks for it, over one multiplexed connection per endpoint, opened
/// on first use and kept for the client connection's life.
struct PerStream {
    endpoints: EndpointConnector,
    senders: tokio::sync::Mutex<HashMap<SocketAddr, (Http2Sender, Arc<Exchange>)>>,
}

type Http2Sender = hyper::client::conn::http2::SendRequest<http_proxy::UpstreamBody>;

impl EndpointConnector {
    /// The balancer's choice for the next request, among the endpoints discovery names now (a
    /// client's connection outlives endpoint changes) except `avoid`.
    fn pick(&self, avoid: &[SocketAddr]) -> Result<Pick, NoUpstream> {
        let config = self.dataplane.current_config();
        let cluster = config.cluster(&self.cluster.name).unwrap_or(&self.cluster);
        self.dataplane
            .balancer
            .pick(cluster, avoid)
            .ok_or_else(|| NoUpstream {
                response_flags: "UH",
                reason: format!("cluster `{}` has no endpoints", self.cluster.name),
            })
    }

    /// Which pooled connections can serve a request to `endpoint`.
    fn pool_key(&self, endpoint: &UpstreamEndpoint) -> PoolKey {
        PoolKey {
            cluster: self.cluster.name.clone(),
            endpoint: endpoint.address,
            mtls: self.cluster.tls.is_some() && endpoint.mtls,
        }
    }

    /// A new connection to `pick` (or, when it fails, to other endpoints), with mTLS when the
    /// endpoint has a sidecar, and the labels and addresses its requests are reported with.
    async fn connect(
        &self,
        pick: Pick,
    ) -> Result<(Pick, EndpointStream, Arc<Destination>), NoUpstream> {
        let config = self.dataplane.current_config();
        let cluster = config.cluster(&self.cluster.name).unwrap_or(&self.cluster);
        let (pick, tcp) = self
            .dataplane
            .connect_upstream_from(cluster, Some(pick))
            .await
            .map_err(|error| NoUpstream {
                response_flags: error.response_flag(),
                reason: error.to_string(),
            })?;
        let endpoint = &pick.endpoint;
        let mut labels = self.base.labels.clone();
        label_endpoint(&mut labels, endpoint);
        let upstream_local = tcp.local_addr().ok();
        let stream = match (&self.cluster.tls, endpoint.mtls) {
            (Some(tls), true) => {
                let mesh = self.dataplane.current_tls().ok_or_else(|| NoUpstream {
                    response_flags: "UF",
                    reason: "no workload certificate yet".into(),
                })?;
                let (stream, identity) =
                    handshake(mesh.client.clone(), tcp, &tls.sni, &tls.identities)
                        .await
                        .map_err(|reason| NoUpstream {
                            response_flags: "UF",
                            reason,
                        })?;
                labels.destination_principal = identity;
                labels.connection_security_policy = "mutual_tls";
                Either::Left(stream)
            }
            _ => Either::Right(tcp),
        };
        let destination = Arc::new(Destination {
            id: self.dataplane.upstream_pool.next_id(),
            key: self.pool_key(endpoint),
            labels,
            upstream_local,
        });
        Ok((pick, stream, destination))
    }

    /// This client's requests over the connection to `destination`, as they are reported.
    fn exchange(&self, destination: &Destination) -> Arc<Exchange> {
        Arc::new(Exchange {
            dataplane: self.dataplane.clone(),
            labels: destination.labels.clone(),
            downstream_local: self.base.downstream_local,
            downstream_remote: self.base.downstream_remote,
            upstream_host: Some(destination.key.endpoint),
            upstream_local: destination.upstream_local,
            upstream_cluster: self.base.upstream_cluster.clone(),
            requested_server_name: None,
            route_name: self.base.route_name,
            forwarded_client_cert: None,
            peer: Default::default(),
            series: Default::default(),
        })
    }
}

impl Upstreams for PerRequest {
    type Stream = EndpointStream;

    fn base(&self) -> &Arc<Exchange> {
        &self.endpoints.base
    }

    async fn checkout(&mut self) -> Result<(EndpointStream, Arc<Exchange>), NoUpstream> {
        self.in_use = None;
        let pick = self.endpoints.pick(&self.failed)?;
        let pool = &self.endpoints.dataplane.upstream_pool;
        let (pick, stream, destination) = match pool.take(&self.endpoints.pool_key(&pick.endpoint))
        {
            Some((stream, destination)) => (pick, stream, destination),
            None => self.endpoints.connect(pick).await?,
        };
        self.in_use = Some(pick);
        let exchange = match &self.current {
            Some((current, exchange)) if current.id == destination.id => exchange.clone(),
            _ => self.endpoints.exchange(&destination),
        };
        self.current = Some((destination, exchange.clone()));
        Ok((stream, exchange))
    }

    fn checkin(&mut self, stream: EndpointStream, _exchange: Arc<Exchange>) {
        self.in_use = None;
        self.failed.clear();
        if let Some((destination, _)) = &self.current {
            self.endpoints
                .dataplane
                .upstream_pool
                .put(stream, destination.clone());
        }
    }

    fn retries(&self) -> u32 {
        http1::DEFAULT_RETRIES
    }

    fn failed(&mut self) {
        self.in_use = None;
        if let Some((destination, _)) = &self.current {
            self.failed.push(destination.key.endpoint);
        }
    }
}

impl StreamRoutes for PerStream {
    fn base(&self) -> &Arc<Exchange> {
        &self.endpoints.base
    }

    async fn route(&self) -> Result<Routed, NoUpstream> {
        let pick = self.endpoints.pick(&[])?;
        // Held while connecting, so that concurrent streams share the new connection.
        let mut senders = self.senders.lock().await;
        if let Some((sender, exchange)) = senders.get(&pick.endpoint.address)
            && !sender.is_closed()
        {
            return Ok(Routed {
                sender: sender.clone(),
                exchange: exchange.clone(),
                pick: Some(pick),
            });
        }
        let (pick, stream, destination) = self.endpoints.connect(pick).await?;
        let exchange = self.endpoints.exchange(&destination);
        let address = pick.endpoint.address;
        let sender = http_proxy::http2_client(stream)
            .await
            .map_err(|error| NoUpstream {
                response_flags: "UF",
                reason: format!("HTTP/2 handshake with {address} failed: {error}"),
            })?;
        senders.insert(address, (sender.clone(), exchange.clone()));
        Ok(Routed {
            sender,
            exchange,
            pick: Some(pick),
        })
    }
}
