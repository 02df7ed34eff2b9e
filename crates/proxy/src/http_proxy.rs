//! HTTP connections proxied request by request so that each request is logged and counted:
//! method, path, authority, status, bytes, duration, and an `x-request-id` made when the
//! request has none. HTTP/1.x goes through the lean relay in [`crate::http1`]; HTTP/2 through
//! hyper on both sides. Upgrades (WebSocket) continue as raw bytes.

use crate::access_log::{Entry, RequestView};
use crate::balancer::Pick;
use crate::dataplane::DataPlane;
use crate::http1::{self, NoUpstream};
use crate::peer_metadata::{self, PeerWorkload};
use crate::telemetry::{RequestLabels, TrafficLabels};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2 as client2;
use hyper::server::conn::http2 as server2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

const REQUEST_ID: &str = "x-request-id";
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// Who the requests of one connection go between, for logs and metrics.
pub struct Exchange {
    pub dataplane: Arc<DataPlane>,
    pub labels: TrafficLabels,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub requested_server_name: Option<String>,
    pub route_name: Option<&'static str>,
    /// For the application, when the client came with a mesh certificate (inbound): the
    /// `x-forwarded-client-cert` element Istio adds (`APPEND_FORWARD`). Outbound requests lose
    /// any the application set (`SANITIZE`).
    pub forwarded_client_cert: Option<String>,
    /// What the peer said about itself, from the first message that carried it.
    pub peer: OnceLock<PeerWorkload>,
    /// The series this connection's requests count into, looked up once per distinct outcome:
    /// labels are twenty strings, too many to hash per request.
    pub series: Mutex<Vec<(SeriesKey, Counter, Histogram)>>,
}

/// What varies between the requests of one connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SeriesKey {
    grpc: bool,
    status: u16,
    grpc_status: String,
    response_flags: &'static str,
}

impl Exchange {
    /// Both ends are sidecars talking mutual TLS: they exchange metadata (see `peer_metadata`).
    pub fn metadata_exchange(&self) -> bool {
        self.labels.connection_security_policy == "mutual_tls"
    }

    /// The same exchange over a new upstream connection from `upstream_local`; what the peer
    /// said about itself still holds.
    pub fn with_upstream_local(&self, upstream_local: Option<SocketAddr>) -> Exchange {
        let peer = OnceLock::new();
        if let Some(known) = self.peer.get() {
            let _ = peer.set(known.clone());
        }
        Exchange {
            dataplane: self.dataplane.clone(),
            labels: self.labels.clone(),
            downstream_local: self.downstream_local,
            downstream_remote: self.downstream_remote,
            upstream_host: self.upstream_host,
            upstream_local,
            upstream_cluster: self.upstream_cluster.clone(),
            requested_server_name: self.requested_server_name.clone(),
            route_name: self.route_name,
            forwarded_client_cert: self.forwarded_client_cert.clone(),
            peer,
            series: Default::default(),
        }
    }

    fn series(&self, key: SeriesKey) -> (Counter, Histogram) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter, histogram)) = series.iter().find(|(k, _, _)| *k == key) {
            return (counter.clone(), histogram.clone());
        }
        let mut traffic = self.labels.clone();
        if let Some(peer) = self.peer.get() {
            peer.apply(&mut traffic);
        }
        traffic.request_protocol = if key.grpc { "grpc" } else { "http" };
        traffic.response_flags = key.response_flags.to_owned();
        let labels = RequestLabels {
            traffic,
            response_code: key.status,
            grpc_response_status: key.grpc_status.clone(),
        };
        let telemetry = &self.dataplane.telemetry;
        let counter = telemetry.requests.get_or_create_owned(&labels);
        let histogram = telemetry.request_duration.get_or_create_owned(&labels);
        series.push((key, counter.clone(), histogram.clone()));
        (counter, histogram)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that counts its bytes and reports once when it ends (or is dropped).
pub struct ObservedBody<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<B> ObservedBody<B> {
    fn new(
        inner: B,
        bytes: Arc<AtomicU64>,
        on_end: Option<Box<dyn FnOnce() + Send + Sync>>,
    ) -> Self {
        ObservedBody {
            inner,
            bytes,
            on_end,
        }
    }

    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.finish();
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) type UpstreamBody = ObservedBody<Incoming>;
type DownstreamBody = Either<ObservedBody<Incoming>, Full<Bytes>>;

/// The parts of a request its access log line needs (kept only when there is an access log).
pub(crate) struct Logged {
    pub start_time: SystemTime,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub request_headers: HeaderMap,
    pub response_headers: HeaderMap,
}

