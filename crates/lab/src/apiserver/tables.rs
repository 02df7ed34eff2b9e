//! Server-side printing: `kubectl get` asks for a `meta.k8s.io/v1` Table and prints its rows, so
//! the columns here are what `kubectl get` (and `-o wide`, the columns of priority 1) shows on a
//! real cluster, computed as Kubernetes' printers compute them (a pod's STATUS and RESTARTS, a
//! Deployment's READY...).

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::resources::Resource;

/// `kubectl`'s human durations (`45s`, `3m12s`, `5h`, `12d`), as apimachinery's `HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            rest => format!("{days}d{rest}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{years}y"),
            rest => format!("{years}y{rest}d"),
        }
    } else {
        format!("{years}y")
    }
}

fn seconds_of(value: &Value) -> Option<i64> {
    value
        .as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|at| at.as_second())
}

/// What a row is made from.
struct Printed<'a> {
    object: &'a DynamicObject,
    now: i64,
}

impl Printed<'_> {
    fn data(&self) -> &Value {
        &self.object.data
    }

    fn since(&self, value: &Value) -> String {
        seconds_of(value).map_or_else(|| "<unknown>".into(), |at| human_duration(self.now - at))
    }
}

struct Column {
    name: &'static str,
    /// 0: shown by `kubectl get`; 1: with `-o wide`.
    priority: u8,
    value: fn(&Printed<'_>) -> String,
}

const fn column(name: &'static str, value: fn(&Printed<'_>) -> String) -> Column {
    Column {
        name,
        priority: 0,
        value,
    }
}

