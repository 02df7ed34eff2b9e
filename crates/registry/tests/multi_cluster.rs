//! The registry against real (lab) API servers: remote secrets added, rotated, broken and deleted;
//! a remote API server killed and restarted; readiness changes; a Service only one cluster has.

use causeway_lab::apiserver::RunningApiServer;
use causeway_lab::testing::fixtures::{self, TestPod};
use causeway_lab::testing::{self as lab, eventually};
use causeway_model::{MeshSnapshot, SyncState};
use causeway_registry::{Registry, RegistryConfig};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const HELLOWORLD: &str = "helloworld.sample.svc.cluster.local";

async fn start_cluster(
    name: &str,
    subnet: &str,
    dir: &Path,
    network: &str,
) -> (RunningApiServer, kube::Client) {
    let (server, client) = fixtures::mesh_cluster(name, subnet, dir, network).await;
    fixtures::namespace(&client, "sample", json!({})).await;
    (server, client)
}

fn registry_config() -> RegistryConfig {
    RegistryConfig {
        network: "network1".into(),
        debounce: Duration::from_millis(10),
        remote_cluster_timeout: Duration::from_secs(5),
        ..RegistryConfig::new("cluster01")
    }
}

async fn wait_for<T>(
    registry: &Registry,
    what: &str,
    check: impl Fn(&MeshSnapshot) -> Option<T>,
) -> T {
    let snapshots = registry.snapshots.clone();
    eventually(what, WAIT, || {
        let snapshot: Arc<MeshSnapshot> = snapshots.borrow().clone();
        let found = check(&snapshot);
        async move { found }
    })
    .await
}

fn endpoint_summary(snapshot: &MeshSnapshot, fqdn: &str) -> Vec<(String, String, String, bool)> {
    snapshot
        .endpoints_of(fqdn)
        .iter()
        .map(|e| {
            (
                e.cluster.clone(),
                e.network.clone(),
                e.address.to_string(),
                e.ready,
            )
        })
        .collect()
}

fn state_of(snapshot: &MeshSnapshot, cluster: &str) -> Option<SyncState> {
    snapshot.cluster(cluster).map(|c| c.state.clone())
}

async fn service_account_token(client: &kube::Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if accounts.get_opt(name).await.unwrap().is_none() {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap();
    }
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap();
    issued.status.unwrap().token
}

