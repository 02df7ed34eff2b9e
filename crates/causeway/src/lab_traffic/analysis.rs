//! What the proxies' access logs say about the walkthroughs' requests: which pod answered each
//! client request and the path it took (direct, or through which cluster's gateway),
//! and whether every log line is what Envoy writes. No I/O: the logs come in as text, so the
//! decisions are tested as tables.
//!
//! A request is followed by its `request_id`: the client's sidecar adds `x-request-id` and logs it,
//! and the serving sidecar logs the same id on its inbound line. Who connected to the serving
//! sidecar (`downstream_remote_address`) tells the path: a gateway pod, or the client.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

/// One proxy's log, and the pod it runs in.
#[derive(Debug, Clone, Default)]
pub struct ProxyLog {
    pub cluster: String,
    pub namespace: String,
    pub pod: String,
    pub labels: BTreeMap<String, String>,
    /// The pod is a gateway (it runs the router), not a sidecar.
    pub gateway: bool,
    pub text: String,
}

/// A cluster's gateway (east-west, or Istio 1.6's multicluster ingress gateway): its pods and the
/// addresses its Service is reached at.
#[derive(Debug, Clone, Default)]
pub struct Gateway {
    pub cluster: String,
    /// Its `app` label: `istio-eastwestgateway`.
    pub name: String,
    pub pod_ips: Vec<IpAddr>,
    pub addresses: Vec<IpAddr>,
}

/// How a request reached the pod that answered it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Direct,
    Gateway {
        cluster: String,
        name: String,
    },
    /// No serving sidecar logged the request: outside the mesh, or the log was lost.
    Unseen,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct => f.write_str("direct"),
            Path::Gateway { cluster, name } => write!(f, "via {cluster}'s {name}"),
            Path::Unseen => f.write_str("not seen by a serving sidecar"),
        }
    }
}

/// One client request, followed to its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub client_cluster: String,
    pub client_pod: String,
    pub authority: String,
    pub response_code: String,
    /// The serving pod's cluster, name and `version` label.
    pub served_in: Option<String>,
    pub served_by: Option<String>,
    pub version: Option<String>,
    pub path: Path,
}

/// What the logs say: the client requests and every problem found on the way.
#[derive(Debug, Default)]
pub struct Traffic {
    pub requests: Vec<Request>,
    pub problems: Vec<String>,
}

/// What the walkthrough expects of the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// A flat network: every request goes straight to the pod that answers it.
    Direct,
    /// Separate networks: requests answered in another cluster go through a gateway of that
    /// cluster; the others go direct.
    Gateway,
}

/// Fields Envoy fills on every proxied HTTP request's line (when the format has them).
const HTTP_FIELDS: &[&str] = &[
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "bytes_received",
    "bytes_sent",
    "duration",
    "request_id",
    "authority",
    "upstream_cluster",
    "upstream_host",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "route_name",
];

/// Fields Envoy's TCP proxy fills on every connection it passed on (the gateway's lines).
const TCP_FIELDS: &[&str] = &[
    "start_time",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_cluster",
    "upstream_host",
    "downstream_local_address",
    "downstream_remote_address",
];

fn filled(line: &Map<String, Value>, field: &str) -> bool {
    match line.get(field) {
        None => true, // the format does not ask for it
        Some(Value::String(text)) => !text.is_empty() && text != "-",
        Some(Value::Null) => false,
        Some(_) => true,
    }
}

/// A field as text: JSON-encoded logs write numbers as numbers and missing values as `null`.
fn text(line: &Map<String, Value>, field: &str) -> String {
    match line.get(field) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => "-".to_owned(),
    }
}

fn address_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<SocketAddr>()
        .map(|address| address.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

/// The fields a line lacks that Envoy would have filled for it.
fn missing_fields(line: &Map<String, Value>) -> Vec<&'static str> {
    let http = text(line, "protocol").starts_with("HTTP");
    let mut required: Vec<&'static str> = if http {
        HTTP_FIELDS.to_vec()
    } else {
        TCP_FIELDS.to_vec()
    };
    let code = text(line, "response_code");
    // A sidecar's inbound lines over mTLS carry the SNI the client asked for; an answer from
    // upstream carries its service time.
    if text(line, "upstream_cluster").starts_with("inbound|") {
        required.push("requested_server_name");
    }
    if http && (code.starts_with('2') || code.starts_with('3')) {
        required.push("upstream_service_time");
    }
    required
        .into_iter()
        .filter(|field| !filled(line, field))
        .collect()
}

