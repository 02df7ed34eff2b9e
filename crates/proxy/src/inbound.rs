//! 15006: connections to the workload, captured by iptables. Mesh mTLS is terminated (the
//! client's certificate must chain to a mesh root); plaintext passes only where the port is
//! PERMISSIVE. The application is reached at the address the client asked for.

use crate::access_log::Entry;
use crate::config::ClusterKind;
use crate::dataplane::{DataPlane, HANDSHAKE_TIMEOUT, peer_of};
use crate::identity::peer_identity;
use crate::passthrough::{connect_marked, original_destination};
use crate::relay::relay_tcp;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};

/// A TLS record starts with content type 22 (handshake).
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn serve(listener: TcpListener, dataplane: Arc<DataPlane>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an inbound connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let dataplane = dataplane.clone();
        tokio::spawn(async move { handle(stream, &dataplane).await });
    }
}

/// Whether the client opens with a TLS handshake; `None` when it sent nothing in `wait`.
async fn starts_with_tls(stream: &TcpStream, wait: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE),
        _ => None,
    }
}

async fn handle(downstream: TcpStream, dataplane: &DataPlane) {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let peer = peer_of(&downstream);
    let destination = match original_destination(&downstream) {
        Ok(destination) => SocketAddr::V4(destination),
        Err(error) => {
            tracing::debug!(%peer, %error, "inbound connection without an original destination");
            dataplane.telemetry.refuse("inbound", "not_redirected");
            return;
        }
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
        (true, true) => starts_with_tls(&downstream, dataplane.permissive_sniff_timeout)
            .await
            .unwrap_or(false),
        (false, _) => false,
    };
    // The workload's cluster names its address; passthrough goes where the client was going.
    let target = config
        .cluster(&port.cluster)
        .filter(|cluster| cluster.kind == ClusterKind::Static)
        .and_then(|cluster| cluster.endpoints.first())
        .map_or(destination, |endpoint| endpoint.address);
    let mut labels = dataplane.labels("destination");
    let response_flags;
    let bytes;
    let upstream_local;
    let mut requested_server_name = None;
    if tls {
        let Some(mesh) = dataplane.current_tls() else {
            dataplane.telemetry.refuse("inbound", "no_certificate_yet");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(mesh.server.clone());
        let accepted =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(downstream)).await {
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
        (response_flags, bytes, upstream_local) =
            to_application(accepted, target, dataplane, &labels).await;
    } else {
        (response_flags, bytes, upstream_local) =
            to_application(downstream, target, dataplane, &labels).await;
    }
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

/// Connects to the application and relays; the response flag, byte counts and local address.
async fn to_application<S>(
    downstream: S,
    target: SocketAddr,
    dataplane: &DataPlane,
    labels: &crate::telemetry::TrafficLabels,
) -> (&'static str, (u64, u64), Option<SocketAddr>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let upstream = match connect_marked(target, dataplane.mark).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%target, %error, "the application refused the connection");
            return ("UF", (0, 0), None);
        }
    };
    let _ = upstream.set_nodelay(true);
    let local = upstream.local_addr().ok();
    match relay_tcp(downstream, upstream, &dataplane.telemetry, labels).await {
        Ok(bytes) => ("-", bytes, local),
        Err(error) => {
            tracing::debug!(%target, %error, "inbound connection ended");
            ("-", (0, 0), local)
        }
    }
}