/// What one request reports once its response has ended.
pub(crate) struct Finished {
    pub exchange: Arc<Exchange>,
    pub protocol: &'static str,
    pub start: Instant,
    pub grpc: bool,
    /// 0 when no response was sent (the client went away first), as Envoy logs it.
    pub status: u16,
    pub grpc_status: String,
    pub response_flags: &'static str,
    /// Body bytes, as Envoy's `%BYTES_RECEIVED%` and `%BYTES_SENT%` count them.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Why no upstream connection was made (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub upstream_failure: Option<String>,
    pub logged: Option<Logged>,
}

impl Finished {
    /// A request starting now; nothing answered yet (status 0).
    pub(crate) fn new(
        exchange: Arc<Exchange>,
        protocol: &'static str,
        grpc: bool,
        logged: Option<Logged>,
    ) -> Finished {
        Finished {
            exchange,
            protocol,
            start: Instant::now(),
            grpc,
            status: 0,
            grpc_status: String::new(),
            response_flags: "-",
            request_bytes: 0,
            response_bytes: 0,
            upstream_failure: None,
            logged,
        }
    }

    pub(crate) fn report(self) {
        let exchange = &self.exchange;
        let elapsed = self.start.elapsed();
        let (counter, histogram) = exchange.series(SeriesKey {
            grpc: self.grpc,
            status: self.status,
            grpc_status: self.grpc_status.clone(),
            response_flags: self.response_flags,
        });
        counter.inc();
        histogram.observe(elapsed.as_secs_f64() * 1000.0);
        if let (Some(log), Some(logged)) = (&exchange.dataplane.access_log, &self.logged) {
            log.write(&Entry {
                start_time: Some(logged.start_time),
                duration: elapsed,
                protocol: Some(self.protocol),
                request: Some(RequestView {
                    method: &logged.method,
                    path: &logged.path,
                    authority: &logged.authority,
                    headers: &logged.request_headers,
                }),
                response_headers: Some(&logged.response_headers),
                response_code: self.status,
                response_flags: self.response_flags,
                bytes_received: self.request_bytes,
                bytes_sent: self.response_bytes,
                downstream_local: Some(exchange.downstream_local),
                downstream_remote: Some(exchange.downstream_remote),
                upstream_host: exchange.upstream_host,
                upstream_local: exchange.upstream_local,
                upstream_cluster: exchange.upstream_cluster.as_deref(),
                requested_server_name: exchange.requested_server_name.as_deref(),
                route_name: exchange.route_name,
                upstream_failure: self.upstream_failure.as_deref(),
                ..Entry::default()
            });
        }
    }
}

/// The metadata exchange on one HTTP/2 message: the peer's headers are read when `from_peer`
/// (a request arriving at the server side, a response at the client side) and never passed on;
/// the proxy adds its own to what it sends to the other sidecar.
fn exchange_metadata(headers: &mut HeaderMap, exchange: &Exchange, from_peer: bool) {
    if from_peer
        && exchange.metadata_exchange()
        && let Some(peer) = headers
            .get(peer_metadata::METADATA_HEADER)
            .and_then(|value| peer_metadata::decode(value.as_bytes()))
    {
        let _ = exchange.peer.set(peer);
    }
    headers.remove(peer_metadata::METADATA_HEADER);
    headers.remove(peer_metadata::ID_HEADER);
    if !from_peer
        && exchange.metadata_exchange()
        && let Some((id, metadata)) = &exchange.dataplane.own_metadata.header_values
    {
        headers.insert(peer_metadata::ID_HEADER, id.clone());
        headers.insert(peer_metadata::METADATA_HEADER, metadata.clone());
    }
}

/// A version 4 UUID from the thread's fast generator: one per request, so no system call.
pub(crate) fn request_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// Where one HTTP/2 request goes: a (multiplexed) upstream connection and who it reaches.
pub(crate) struct Routed {
    pub sender: client2::SendRequest<UpstreamBody>,
    pub exchange: Arc<Exchange>,
    /// The balancer's pick, held until the response ends (least-request counts it as active).
    pub pick: Option<Pick>,
}

/// Where the HTTP/2 requests of one downstream connection go: one fixed upstream connection
/// (inbound, passthrough), or per request (outbound to a service, see `outbound`).
pub(crate) trait StreamRoutes: Send + Sync + 'static {
    /// Whose requests these are, for requests that find no upstream.
    fn base(&self) -> &Arc<Exchange>;
    /// The upstream for the next request.
    fn route(&self) -> impl Future<Output = Result<Routed, NoUpstream>> + Send;
}

/// Every request on one upstream connection.
struct FixedStreams {
    sender: client2::SendRequest<UpstreamBody>,
    exchange: Arc<Exchange>,
}

impl StreamRoutes for FixedStreams {
    fn base(&self) -> &Arc<Exchange> {
        &self.exchange
    }

    async fn route(&self) -> Result<Routed, NoUpstream> {
        Ok(Routed {
            sender: self.sender.clone(),
            exchange: self.exchange.clone(),
            pick: None,
        })
    }
}