/// Each log's JSON access-log lines (the proxy's own log lines are not JSON objects).
fn access_lines(log: &ProxyLog, problems: &mut Vec<String>) -> Vec<Map<String, Value>> {
    let mut lines = Vec::new();
    for (number, raw) in log.text.lines().enumerate() {
        let raw = raw.trim();
        if !raw.starts_with('{') {
            continue;
        }
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(line)) if line.contains_key("start_time") => {
                let missing = missing_fields(&line);
                if !missing.is_empty() {
                    problems.push(format!(
                        "{}/{} log line {}: {} empty, which Envoy fills for this request: {raw}",
                        log.cluster,
                        log.pod,
                        number + 1,
                        missing.join(", ")
                    ));
                }
                lines.push(line);
            }
            // The proxy's own log in JSON (logAsJson): not an access-log line.
            Ok(Value::Object(_)) => {}
            Ok(_) | Err(_) => problems.push(format!(
                "{}/{} log line {} is not a JSON access-log line: {raw}",
                log.cluster,
                log.pod,
                number + 1
            )),
        }
    }
    lines
}

/// Follows every outbound HTTP request of the client pods (`app=<client_app>` in `namespace`) to
/// the sidecar that answered it.
pub fn analyse(
    logs: &[ProxyLog],
    gateways: &[Gateway],
    namespace: &str,
    client_app: &str,
) -> Traffic {
    let mut problems = Vec::new();
    let parsed: Vec<(&ProxyLog, Vec<Map<String, Value>>)> = logs
        .iter()
        .map(|log| (log, access_lines(log, &mut problems)))
        .collect();
    let gateway_of_pod: HashMap<IpAddr, &Gateway> = gateways
        .iter()
        .flat_map(|gateway| gateway.pod_ips.iter().map(move |ip| (*ip, gateway)))
        .collect();
    let gateway_of_address: HashMap<IpAddr, &str> = gateways
        .iter()
        .flat_map(|gateway| {
            gateway
                .addresses
                .iter()
                .map(|ip| (*ip, gateway.cluster.as_str()))
        })
        .collect();
    // Inbound lines by request id: the pod that answered, and who connected to it.
    let mut answered: HashMap<String, (&ProxyLog, &Map<String, Value>)> = HashMap::new();
    for (log, lines) in &parsed {
        if log.gateway {
            continue;
        }
        for line in lines {
            if text(line, "upstream_cluster").starts_with("inbound|") {
                answered.insert(text(line, "request_id"), (log, line));
            }
        }
    }
    let mut requests = Vec::new();
    for (log, lines) in &parsed {
        let client = !log.gateway
            && log.namespace == namespace
            && log.labels.get("app").map(String::as_str) == Some(client_app);
        if !client {
            continue;
        }
        for line in lines {
            let outbound = text(line, "upstream_cluster").starts_with("outbound|");
            if !outbound || !text(line, "protocol").starts_with("HTTP") {
                continue;
            }
            let request_id = text(line, "request_id");
            let upstream = address_ip(&text(line, "upstream_host"));
            let towards_gateway = upstream.and_then(|ip| gateway_of_address.get(&ip).copied());
            let mut request = Request {
                client_cluster: log.cluster.clone(),
                client_pod: log.pod.clone(),
                authority: text(line, "authority"),
                response_code: text(line, "response_code"),
                served_in: None,
                served_by: None,
                version: None,
                path: Path::Unseen,
            };
            if let Some((server, inbound)) = answered.get(&request_id) {
                let from = address_ip(&text(inbound, "downstream_remote_address"));
                let through = from.and_then(|ip| gateway_of_pod.get(&ip).copied());
                request.path = match through {
                    Some(gateway) => Path::Gateway {
                        cluster: gateway.cluster.clone(),
                        name: gateway.name.clone(),
                    },
                    None => Path::Direct,
                };
                request.served_in = Some(server.cluster.clone());
                request.served_by = Some(server.pod.clone());
                request.version = server.labels.get("version").cloned();
                // The client's own line must agree: it sent the request to that gateway.
                if through.map(|gateway| gateway.cluster.as_str()) != towards_gateway {
                    problems.push(format!(
                        "request {request_id} from {}/{}: the client's sidecar sent it to {} but {}/{} was reached {}",
                        log.cluster,
                        log.pod,
                        text(line, "upstream_host"),
                        server.cluster,
                        server.pod,
                        request.path
                    ));
                }
            }
            requests.push(request);
        }
    }
    Traffic { requests, problems }
}

