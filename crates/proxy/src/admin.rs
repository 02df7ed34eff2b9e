//! The proxy's HTTP ports: admin (15000: `/config_dump`, `/clusters`, `/certs`, `/stats`,
//! `/ready`), Prometheus (15090 and the merged 15020: `/stats/prometheus`), health (15021:
//! `/healthz/ready`). All read-only.

use crate::ads::AdsStatus;
use crate::dataplane::DataPlane;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Admin,
    Prometheus,
    Merged,
    Health,
}

#[derive(Clone)]
pub struct AdminState {
    pub dataplane: Arc<DataPlane>,
    pub ads: Arc<AdsStatus>,
    /// Routers need no certificate to be ready.
    pub needs_certificate: bool,
}

impl AdminState {
    /// Ready to take traffic: configured, with a certificate when it needs one, and not
    /// draining (a draining pod is taken out of its Services' endpoints as Kubernetes does).
    pub fn ready(&self) -> bool {
        !self.dataplane.drain.is_draining()
            && self.ads.warm.load(Ordering::Relaxed)
            && (!self.needs_certificate || self.dataplane.current_tls().is_some())
    }

    fn not_ready_reason(&self) -> String {
        if self.dataplane.drain.is_draining() {
            return "not ready: draining\n".into();
        }
        let mut missing = Vec::new();
        if !self.ads.warm.load(Ordering::Relaxed) {
            missing.push("configuration from discovery");
        }
        if self.needs_certificate && self.dataplane.current_tls().is_none() {
            missing.push("a workload certificate");
        }
        format!("not ready: waiting for {}\n", missing.join(" and "))
    }
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn json_reply(value: &serde_json::Value) -> Response<Body> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    reply(StatusCode::OK, "application/json", text)
}

fn ready_reply(state: &AdminState, live: &'static str) -> Response<Body> {
    if state.ready() {
        reply(StatusCode::OK, "text/plain", live)
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            state.not_ready_reason(),
        )
    }
}

fn config_dump(state: &AdminState) -> serde_json::Value {
    let resources = state
        .ads
        .resources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    json!({
        "node": state.dataplane.workload.node_id(),
        "xds": {
            "connected": state.ads.connected.load(Ordering::Relaxed),
            "warm": state.ads.warm.load(Ordering::Relaxed),
            "acks": state.ads.acks.load(Ordering::Relaxed),
            "nacks": state.ads.nacks.load(Ordering::Relaxed),
            "last_error": *state.ads.last_error.lock().unwrap_or_else(|e| e.into_inner()),
            "last_rejection": *state.ads.last_rejection.lock().unwrap_or_else(|e| e.into_inner()),
        },
        "resources": resources,
        "certificates": certificates(state),
    })
}

fn certificates(state: &AdminState) -> serde_json::Value {
    let Some(tls) = state.dataplane.current_tls() else {
        return json!({"certificates": []});
    };
    let credentials = &tls.credentials;
    let time = |t: std::time::SystemTime| time::OffsetDateTime::from(t).to_string();
    json!({"certificates": [{
        "identity": credentials.identity.to_string(),
        "serial_number": credentials.serial,
        "valid_from": time(credentials.not_before),
        "expiration_time": time(credentials.not_after),
        "renew_at": time(credentials.renew_at),
        "chain_length": credentials.chain.len(),
        "roots": credentials.roots.len(),
    }]})
}

/// Envoy's `/clusters` text: `<cluster>::<address>::<field>::<value>` lines.
fn clusters(state: &AdminState) -> String {
    let config = state.dataplane.current_config();
    let mut names: Vec<_> = config.clusters.keys().collect();
    names.sort();
    let mut text = String::new();
    for name in names {
        let cluster = &config.clusters[name];
        for endpoint in cluster.endpoints.iter() {
            let address = endpoint.address;
            for (field, value) in [
                ("weight", endpoint.weight.to_string()),
                ("health_flags", "healthy".to_owned()),
                ("mtls", endpoint.mtls.to_string()),
                ("via_gateway", endpoint.via_gateway.to_string()),
                ("network", endpoint.network.clone()),
                ("cluster", endpoint.cluster.clone()),
            ] {
                text.push_str(&format!("{name}::{address}::{field}::{value}\n"));
            }
        }
    }
    text
}

fn stats(state: &AdminState) -> String {
    let ads = &state.ads;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let config = state.dataplane.current_config();
    format!(
        "control_plane.connected_state: {}\ncontrol_plane.connects: {}\nxds.update_success: {}\nxds.update_rejected: {}\ncluster_manager.active_clusters: {}\nlistener_manager.outbound_routes: {}\nserver.live: {}\nserver.state: {}\nserver.total_connections: {}\n{}",
        u8::from(ads.connected.load(Ordering::Relaxed)),
        load(&ads.connects),
        load(&ads.acks),
        load(&ads.nacks),
        config.clusters.len(),
        config.outbound.len(),
        u8::from(state.ready()),
        // Envoy's values: 0 live, 1 draining.
        u8::from(state.dataplane.drain.is_draining()),
        state.dataplane.drain.active_connections(),
        state.dataplane.telemetry.encode(),
    )
}

fn route(state: &AdminState, port: Port, path: &str) -> Response<Body> {
    let path = path.split('?').next().unwrap_or(path);
    let prometheus = || {
        reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.dataplane.telemetry.encode(),
        )
    };
    match (port, path) {
        (Port::Admin, "/config_dump") => json_reply(&config_dump(state)),
        (Port::Admin, "/certs") => json_reply(&certificates(state)),
        (Port::Admin, "/clusters") => reply(StatusCode::OK, "text/plain", clusters(state)),
        (Port::Admin, "/stats") => reply(StatusCode::OK, "text/plain", stats(state)),
        (Port::Admin, "/ready") => ready_reply(state, "LIVE\n"),
        (Port::Admin | Port::Prometheus | Port::Merged, "/stats/prometheus") => prometheus(),
        (Port::Merged, "/metrics") => prometheus(),
        (Port::Health | Port::Merged | Port::Admin, "/healthz/ready") => ready_reply(state, ""),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such page on this port: {path}\n"),
        ),
    }
}

pub async fn serve(listener: TcpListener, port: Port, state: AdminState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = route(&state, port, request.uri().path());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
