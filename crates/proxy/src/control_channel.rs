//! gRPC channels to discovery and its CA whose TCP connections carry the proxy's socket mark, so
//! that the pod's capture rules let them out directly (Istio runs its agent as uid 1337 for the
//! same reason) instead of looping them through the proxy's own outbound listener.

use crate::passthrough::connect_marked;
use hyper_util::rt::TokioIo;
use std::io;
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(uri: Uri, mark: u32) -> io::Result<TokioIo<tokio::net::TcpStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("`{uri}` has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("`{host}` resolves to no address"),
    );
    for address in tokio::net::lookup_host((host.as_str(), port)).await? {
        match connect_marked(address, mark).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(TokioIo::new(stream));
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Connects `endpoint` (with its TLS settings) over marked sockets.
pub async fn marked_channel(
    endpoint: &Endpoint,
    mark: u32,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| connect(uri, mark)))
        .await
}