/// Opens an HTTP/2 client connection over `upstream`; its driver runs as its own task.
pub(crate) async fn http2_client<U>(
    upstream: U,
) -> Result<client2::SendRequest<UpstreamBody>, hyper::Error>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        client2::handshake(TokioExecutor::new(), TokioIo::new(upstream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn forward<R: StreamRoutes>(
    mut request: Request<Incoming>,
    routes: Arc<R>,
    protocol: &'static str,
) -> Result<Response<DownstreamBody>, std::convert::Infallible> {
    let start = Instant::now();
    let (routed, exchange) = match routes.route().await {
        Ok(routed) => {
            let exchange = routed.exchange.clone();
            (Ok(routed), exchange)
        }
        Err(none) => (Err(none), routes.base().clone()),
    };
    if !request.headers().contains_key(REQUEST_ID)
        && let Ok(value) = HeaderValue::from_str(&request_id().to_string())
    {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    let outbound = exchange.labels.reporter == "source";
    exchange_metadata(request.headers_mut(), &exchange, !outbound);
    if outbound {
        request.headers_mut().remove(FORWARDED_CLIENT_CERT);
    } else if let Some(element) = &exchange.forwarded_client_cert
        && let Ok(value) = HeaderValue::from_str(element)
    {
        request.headers_mut().append(FORWARDED_CLIENT_CERT, value);
    }
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let logged = exchange.dataplane.access_log.as_ref().map(|_| Logged {
        start_time: SystemTime::now(),
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path().to_owned(), |p| p.to_string()),
        authority: request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default(),
        request_headers: request.headers().clone(),
        response_headers: HeaderMap::new(),
    });
    let request_bytes = Arc::new(AtomicU64::new(0));
    let request = request.map(|body| ObservedBody::new(body, request_bytes.clone(), None));
    let response_bytes = Arc::new(AtomicU64::new(0));
    let mut finished = Finished::new(exchange, protocol, grpc, logged);
    finished.start = start;
    let (sent, pick) = match routed {
        Ok(Routed {
            sender: mut upstream,
            pick,
            ..
        }) => {
            let sent = match upstream.ready().await {
                Ok(()) => upstream.send_request(request).await,
                Err(error) => Err(error),
            };
            let sent = sent.map_err(|error| {
                tracing::info!(%error, "upstream request failed");
                NoUpstream {
                    response_flags: "UC",
                    reason: error.to_string(),
                }
            });
            (sent, pick)
        }
        Err(none) => {
            finished.upstream_failure = Some(none.reason.clone());
            (Err(none), None)
        }
    };
    match sent {
        Ok(mut response) => {
            exchange_metadata(response.headers_mut(), &finished.exchange, outbound);
            let service_time = start.elapsed().as_millis() as u64;
            response.headers_mut().insert(
                http1::UPSTREAM_SERVICE_TIME,
                HeaderValue::from(service_time),
            );
            finished.status = response.status().as_u16();
            if grpc && let Some(status) = response.headers().get("grpc-status") {
                finished.grpc_status = status.to_str().unwrap_or_default().to_owned();
            }
            if let Some(logged) = &mut finished.logged {
                logged.response_headers = response.headers().clone();
            }
            let counted_response_bytes = response_bytes.clone();
            let on_end: Box<dyn FnOnce() + Send + Sync> = Box::new(move || {
                drop(pick);
                finished.request_bytes = request_bytes.load(Ordering::Relaxed);
                finished.response_bytes = counted_response_bytes.load(Ordering::Relaxed);
                finished.report()
            });
            Ok(response
                .map(|body| Either::Left(ObservedBody::new(body, response_bytes, Some(on_end)))))
        }
        Err(none) => {
            finished.status = StatusCode::SERVICE_UNAVAILABLE.as_u16();
            finished.response_flags = none.response_flags;
            let body = format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {}",
                none.reason
            );
            finished.request_bytes = request_bytes.load(Ordering::Relaxed);
            finished.response_bytes = body.len() as u64;
            finished.report();
            let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(response)
        }
    }
}

/// Serves `downstream` as HTTP/2 and sends each stream on the one connection `upstream`.
pub async fn relay_http2<D, U>(
    downstream: D,
    upstream: U,
    exchange: Arc<Exchange>,
) -> Result<(), BoxError>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sender = http2_client(upstream).await?;
    proxy_http2(downstream, FixedStreams { sender, exchange }).await
}

