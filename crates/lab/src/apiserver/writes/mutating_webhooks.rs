//! Mutating admission webhooks, called as kube-apiserver calls them: every
//! MutatingWebhookConfiguration whose rules, namespace selector and object selector match the
//! request gets an `admission.k8s.io/v1` AdmissionReview over HTTPS (verified with its
//! `caBundle`), in name order; a JSON patch in the answer is applied before the next one, a
//! refusal refuses the write, and a webhook that cannot be reached fails the write or is skipped
//! as its `failurePolicy` says.
//!
//! The call is blocking on purpose: the write path is synchronous. Inside a multi-threaded
//! runtime it runs under `block_in_place`, so the rest of the API server (the webhook server may
//! be reading from it) keeps being served meanwhile.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{DynamicObject, Selector, SelectorExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use super::super::resources::{Resource, id_of};
use super::super::state::ApiState;
use super::super::status::ApiError;

/// Opens a TCP connection from where the cluster's control plane runs (its node), so that
/// Service endpoints and LoadBalancer addresses inside the lab are reachable.
pub type Dialer = Arc<dyn Fn(SocketAddr, Duration) -> std::io::Result<TcpStream> + Send + Sync>;

/// One webhook due for a request.
#[derive(Debug, Clone)]
struct Due {
    configuration: String,
    webhook: MutatingWebhook,
}

fn selector_matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        None => true,
        Some(selector) => {
            Selector::try_from(selector.clone()).is_ok_and(|selector| selector.matches(labels))
        }
    }
}

fn rule_matches(
    webhook: &MutatingWebhook,
    kind: &Resource,
    version: &str,
    operation: &str,
) -> bool {
    let any = |list: &Option<Vec<String>>, value: &str| {
        list.as_ref()
            .is_some_and(|list| list.iter().any(|item| item == "*" || item == value))
    };
    webhook.rules.as_ref().is_some_and(|rules| {
        rules.iter().any(|rule| {
            rule.operations.as_ref().is_some_and(|operations| {
                operations
                    .iter()
                    .any(|item| item == "*" || item == operation)
            }) && any(&rule.api_groups, kind.group)
                && any(&rule.api_versions, version)
                && any(&rule.resources, kind.plural)
        })
    })
}

/// The webhooks due for `operation` on an object of `kind` with `labels` in a namespace with
/// `namespace_labels`, in the order they are called (by configuration name, then as listed).
fn due(
    configurations: &[MutatingWebhookConfiguration],
    kind: &Resource,
    version: &str,
    operation: &str,
    namespace_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Vec<Due> {
    let mut sorted: Vec<&MutatingWebhookConfiguration> = configurations.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    sorted
        .into_iter()
        .flat_map(|configuration| {
            let name = configuration.metadata.name.clone().unwrap_or_default();
            configuration
                .webhooks
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|webhook| {
                    rule_matches(webhook, kind, version, operation)
                        && selector_matches(webhook.namespace_selector.as_ref(), namespace_labels)
                        && selector_matches(webhook.object_selector.as_ref(), labels)
                })
                .map(move |webhook| Due {
                    configuration: name.clone(),
                    webhook,
                })
        })
        .collect()
}

/// Where a webhook is called: its address, the TLS name, and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    address: SocketAddr,
    server_name: String,
    path: String,
}

/// Resolves `clientConfig`: a URL as given, or a Service to one of its ready endpoints (as the
/// API server does when it routes to endpoints).
fn endpoint(state: &ApiState, webhook: &MutatingWebhook) -> Result<Endpoint, String> {
    let config = &webhook.client_config;
    if let Some(url) = &config.url {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("webhook URL {url} is not https"))?;
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], rest[index..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>()
                    .map_err(|_| format!("webhook URL {url} has a bad port"))?,
            ),
            _ => (authority, 443),
        };
        let ip: IpAddr = host.parse().map_err(|_| {
            format!("webhook URL {url}: the lab calls webhooks by IP address, not {host:?}")
        })?;
        return Ok(Endpoint {
            address: SocketAddr::new(ip, port),
            server_name: host.to_owned(),
            path,
        });
    }
    let service = config
        .service
        .as_ref()
        .ok_or("the webhook's clientConfig has neither url nor service")?;
    let port = service.port.unwrap_or(443);
    let stored = state
        .store
        .get(id_of("", "Service"), &service.namespace, &service.name)
        .ok_or_else(|| {
            format!(
                "service \"{}/{}\" not found",
                service.namespace, service.name
            )
        })?;
    let service_port = stored.object.data["spec"]["ports"]
        .as_array()
        .and_then(|ports| {
            ports
                .iter()
                .find(|entry| entry["port"].as_i64() == Some(i64::from(port)))
        })
        .cloned()
        .ok_or_else(|| {
            format!(
                "service \"{}/{}\" has no port {port}",
                service.namespace, service.name
            )
        })?;
    let port_name = service_port["name"].as_str().unwrap_or("").to_owned();
    let target = crate::services::ready_endpoints(state, &service.namespace, &service.name)
        .into_iter()
        .find_map(|(address, ports)| {
            let port = ports.get(&port_name)?;
            Some(SocketAddr::new(IpAddr::V4(address), *port))
        });
    let address = target.ok_or_else(|| {
        format!(
            "no endpoints available for service \"{}/{}\"",
            service.namespace, service.name
        )
    })?;
    Ok(Endpoint {
        address,
        server_name: format!("{}.{}.svc", service.name, service.namespace),
        path: service.path.clone().unwrap_or_else(|| "/".into()),
    })
}

