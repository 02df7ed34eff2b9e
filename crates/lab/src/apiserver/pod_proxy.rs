//! `pods/<name>[:<port>]/proxy/<path>`: the API server passes an HTTP request on to a port of a
//! pod, as Kubernetes' pod proxy does (`kubectl get --raw .../pods/istiod-0:15014/proxy/debug/syncz`).
//! This is how commands outside the lab's networks (`causeway proxy-status`) read a control plane
//! that runs in a pod: the API server runs on the cluster's node and reaches every pod address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;

use super::http::{Body, full};
use super::resources::id_of;
use super::state::ApiState;
use super::status::ApiError;
use super::writes::mutating_webhooks::Dialer;

/// How long the pod has to answer: a debug endpoint, not a stream.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A request for the pod proxy: which pod, which port, and the path passed on.
#[derive(Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    /// The path on the pod, with its leading `/`.
    pub path: String,
}

/// Reads `/api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy[/<path>]`; other paths are `None`.
/// Without a port the request goes to 80, as Kubernetes does.
pub fn parse(path: &str) -> Option<Result<ProxyTarget, ApiError>> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once("/pods/")?;
    let (pod_and_port, rest) = rest.split_once("/proxy").unwrap_or((rest, "\u{0}"));
    if rest == "\u{0}" || !(rest.is_empty() || rest.starts_with('/')) || namespace.contains('/') {
        return None;
    }
    let (pod, port) = match pod_and_port.split_once(':') {
        Some((pod, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (pod, port),
            _ => {
                return Some(Err(ApiError::bad_request(format!(
                    "pod proxy: {port:?} in {pod_and_port:?} is not a port number (1-65535)"
                ))));
            }
        },
        None => (pod_and_port, 80),
    };
    Some(Ok(ProxyTarget {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        port,
        path: if rest.is_empty() {
            "/".into()
        } else {
            rest.to_owned()
        },
    }))
}

/// Passes a GET on to the pod and its answer back.
pub async fn serve(
    state: Arc<ApiState>,
    target: ProxyTarget,
    method: &Method,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "the lab's pod proxy passes on GET only, not {method}"
        )));
    }
    let stored = state
        .store
        .get(id_of("", "Pod"), &target.namespace, &target.pod)
        .ok_or_else(|| ApiError::not_found("", "pods", &target.pod))?;
    let pod: Pod = stored
        .decode()
        .map_err(|error| ApiError::internal(format!("stored pod does not decode: {error}")))?;
    let address: IpAddr = pod
        .status
        .and_then(|status| status.pod_ip)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            ApiError::service_unavailable(format!(
                "pod {}/{} has no address yet; is it running?",
                target.namespace, target.pod
            ))
        })?;
    let address = SocketAddr::new(address, target.port);
    let path_and_query = match query {
        Some(query) => format!("{}?{query}", target.path),
        None => target.path.clone(),
    };
    // Dialled from the cluster's node, where pod addresses route; never from the host.
    let dialer = state.dialer.get().cloned().ok_or_else(|| {
        ApiError::service_unavailable("this cluster has no node yet, so its pods cannot be reached")
    })?;
    let answer = tokio::time::timeout(ANSWER_WITHIN, get(dialer, address, &path_and_query))
        .await
        .map_err(|_| {
            ApiError::service_unavailable(format!(
                "pod {}/{} did not answer GET {path_and_query} on {address} within {ANSWER_WITHIN:?}",
                target.namespace, target.pod
            ))
        })?
        .map_err(|error| {
            ApiError::service_unavailable(format!(
                "pod {}/{} at {address}: {error}",
                target.namespace, target.pod
            ))
        })?;
    Ok(answer)
}

async fn get(
    dialer: Dialer,
    address: SocketAddr,
    path_and_query: &str,
) -> Result<Response<Body>, String> {
    let connected = tokio::task::spawn_blocking(move || dialer(address, ANSWER_WITHIN))
        .await
        .map_err(|error| format!("the dialling thread failed: {error}"))?
        .and_then(|stream| {
            stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(stream)
        });
    let stream = connected.map_err(|error| format!("cannot connect: {error}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    tokio::spawn(connection);
    let request = Request::get(path_and_query)
        .header(header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("bad path {path_and_query:?}: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("reading the answer failed: {error}"))?
        .to_bytes();
    let mut answer = Response::builder().status(status);
    if let Some(content_type) = content_type {
        answer = answer.header(header::CONTENT_TYPE, content_type);
    }
    answer
        .body(full(body))
        .map_err(|error| format!("cannot pass the answer on: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn target(namespace: &str, pod: &str, port: u16, path: &str) -> ProxyTarget {
        ProxyTarget {
            namespace: namespace.into(),
            pod: pod.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn proxy_paths_name_the_pod_port_and_path() {
        let cases = [
            (
                "/api/v1/namespaces/istio-system/pods/istiod-1:15014/proxy/debug/syncz",
                Some(target("istio-system", "istiod-1", 15014, "/debug/syncz")),
            ),
            (
                "/api/v1/namespaces/sample/pods/web/proxy",
                Some(target("sample", "web", 80, "/")),
            ),
            (
                "/api/v1/namespaces/sample/pods/web:8080/proxy/",
                Some(target("sample", "web", 8080, "/")),
            ),
            ("/api/v1/namespaces/sample/pods/web/log", None),
            ("/api/v1/namespaces/sample/pods/web", None),
            ("/api/v1/namespaces/sample/pods/web/proxyz", None),
            ("/apis/apps/v1/namespaces/sample/deployments/web", None),
        ];
        for (path, expected) in cases {
            let parsed = parse(path).map(|result| result.expect("a valid target"));
            assert_eq!(parsed, expected, "{path}");
        }
        for bad in ["web:http", "web:0", "web:70000"] {
            let error = parse(&format!("/api/v1/namespaces/sample/pods/{bad}/proxy/"))
                .expect("a proxy path")
                .expect_err("a bad port");
            assert_eq!(error.code, StatusCode::BAD_REQUEST, "{bad}");
            assert!(error.message.contains("port number"), "{}", error.message);
        }
    }
}
