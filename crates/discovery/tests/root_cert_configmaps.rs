//! Istio's namespace controller: `istio-ca-root-cert` in every namespace of the clusters this
//! control plane manages (its own, and a remote one only once its `istio-system` names it in
//! `topology.istio.io/controlPlaneClusters`), restored after deletion or edits.

mod common;

use causeway_discovery::root_cert_configmaps::{CONFIG_MAP_NAME, DATA_KEY};
use causeway_lab::testing::{eventually, fixtures};
use common::{WAIT, name_control_planes, two_cluster_mesh};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

/// The published roots in `namespace`, when its ConfigMap carries Istio's label.
async fn published(client: &kube::Client, namespace: &str) -> Option<String> {
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(CONFIG_MAP_NAME)
        .await
        .expect("ConfigMaps can be read")?;
    let labelled = config_map
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get("istio.io/config"))
        .is_some_and(|value| value == "true");
    labelled.then(|| config_map.data?.get(DATA_KEY).cloned())?
}

async fn eventually_published(client: &kube::Client, namespace: &str, roots: &str, what: &str) {
    eventually(what, WAIT, || async {
        (published(client, namespace).await.as_deref() == Some(roots)).then_some(())
    })
    .await;
}

async fn namespaces_holding_it(client: &kube::Client) -> Vec<String> {
    let mut namespaces: Vec<String> = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|config_map| config_map.metadata.namespace)
        .collect();
    namespaces.sort();
    namespaces
}

#[tokio::test]
async fn every_namespace_of_the_own_cluster_gets_the_roots_and_keeps_them() {
    let mesh = two_cluster_mesh(false).await;
    let roots = mesh.discovery.roots_pem();
    let client = &mesh.client01;
    for namespace in ["sample", "istio-system", "default", "kube-system"] {
        eventually_published(client, namespace, &roots, namespace).await;
    }
    assert_eq!(
        namespaces_holding_it(client).await,
        ["default", "istio-system", "kube-system", "sample"],
        "kube-public and kube-node-lease never run workloads and get none"
    );

    fixtures::namespace(client, "late", json!({})).await;
    eventually_published(client, "late", &roots, "a namespace made after start").await;

    let sample = Api::<ConfigMap>::namespaced(client.clone(), "sample");
    sample
        .delete(CONFIG_MAP_NAME, &DeleteParams::default())
        .await
        .unwrap();
    eventually_published(client, "sample", &roots, "the deleted ConfigMap, again").await;

    // An edit of our key and label is undone; a key of someone else's stays.
    let edit = json!({
        "metadata": {"labels": {"istio.io/config": "false"}},
        "data": {DATA_KEY: "not a certificate", "extra": "kept"},
    });
    sample
        .patch(
            CONFIG_MAP_NAME,
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await
        .unwrap();
    eventually_published(client, "sample", &roots, "the edited ConfigMap, restored").await;
    let restored = sample.get(CONFIG_MAP_NAME).await.unwrap();
    assert_eq!(restored.data.unwrap()["extra"], "kept");

    // The remote cluster's system namespace does not name cluster01: nothing is written there,
    // while everything above (later events in cluster01) went through.
    assert_eq!(
        namespaces_holding_it(&mesh.client02).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_remote_cluster_is_written_only_once_it_names_this_control_plane() {
    let mesh = two_cluster_mesh(false).await;
    let roots = mesh.discovery.roots_pem();
    eventually_published(&mesh.client01, "sample", &roots, "cluster01's own").await;

    // Another cluster's control plane is named: still not ours to write.
    name_control_planes(&mesh.client02, "cluster03").await;
    fixtures::namespace(&mesh.client01, "probe", json!({})).await;
    eventually_published(
        &mesh.client01,
        "probe",
        &roots,
        "a later namespace in cluster01",
    )
    .await;
    assert_eq!(
        namespaces_holding_it(&mesh.client02).await,
        Vec::<String>::new()
    );

    // The seeds' step: `kubectl annotate namespace istio-system topology.istio.io/controlPlaneClusters=cluster01`.
    name_control_planes(&mesh.client02, "cluster03,cluster01").await;
    for namespace in ["sample", "istio-system", "default"] {
        eventually_published(&mesh.client02, namespace, &roots, namespace).await;
    }
    fixtures::namespace(&mesh.client02, "late", json!({})).await;
    eventually_published(
        &mesh.client02,
        "late",
        &roots,
        "a remote namespace made later",
    )
    .await;
}
