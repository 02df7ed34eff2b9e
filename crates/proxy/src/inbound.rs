//! 15006: connections to the workload, captured by iptables. Mesh mTLS is terminated (the
//! client's certificate must chain to a mesh root); plaintext passes only where the port is
//! PERMISSIVE. The application is reached at the address the client asked for.

use crate::access_log::Entry;
use crate::config::ClusterKind;
use crate::dataplane::{DataPlane, HANDSHAKE_TIMEOUT, OnDrain, accept_each, peer_of};
use crate::http_proxy::{self, Exchange};
use crate::http1::{self, NoUpstream, Upstreams};
use crate::identity::MeshTls;
use crate::identity::{forwarded_client_cert, peer_identity};
use crate::passthrough::connect_marked_from;
use crate::relay::relay_tcp;
use crate::sniff::{Detected, detect};
use crate::tcp_peer_exchange;
use crate::telemetry::TrafficLabels;
use crate::upstream_pool::tcp_still_open;
use rustls_pki_types::CertificateDer;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};

/// A TLS record starts with content type 22 (handshake).
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn serve(listener: TcpListener, dataplane: Arc<DataPlane>) {
    accept_each(
        listener,
        "inbound",
        OnDrain::StopAccepting,
        dataplane,
        handle,
    )
    .await;
}

/// Whether the client opens with a TLS handshake; `None` when it sent nothing in `wait`.
async fn starts_with_tls(stream: &TcpStream, wait: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE),
        _ => None,
    }
}

async fn handle(downstream: TcpStream, dataplane: Arc<DataPlane>) {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let peer = peer_of(&downstream);
    let Some(destination) = dataplane.captured_destination(&downstream, "inbound") else {
        return;
    };
    let config = dataplane.current_config();
    let Some(port) = config.inbound.for_port(destination.port()).cloned() else {
        tracing::info!(%peer, %destination, "inbound connection to a port without a filter chain; closed");
        dataplane.telemetry.refuse("inbound", "no_filter_chain");
        return;
    };
    let tls = match (port.mtls, port.plaintext) {
        (true, false) => match starts_with_tls(&downstream, HANDSHAKE_TIMEOUT).await {
            Some(true) => true,
            Some(false) => {
                tracing::info!(%peer, %destination, "plaintext to a STRICT mTLS port; closed");
                dataplane.telemetry.refuse("inbound", "plaintext_on_strict");
                return;
            }
            None => {
                dataplane.telemetry.refuse("inbound", "no_client_hello");
                return;
            }
        },
        (true, true) => starts_with_tls(&downstream, dataplane.protocol_detection_timeout)
            .await
            .unwrap_or(false),
        (false, _) => false,
    };
    // The workload's cluster names its address; passthrough goes where the client was going.
    let workload_cluster = config.cluster(&port.cluster);
    let target = workload_cluster
        .filter(|cluster| cluster.kind == ClusterKind::Static)
        .and_then(|cluster| cluster.endpoints.first())
        .map_or(destination, |endpoint| endpoint.address);
    let mut labels = dataplane.labels("destination");
    if let Some(service) = workload_cluster.and_then(|cluster| cluster.service.as_deref()) {
        labels.set_destination_service(service);
    }
    let mut requested_server_name = None;
    let carried;
    if tls {
        let Some(mesh) = dataplane.current_tls() else {
            dataplane.telemetry.refuse("inbound", "no_certificate_yet");
            return;
        };
        let accepted =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_tls(downstream, &mesh)).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %destination, %error, "inbound mTLS handshake refused");
                    dataplane.telemetry.refuse("inbound", "handshake_failed");
                    return;
                }
                Err(_) => {
                    dataplane.telemetry.refuse("inbound", "handshake_timeout");
                    return;
                }
            };
        let session = accepted.get_ref().1;
        requested_server_name = session.server_name().map(str::to_owned);
        if let Some(identity) = peer_identity(session.peer_certificates()) {
            labels.source_principal = identity.to_string();
            labels.source_workload_namespace = identity.namespace().to_owned();
        }
        labels.connection_security_policy = "mutual_tls";
        let peer_side = Peer {
            address: peer,
            destination,
            requested_server_name: requested_server_name.clone(),
            cluster: port.cluster.clone(),
            client_certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.clone().into_owned()),
        };
        let agreed = session.alpn_protocol() == Some(tcp_peer_exchange::ALPN);
        let preface = &dataplane.own_metadata.tcp_preface;
        let accepted = match tcp_peer_exchange::after_handshake(
            accepted,
            agreed,
            preface,
            &mut labels,
        )
        .await
        {
            Ok(stream) => stream,
            Err(error) => {
                tracing::info!(%peer, %destination, %error, "inbound connection closed during the metadata exchange");
                return;
            }
        };
        carried = to_application(accepted, target, &dataplane, labels, peer_side).await;
    } else {
        let peer_side = Peer {
            address: peer,
            destination,
            requested_server_name: None,
            cluster: port.cluster.clone(),
            client_certificate: None,
        };
        carried = to_application(downstream, target, &dataplane, labels, peer_side).await;
    }
    let Carried::Connection {
        response_flags,
        bytes,
        upstream_local,
    } = carried
    else {
        return;
    };
    if let Some(log) = &dataplane.access_log {
        log.write(&Entry {
            start_time: Some(start_time),
            duration: started.elapsed(),
            response_flags,
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            downstream_local: Some(destination),
            downstream_remote: Some(peer),
            upstream_host: Some(target),
            upstream_local,
            upstream_cluster: Some(&port.cluster),
            requested_server_name: requested_server_name.as_deref(),
            ..Entry::default()
        });
    }
}

