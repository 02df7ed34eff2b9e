//! The apps of Istio's samples, written for the lab (which pulls no images): helloworld and
//! httpbin answer as their images do, and log each request to stdout, so that `kubectl logs`
//! shows them. Each runs as its container's process (`causeway lab app ...`).

mod helloworld;
mod httpbin;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

pub use helloworld::HelloWorld;
pub use httpbin::HttpBin;

/// An app answers requests; `peer` is who asked.
pub trait App: Send + Sync + 'static {
    fn answer(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Listens on every address of the container, port `port`.
pub async fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("0.0.0.0", port)).await
}

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down as gunicorn does on
/// SIGTERM: no new connections, idle keep-alive connections closed, requests in flight
/// answered, and then it returns. (A pod's application that died on SIGTERM would fail the
/// requests its sidecar is still draining; real servers do not.)
pub async fn serve<A: App>(
    app: A,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = std::sync::Arc::new(app);
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("accept failed: {error}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
        let app = app.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let app = app.clone();
                async move {
                    let method = request.method().clone();
                    let path = request.uri().to_string();
                    let version = request.version();
                    let agent = request
                        .headers()
                        .get(http::header::USER_AGENT)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let response = app.answer(request, peer).await;
                    access_log(peer, &method, &path, version, &response, &agent);
                    Ok::<_, Infallible>(response)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    let open = connections.len();
    println!("shutting down: no new connections; finishing {open} open");
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    println!("shut down");
    Ok(())
}

/// One line per request, in the combined log format gunicorn and httpbin's server write.
fn access_log(
    peer: SocketAddr,
    method: &http::Method,
    path: &str,
    version: http::Version,
    response: &Response<Full<Bytes>>,
    agent: &str,
) {
    use http_body::Body;
    let now = time::OffsetDateTime::now_utc();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][usize::from(u8::from(now.month())) - 1];
    let size = response.body().size_hint().exact().unwrap_or(0);
    println!(
        "{} - - [{:02}/{month}/{}:{:02}:{:02}:{:02} +0000] \"{method} {path} {version:?}\" {} {size} \"-\" \"{agent}\"",
        peer.ip(),
        now.day(),
        now.year(),
        now.hour(),
        now.minute(),
        now.second(),
        response.status().as_u16(),
    );
}

fn text(
    status: http::StatusCode,
    body: impl Into<Bytes>,
    content_type: &str,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

/// The container's hostname: its pod's name.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    async fn send(stream: &mut tokio::net::TcpStream, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: httpbin\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn on_shutdown_requests_in_flight_are_answered_and_nothing_new_is_taken() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(HttpBin, listener, async {
            let _ = stopped.await;
        }));
        let mut busy = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
        send(&mut idle, "/status/200").await;
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        send(&mut busy, "/delay/0.5").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();

        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, busy.read_to_end(&mut answer))
            .await
            .expect("the request in flight is answered, then the connection closes")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, idle.read_to_end(&mut rest))
            .await
            .expect("an idle keep-alive connection is closed")
            .unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server returns once its connections are done")
            .unwrap()
            .unwrap();
        let refused = tokio::net::TcpStream::connect(address).await;
        assert!(refused.is_err(), "no new connection after shutdown");
    }
}
