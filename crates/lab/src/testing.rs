//! Test helpers: in-process API servers on `127.0.0.1:0` and `kube` clients for them.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use kube::config::KubeConfigOptions;

use crate::apiserver::{self, ApiServerConfig, RunningApiServer};
use crate::kubeconfig::{ClusterAccess, for_clusters};

/// Config for a test cluster whose data lives in `directory`.
pub fn config(name: &str, directory: &Path) -> ApiServerConfig {
    ApiServerConfig::new(
        name,
        directory.join(name),
        "10.96.0.0/16".parse().expect("a valid subnet"),
    )
}

pub async fn start(config: ApiServerConfig) -> RunningApiServer {
    apiserver::start(config)
        .await
        .expect("the test API server starts")
}

pub fn access(name: &str, server: &RunningApiServer) -> ClusterAccess {
    ClusterAccess {
        name: name.to_owned(),
        server: format!("https://{}", server.address),
        ca_pem: server.ca_pem.clone(),
        token: server.admin_token.clone(),
    }
}

/// A `kube` client for the server, built from the same kubeconfig entries the lab writes.
pub async fn client(name: &str, server: &RunningApiServer) -> kube::Client {
    client_with_token(name, server, &server.admin_token).await
}

pub async fn client_with_token(name: &str, server: &RunningApiServer, token: &str) -> kube::Client {
    let mut access = access(name, server);
    access.token = token.to_owned();
    let kubeconfig = for_clusters(&[access]);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the lab kubeconfig is valid");
    kube::Client::try_from(config).expect("a client for the lab kubeconfig")
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mesh fixtures: the objects the seeds' walkthroughs create, made through the API the way a
/// user's `kubectl apply` would, with pod status filled in where the lab has no kubelet yet.
pub mod fixtures {
    use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    use serde_json::{Value, json};

    use super::ClusterAccess;
    use crate::kubeconfig::{named, render};

    async fn create<K>(api: Api<K>, object: Value) -> K
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(object).expect("a well-formed fixture");
        api.create(&PostParams::default(), &object)
            .await
            .expect("the API server accepts the fixture")
    }

    pub async fn namespace(client: &kube::Client, name: &str, labels: Value) -> Namespace {
        let api = Api::<Namespace>::all(client.clone());
        match api.get_opt(name).await.expect("namespaces can be read") {
            Some(_) => {
                let patch = json!({"metadata": {"labels": labels}});
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("namespace labels can be patched")
            }
            None => create(api, json!({"metadata": {"name": name, "labels": labels}})).await,
        }
    }

    /// A started API server for cluster `name` (service subnet `subnet`, data under `directory`)
    /// with `istio-system` labelled for `network` (none when empty), and an admin client.
    pub async fn mesh_cluster(
        name: &str,
        subnet: &str,
        directory: &std::path::Path,
        network: &str,
    ) -> (crate::apiserver::RunningApiServer, kube::Client) {
        let mut config = super::config(name, directory);
        config.service_subnet = subnet.parse().expect("a valid service subnet");
        let server = super::start(config).await;
        let client = super::client(name, &server).await;
        let labels = if network.is_empty() {
            json!({})
        } else {
            json!({"topology.istio.io/network": network})
        };
        namespace(&client, "istio-system", labels).await;
        (server, client)
    }

    /// A ClusterIP Service selecting `app=<app>` with `ports` as `(name, port)`.
    pub async fn service(
        client: &kube::Client,
        namespace: &str,
        name: &str,
        app: &str,
        ports: &[(&str, u16)],
    ) -> Service {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(port_name, port)| json!({"name": port_name, "port": port, "targetPort": port}))
            .collect();
        create(
            Api::namespaced(client.clone(), namespace),
            json!({"metadata": {"name": name}, "spec": {"selector": {"app": app}, "ports": ports}}),
        )
        .await
    }

    /// An east-west gateway Service of `network`, with its LoadBalancer address set as metallb would.
    pub async fn network_gateway(client: &kube::Client, network: &str, address: &str) -> Service {
        let api: Api<Service> = Api::namespaced(client.clone(), "istio-system");
        create(
            api.clone(),
            json!({
                "metadata": {"name": "istio-eastwestgateway",
                             "labels": {"istio": "eastwestgateway", "topology.istio.io/network": network}},
                "spec": {"type": "LoadBalancer", "selector": {"istio": "eastwestgateway"},
                         "ports": [{"name": "status-port", "port": 15021}, {"name": "tls", "port": 15443},
                                   {"name": "tls-istiod", "port": 15012}, {"name": "tls-webhook", "port": 15017}]}
            }),
        )
        .await;
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": address}]}}});
        api.patch_status(
            "istio-eastwestgateway",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("the gateway's status can be set")
    }

    /// A pod as its Deployment would make it.
    pub struct TestPod<'a> {
        pub name: &'a str,
        /// The `app` label, which the fixture Services select.
        pub app: &'a str,
        pub service_account: &'a str,
        pub ip: &'a str,
        pub ready: bool,
        /// More labels (`version`, `topology.istio.io/network`, ...).
        pub labels: Value,
    }

    /// A running, injected (`security.istio.io/tlsMode=istio`) pod with its IP and readiness set;
    /// its service account is made when missing, as the API server requires one.
    pub async fn pod(client: &kube::Client, namespace: &str, pod: TestPod<'_>) -> Pod {
        service_account(client, namespace, pod.service_account).await;
        let mut labels = json!({"app": pod.app, "security.istio.io/tlsMode": "istio"});
        if let (Some(all), Some(extra)) = (labels.as_object_mut(), pod.labels.as_object()) {
            all.extend(extra.clone());
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        create(
            api.clone(),
            json!({
                "metadata": {"name": pod.name, "labels": labels},
                "spec": {"serviceAccountName": pod.service_account,
                         "containers": [{"name": pod.app, "image": pod.app}]}
            }),
        )
        .await;
        set_pod(client, namespace, pod.name, Some(pod.ip), pod.ready).await
    }

    /// Sets a pod's IP (when given) and Ready condition, as the kubelet would.
    pub async fn set_pod(
        client: &kube::Client,
        namespace: &str,
        name: &str,
        ip: Option<&str>,
        ready: bool,
    ) -> Pod {
        let mut status = json!({"phase": "Running",
                                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        Api::<Pod>::namespaced(client.clone(), namespace)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .expect("the pod's status can be set")
    }

    /// A token for service account `namespace/name` (created when missing), valid for
    /// `audiences` (the API server's own when empty) for ten minutes.
    pub async fn service_account_token(
        client: &kube::Client,
        namespace: &str,
        name: &str,
        audiences: &[&str],
    ) -> String {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        service_account(client, namespace, name).await;
        let request: TokenRequest = serde_json::from_value(
            json!({"spec": {"audiences": audiences, "expirationSeconds": 600}}),
        )
        .expect("a well-formed token request");
        accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("the API server issues the token")
            .status
            .expect("an issued token")
            .token
    }

    /// Service account `namespace/name`, made when missing.
    pub async fn service_account(client: &kube::Client, namespace: &str, name: &str) {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        if accounts
            .get_opt(name)
            .await
            .expect("service accounts can be read")
            .is_none()
        {
            create(accounts, json!({"metadata": {"name": name}})).await;
        }
    }

    /// The remote secret `create-remote-secret --name <cluster>` prints, for `access`.
    pub fn remote_secret(cluster: &str, access: &ClusterAccess) -> Secret {
        let kubeconfig = render(&named(access, cluster));
        serde_json::from_value(json!({
            "metadata": {"name": format!("istio-remote-secret-{cluster}"), "namespace": "istio-system",
                         "labels": {"istio/multiCluster": "true"},
                         "annotations": {"networking.istio.io/cluster": cluster}},
            "stringData": {cluster: kubeconfig}
        }))
        .expect("a well-formed remote secret")
    }
}