/// The client side of an inbound connection, for HTTP request logs.
struct Peer {
    address: SocketAddr,
    destination: SocketAddr,
    requested_server_name: Option<String>,
    cluster: Arc<str>,
    /// The client's mesh certificate, for the `x-forwarded-client-cert` of its HTTP requests
    /// (turned into one only when the connection turns out to be HTTP).
    client_certificate: Option<CertificateDer<'static>>,
}

enum Carried {
    /// Relayed as TCP: the connection's log line.
    Connection {
        response_flags: &'static str,
        bytes: (u64, u64),
        upstream_local: Option<SocketAddr>,
    },
    /// Proxied as HTTP: each request was logged.
    Requests,
}

/// The mTLS handshake, with the configuration that negotiates `istio-peer-exchange` when the
/// client offers it (and one without ALPN otherwise, so no client is refused for its offer).
async fn accept_tls(
    downstream: TcpStream,
    mesh: &MeshTls,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), downstream)
            .await?;
    let offers_exchange = start
        .client_hello()
        .alpn()
        .is_some_and(|mut offered| offered.any(|protocol| protocol == tcp_peer_exchange::ALPN));
    let config = if offers_exchange {
        mesh.server_peer_exchange.clone()
    } else {
        mesh.server.clone()
    };
    start.into_stream(config).await
}

/// Where the proxy connects to the application from, as Istio's inbound clusters do
/// (`upstream_bind_config`): the application sees mesh traffic arrive from 127.0.0.6. IPv6
/// (Istio's `::6`, an address it adds to `lo`) is not captured yet.
fn inbound_source(target: SocketAddr) -> Option<IpAddr> {
    target
        .is_ipv4()
        .then_some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)))
}

