//! The sidecar injection webhook on 15017 (`/inject`, and `/inject/cluster/<c>/net/<n>` for
//! remote clusters): AdmissionReview in, a JSON patch out, from the injector ConfigMaps install
//! wrote, read again whenever they change (watched). The webhook configurations' `caBundle` is kept by
//! [`crate::webhook_ca_bundles`], on the leader only.

use base64::Engine;
use bytes::Bytes;
use causeway_install::inject::{InjectionConfig, Outcome, Target, inject, patch};
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The injector's ConfigMaps and the webhooks are watched; this is how often they are read
/// again anyway, should a watch have missed something.
const RESYNC: Duration = Duration::from_secs(60);
/// Changes that come together (install writes both ConfigMaps, a relist sends every object)
/// are read once.
const SETTLE: Duration = Duration::from_millis(50);
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// The injector's config as last read, or why it could not be.
type Loaded = Arc<RwLock<Result<Arc<InjectionConfig>, String>>>;

#[derive(Clone)]
pub struct WebhookSettings {
    pub namespace: String,
    pub revision: String,
}

fn revisioned(name: &str, revision: &str) -> String {
    if revision == "default" || revision.is_empty() {
        name.to_owned()
    } else {
        format!("{name}-{revision}")
    }
}

async fn load(
    client: &kube::Client,
    settings: &WebhookSettings,
) -> Result<InjectionConfig, String> {
    InjectionConfig::from_cluster(
        client,
        &settings.namespace,
        &revisioned("istio-sidecar-injector", &settings.revision),
        &revisioned("istio", &settings.revision),
    )
    .await
    .map_err(|error| error.to_string())
}

/// A signal for every change of the ConfigMaps in `namespace` (the injector's and the mesh
/// config).
fn watch_inputs(client: &kube::Client, namespace: &str) -> BoxStream<'static, ()> {
    watcher(
        Api::<ConfigMap>::namespaced(client.clone(), namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ())
    .boxed()
}

/// Waits for a change, then for the ones that come with it. A stream that ended (it never does
/// while the client lives) waits forever, leaving the resync.
async fn changed(changes: &mut BoxStream<'static, ()>) {
    if changes.next().await.is_none() {
        return std::future::pending().await;
    }
    let settle = tokio::time::sleep(SETTLE);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            () = &mut settle => return,
            next = changes.next() => if next.is_none() { return },
        }
    }
}

async fn refresh(
    client: kube::Client,
    settings: WebhookSettings,
    loaded: Loaded,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_error = String::new();
    let mut changes = watch_inputs(&client, &settings.namespace);
    loop {
        let result = load(&client, &settings).await.map(Arc::new);
        if let Err(error) = &result
            && *error != last_error
        {
            tracing::warn!(%error, "the injector has no usable config");
            last_error = error.clone();
        }
        if result.is_ok() {
            last_error.clear();
        }
        *loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = result;
        tokio::select! {
            () = changed(&mut changes) => {}
            () = tokio::time::sleep(RESYNC) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The AdmissionReview answer for `review` posted to `path` (decisions only; no I/O).
pub fn review(
    path: &str,
    review: &Value,
    config: &InjectionConfig,
) -> Result<Value, (StatusCode, String)> {
    let target =
        Target::from_path(path).map_err(|error| (StatusCode::NOT_FOUND, error.to_string()))?;
    let request = &review["request"];
    let uid = request["uid"].as_str().ok_or((
        StatusCode::BAD_REQUEST,
        "the AdmissionReview has no request.uid".to_owned(),
    ))?;
    let api_version = review["apiVersion"]
        .as_str()
        .unwrap_or("admission.k8s.io/v1");
    let answer = |response: Value| json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response});
    let pod: Pod = serde_json::from_value(request["object"].clone()).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("request.object is not a pod: {error}"),
        )
    })?;
    let namespace = request["namespace"]
        .as_str()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default")
        .to_owned();
    Ok(match inject(&pod, &namespace, config, &target) {
        Ok(Outcome::Injected(injected)) => {
            let patch = serde_json::to_vec(&patch(&pod, &injected)).expect("a patch serializes");
            answer(json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            }))
        }
        Ok(Outcome::Skipped(reason)) => {
            tracing::debug!(%namespace, %reason, "not injected");
            answer(json!({"uid": uid, "allowed": true}))
        }
        Err(error) => answer(json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 400, "message": format!("sidecar injection failed: {error}")},
        })),
    })
}

