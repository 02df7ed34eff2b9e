//! The injection webhooks' `caBundle` in a remote cluster: set to the mesh roots once the remote
//! cluster's `istio-system` names this control plane in `topology.istio.io/controlPlaneClusters`
//! (as istiod with `EXTERNAL_ISTIOD` does), never before, and restored after an edit. Webhooks
//! of another revision or calling another namespace's discovery are left alone.

mod common;

use causeway_lab::testing::eventually;
use common::{WAIT, name_control_planes, two_cluster_mesh};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::time::Duration;

/// A remote profile's webhook: it calls the cluster's `istiod` Service in `namespace`.
fn remote_webhook(name: &str, revision: &str, namespace: &str) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "sidecar-injector", "istio.io/rev": revision}},
        "webhooks": [{
            "name": "namespace.sidecar-injector.istio.io",
            "clientConfig": {"service": {"name": "istiod", "namespace": namespace, "path": "/inject/cluster/cluster02/net/network2", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))
    .unwrap()
}

async fn bundle(client: &kube::Client, name: &str) -> Option<String> {
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .unwrap();
    let webhook = configuration.webhooks?.into_iter().next()?;
    webhook
        .client_config
        .ca_bundle
        .map(|bytes| String::from_utf8(bytes.0).unwrap())
}

/// Waits until the default revision's webhook trusts `roots`.
async fn eventually_trusted(client: &kube::Client, roots: &str, what: &str) {
    eventually(what, WAIT, || async {
        (bundle(client, "istio-sidecar-injector").await.as_deref() == Some(roots)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_remote_clusters_webhooks_trust_discovery_once_it_names_this_control_plane() {
    let mesh = two_cluster_mesh(false).await;
    let roots = mesh.discovery.roots_pem();
    let webhooks = Api::<MutatingWebhookConfiguration>::all(mesh.client02.clone());
    for (name, revision, namespace) in [
        ("istio-sidecar-injector", "default", "istio-system"),
        ("istio-sidecar-injector-canary", "canary", "istio-system"),
        ("other-mesh-injector", "default", "other-system"),
    ] {
        webhooks
            .create(
                &PostParams::default(),
                &remote_webhook(name, revision, namespace),
            )
            .await
            .unwrap();
    }

    // Not named yet: after a few refreshes, still no bundle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(bundle(&mesh.client02, "istio-sidecar-injector").await, None);

    // The seeds' step.
    name_control_planes(&mesh.client02, "cluster01").await;
    eventually_trusted(&mesh.client02, &roots, "the remote webhook's caBundle").await;
    assert_eq!(
        bundle(&mesh.client02, "istio-sidecar-injector-canary").await,
        None,
        "another revision"
    );
    assert_eq!(
        bundle(&mesh.client02, "other-mesh-injector").await,
        None,
        "another namespace's discovery"
    );

    // An edited bundle is put back.
    let mut edited = webhooks.get("istio-sidecar-injector").await.unwrap();
    edited.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
        Some(k8s_openapi::ByteString(b"not a certificate".to_vec()));
    webhooks
        .replace("istio-sidecar-injector", &PostParams::default(), &edited)
        .await
        .unwrap();
    eventually_trusted(&mesh.client02, &roots, "the edited caBundle, restored").await;
}