const fn wide(name: &'static str, value: fn(&Printed<'_>) -> String) -> Column {
    Column {
        name,
        priority: 1,
        value,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) if !text.is_empty() => text.clone(),
        Value::String(_) | Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

fn number(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

fn count(value: &Value) -> usize {
    value.as_object().map_or(0, serde_json::Map::len)
}

fn name(printed: &Printed<'_>) -> String {
    printed.object.metadata.name.clone().unwrap_or_default()
}

fn age(printed: &Printed<'_>) -> String {
    printed
        .object
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(
            || "<unknown>".into(),
            |created| human_duration(printed.now - created.0.as_second()),
        )
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            let protocol = port["protocol"].as_str().unwrap_or("TCP");
            match port["nodePort"].as_u64() {
                Some(node_port) => format!("{}:{node_port}/{protocol}", port["port"]),
                None => format!("{}/{protocol}", port["port"]),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn selector_text(selector: &Value) -> String {
    let labels = selector.get("matchLabels").unwrap_or(selector);
    match labels.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn containers_of(template_spec: &Value, field: &str) -> String {
    let values: Vec<String> = template_spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|container| container[field].as_str().unwrap_or("").to_owned())
        .collect();
    if values.is_empty() {
        "<none>".into()
    } else {
        values.join(",")
    }
}

fn endpoints(object: &Value) -> String {
    let mut addresses = Vec::new();
    for subset in object["subsets"].as_array().into_iter().flatten() {
        for address in subset["addresses"].as_array().into_iter().flatten() {
            for port in subset["ports"].as_array().into_iter().flatten() {
                addresses.push(format!("{}:{}", text(&address["ip"]), port["port"]));
            }
        }
    }
    if addresses.is_empty() {
        "<none>".into()
    } else {
        addresses.join(",")
    }
}

/// A pod's READY, STATUS and RESTARTS, as kubectl's `printPod` works them out.
fn pod_summary(printed: &Printed<'_>) -> (String, String, String) {
    let data = printed.data();
    let status = &data["status"];
    let statuses = |field: &str| status[field].as_array().cloned().unwrap_or_default();
    let total = data["spec"]["containers"].as_array().map_or(0, Vec::len);
    let init_total = data["spec"]["initContainers"]
        .as_array()
        .map_or(0, Vec::len);
    let mut reason = status["reason"]
        .as_str()
        .filter(|reason| !reason.is_empty())
        .or(status["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    let mut restarts = 0;
    let mut ready = 0;
    let mut last_restart: Option<i64> = None;
    let mut note_restart = |container: &Value| {
        if let Some(at) = seconds_of(&container["lastState"]["terminated"]["finishedAt"]) {
            last_restart = Some(last_restart.map_or(at, |known: i64| known.max(at)));
        }
    };
    let mut initializing = false;
    for (index, container) in statuses("initContainerStatuses").iter().enumerate() {
        restarts += number(&container["restartCount"]);
        note_restart(container);
        let state = &container["state"];
        let terminated = &state["terminated"];
        let waiting = &state["waiting"];
        if !terminated.is_null() && number(&terminated["exitCode"]) == 0 {
            continue;
        }
        initializing = true;
        reason = if !terminated.is_null() {
            match terminated["reason"]
                .as_str()
                .filter(|reason| !reason.is_empty())
            {
                Some(why) => format!("Init:{why}"),
                None if number(&terminated["signal"]) != 0 => {
                    format!("Init:Signal:{}", number(&terminated["signal"]))
                }
                None => format!("Init:ExitCode:{}", number(&terminated["exitCode"])),
            }
        } else if let Some(why) = waiting["reason"]
            .as_str()
            .filter(|why| !why.is_empty() && *why != "PodInitializing")
        {
            format!("Init:{why}")
        } else {
            format!("Init:{index}/{init_total}")
        };
        break;
    }
    let initialized = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|condition| condition["type"] == "Initialized" && condition["status"] == "True");
    if !initializing || initialized {
        let mut running = false;
        for container in statuses("containerStatuses").iter().rev() {
            restarts += number(&container["restartCount"]);
            note_restart(container);
            let state = &container["state"];
            let terminated = &state["terminated"];
            if let Some(why) = state["waiting"]["reason"]
                .as_str()
                .filter(|why| !why.is_empty())
            {
                reason = why.to_owned();
            } else if let Some(why) = terminated["reason"].as_str().filter(|why| !why.is_empty()) {
                reason = why.to_owned();
            } else if !terminated.is_null() {
                reason = if number(&terminated["signal"]) != 0 {
                    format!("Signal:{}", number(&terminated["signal"]))
                } else {
                    format!("ExitCode:{}", number(&terminated["exitCode"]))
                };
            } else if container["ready"] == true && !state["running"].is_null() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let ready_condition = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|condition| condition["type"] == "Ready" && condition["status"] == "True");
            reason = if ready_condition {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }
    let phase = status["phase"].as_str().unwrap_or("");
    if printed.object.metadata.deletion_timestamp.is_some()
        && !matches!(phase, "Succeeded" | "Failed")
    {
        reason = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(at) if restarts != 0 => {
            format!("{restarts} ({} ago)", human_duration(printed.now - at))
        }
        _ => restarts.to_string(),
    };
    (format!("{ready}/{total}"), reason, restarts)
}

fn event_object(printed: &Printed<'_>) -> String {
    let involved = &printed.data()["involvedObject"];
    format!(
        "{}/{}",
        involved["kind"].as_str().unwrap_or("").to_lowercase(),
        involved["name"].as_str().unwrap_or("")
    )
}

/// The columns of a kind, as its printer defines them; every kind starts with NAME and most end
/// with AGE.
fn columns(resource: &Resource) -> Vec<Column> {
    let mut columns = vec![column("Name", name)];
    let mut ends_with_age = true;
    match (resource.group, resource.kind) {
        ("", "Namespace") => columns.push(column("Status", |p| text(&p.data()["status"]["phase"]))),
        ("", "Service") => columns.extend([
            column("Type", |p| text(&p.data()["spec"]["type"])),
            column("Cluster-IP", |p| text(&p.data()["spec"]["clusterIP"])),
            column("External-IP", |p| {
                let spec = &p.data()["spec"];
                p.data()["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .and_then(|ingress| ingress.first())
                    .map(|ingress| text(&ingress["ip"]))
                    .or_else(|| match spec["type"].as_str() {
                        Some("LoadBalancer") => Some("<pending>".into()),
                        Some("ExternalName") => spec["externalName"].as_str().map(str::to_owned),
                        _ => None,
                    })
                    .unwrap_or_else(|| "<none>".into())
            }),
            column("Port(s)", |p| service_ports(&p.data()["spec"])),
        ]),
        ("", "Pod") => columns.extend([
            column("Ready", |p| pod_summary(p).0),
            column("Status", |p| pod_summary(p).1),
            column("Restarts", |p| pod_summary(p).2),
        ]),
        ("", "Secret") => columns.extend([
            column("Type", |p| text(&p.data()["type"])),
            column("Data", |p| count(&p.data()["data"]).to_string()),
        ]),
        ("", "ConfigMap") => columns.push(column("Data", |p| {
            (count(&p.data()["data"]) + count(&p.data()["binaryData"])).to_string()
        })),
        ("", "ServiceAccount") => columns.push(column("Secrets", |p| {
            p.data()["secrets"]
                .as_array()
                .map_or(0, Vec::len)
                .to_string()
        })),
        ("", "Endpoints") => columns.push(column("Endpoints", |p| endpoints(p.data()))),
        ("", "Node") => columns.extend([
            column("Status", |p| {
                let ready = p.data()["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|condition| condition["type"] == "Ready" && condition["status"] == "True");
                if ready { "Ready" } else { "NotReady" }.into()
            }),
            column("Roles", |_| "control-plane".into()),
        ]),
        ("", "Event") => {
            ends_with_age = false;
            columns = vec![
                column("Last Seen", |p| p.since(&p.data()["lastTimestamp"])),
                column("Type", |p| text(&p.data()["type"])),
                column("Reason", |p| text(&p.data()["reason"])),
                column("Object", event_object),
                column("Message", |p| {
                    p.data()["message"].as_str().unwrap_or("").to_owned()
                }),
                wide("Name", name),
            ];
        }
        ("apps", "Deployment") => columns.extend([
            column("Ready", |p| {
                format!(
                    "{}/{}",
                    number(&p.data()["status"]["readyReplicas"]),
                    number(&p.data()["spec"]["replicas"])
                )
            }),
            column("Up-to-date", |p| {
                number(&p.data()["status"]["updatedReplicas"]).to_string()
            }),
            column("Available", |p| {
                number(&p.data()["status"]["availableReplicas"]).to_string()
            }),
        ]),
        ("apps", "ReplicaSet") => columns.extend([
            column("Desired", |p| {
                number(&p.data()["spec"]["replicas"]).to_string()
            }),
            column("Current", |p| {
                number(&p.data()["status"]["replicas"]).to_string()
            }),
            column("Ready", |p| {
                number(&p.data()["status"]["readyReplicas"]).to_string()
            }),
        ]),
        ("discovery.k8s.io", "EndpointSlice") => columns.extend([
            column("AddressType", |p| text(&p.data()["addressType"])),
            column("Ports", |p| {
                let ports: Vec<String> = p.data()["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|port| text(&port["port"]))
                    .collect();
                if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }
            }),
            column("Endpoints", |p| {
                let addresses: Vec<String> = p.data()["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|endpoint| {
                        endpoint["addresses"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .map(|address| text(&address))
                    .collect();
                if addresses.is_empty() {
                    "<unset>".into()
                } else {
                    addresses.join(",")
                }
            }),
        ]),
        // Sail's CRDs' printer columns.
        ("sailoperator.io", "Istio" | "IstioCNI") => columns.extend([
            column("Status", |p| text(&p.data()["status"]["state"])),
            column("Version", |p| text(&p.data()["spec"]["version"])),
        ]),
        ("metallb.io", "IPAddressPool") => columns.extend([
            column("Auto Assign", |p| {
                (p.data()["spec"]["autoAssign"].as_bool() != Some(false)).to_string()
            }),
            column("Avoid Buggy IPs", |p| {
                (p.data()["spec"]["avoidBuggyIPs"].as_bool() == Some(true)).to_string()
            }),
            column("Addresses", |p| {
                let addresses: Vec<String> = p.data()["spec"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                format!("[\"{}\"]", addresses.join("\",\""))
            }),
        ]),
        _ => {}
    }
    if ends_with_age {
        columns.push(column("Age", age));
    }
    match (resource.group, resource.kind) {
        ("", "Pod") => columns.extend([
            wide("IP", |p| text(&p.data()["status"]["podIP"])),
            wide("Node", |p| text(&p.data()["spec"]["nodeName"])),
            wide("Nominated Node", |p| {
                text(&p.data()["status"]["nominatedNodeName"])
            }),
            wide("Readiness Gates", |_| "<none>".into()),
        ]),
        ("", "Service") => columns.push(wide("Selector", |p| {
            selector_text(&p.data()["spec"]["selector"])
        })),
        ("", "Node") => columns.extend([
            column("Version", |p| {
                text(&p.data()["status"]["nodeInfo"]["kubeletVersion"])
            }),
            wide("Internal-IP", |p| {
                p.data()["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|address| address["type"] == "InternalIP")
                    .map_or_else(|| "<none>".into(), |address| text(&address["address"]))
            }),
            wide("External-IP", |_| "<none>".into()),
            wide("OS-Image", |p| {
                text(&p.data()["status"]["nodeInfo"]["osImage"])
            }),
            wide("Kernel-Version", |p| {
                text(&p.data()["status"]["nodeInfo"]["kernelVersion"])
            }),
            wide("Container-Runtime", |p| {
                text(&p.data()["status"]["nodeInfo"]["containerRuntimeVersion"])
            }),
        ]),
        ("apps", "Deployment" | "ReplicaSet") => columns.extend([
            wide("Containers", |p| {
                containers_of(&p.data()["spec"]["template"]["spec"], "name")
            }),
            wide("Images", |p| {
                containers_of(&p.data()["spec"]["template"]["spec"], "image")
            }),
            wide("Selector", |p| selector_text(&p.data()["spec"]["selector"])),
        ]),
        _ => {}
    }
    columns
}

/// A Table of `objects`, each row carrying its full object (`includeObject=Object`).
pub fn table(
    resource: &Resource,
    objects: &[DynamicObject],
    resource_version: u64,
    continue_token: Option<&str>,
) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let columns = columns(resource);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|column| {
            let format = if column.name == "Name" { "name" } else { "" };
            json!({"name": column.name, "type": "string", "format": format, "description": column.name, "priority": column.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let printed = Printed { object, now };
            let cells: Vec<String> = columns
                .iter()
                .map(|column| (column.value)(&printed))
                .collect();
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// Whether the client asked for a Table (`kubectl get` does).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{RESOURCES, id_of};
    use crate::apiserver::test_objects::object;

    fn cells(kind: (&str, &str), value: Value) -> Vec<String> {
        let table = table(&RESOURCES[id_of(kind.0, kind.1)], &[object(value)], 9, None);
        table["rows"][0]["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|cell| cell.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn services_print_like_kubectl_shows_them() {
        let row = cells(
            ("", "Service"),
            json!({"metadata": {"name": "helloworld", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.11.0.7", "selector": {"app": "helloworld"}, "ports": [{"port": 5000, "protocol": "TCP"}]}}),
        );
        assert_eq!(
            row[..5],
            ["helloworld", "ClusterIP", "10.11.0.7", "<none>", "5000/TCP"]
        );
        assert_eq!(row[6], "app=helloworld");
        let gateway = cells(
            ("", "Service"),
            json!({"metadata": {"name": "istio-eastwestgateway"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.11.0.9", "ports": [{"port": 15443, "protocol": "TCP", "nodePort": 31443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.11.0"}]}}}),
        );
        assert_eq!(gateway[3..5], ["172.18.11.0", "15443:31443/TCP"]);
    }

    #[test]
    fn pods_print_their_state_as_kubectl_does() {
        let pod = |status: Value| {
            let row = cells(
                ("", "Pod"),
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n"}, "status": status}),
            );
            (row[1].clone(), row[2].clone(), row[3].clone())
        };
        assert_eq!(
            pod(
                json!({"phase": "Running", "podIP": "10.10.0.5", "containerStatuses": [{"ready": true, "restartCount": 0, "state": {"running": {}}}]})
            ),
            ("1/1".into(), "Running".into(), "0".into())
        );
        let (ready, status, restarts) = pod(
            json!({"phase": "Running", "containerStatuses": [{"ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2020-01-01T00:00:00Z"}}}]}),
        );
        assert_eq!(
            (ready.as_str(), status.as_str()),
            ("0/1", "CrashLoopBackOff")
        );
        assert!(
            restarts.starts_with("3 (") && restarts.ends_with(" ago)"),
            "{restarts}"
        );
        assert_eq!(pod(json!({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]})).1, "ErrImagePull");
        assert_eq!(pod(json!({"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]})).1, "Completed");
        let init = cells(
            ("", "Pod"),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"state": {"running": {}}}], "containerStatuses": [{"state": {"waiting": {"reason": "PodInitializing"}}}]}}),
        );
        assert_eq!(init[2], "Init:0/1");
        let terminating = cells(
            ("", "Pod"),
            json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}}),
        );
        assert_eq!(terminating[2], "Terminating");
    }

    #[test]
    fn durations_read_like_kubectls() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (-5, "<invalid>"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn table_requests_are_recognised() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
