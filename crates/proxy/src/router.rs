//! The east-west gateway (`sni-dnat`): on each router listener port (15443, and 15012/15017
//! when `expose-istiod` asks), the ClientHello is read without terminating TLS, its SNI picks
//! the cluster, and the raw bytes are spliced to a local endpoint of it. An unknown SNI, a
//! ClientHello that does not parse, or one that does not arrive in time closes the connection
//! and is counted.

use crate::access_log::Entry;
use crate::dataplane::{DataPlane, OnDrain, accept_each, peer_of};
use crate::relay::relay_tcp;
use rustls::server::Acceptor;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The whole ClientHello must arrive within this (slow-loris clients are cut off).
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A ClientHello larger than this is not one (post-quantum key shares stay well under it).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

#[derive(Debug, PartialEq)]
pub enum Hello {
    /// The ClientHello, whole; and its SNI, if it has one.
    Complete {
        bytes: Vec<u8>,
        sni: Option<String>,
    },
    Malformed(String),
    TimedOut,
    Closed,
}

/// Reads bytes until they hold a complete ClientHello (rustls parses it).
pub async fn read_client_hello(stream: &mut TcpStream, timeout: Duration) -> Hello {
    let mut bytes = Vec::with_capacity(1024);
    let mut acceptor = Acceptor::default();
    let reading = async {
        let mut chunk = [0u8; 4096];
        loop {
            let read = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Hello::Closed,
                Ok(read) => read,
            };
            bytes.extend_from_slice(&chunk[..read]);
            if bytes.len() > MAX_CLIENT_HELLO {
                return Hello::Malformed(format!(
                    "no ClientHello in the first {MAX_CLIENT_HELLO} bytes"
                ));
            }
            let mut fresh = &chunk[..read];
            while !fresh.is_empty() {
                if let Err(error) = acceptor.read_tls(&mut fresh) {
                    return Hello::Malformed(error.to_string());
                }
            }
            match acceptor.accept() {
                Ok(None) => continue,
                Ok(Some(accepted)) => {
                    let sni = accepted
                        .client_hello()
                        .server_name()
                        .map(str::to_ascii_lowercase);
                    return Hello::Complete {
                        bytes: std::mem::take(&mut bytes),
                        sni,
                    };
                }
                Err((error, _alert)) => return Hello::Malformed(error.to_string()),
            }
        }
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(hello) => hello,
        Err(_) => Hello::TimedOut,
    }
}

/// Keeps one listener per router port the configuration names, on `bind`.
pub async fn manage_listeners(dataplane: Arc<DataPlane>, bind: IpAddr) {
    let mut config = dataplane.config.clone();
    let mut running: HashMap<u16, JoinHandle<()>> = HashMap::new();
    loop {
        let ports: BTreeSet<u16> = config
            .borrow_and_update()
            .sni_routes
            .keys()
            .copied()
            .collect();
        running.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                tracing::info!(port, "router port no longer configured; closed");
                task.abort();
            }
            keep
        });
        for port in ports {
            if running.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(bind, port)).await {
                Ok(listener) => {
                    tracing::info!(port, "router listening");
                    running.insert(port, tokio::spawn(serve(listener, port, dataplane.clone())));
                }
                Err(error) => {
                    tracing::warn!(port, %error, "cannot listen on a router port; retried at the next configuration change");
                }
            }
        }
        if config.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(listener: TcpListener, port: u16, dataplane: Arc<DataPlane>) {
    accept_each(
        listener,
        "router",
        OnDrain::StopAccepting,
        dataplane,
        move |stream, dataplane| async move {
            handle(stream, port, &dataplane).await;
        },
    )
    .await;
}

async fn handle(mut downstream: TcpStream, port: u16, dataplane: &DataPlane) {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let peer = peer_of(&downstream);
    let local = downstream.local_addr().ok();
    let (hello, sni) = match read_client_hello(&mut downstream, CLIENT_HELLO_TIMEOUT).await {
        Hello::Complete { bytes, sni } => (bytes, sni),
        Hello::Malformed(reason) => {
            tracing::info!(%peer, port, %reason, "not a TLS ClientHello; closed");
            dataplane
                .telemetry
                .refuse("router", "malformed_client_hello");
            return;
        }
        Hello::TimedOut => {
            tracing::info!(%peer, port, "no complete ClientHello in time; closed");
            dataplane.telemetry.refuse("router", "client_hello_timeout");
            return;
        }
        Hello::Closed => {
            dataplane
                .telemetry
                .refuse("router", "closed_before_client_hello");
            return;
        }
    };
    let config = dataplane.current_config();
    let Some(cluster_name) = config
        .sni_routes
        .get(&port)
        .and_then(|routes| routes.route(sni.as_deref()))
    else {
        tracing::info!(%peer, port, sni = sni.as_deref().unwrap_or("(none)"), "SNI names no exposed service; closed");
        dataplane.telemetry.refuse("router", "unknown_sni");
        return;
    };
    let mut labels = dataplane.labels("destination");
    let mut response_flags = "-";
    let mut failure = None;
    let mut upstream_host = None;
    let mut upstream_local = None;
    let mut bytes = (0, 0);
    match config.cluster(cluster_name) {
        None => {
            response_flags = "NC";
            failure = Some(format!("cluster `{cluster_name}` is not configured"));
        }
        Some(cluster) => {
            if let Some(service) = &cluster.service {
                labels.set_destination_service(service);
            } else if let Some((_, fqdn)) =
                causeway_xds::resources::parse_service_name(cluster_name)
            {
                labels.set_destination_service(fqdn);
            }
            match dataplane.connect_upstream(cluster).await {
                Err(error) => {
                    response_flags = error.response_flag();
                    failure = Some(error.to_string());
                }
                Ok((pick, mut upstream)) => {
                    upstream_host = Some(pick.endpoint.address);
                    upstream_local = upstream.local_addr().ok();
                    dataplane
                        .telemetry
                        .tcp_received
                        .get_or_create(&labels)
                        .inc_by(hello.len() as u64);
                    if upstream.write_all(&hello).await.is_ok() {
                        match relay_tcp(downstream, upstream, &dataplane.telemetry, &labels).await {
                            Ok((received, sent)) => {
                                bytes = (received + hello.len() as u64, sent);
                            }
                            Err(error) => {
                                tracing::debug!(%peer, %error, "spliced connection ended")
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(failure) = &failure {
        tracing::info!(%peer, port, sni = sni.as_deref().unwrap_or("-"), %failure, "router could not reach an endpoint");
    }
    if let Some(log) = &dataplane.access_log {
        log.write(&Entry {
            start_time: Some(start_time),
            duration: started.elapsed(),
            response_flags,
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            downstream_local: local,
            downstream_remote: Some(peer),
            upstream_host,
            upstream_local,
            upstream_cluster: Some(cluster_name),
            upstream_failure: failure.as_deref(),
            requested_server_name: sni.as_deref(),
            ..Entry::default()
        });
    }
}
