//! The three listeners: gRPC in plaintext (15010), gRPC over TLS with the CA service (15012), and
//! HTTP for debug and metrics (15014). Each stops when `stopped` turns true.

use crate::ca_service::CaService;
use crate::debug::DebugState;
use anyhow::Context;
use causeway_xds::server::XdsServer;
use futures::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Server;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(30);

async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for {what}; pick another address with its flag or stop what holds it"))
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// HTTP/2 flow-control windows. The protocol's 64 KiB default stalls a connection whose streams
/// ACK a thousand EDS names at a time (Envoy repeats every name in every SotW request); istiod
/// raises them too.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Largest HTTP/2 frame a client may send. With the protocol's 16 KiB a 52 KB SotW ACK arrives
/// in four frames, each parsed on its own and then copied back together; in one frame it is read
/// in place.
const MAX_FRAME: u32 = 1 << 20;

fn grpc_server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
}

pub async fn grpc_plaintext(
    tasks: &mut JoinSet<()>,
    address: SocketAddr,
    xds: XdsServer,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(address, "plaintext xDS").await?;
    let bound = listener.local_addr()?;
    let gate = xds.clone();
    let incoming = TcpListenerStream::new(listener).map(move |accepted| {
        accepted.map(|stream: TcpStream| {
            let _ = stream.set_nodelay(true);
            gate.wrap_connection(stream)
        })
    });
    tasks.spawn(async move {
        let served = grpc_server()
            .add_service(xds.service())
            .serve_with_incoming_shutdown(incoming, until_stopped(stopped))
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "plaintext xDS server stopped");
        }
    });
    Ok(bound)
}

pub async fn grpc_tls(
    tasks: &mut JoinSet<()>,
    address: SocketAddr,
    xds: XdsServer,
    ca: CaService,
    tls: rustls::ServerConfig,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(address, "xDS and the CA over TLS").await?;
    let bound = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (handshaken, incoming) = mpsc::channel(64);
    let mut accept_stop = stopped.clone();
    let gated = xds.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = accept_stop.wait_for(|stop| *stop) => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a 15012 connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handshaken = handshaken.clone();
            let gate = gated.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = handshaken
                            .send(Ok::<_, std::io::Error>(gate.wrap_connection(tls)))
                            .await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake on 15012 failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake on 15012 timed out"),
                }
            });
        }
    });
    tasks.spawn(async move {
        let served = grpc_server()
            .add_service(xds.service())
            .add_service(ca.server())
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), until_stopped(stopped))
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "TLS xDS server stopped");
        }
    });
    Ok(bound)
}

pub async fn monitoring(
    tasks: &mut JoinSet<()>,
    address: SocketAddr,
    state: DebugState,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(address, "debug and metrics").await?;
    let bound = listener.local_addr()?;
    let mut stop = stopped;
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a monitoring connection failed");
                        continue;
                    }
                },
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let state = state.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let response = state.handle(&request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        connections.abort_all();
    });
    Ok(bound)
}
