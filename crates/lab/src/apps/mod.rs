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

/// Serves `app` on `listener` until the process is stopped.
pub async fn serve<A: App>(app: A, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = std::sync::Arc::new(app);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
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
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await;
        });
    }
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
