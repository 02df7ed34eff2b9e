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
