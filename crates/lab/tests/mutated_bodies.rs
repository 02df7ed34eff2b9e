//! Many requests with mangled bodies, from real objects cut, spliced and retyped: every one gets a
//! Kubernetes answer (never a panic, a hang or a 500), and what is stored stays well-formed.
//! `FUZZ_SEED` and `FUZZ_ROUNDS` replay a failure or run longer.

use causeway_lab::testing::{client, config, start};
use serde_json::{Value, json};

/// A small deterministic generator, so that a failure replays exactly.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

fn seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "labels": {"app": "a"}}, "spec": {"selector": {"app": "a"}, "ports": [{"port": 80, "targetPort": "http", "name": "http"}]}}),
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dep"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}]}}}}),
        ),
        (
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "data": {"a": "YQ=="}, "stringData": {"b": "c"}}),
        ),
        (
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pod", "labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"podIP": "10.0.0.1"}}),
        ),
        (
            "/apis/networking.istio.io/v1/namespaces/default/gateways",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}, "spec": {"selector": {"istio": "eastwestgateway"}, "servers": [{"port": {"number": 15443, "name": "tls", "protocol": "TLS"}, "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.local"]}]}}),
        ),
    ]
}

const REPLACEMENTS: &[&str] = &[
    "null",
    "[]",
    "{}",
    "\"\"",
    "-1",
    "99999999999999999999",
    "0.5",
    "\"\\u0000\"",
    "true",
    "[{}]",
    "{\"$patch\":\"delete\"}",
];

/// Replaces one value somewhere in the object (down a random path) with a hostile one.
fn mutate_value(value: &mut Value, random: &mut Lcg, depth: usize) {
    let stop_here = depth == 0 || random.below(3) == 0;
    match value {
        Value::Object(map) if !map.is_empty() && !stop_here => {
            let key = map.keys().nth(random.below(map.len())).cloned().unwrap();
            mutate_value(map.get_mut(&key).unwrap(), random, depth - 1);
        }
        Value::Array(items) if !items.is_empty() && !stop_here => {
            let index = random.below(items.len());
            mutate_value(&mut items[index], random, depth - 1);
        }
        _ => *value = serde_json::from_str(REPLACEMENTS[random.below(REPLACEMENTS.len())]).unwrap(),
    }
}

fn mutate_bytes(mut bytes: Vec<u8>, random: &mut Lcg) -> Vec<u8> {
    match random.below(3) {
        0 => bytes.truncate(random.below(bytes.len().max(1))),
        1 => {
            let index = random.below(bytes.len().max(1));
            if index < bytes.len() {
                const HOSTILE: &[u8] = b"{}[]\",:\\\x00\xff";
                bytes[index] = HOSTILE[random.below(HOSTILE.len())];
            }
        }
        _ => {
            let index = random.below(bytes.len().max(1));
            bytes.splice(index..index, b"\"$patch\":".iter().copied());
        }
    }
    bytes
}

#[tokio::test]
async fn mangled_bodies_get_kubernetes_answers_and_leave_the_store_well_formed() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client("cluster01", &server).await;
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut random = Lcg(seed);
    let seeds = seeds();
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..std::env::var("FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400)
    {
        let (collection, seed) = &seeds[random.below(seeds.len())];
        let name = seed["metadata"]["name"].as_str().unwrap();
        let mut object = seed.clone();
        if round % 5 != 0 {
            mutate_value(&mut object, &mut random, 6);
        }
        let mut body = serde_json::to_vec(&object).unwrap();
        if random.below(4) == 0 {
            body = mutate_bytes(body, &mut random);
        }
        let (method, path, content_type) = match random.below(7) {
            0 | 1 => ("POST", collection.to_string(), "application/json"),
            2 => ("PUT", format!("{collection}/{name}"), "application/json"),
            3 => (
                "PATCH",
                format!("{collection}/{name}"),
                "application/merge-patch+json",
            ),
            4 => (
                "PATCH",
                format!("{collection}/{name}"),
                "application/strategic-merge-patch+json",
            ),
            5 => (
                "PUT",
                format!("{collection}/{name}/status"),
                "application/json",
            ),
            _ => ("POST", collection.to_string(), "application/yaml"),
        };
        let request = http::Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", content_type)
            .body(body.clone())
            .unwrap();
        let code = match client.request::<Value>(request).await {
            Ok(_) => 200,
            Err(kube::Error::Api(status)) => status.code,
            Err(other) => panic!(
                "round {round}: {method} {path} with {} broke the connection: {other}",
                String::from_utf8_lossy(&body)
            ),
        };
        assert!(
            [200, 201, 400, 404, 409, 413, 415, 422].contains(&code),
            "round {round}: {method} {path} answered {code} to {}",
            String::from_utf8_lossy(&body)
        );
        *answers.entry(code).or_default() += 1;
    }
    // Both outcomes were exercised, not just refusals.
    assert!(
        answers.get(&200).copied().unwrap_or(0) + answers.get(&201).copied().unwrap_or(0) > 20,
        "{answers:?}"
    );
    assert!(
        answers.get(&400).copied().unwrap_or(0) + answers.get(&422).copied().unwrap_or(0) > 20,
        "{answers:?}"
    );
    for path in [
        "/api/v1/namespaces/default/services",
        "/apis/apps/v1/namespaces/default/deployments",
        "/api/v1/namespaces/default/secrets",
        "/api/v1/namespaces/default/pods",
        "/apis/networking.istio.io/v1/namespaces/default/gateways",
    ] {
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        let list: Value = client.request(request).await.unwrap();
        for item in list["items"].as_array().unwrap() {
            assert!(
                item["metadata"]["name"].is_string() && item["metadata"]["uid"].is_string(),
                "{item}"
            );
        }
    }
    server.shutdown().await;
}
