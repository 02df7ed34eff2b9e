//! Idle HTTP/1.x connections to the endpoints of services, shared by every client connection of
//! the proxy, as Envoy's per-cluster connection pools are. A client that opens a connection per
//! request (curl, scripts, many HTTP libraries) reuses the connection an earlier request left,
//! and pays a loopback connect instead of a TCP and TLS handshake with the other sidecar.

use crate::telemetry::TrafficLabels;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// How long an unused connection is kept. Shorter than Envoy's hour: a sidecar serves one
/// workload, and a minute keeps the connections of a busy client while freeing an idle one's.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed when they come back.
pub const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// A connection to an endpoint, in the clear or with the mesh's mutual TLS.
pub type EndpointStream = Either<tokio_rustls::client::TlsStream<TcpStream>, TcpStream>;

/// Which connections may serve a request: the same cluster (so the same TLS settings and
/// identity check), the same endpoint, the same choice of mTLS.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub cluster: Arc<str>,
    pub endpoint: SocketAddr,
    pub mtls: bool,
}

/// What a connection reaches, as its handshake established it: the same for every request on it.
#[derive(Debug)]
pub struct Destination {
    /// The connection's number, unique in the process: a client sees when it got the one it had.
    pub id: u64,
    pub key: PoolKey,
    pub labels: TrafficLabels,
    pub upstream_local: Option<SocketAddr>,
}

struct Idle {
    stream: EndpointStream,
    destination: Arc<Destination>,
    since: Instant,
}

#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    next_id: AtomicU64,
}

impl UpstreamPool {
    /// A number for a new connection's [`Destination`].
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The most recently used idle connection for `key` that is still good to use, if any.
    pub fn take(&self, key: &PoolKey) -> Option<(EndpointStream, Arc<Destination>)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.get_mut(key)?;
        let mut found = None;
        while let Some(connection) = connections.pop() {
            if connection.since.elapsed() < IDLE_TIMEOUT && still_open(&connection.stream) {
                found = Some((connection.stream, connection.destination));
                break;
            }
        }
        if connections.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// A connection whose last exchange ended cleanly, for the next request to its endpoint.
    pub fn put(&self, stream: EndpointStream, destination: Arc<Destination>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.entry(destination.key.clone()).or_default();
        if connections.len() < MAX_IDLE_PER_ENDPOINT {
            connections.push(Idle {
                stream,
                destination,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections that were idle too long or that the server closed.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, connections| {
            connections.retain(|connection| {
                connection.since.elapsed() < IDLE_TIMEOUT && still_open(&connection.stream)
            });
            !connections.is_empty()
        });
    }

    /// Idle connections now, for `/stats` and tests.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }

    /// Sweeps every `IDLE_TIMEOUT / 4` for as long as the proxy runs.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }
}

/// Whether a kept connection can take another request: not closed by the server meanwhile,
/// nothing unasked for waiting on it.
pub fn still_open(stream: &EndpointStream) -> bool {
    let tcp = match stream {
        Either::Left(tls) => tls.get_ref().0,
        Either::Right(tcp) => tcp,
    };
    tcp_still_open(tcp)
}

/// The same for a plain TCP connection.
pub fn tcp_still_open(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buffer = tokio::io::ReadBuf::new(&mut byte);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    tcp.poll_peek(&mut context, &mut buffer).is_pending()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn connected_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let address = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    fn destination(pool: &UpstreamPool, key: &PoolKey) -> Arc<Destination> {
        Arc::new(Destination {
            id: pool.next_id(),
            key: key.clone(),
            labels: TrafficLabels::unknown("source"),
            upstream_local: None,
        })
    }

    #[tokio::test]
    async fn connections_are_shared_by_key_newest_first_and_closed_ones_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = UpstreamPool::default();
        let key = PoolKey {
            cluster: "outbound|5000||helloworld.sample.svc.cluster.local".into(),
            endpoint: listener.local_addr().unwrap(),
            mtls: false,
        };
        let other = PoolKey {
            mtls: true,
            ..key.clone()
        };
        let (first, _first_server) = connected_pair(&listener).await;
        let (second, mut second_server) = connected_pair(&listener).await;
        let (third, third_server) = connected_pair(&listener).await;
        let first_destination = destination(&pool, &key);
        pool.put(Either::Right(first), first_destination.clone());
        pool.put(Either::Right(second), destination(&pool, &key));
        pool.put(Either::Right(third), destination(&pool, &key));
        assert_eq!(pool.idle_count(), 3);
        assert!(pool.take(&other).is_none(), "mTLS and plaintext never mix");

        // The newest was closed by its server, the next sent bytes nobody asked for.
        drop(third_server);
        second_server.write_all(b"HTTP/1.1 408").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, got) = pool.take(&key).expect("the oldest is still good");
        assert_eq!(got.id, first_destination.id);
        assert!(pool.take(&key).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_sweep_closes_what_the_server_closed_and_the_pool_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = UpstreamPool::default();
        let key = PoolKey {
            cluster: "outbound|80||a".into(),
            endpoint: listener.local_addr().unwrap(),
            mtls: false,
        };
        let mut servers = Vec::new();
        for _ in 0..MAX_IDLE_PER_ENDPOINT + 3 {
            let (client, server) = connected_pair(&listener).await;
            servers.push(server);
            pool.put(Either::Right(client), destination(&pool, &key));
        }
        assert_eq!(pool.idle_count(), MAX_IDLE_PER_ENDPOINT);
        servers.truncate(10);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep();
        assert_eq!(pool.idle_count(), 10);
    }
}