async fn handle(request: Request<Incoming>, loaded: Loaded) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if request.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "POST an AdmissionReview"}),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read the body: {error}")}),
            );
        }
    };
    let document: Value = match serde_json::from_slice(&body) {
        Ok(document) => document,
        Err(error) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not an AdmissionReview: {error}")}),
            );
        }
    };
    let config = match &*loaded
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        Ok(config) => config.clone(),
        Err(error) => return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": error})),
    };
    match review(&path, &document, &config) {
        Ok(answer) => reply(StatusCode::OK, answer),
        Err((status, error)) => reply(status, json!({"error": error})),
    }
}

/// Serves the webhook on `address` with `tls` and keeps its config and caBundle current.
pub async fn serve(
    tasks: &mut JoinSet<()>,
    address: SocketAddr,
    mut tls: rustls::ServerConfig,
    client: kube::Client,
    settings: WebhookSettings,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot listen on {address} for the injection webhook: {error}")
        })?;
    let bound = listener.local_addr()?;
    let loaded: Loaded = Arc::new(RwLock::new(Err(
        "the injector's config is not read yet".into()
    )));
    tasks.spawn(refresh(client, settings, loaded.clone(), stopped.clone()));
    let mut stop = stopped;
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a webhook connection failed");
                        continue;
                    }
                },
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let acceptor = acceptor.clone();
            let loaded = loaded.clone();
            connections.spawn(async move {
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let service = service_fn(move |request| {
                    let loaded = loaded.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(request, loaded).await) }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectionConfig {
        let values = r#"{"global": {"network": "network1", "meshID": "mesh1", "multiCluster": {"clusterName": "cluster01"}}}"#;
        InjectionConfig::parse(("values", values), ("config", ""), ("mesh", "")).unwrap()
    }

    fn admission(api_version: &str, uid: Option<&str>, annotations: Value) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "namespace": "sample",
                "object": {
                    "metadata": {"generateName": "sleep-7d8f-", "labels": {"app": "sleep"}, "annotations": annotations},
                    "spec": {"containers": [{"name": "sleep", "image": "curlimages/curl"}]},
                },
            },
        })
    }

    #[test]
    fn reviews_are_answered_with_a_patch_a_plain_yes_or_an_error() {
        let config = config();
        let answer = review(
            "/inject",
            &admission("admission.k8s.io/v1", Some("u1"), json!({})),
            &config,
        )
        .unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["response"]["uid"], "u1");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        assert!(!patch.0.is_empty());

        let remote = review(
            "/inject/cluster/cluster02/net/network2",
            &admission("admission.k8s.io/v1beta1", Some("u2"), json!({})),
            &config,
        )
        .unwrap();
        assert_eq!(
            remote["apiVersion"], "admission.k8s.io/v1beta1",
            "answered in the request's version"
        );
        let patch = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(remote["response"]["patch"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(
            patch.contains("network2") && patch.contains("cluster02"),
            "{patch}"
        );

        let opted_out = review(
            "/inject",
            &admission(
                "admission.k8s.io/v1",
                Some("u3"),
                json!({"sidecar.istio.io/inject": "false"}),
            ),
            &config,
        )
        .unwrap();
        assert_eq!(opted_out["response"], json!({"uid": "u3", "allowed": true}));

        let broken = review(
            "/inject",
            &admission(
                "admission.k8s.io/v1",
                Some("u4"),
                json!({"proxy.istio.io/config": "[x"}),
            ),
            &config,
        )
        .unwrap();
        assert_eq!(broken["response"]["allowed"], false);
        assert!(
            broken["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("proxy.istio.io/config")
        );

        let (status, error) = review(
            "/mutate",
            &admission("admission.k8s.io/v1", Some("u5"), json!({})),
            &config,
        )
        .unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
        let (status, error) = review(
            "/inject",
            &admission("admission.k8s.io/v1", None, json!({})),
            &config,
        )
        .unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error.contains("uid"), "{error}");
    }
}