fn tls_config(ca_bundle: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let bundle = ca_bundle.ok_or("the webhook has no caBundle yet")?;
    for certificate in CertificateDer::pem_slice_iter(bundle) {
        let certificate =
            certificate.map_err(|error| format!("its caBundle is not PEM: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("its caBundle holds an unusable certificate: {error}"))?;
    }
    if roots.is_empty() {
        return Err("its caBundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// POSTs `body` and returns the response's body, with HTTP/1.1 over TLS on one connection.
fn post(
    dialer: &Dialer,
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let stream = dialer(endpoint.address, timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    let name =
        ServerName::try_from(endpoint.server_name.clone()).map_err(|error| error.to_string())?;
    let connection = rustls::ClientConnection::new(tls, name).map_err(|error| error.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let head = format!(
        "POST {}?timeout={}s HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        timeout.as_secs(),
        endpoint.server_name,
        body.len()
    );
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .map_err(|error| error.to_string())?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // A server that closes without close_notify still sent a whole response.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
        }
        Err(error) => return Err(error.to_string()),
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let length = match parsed.parse(&response) {
        Ok(httparse::Status::Complete(length)) => length,
        _ => return Err("the webhook's answer is not HTTP".into()),
    };
    let status = parsed.code.unwrap_or(0);
    let chunked = parsed.headers.iter().any(|header| {
        header.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(header.value).contains("chunked")
    });
    let mut body = response[length..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or("the webhook's chunked answer is malformed")?;
    }
    if status != 200 {
        return Err(format!(
            "the webhook answered HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

fn direct_dialer() -> Dialer {
    Arc::new(|address, timeout| TcpStream::connect_timeout(&address, timeout))
}

/// Runs the mutating webhooks due for creating `object` (already defaulted, named and placed).
pub fn admit(
    state: &ApiState,
    kind: &Resource,
    version: &str,
    object: &mut DynamicObject,
) -> Result<(), ApiError> {
    let (configurations, _) = state.store.list(
        id_of(
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
        ),
        None,
    );
    if configurations.is_empty() {
        return Ok(());
    }
    let configurations: Vec<MutatingWebhookConfiguration> = configurations
        .iter()
        .filter_map(|stored| stored.decode().ok())
        .collect();
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let namespace_labels = state
        .store
        .get(id_of("", "Namespace"), "", &namespace)
        .and_then(|stored| stored.object.metadata.labels.clone())
        .unwrap_or_default();
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let due = due(
        &configurations,
        kind,
        version,
        "CREATE",
        &namespace_labels,
        &labels,
    );
    if due.is_empty() {
        return Ok(());
    }
    let dialer = state.dialer.get().cloned().unwrap_or_else(direct_dialer);
    for Due {
        configuration,
        webhook,
    } in due
    {
        let fail = |message: String| {
            ApiError::internal(format!(
                "Internal error occurred: failed calling webhook \"{}\" (MutatingWebhookConfiguration {configuration}): {message}",
                webhook.name
            ))
        };
        let ignore = webhook.failure_policy.as_deref() == Some("Ignore");
        match call(state, &dialer, &webhook, kind, version, object) {
            Ok(Verdict::Allowed(Some(patched))) => *object = *patched,
            Ok(Verdict::Allowed(None)) => {}
            Ok(Verdict::Denied(message)) => {
                return Err(ApiError::forbidden(format!(
                    "admission webhook \"{}\" denied the request: {message}",
                    webhook.name
                )));
            }
            Err(message) if ignore => {
                tracing::warn!(webhook = %webhook.name, %message, "webhook failed; failurePolicy Ignore lets the request through");
            }
            Err(message) => return Err(fail(message)),
        }
    }
    Ok(())
}

enum Verdict {
    Allowed(Option<Box<DynamicObject>>),
    Denied(String),
}

fn call(
    state: &ApiState,
    dialer: &Dialer,
    webhook: &MutatingWebhook,
    kind: &Resource,
    version: &str,
    object: &DynamicObject,
) -> Result<Verdict, String> {
    let endpoint = endpoint(state, webhook)?;
    let tls = tls_config(
        webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|bundle| bundle.0.as_slice()),
    )?;
    let timeout = Duration::from_secs(
        webhook
            .timeout_seconds
            .unwrap_or(10)
            .clamp(1, 30)
            .unsigned_abs()
            .into(),
    );
    let uid = uuid::Uuid::new_v4().to_string();
    let group_version_kind = json!({"group": kind.group, "version": version, "kind": kind.kind});
    let group_version_resource =
        json!({"group": kind.group, "version": version, "resource": kind.plural});
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": group_version_kind,
            "resource": group_version_resource,
            "requestKind": group_version_kind,
            "requestResource": group_version_resource,
            "name": object.metadata.name,
            "namespace": object.metadata.namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    });
    let body = serde_json::to_vec(&review).map_err(|error| error.to_string())?;
    let answer = blocking(|| post(dialer, &endpoint, tls, &body, timeout)).map_err(|error| {
        format!(
            "failed to call webhook: Post \"https://{}{}\": {error}",
            endpoint.server_name, endpoint.path
        )
    })?;
    let answer: Value = serde_json::from_slice(&answer)
        .map_err(|error| format!("the answer is not an AdmissionReview: {error}"))?;
    let response = &answer["response"];
    if response["uid"].as_str() != Some(uid.as_str()) {
        return Err(format!(
            "the answer's uid {} is not the request's {uid}",
            response["uid"]
        ));
    }
    if response["allowed"].as_bool() != Some(true) {
        let message = response["status"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        return Ok(Verdict::Denied(message.to_owned()));
    }
    let Some(patch) = response["patch"].as_str() else {
        return Ok(Verdict::Allowed(None));
    };
    if response["patchType"].as_str() != Some("JSONPatch") {
        return Err(format!(
            "patchType {} is not JSONPatch",
            response["patchType"]
        ));
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|error| format!("the patch is not base64: {error}"))?;
    let patch: json_patch::Patch = serde_json::from_slice(&patch)
        .map_err(|error| format!("the patch is not a JSON patch: {error}"))?;
    let mut patched = serde_json::to_value(object).map_err(|error| error.to_string())?;
    json_patch::patch(&mut patched, &patch)
        .map_err(|error| format!("the patch does not apply: {error}"))?;
    let patched: DynamicObject = serde_json::from_value(patched)
        .map_err(|error| format!("the patched object is not an object: {error}"))?;
    Ok(Verdict::Allowed(Some(Box::new(patched))))
}

#[cfg(test)]
mod tests {
    use super::super::super::resources::RESOURCES;
    use super::*;

    fn pods() -> &'static Resource {
        RESOURCES
            .iter()
            .find(|resource| resource.kind == "Pod" && resource.group.is_empty())
            .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// Istio's default-revision webhooks, as install renders them.
    fn istio() -> MutatingWebhookConfiguration {
        let entry = |name: &str, namespace: Value, object: Value| {
            json!({
                "name": name,
                "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject", "port": 443}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "namespaceSelector": namespace, "objectSelector": object,
            })
        };
        serde_json::from_value(json!({
            "metadata": {"name": "istio-sidecar-injector"},
            "webhooks": [
                entry("namespace.sidecar-injector.istio.io",
                    json!({"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]}),
                    json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]})),
                entry("object.sidecar-injector.istio.io",
                    json!({"matchExpressions": [{"key": "istio-injection", "operator": "DoesNotExist"}, {"key": "istio.io/rev", "operator": "DoesNotExist"}]}),
                    json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]}, {"key": "istio.io/rev", "operator": "DoesNotExist"}]})),
            ],
        }))
        .unwrap()
    }

    #[test]
    fn selectors_and_rules_pick_the_webhooks_istio_means() {
        let configurations = [istio()];
        let enabled = labels(&[("istio-injection", "enabled")]);
        let disabled = labels(&[("istio-injection", "disabled")]);
        let plain = labels(&[]);
        type Labels = BTreeMap<String, String>;
        // namespace labels, pod labels, operation, the webhooks called
        let cases: &[(&Labels, Labels, &str, &[&str])] = &[
            (
                &enabled,
                labels(&[("app", "sleep")]),
                "CREATE",
                &["namespace.sidecar-injector.istio.io"],
            ),
            (
                &enabled,
                labels(&[("sidecar.istio.io/inject", "false")]),
                "CREATE",
                &[],
            ),
            (&plain, labels(&[("app", "sleep")]), "CREATE", &[]),
            (
                &plain,
                labels(&[("sidecar.istio.io/inject", "true")]),
                "CREATE",
                &["object.sidecar-injector.istio.io"],
            ),
            (
                &disabled,
                labels(&[("sidecar.istio.io/inject", "true")]),
                "CREATE",
                &[],
            ),
            (&enabled, labels(&[]), "UPDATE", &[]),
        ];
        for (namespace, pod, operation, expected) in cases {
            let names: Vec<String> = due(&configurations, pods(), "v1", operation, namespace, pod)
                .into_iter()
                .map(|due| due.webhook.name)
                .collect();
            assert_eq!(names, *expected, "{namespace:?} {pod:?} {operation}");
        }
        let services = RESOURCES
            .iter()
            .find(|resource| resource.kind == "Service")
            .unwrap();
        assert!(due(&configurations, services, "v1", "CREATE", &enabled, &plain).is_empty());
    }

    #[test]
    fn chunked_bodies_are_joined_and_broken_ones_refused() {
        assert_eq!(
            dechunk(b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n").unwrap(),
            b"abcdefg"
        );
        assert!(dechunk(b"z\r\nabc").is_none());
        assert!(dechunk(b"10\r\nshort\r\n").is_none());
    }
}