/// What goes against the walkthrough's expectation; empty when all is as expected.
pub fn unexpected(traffic: &Traffic, expect: Expect) -> Vec<String> {
    let mut found = traffic.problems.clone();
    if traffic.requests.is_empty() {
        found.push("no client requests in the access logs".into());
    }
    let mut clients: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for request in &traffic.requests {
        let (local, remote) = clients.entry(&request.client_cluster).or_default();
        let Some(served_in) = &request.served_in else {
            found.push(format!(
                "a request from {}/{} to {} (answered {}) was not logged by any serving sidecar",
                request.client_cluster,
                request.client_pod,
                request.authority,
                request.response_code
            ));
            continue;
        };
        let crossed = served_in != &request.client_cluster;
        if crossed {
            *remote += 1;
        } else {
            *local += 1;
        }
        let expected_gateway = expect == Expect::Gateway && crossed;
        let as_expected = match &request.path {
            Path::Gateway { cluster, .. } => expected_gateway && cluster == served_in,
            Path::Direct => !expected_gateway,
            Path::Unseen => false,
        };
        if !as_expected {
            let expected = if expected_gateway {
                format!("via a gateway of {served_in}")
            } else {
                "direct".to_owned()
            };
            found.push(format!(
                "a request from {}/{} answered by {served_in}/{} went {}, expected {expected}",
                request.client_cluster,
                request.client_pod,
                request.served_by.as_deref().unwrap_or("?"),
                request.path
            ));
        }
    }
    for (cluster, (local, remote)) in clients {
        if remote == 0 {
            found.push(format!(
                "no request from {cluster} was answered in another cluster ({local} answered locally)"
            ));
        }
    }
    found
}