/// Connects to the application and relays, request by request when the client speaks HTTP.
async fn to_application<S>(
    downstream: S,
    target: SocketAddr,
    dataplane: &Arc<DataPlane>,
    labels: TrafficLabels,
    peer: Peer,
) -> Carried
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (detected, downstream) = detect(downstream, dataplane.protocol_detection_timeout).await;
    let upstream = match connect_marked_from(target, inbound_source(target), dataplane.mark).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%target, %error, "the application refused the connection");
            return Carried::Connection {
                response_flags: "UF",
                bytes: (0, 0),
                upstream_local: None,
            };
        }
    };
    let _ = upstream.set_nodelay(true);
    let local = upstream.local_addr().ok();
    if detected != Detected::Tcp {
        let forwarded_client_cert = peer
            .client_certificate
            .map(|leaf| forwarded_client_cert(&labels.destination_principal, &leaf));
        let exchange = Arc::new(Exchange {
            dataplane: dataplane.clone(),
            labels,
            downstream_local: peer.destination,
            downstream_remote: peer.address,
            upstream_host: Some(target),
            upstream_local: local,
            upstream_cluster: Some(peer.cluster.to_string()),
            requested_server_name: peer.requested_server_name,
            route_name: Some("default"),
            forwarded_client_cert,
            peer: Default::default(),
            series: Default::default(),
        });
        let ended = if detected == Detected::Http2 {
            http_proxy::relay_http2(downstream, upstream, exchange).await
        } else {
            let application = Application {
                stream: Some(upstream),
                exchange,
                target,
                mark: dataplane.mark,
            };
            http1::relay_to(downstream, application)
                .await
                .map_err(Into::into)
        };
        if let Err(error) = ended {
            tracing::debug!(%target, %error, "inbound HTTP connection ended");
        }
        return Carried::Requests;
    }
    let bytes = match relay_tcp(downstream, upstream, &dataplane.telemetry, &labels).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::debug!(%target, %error, "inbound connection ended");
            (0, 0)
        }
    };
    Carried::Connection {
        response_flags: "-",
        bytes,
        upstream_local: local,
    }
}

/// The application behind one inbound HTTP/1.x connection: one connection to it at a time,
/// opened again when the application closed the last one between two requests (its keep-alive
/// ran out), as Envoy's inbound cluster does. A client's long-lived connection (the pooled ones of
/// other sidecars above all) thus outlives the application's keep-alive timeout.
struct Application {
    stream: Option<TcpStream>,
    exchange: Arc<Exchange>,
    target: SocketAddr,
    mark: u32,
}

impl Upstreams for Application {
    type Stream = TcpStream;

    fn base(&self) -> &Arc<Exchange> {
        &self.exchange
    }

    async fn checkout(&mut self) -> Result<(TcpStream, Arc<Exchange>), NoUpstream> {
        if let Some(stream) = self.stream.take()
            && tcp_still_open(&stream)
        {
            return Ok((stream, self.exchange.clone()));
        }
        let stream = connect_marked_from(self.target, inbound_source(self.target), self.mark)
            .await
            .map_err(|error| NoUpstream {
                response_flags: "UF",
                reason: format!("cannot reach the application at {}: {error}", self.target),
            })?;
        let _ = stream.set_nodelay(true);
        self.exchange = Arc::new(self.exchange.with_upstream_local(stream.local_addr().ok()));
        Ok((stream, self.exchange.clone()))
    }

    fn checkin(&mut self, stream: TcpStream, _exchange: Arc<Exchange>) {
        self.stream = Some(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_proxy::test_support::{exchange, requests_counted};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An application that answers one request per connection and then closes it, although its
    /// response says the connection stays open: its keep-alive timeout ran out just after.
    async fn closing_application() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && connection.read(&mut byte).await.unwrap() == 1
                {
                    head.push(byte[0]);
                }
                let _ = connection
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        (address, accepted)
    }

    async fn get(client: &mut tokio::io::DuplexStream) -> String {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\nok") && !response.ends_with(b"reset reason: ") {
            let mut chunk = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
                .await
                .expect("a response within 5 s")
                .unwrap();
            if read == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..read]);
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn a_connection_the_application_closed_between_requests_is_opened_again() {
        let (address, accepted) = closing_application().await;
        let first = TcpStream::connect(address).await.unwrap();
        let application = Application {
            stream: Some(first),
            exchange: exchange(None, "destination", false),
            target: address,
            mark: 0,
        };
        let counted = application.exchange.clone();
        let (mut client, proxy_side) = tokio::io::duplex(4096);
        tokio::spawn(http1::relay_to(proxy_side, application));
        for attempt in 0..3 {
            let response = get(&mut client).await;
            assert!(
                response.starts_with("HTTP/1.1 200 OK"),
                "request {attempt}: {response}"
            );
            // Let the application's close arrive before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(requests_counted(&counted, 200, "-"), 3);
        assert_eq!(requests_counted(&counted, 503, "UC"), 0);
    }
}