/// Serves `downstream` as HTTP/2, each request sent where `routes` says.
pub(crate) async fn proxy_http2<D, R>(downstream: D, routes: R) -> Result<(), BoxError>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: StreamRoutes,
{
    // A draining server side sends GOAWAY: streams in flight finish, new ones go elsewhere.
    let base = routes.base();
    let drain = (base.labels.reporter == "destination").then(|| base.dataplane.drain.clone());
    let routes = Arc::new(routes);
    let service = service_fn(move |request| forward(request, routes.clone(), "HTTP/2"));
    let connection = server2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(downstream), service);
    tokio::pin!(connection);
    let Some(drain) = drain else {
        connection.await?;
        return Ok(());
    };
    tokio::select! {
        served = connection.as_mut() => served?,
        () = drain.started() => {
            connection.as_mut().graceful_shutdown();
            connection.await?;
        }
    }
    Ok(())
}

/// An exchange for the HTTP tests: a data plane with no config, reporting as `reporter`.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::access_log::AccessLog;
    use crate::balancer::Balancer;
    use crate::bootstrap::Workload;
    use crate::peer_metadata::OwnMetadata;
    use crate::telemetry::Telemetry;
    use std::time::Duration;

    pub(crate) fn exchange(
        access_log: Option<AccessLog>,
        reporter: &'static str,
        metadata_exchange: bool,
    ) -> Arc<Exchange> {
        let workload = Workload::sleep_for_tests();
        let dataplane = Arc::new(DataPlane {
            workload: Arc::new(workload.clone()),
            config: tokio::sync::watch::channel(Default::default()).1,
            tls: tokio::sync::watch::channel(None).1,
            balancer: Balancer::default(),
            telemetry: Arc::new(Telemetry::default()),
            mark: 0,
            own_metadata: OwnMetadata::of(&workload),
            access_log,
            protocol_detection_timeout: Duration::from_millis(100),
            upstream_pool: Default::default(),
            drain: Default::default(),
        });
        let mut labels = TrafficLabels::unknown(reporter);
        if metadata_exchange {
            labels.connection_security_policy = "mutual_tls";
        }
        Arc::new(Exchange {
            dataplane,
            labels,
            downstream_local: "10.96.0.10:5000".parse().unwrap(),
            downstream_remote: "10.0.0.1:40000".parse().unwrap(),
            upstream_host: Some("10.0.1.5:5000".parse().unwrap()),
            upstream_local: None,
            upstream_cluster: Some("outbound|5000||helloworld.sample.svc.cluster.local".into()),
            requested_server_name: None,
            route_name: Some("default"),
            forwarded_client_cert: None,
            peer: Default::default(),
            series: Default::default(),
        })
    }

    /// `istio_requests_total` for `code` and `flags`, summed over the other labels.
    pub(crate) fn requests_counted(exchange: &Exchange, code: u16, flags: &str) -> u64 {
        let metrics = exchange.dataplane.telemetry.encode();
        metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
            .filter(|l| l.contains(&format!("response_flags=\"{flags}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{exchange, requests_counted};
    use super::*;
    use crate::access_log::{AccessLog, Encoding};
    use std::time::Duration;

    /// A service without endpoints.
    struct NoEndpoints(Arc<Exchange>);

    impl StreamRoutes for NoEndpoints {
        fn base(&self) -> &Arc<Exchange> {
            &self.0
        }

        async fn route(&self) -> Result<Routed, NoUpstream> {
            Err(NoUpstream {
                response_flags: "UH",
                reason:
                    "cluster `outbound|7070||greeter.sample.svc.cluster.local` has no endpoints"
                        .into(),
            })
        }
    }

    #[tokio::test]
    async fn an_http2_request_without_an_upstream_gets_503_and_the_connection_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let format = r#"{"code":"%RESPONSE_CODE%","flags":"%RESPONSE_FLAGS%","protocol":"%PROTOCOL%","reason":"%UPSTREAM_TRANSPORT_FAILURE_REASON%"}"#;
        let log = AccessLog::open(path.to_str().unwrap(), Some(format), Encoding::Text).unwrap();
        let exchange = exchange(Some(log), "source", false);
        let (client, downstream) = tokio::io::duplex(64 * 1024);
        let proxied = tokio::spawn(proxy_http2(downstream, NoEndpoints(exchange.clone())));
        let (mut sender, connection) =
            client2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(connection);
        for _ in 0..2 {
            let request = Request::builder()
                .uri("http://greeter.sample:7070/hello.Greeter/Say")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert!(body.ends_with(b"has no endpoints"), "{body:?}");
        }
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), proxied)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(requests_counted(&exchange, 503, "UH"), 2);
        let lines = std::fs::read_to_string(&path).unwrap();
        for line in lines.lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["code"], "503");
            assert_eq!(json["flags"], "UH");
            assert_eq!(json["protocol"], "HTTP/2");
            assert!(
                json["reason"]
                    .as_str()
                    .unwrap()
                    .ends_with("has no endpoints")
            );
        }
        assert_eq!(lines.lines().count(), 2, "{lines}");
    }
}