async fn put_secret(client: &kube::Client, secret: &Secret) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "istio-system");
    let name = secret.metadata.name.clone().unwrap();
    match secrets.get_opt(&name).await.unwrap() {
        Some(existing) => {
            let mut replacement = secret.clone();
            replacement.metadata.resource_version = existing.metadata.resource_version;
            // `stringData` merges into `data`; start from empty data so the keys are exactly these.
            replacement.data = None;
            secrets
                .replace(&name, &PostParams::default(), &replacement)
                .await
                .unwrap();
        }
        None => {
            secrets
                .create(&PostParams::default(), secret)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_clusters_join_rotate_survive_outages_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (_one, client01) = start_cluster("cluster01", "10.96.0.0/16", dir.path(), "network1").await;
    let (two, client02) = start_cluster("cluster02", "10.97.0.0/16", dir.path(), "network2").await;
    fixtures::service(
        &client01,
        "sample",
        "helloworld",
        "helloworld",
        &[("http", 5000)],
    )
    .await;
    fixtures::service(
        &client02,
        "sample",
        "helloworld",
        "helloworld",
        &[("http", 5000)],
    )
    .await;
    let remote_only = fixtures::service(
        &client02,
        "sample",
        "only-in-two",
        "only",
        &[("http", 8080)],
    )
    .await;
    let pod = |name, app, ip, ready| TestPod {
        name,
        app,
        service_account: "helloworld",
        ip,
        ready,
        labels: json!({}),
    };
    fixtures::pod(
        &client01,
        "sample",
        pod("hw-v1", "helloworld", "10.10.0.5", true),
    )
    .await;
    fixtures::pod(
        &client02,
        "sample",
        pod("hw-v2", "helloworld", "10.20.0.5", true),
    )
    .await;
    fixtures::pod(
        &client02,
        "sample",
        pod("only-1", "only", "10.20.0.9", true),
    )
    .await;

    let registry = Registry::start(registry_config(), client01.clone());
    let mut ready = registry.ready.clone();
    tokio::time::timeout(WAIT, ready.wait_for(|ready| *ready))
        .await
        .unwrap()
        .unwrap();
    let local_only = wait_for(&registry, "cluster01's endpoints", |s| {
        let summary = endpoint_summary(s, HELLOWORLD);
        (summary.len() == 1).then_some(summary)
    })
    .await;
    assert_eq!(
        local_only,
        [(
            "cluster01".into(),
            "network1".into(),
            "10.10.0.5".into(),
            true
        )]
    );
    assert!(
        !registry
            .snapshot()
            .services
            .contains_key("only-in-two.sample.svc.cluster.local")
    );

    // Added: the remote secret brings cluster02's endpoints and its cluster-only Service.
    let access02 = lab::access("cluster02", &two);
    put_secret(&client01, &fixtures::remote_secret("cluster02", &access02)).await;
    let both = wait_for(&registry, "cluster02's endpoints", |s| {
        let summary = endpoint_summary(s, HELLOWORLD);
        (summary.len() == 2 && state_of(s, "cluster02") == Some(SyncState::Synced))
            .then_some(summary)
    })
    .await;
    assert_eq!(
        both[1],
        (
            "cluster02".into(),
            "network2".into(),
            "10.20.0.5".into(),
            true
        )
    );
    let snapshot = registry.snapshot();
    let status = snapshot.cluster("cluster02").unwrap();
    assert_eq!(
        status.secret.as_deref(),
        Some("istio-system/istio-remote-secret-cluster02")
    );
    assert_eq!(status.network, "network2");
    let only = snapshot
        .services
        .get("only-in-two.sample.svc.cluster.local")
        .expect("a remote-only Service is a mesh service");
    let remote_ip = remote_only.spec.unwrap().cluster_ip.unwrap();
    assert_eq!(only.vip_for("cluster02").unwrap().to_string(), remote_ip);
    let auto = only.vip_for("cluster01").unwrap().to_string();
    assert!(auto.starts_with("240.240."), "{auto}");
    let identity = snapshot.endpoints_of(HELLOWORLD)[1].identity.clone();
    assert_eq!(
        identity.as_deref(),
        Some("spiffe://cluster.local/ns/sample/sa/helloworld")
    );

    // A pod going unready is an endpoint-only push naming just that service.
    let mut pushes = registry.pushes.subscribe();
    fixtures::set_pod(&client02, "sample", "hw-v2", None, false).await;
    let push = tokio::time::timeout(WAIT, async {
        loop {
            let push = pushes.recv().await.unwrap();
            if push
                .snapshot
                .endpoints_of(HELLOWORLD)
                .iter()
                .any(|e| !e.ready)
            {
                return push;
            }
        }
    })
    .await
    .expect("a push for the unready pod");
    assert!(!push.full, "readiness is not a full push");
    assert!(push.changed_endpoints.contains(HELLOWORLD));
    assert!(
        !push
            .changed_endpoints
            .contains("only-in-two.sample.svc.cluster.local")
    );
    fixtures::set_pod(&client02, "sample", "hw-v2", None, true).await;

    // Rotated: a service-account token replaces the admin token; the cluster stays synced.
    let reader_token =
        service_account_token(&client02, "istio-system", "istio-reader-service-account").await;
    let mut rotated = access02.clone();
    rotated.token = reader_token;
    put_secret(&client01, &fixtures::remote_secret("cluster02", &rotated)).await;
    fixtures::pod(
        &client02,
        "sample",
        pod("hw-v2b", "helloworld", "10.20.0.6", true),
    )
    .await;
    wait_for(
        &registry,
        "a change seen through the rotated credentials",
        |s| {
            (endpoint_summary(s, HELLOWORLD).len() == 3
                && state_of(s, "cluster02") == Some(SyncState::Synced))
            .then_some(())
        },
    )
    .await;

    // Broken credentials: not synced, last known endpoints kept.
    let mut forged = access02.clone();
    forged.token = "forged-token".into();
    put_secret(&client01, &fixtures::remote_secret("cluster02", &forged)).await;
    let reason = wait_for(
        &registry,
        "cluster02 not synced with a forged token",
        |s| match state_of(s, "cluster02") {
            // First "listing", while the new watches start; then the API server's refusal.
            Some(SyncState::NotSynced(reason))
                if reason.contains("401") || reason.to_lowercase().contains("unauthorized") =>
            {
                Some(reason)
            }
            _ => None,
        },
    )
    .await;
    assert!(reason.contains("watching"), "{reason}");
    assert_eq!(endpoint_summary(&registry.snapshot(), HELLOWORLD).len(), 3);
    put_secret(&client01, &fixtures::remote_secret("cluster02", &access02)).await;
    wait_for(&registry, "cluster02 synced again", |s| {
        (state_of(s, "cluster02") == Some(SyncState::Synced)).then_some(())
    })
    .await;

    // The API server dies: not synced, endpoints kept; it returns: synced, and changes flow again.
    let address = two.address;
    two.shutdown().await;
    wait_for(
        &registry,
        "cluster02 not synced while its API server is down",
        |s| matches!(state_of(s, "cluster02"), Some(SyncState::NotSynced(_))).then_some(()),
    )
    .await;
    assert_eq!(
        endpoint_summary(&registry.snapshot(), HELLOWORLD).len(),
        3,
        "last known endpoints are kept"
    );
    let mut config = lab::config("cluster02", dir.path());
    config.service_subnet = "10.97.0.0/16".parse().unwrap();
    config.listen = address;
    let two_again = lab::start(config).await;
    let client02 = lab::client("cluster02", &two_again).await;
    fixtures::set_pod(&client02, "sample", "hw-v2b", None, false).await;
    wait_for(
        &registry,
        "cluster02 synced after its restart, with the change made since",
        |s| {
            let unready = s
                .endpoints_of(HELLOWORLD)
                .iter()
                .filter(|e| !e.ready)
                .count();
            (state_of(s, "cluster02") == Some(SyncState::Synced) && unready == 1).then_some(())
        },
    )
    .await;

    // Deleted: cluster02's endpoints and its only Service leave the mesh (Istio issue 27187).
    let secrets: Api<Secret> = Api::namespaced(client01.clone(), "istio-system");
    secrets
        .delete("istio-remote-secret-cluster02", &DeleteParams::default())
        .await
        .unwrap();
    let after = wait_for(&registry, "cluster02 gone", |s| {
        let summary = endpoint_summary(s, HELLOWORLD);
        (summary.len() == 1 && s.cluster("cluster02").is_none()).then_some(summary)
    })
    .await;
    assert_eq!(after[0].0, "cluster01");
    assert!(
        !registry
            .snapshot()
            .services
            .contains_key("only-in-two.sample.svc.cluster.local")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_remote_secrets_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (_one, client01) = start_cluster("cluster01", "10.96.0.0/16", dir.path(), "network1").await;
    let registry = Registry::start(registry_config(), client01.clone());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "istio-remote-secret-broken", "labels": {"istio/multiCluster": "true"}},
        "stringData": {"broken": "clusters: [this is not: a kubeconfig"}
    }))
    .unwrap();
    put_secret(&client01, &secret).await;
    let reason = wait_for(
        &registry,
        "the broken cluster's status",
        |s| match state_of(s, "broken") {
            Some(SyncState::Failed(reason)) => Some(reason),
            _ => None,
        },
    )
    .await;
    assert!(
        reason.contains("broken") && reason.contains("istio-system/istio-remote-secret-broken"),
        "{reason}"
    );

    // A secret naming the control plane's own cluster is ignored rather than replacing it.
    let own = fixtures::remote_secret("cluster01", &lab::access("cluster01", &_one));
    put_secret(&client01, &own).await;
    fixtures::service(&client01, "sample", "after", "after", &[("http", 80)]).await;
    wait_for(&registry, "the local cluster still watched", |s| {
        s.services
            .contains_key("after.sample.svc.cluster.local")
            .then_some(())
    })
    .await;
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.cluster("cluster01").unwrap().secret, None);
    // Readiness waits for remote clusters only up to the timeout.
    let mut ready = registry.ready.clone();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|ready| *ready))
        .await
        .unwrap()
        .unwrap();
}

