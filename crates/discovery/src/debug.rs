//! The monitoring port (15014): readiness, Prometheus metrics and istiod's debug endpoints, in
//! JSON. `causeway remote-clusters` and `causeway proxy-status` read these.

use bytes::Bytes;
use causeway_model::{MeshSnapshot, SyncState};
use causeway_xds::resources::short_name;
use causeway_xds::server::XdsServer;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster_id: String,
}

/// Gauges read off the mesh at scrape time.
#[derive(Clone, Default)]
pub struct MeshGauges {
    remote_synced: Family<ClusterLabel, Gauge>,
    services: Gauge,
    endpoints: Gauge,
}

impl MeshGauges {
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "causeway_cluster_synced",
            "1 when the cluster's watches have listed it and are streaming, else 0",
            self.remote_synced.clone(),
        );
        registry.register("pilot_services", "Mesh services", self.services.clone());
        registry.register(
            "pilot_endpoints",
            "Mesh endpoints in all clusters",
            self.endpoints.clone(),
        );
    }

    fn update(&self, snapshot: &MeshSnapshot) {
        self.remote_synced.clear();
        for cluster in snapshot.clusters.iter() {
            let label = ClusterLabel {
                cluster_id: cluster.id.clone(),
            };
            self.remote_synced
                .get_or_create(&label)
                .set(i64::from(cluster.state == SyncState::Synced));
        }
        self.services.set(snapshot.services.len() as i64);
        self.endpoints.set(
            snapshot
                .endpoints
                .values()
                .map(|e| e.endpoints.len() as i64)
                .sum(),
        );
    }
}

#[derive(Clone)]
pub struct DebugState {
    pub snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pub ready: watch::Receiver<bool>,
    pub xds: XdsServer,
    pub metrics: Arc<Mutex<MetricsRegistry>>,
    pub gauges: MeshGauges,
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec_pretty(body)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("a static response is valid")
}

fn text_response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

const ENDPOINTS: &[&str] = &[
    "/ready",
    "/metrics",
    "/debug/registryz",
    "/debug/endpointz",
    "/debug/clusterz",
    "/debug/syncz",
    "/debug/config_dump?proxyID=<proxy or connection ID>",
];

impl DebugState {
    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET is served here\n".into(),
            );
        }
        let snapshot = self.snapshots.borrow().clone();
        match request.uri().path() {
            "/ready" => {
                if *self.ready.borrow() {
                    text_response(StatusCode::OK, "text/plain", "ready\n".into())
                } else {
                    let waiting: Vec<String> = snapshot
                        .clusters
                        .iter()
                        .filter(|c| c.state != SyncState::Synced)
                        .map(|c| format!("{} ({})", c.id, c.state.label()))
                        .collect();
                    text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!(
                            "not ready: waiting for clusters to sync: {}\n",
                            waiting.join(", ")
                        ),
                    )
                }
            }
            "/metrics" => {
                self.gauges.update(&snapshot);
                let mut body = String::new();
                let registry = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => text_response(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(error) => text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("cannot encode metrics: {error}\n"),
                    ),
                }
            }
            "/debug/registryz" => json_response(
                StatusCode::OK,
                &snapshot.services.values().collect::<Vec<_>>(),
            ),
            "/debug/endpointz" => json_response(StatusCode::OK, &snapshot.endpoints),
            "/debug/clusterz" => json_response(StatusCode::OK, &clusterz(&snapshot)),
            "/debug/syncz" => json_response(StatusCode::OK, &self.syncz()),
            "/debug/config_dump" => self.config_dump(request.uri().query().unwrap_or_default()),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "no such endpoint", "endpoints": ENDPOINTS}),
            ),
        }
    }

    fn syncz(&self) -> Vec<Value> {
        self.xds
            .connections()
            .iter()
            .map(|connection| {
                let types: BTreeMap<&str, Value> = connection
                    .types()
                    .iter()
                    .map(|(type_url, status)| {
                        let mut value = serde_json::to_value(status).unwrap_or_default();
                        value["state"] = json!(status.sync_state());
                        (short_name(type_url), value)
                    })
                    .collect();
                json!({
                    "proxy": connection.proxy.id,
                    "connection_id": connection.connection_id,
                    "proxy_type": connection.proxy.kind.as_str(),
                    "cluster_id": connection.proxy.cluster,
                    "network": connection.proxy.network,
                    "istio_version": connection.proxy.istio_version,
                    "delta": connection.delta,
                    "types": types,
                })
            })
            .collect()
    }

    fn config_dump(&self, query: &str) -> Response<Full<Bytes>> {
        let wanted = form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "proxyID")
            .map(|(_, value)| value.into_owned());
        let Some(wanted) = wanted else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "give the proxy: /debug/config_dump?proxyID=<proxy or connection ID>"}),
            );
        };
        let connections = self.xds.connections();
        let Some(connection) = connections
            .iter()
            .find(|c| c.proxy.id == wanted || c.connection_id == wanted)
        else {
            let known: Vec<&str> = connections.iter().map(|c| c.proxy.id.as_str()).collect();
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no connected proxy `{wanted}`"), "connected": known}),
            );
        };
        let config = self.xds.config_for(&connection.proxy);
        let dump: BTreeMap<&str, Vec<Value>> = config
            .iter()
            .map(|(type_url, resources)| {
                let entries = resources
                    .iter()
                    .map(|resource| {
                        json!({
                            "name": &*resource.name,
                            "version": resource.version_text(),
                            "config": causeway_xds::resources::describe(type_url, resource),
                        })
                    })
                    .collect();
                (short_name(type_url), entries)
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"proxy": connection.proxy, "resources": dump}),
        )
    }
}

fn clusterz(snapshot: &MeshSnapshot) -> Vec<Value> {
    snapshot
        .clusters
        .iter()
        .map(|cluster| {
            let reason = match &cluster.state {
                SyncState::Synced => None,
                SyncState::NotSynced(reason) | SyncState::Failed(reason) => Some(reason.clone()),
            };
            json!({
                "id": cluster.id,
                "secret": cluster.secret,
                "network": cluster.network,
                "sync_status": cluster.state.label(),
                "reason": reason,
            })
        })
        .collect()
}