/// The summary: per client cluster, version and path, how many requests.
pub fn render(traffic: &Traffic) -> String {
    let mut counts: BTreeMap<(String, String, String, Path), usize> = BTreeMap::new();
    for request in &traffic.requests {
        let key = (
            request.client_cluster.clone(),
            request.version.clone().unwrap_or_else(|| "-".into()),
            request.served_in.clone().unwrap_or_else(|| "-".into()),
            request.path.clone(),
        );
        *counts.entry(key).or_default() += 1;
    }
    let rows: Vec<Vec<String>> = counts
        .into_iter()
        .map(|((from, version, served_in, path), count)| {
            vec![
                from,
                version,
                served_in,
                path.to_string(),
                count.to_string(),
            ]
        })
        .collect();
    crate::table::table(
        &["FROM", "VERSION", "ANSWERED IN", "PATH", "REQUESTS"],
        &rows,
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(cluster: &str, name: &str, labels: &[(&str, &str)], lines: &[Value]) -> ProxyLog {
        ProxyLog {
            cluster: cluster.into(),
            namespace: if name.starts_with("istio-") {
                "istio-system"
            } else {
                "sample"
            }
            .into(),
            pod: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            gateway: name.starts_with("istio-eastwestgateway"),
            text: std::iter::once("2026-12-07T12:00:00Z INFO proxy started".to_owned())
                .chain(lines.iter().map(Value::to_string))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn http_line(id: &str, cluster: &str, upstream: &str, from: &str) -> Value {
        json!({
            "start_time": "2026-12-07T12:03:29.014Z", "method": "GET", "path": "/hello",
            // Typed, as accessLogEncoding JSON writes them.
            "protocol": "HTTP/1.1", "response_code": 200, "bytes_received": 0,
            "bytes_sent": 60, "duration": 2, "request_id": id,
            "authority": "helloworld.sample:5000", "upstream_cluster": cluster,
            "upstream_host": upstream, "upstream_local_address": "10.10.0.5:5000",
            "downstream_local_address": "10.11.0.4:5000", "downstream_remote_address": from,
            "route_name": "default", "upstream_service_time": "1",
            "requested_server_name": if cluster.starts_with("inbound") {
                "outbound_.5000_._.helloworld.sample.svc.cluster.local" } else { "-" },
        })
    }

    const OUT: &str = "outbound|5000||helloworld.sample.svc.cluster.local";
    const IN: &str = "inbound|5000||";

    fn gateways() -> Vec<Gateway> {
        vec![
            Gateway {
                cluster: "cluster01".into(),
                name: "istio-eastwestgateway".into(),
                pod_ips: vec!["10.10.0.3".parse().unwrap()],
                addresses: vec!["172.18.11.0".parse().unwrap()],
            },
            Gateway {
                cluster: "cluster02".into(),
                name: "istio-eastwestgateway".into(),
                pod_ips: vec!["10.20.0.3".parse().unwrap()],
                addresses: vec!["172.18.12.0".parse().unwrap()],
            },
        ]
    }

    /// sleep in cluster01 asks twice: v1 next to it answers one directly, v2 in cluster02 the
    /// other through cluster02's gateway.
    fn multi_network(v2_from: &str, client_upstream: &str) -> Vec<ProxyLog> {
        vec![
            pod(
                "cluster01",
                "sleep-1",
                &[("app", "sleep")],
                &[
                    http_line("a", OUT, "10.10.0.4:5000", "10.10.0.5:1"),
                    http_line("b", OUT, client_upstream, "10.10.0.5:2"),
                ],
            ),
            pod(
                "cluster01",
                "helloworld-v1-1",
                &[("app", "helloworld"), ("version", "v1")],
                &[http_line("a", IN, "10.10.0.4:5000", "10.10.0.5:3")],
            ),
            pod(
                "cluster02",
                "helloworld-v2-1",
                &[("app", "helloworld"), ("version", "v2")],
                &[http_line("b", IN, "10.20.0.4:5000", v2_from)],
            ),
            pod("cluster02", "istio-eastwestgateway-1", &[], &[]),
        ]
    }

    #[test]
    fn requests_are_followed_to_the_pod_that_answered_and_the_path_they_took() {
        let traffic = analyse(
            &multi_network("10.20.0.3:4", "172.18.12.0:15443"),
            &gateways(),
            "sample",
            "sleep",
        );
        assert!(traffic.problems.is_empty(), "{:?}", traffic.problems);
        let seen: Vec<(Option<&str>, &Path)> = traffic
            .requests
            .iter()
            .map(|request| (request.version.as_deref(), &request.path))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("v1"), &Path::Direct),
                (
                    Some("v2"),
                    &Path::Gateway {
                        cluster: "cluster02".into(),
                        name: "istio-eastwestgateway".into()
                    }
                )
            ]
        );
        assert!(unexpected(&traffic, Expect::Gateway).is_empty());
        let flat = unexpected(&traffic, Expect::Direct);
        assert_eq!(flat.len(), 1, "{flat:?}");
        assert!(flat[0].contains("expected direct"), "{flat:?}");
        let table = render(&traffic);
        assert_eq!(
            table.lines().collect::<Vec<_>>(),
            [
                "FROM       VERSION  ANSWERED IN  PATH                                   REQUESTS",
                "cluster01  v1       cluster01    direct                                 1",
                "cluster01  v2       cluster02    via cluster02's istio-eastwestgateway  1",
            ],
            "{table}"
        );
    }

    #[test]
    fn what_goes_against_the_walkthrough_is_named() {
        let cases: Vec<(&str, Vec<ProxyLog>, Expect, &str)> = vec![
            (
                "cross-network request that bypassed the gateway",
                multi_network("10.10.0.5:9", "10.20.0.4:5000"),
                Expect::Gateway,
                "went direct, expected via a gateway of cluster02",
            ),
            (
                "the client and the server disagree on the path",
                multi_network("10.20.0.3:4", "10.20.0.4:5000"),
                Expect::Gateway,
                "the client's sidecar sent it to 10.20.0.4:5000",
            ),
            (
                "only local answers",
                multi_network("10.20.0.3:4", "172.18.12.0:15443")
                    .into_iter()
                    .filter(|log| log.cluster == "cluster01")
                    .collect(),
                Expect::Gateway,
                "no request from cluster01 was answered in another cluster",
            ),
            (
                "a request no sidecar answered",
                multi_network("10.20.0.3:4", "172.18.12.0:15443")
                    .into_iter()
                    .filter(|log| log.pod != "helloworld-v2-1")
                    .collect(),
                Expect::Gateway,
                "was not logged by any serving sidecar",
            ),
            (
                "no requests at all",
                Vec::new(),
                Expect::Direct,
                "no client requests in the access logs",
            ),
        ];
        for (name, logs, expect, message) in cases {
            let found = unexpected(&analyse(&logs, &gateways(), "sample", "sleep"), expect);
            assert!(
                found.iter().any(|problem| problem.contains(message)),
                "{name}: {found:#?}"
            );
        }
    }

    #[test]
    fn log_lines_must_be_what_envoy_writes() {
        let mut missing_host = http_line("a", OUT, "-", "10.10.0.5:1");
        missing_host["upstream_service_time"] = json!(null);
        let mut no_sni = http_line("b", IN, "10.10.0.4:5000", "10.10.0.5:1");
        no_sni["requested_server_name"] = json!("-");
        let mut failed = http_line("c", OUT, "10.10.0.4:5000", "10.10.0.5:1");
        failed["response_code"] = json!(503);
        failed["upstream_service_time"] = json!("-");
        let tcp = json!({"start_time": "t", "bytes_received": "1", "bytes_sent": "2",
            "duration": "3", "upstream_cluster": "outbound_.5000_._.helloworld.sample.svc.cluster.local",
            "upstream_host": "10.20.0.4:5000", "downstream_local_address": "10.20.0.3:15443",
            "downstream_remote_address": "10.10.0.5:6", "protocol": "-"});
        let logs = [pod(
            "cluster01",
            "sleep-1",
            &[("app", "sleep")],
            &[missing_host, no_sni, failed, tcp],
        )];
        let mut with_junk = logs[0].clone();
        with_junk.text.push_str("\n{\"start_time\": ");
        let problems = analyse(&[with_junk], &gateways(), "sample", "sleep").problems;
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("line 2: upstream_host, upstream_service_time empty"));
        assert!(problems[1].contains("line 3: requested_server_name empty"));
        assert!(problems[2].contains("line 6 is not a JSON access-log line"));
    }
}