async fn put_service_entry(client: &kube::Client, name: &str, spec: serde_json::Value) {
    put_networking_object(client, "ServiceEntry", name, spec).await;
}

/// Creates or changes the `networking.istio.io` object `kind` `sample/name`.
async fn put_networking_object(
    client: &kube::Client,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        kind,
    ));
    let entries: Api<DynamicObject> = Api::namespaced_with(client.clone(), "sample", &resource);
    let object = json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "sample"},
        "spec": spec,
    });
    // Created, or changed with a merge patch (the lab does not serve server-side apply).
    if entries.get_opt(name).await.unwrap().is_none() {
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        entries
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    } else {
        entries
            .patch(name, &PatchParams::default(), &Patch::Merge(&object))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entries_define_services_until_they_are_deleted_or_broken() {
    use causeway_model::{DefinedBy, Location, TlsMode};
    let dir = tempfile::tempdir().unwrap();
    let (_one, client01) = start_cluster("cluster01", "10.96.0.0/16", dir.path(), "network1").await;
    let registry = Registry::start(registry_config(), client01.clone());
    // Seed 002's entry: another mesh's httpbin behind its gateway.
    let seed = json!({
        "hosts": ["httpbin.bar.global"],
        "location": "MESH_INTERNAL",
        "ports": [{"name": "http1", "number": 8000, "protocol": "http"}],
        "resolution": "DNS",
        "addresses": ["240.0.0.2"],
        "endpoints": [{"address": "172.18.12.0", "ports": {"http1": 15443}}],
    });
    put_service_entry(&client01, "httpbin-bar", seed.clone()).await;
    let service = wait_for(&registry, "the entry's service", |s| {
        s.services.get("httpbin.bar.global").cloned()
    })
    .await;
    assert_eq!(
        service.defined_by,
        DefinedBy::ServiceEntry(Location::MeshInternal)
    );
    assert_eq!(
        service.vip_for("cluster01"),
        Some("240.0.0.2".parse().unwrap())
    );
    // `resolution: DNS`: the proxies resolve the endpoint (an IP address here) themselves.
    let snapshot = registry.snapshot();
    assert!(snapshot.endpoints_of("httpbin.bar.global").is_empty());
    let endpoints = &service.dns_endpoints;
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].host, "172.18.12.0");
    assert_eq!(endpoints[0].port_for("http1"), Some(15443));
    assert_eq!(endpoints[0].tls_mode, TlsMode::Istio);

    // Without addresses, an external entry gets one from Istio's auto-allocation range.
    put_service_entry(
        &client01,
        "outside",
        json!({"hosts": ["api.outside.example"], "location": "MESH_EXTERNAL", "resolution": "STATIC",
               "ports": [{"name": "http", "number": 80}], "endpoints": [{"address": "10.96.9.9"}]}),
    )
    .await;
    let outside = wait_for(&registry, "the external entry", |s| {
        s.services.get("api.outside.example").cloned()
    })
    .await;
    let vip = outside.vip_for("cluster01").unwrap().to_string();
    assert!(vip.starts_with("240.240."), "{vip}");
    assert_eq!(
        registry.snapshot().endpoints_of("api.outside.example")[0].tls_mode,
        TlsMode::Disabled
    );

    // An entry made invalid is dropped, as Istio's validation would refuse it; fixed, it returns.
    let mut broken = seed.clone();
    broken["location"] = json!("INSIDE");
    put_service_entry(&client01, "httpbin-bar", broken).await;
    wait_for(&registry, "the broken entry gone", |s| {
        (!s.services.contains_key("httpbin.bar.global")
            && !s.endpoints.contains_key("httpbin.bar.global"))
        .then_some(())
    })
    .await;
    put_service_entry(&client01, "httpbin-bar", seed).await;
    wait_for(&registry, "the entry back", |s| {
        s.services.contains_key("httpbin.bar.global").then_some(())
    })
    .await;

    // Deleted, its service and endpoints go; the other entry stays.
    use kube::api::DynamicObject;
    use kube::core::{ApiResource, GroupVersionKind};
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        "ServiceEntry",
    ));
    Api::<DynamicObject>::namespaced_with(client01.clone(), "sample", &resource)
        .delete("httpbin-bar", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&registry, "the deleted entry gone", |s| {
        (!s.services.contains_key("httpbin.bar.global")).then_some(())
    })
    .await;
    assert!(
        registry
            .snapshot()
            .services
            .contains_key("api.outside.example")
    );

    // A selector makes the namespace's WorkloadEntries with those labels the endpoints, and
    // follows them as they come and go.
    put_service_entry(
        &client01,
        "vm-db",
        json!({"hosts": ["db.vms.example"], "location": "MESH_INTERNAL", "resolution": "STATIC",
               "ports": [{"name": "tcp", "number": 5432}],
               "workloadSelector": {"labels": {"app": "vm-db"}}}),
    )
    .await;
    put_networking_object(
        &client01,
        "WorkloadEntry",
        "vm-db-1",
        json!({"address": "10.30.0.4", "labels": {"app": "vm-db"}, "serviceAccount": "db",
               "network": "vm-network", "weight": 3}),
    )
    .await;
    put_networking_object(
        &client01,
        "WorkloadEntry",
        "vm-web-1",
        json!({"address": "10.30.0.5", "labels": {"app": "vm-web"}}),
    )
    .await;
    let selected = wait_for(&registry, "the selected WorkloadEntry", |s| {
        let endpoints = s.endpoints_of("db.vms.example");
        (!endpoints.is_empty()).then(|| endpoints.to_vec())
    })
    .await;
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_eq!(selected[0].address.to_string(), "10.30.0.4");
    assert_eq!(
        (
            selected[0].network.as_str(),
            selected[0].weight,
            selected[0].tls_mode
        ),
        ("vm-network", 3, TlsMode::Istio)
    );
    assert_eq!(
        selected[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/sample/sa/db")
    );
    put_networking_object(
        &client01,
        "WorkloadEntry",
        "vm-web-1",
        json!({"address": "10.30.0.5", "labels": {"app": "vm-db"}}),
    )
    .await;
    wait_for(
        &registry,
        "the relabelled WorkloadEntry selected too",
        |s| (s.endpoints_of("db.vms.example").len() == 2).then_some(()),
    )
    .await;
}
