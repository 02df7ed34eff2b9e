//! Istio's helloworld sample (`examples-helloworld-vN`): `GET /hello` answers
//! `Hello version: vN, instance: <pod name>`, `GET /health` that it is healthy.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{App, hostname, text};

pub struct HelloWorld {
    greeting: String,
}

impl HelloWorld {
    pub fn new(version: &str) -> Self {
        Self {
            greeting: format!("Hello version: {version}, instance: {}\n", hostname()),
        }
    }
}

impl App for HelloWorld {
    async fn answer(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/hello" => text(
                StatusCode::OK,
                self.greeting.clone(),
                "text/html; charset=utf-8",
            ),
            "/health" => text(
                StatusCode::OK,
                "Helloworld is healthy",
                "text/html; charset=utf-8",
            ),
            _ => text(StatusCode::NOT_FOUND, "Not Found\n", "text/plain"),
        }
    }
}
