//! `causeway remote-clusters` and `causeway proxy-status`: istioctl's commands of the same names,
//! reading discovery's debug endpoints (`/debug/clusterz`, `/debug/syncz`).

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use std::time::Duration;

use crate::cluster_client::{self, TargetArgs};
use crate::table::table;
use k8s_openapi::api::core::v1::Pod;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct StatusArgs {
    /// Discovery's monitoring address (its --monitoring-address), for a discovery that runs
    /// outside any cluster; without it, the istiod pod of the kubeconfig's cluster is asked,
    /// through its API server, as istioctl does
    #[arg(long, env = "CAUSEWAY_DISCOVERY_MONITORING")]
    discovery_address: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
    /// Namespace of the control plane's pods
    #[arg(long, short = 'i', default_value = "istio-system")]
    istio_namespace: String,
}

/// Discovery's monitoring port in its pod.
const MONITORING_PORT: u16 = 15014;

async fn get_json(address: &str, path: &str) -> anyhow::Result<Value> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach discovery's monitoring port at {address}; is `causeway discovery` running, and is --discovery-address right?"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP handshake with discovery failed")?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, address)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("the request to discovery failed")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading discovery's answer")?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "discovery answered {path} with {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("discovery's answer to {path} is not JSON"))
}

/// Asks a running istiod pod of the cluster, through the API server's pod proxy.
async fn get_json_from_pod(args: &StatusArgs, path: &str) -> anyhow::Result<Value> {
    let client = cluster_client::connect(&args.target).await?;
    let context = args.target.context.as_deref().unwrap_or("(current)");
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &args.istio_namespace);
    let listed = pods
        .list(&kube::api::ListParams::default().labels("app=istiod"))
        .await
        .with_context(|| format!("cannot list the istiod pods of context {context}"))?;
    let Some(pod) = listed.items.iter().find(|pod| {
        pod.status
            .as_ref()
            .is_some_and(|status| status.phase.as_deref() == Some("Running"))
    }) else {
        bail!(
            "no running istiod pod in {} of context {context}: in a remote cluster ask its control plane's cluster (--context), or pass --discovery-address for a discovery outside the clusters",
            args.istio_namespace
        );
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/pods/{name}:{MONITORING_PORT}/proxy{path}",
        args.istio_namespace
    ))
    .body(Vec::new())
    .context("building the request")?;
    let text = client
        .request_text(request)
        .await
        .with_context(|| format!("istiod pod {name} of context {context} did not answer {path}"))?;
    serde_json::from_str(&text)
        .with_context(|| format!("istiod pod {name}'s answer to {path} is not JSON"))
}

fn fetch(args: &StatusArgs, path: &str) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let answer = async {
            match &args.discovery_address {
                Some(address) => get_json(address, path).await,
                None => get_json_from_pod(args, path).await,
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .with_context(|| {
                format!("discovery did not answer {path} within {REQUEST_TIMEOUT:?}")
            })?
    })
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) if !text.is_empty() => text.clone(),
        _ => "-".into(),
    }
}

pub fn remote_clusters_table(clusterz: &Value) -> String {
    let rows: Vec<Vec<String>> = clusterz
        .as_array()
        .into_iter()
        .flatten()
        .map(|cluster| {
            vec![
                text(cluster, "id"),
                text(cluster, "secret"),
                text(cluster, "sync_status"),
            ]
        })
        .collect();
    table(&["NAME", "SECRET", "STATUS"], &rows, &[])
}

pub fn proxy_status_table(syncz: &Value) -> String {
    let rows: Vec<Vec<String>> = syncz
        .as_array()
        .into_iter()
        .flatten()
        .map(|proxy| {
            let state = |short: &str| {
                proxy
                    .get("types")
                    .and_then(|types| types.get(short))
                    .and_then(|status| status.get("state"))
                    .and_then(Value::as_str)
                    .unwrap_or("NOT SENT")
                    .to_owned()
            };
            vec![
                text(proxy, "proxy"),
                text(proxy, "cluster_id"),
                text(proxy, "proxy_type"),
                state("CDS"),
                state("LDS"),
                state("EDS"),
                state("RDS"),
            ]
        })
        .collect();
    table(
        &["NAME", "CLUSTER", "TYPE", "CDS", "LDS", "EDS", "RDS"],
        &rows,
        &[],
    )
}

pub fn remote_clusters(args: StatusArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        remote_clusters_table(&fetch(&args, "/debug/clusterz")?)
    );
    Ok(())
}

pub fn proxy_status(args: StatusArgs) -> anyhow::Result<()> {
    print!("{}", proxy_status_table(&fetch(&args, "/debug/syncz")?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_fill_gaps() {
        let clusters = json!([
            {"id": "cluster01", "secret": null, "sync_status": "synced"},
            {"id": "cluster02", "secret": "istio-system/istio-remote-secret-cluster02", "sync_status": "syncing"}
        ]);
        assert_eq!(
            remote_clusters_table(&clusters),
            "NAME       SECRET                                      STATUS\n\
             cluster01  -                                           synced\n\
             cluster02  istio-system/istio-remote-secret-cluster02  syncing\n"
        );
        let proxies = json!([{"proxy": "grpc-client", "cluster_id": "cluster01", "proxy_type": "grpc",
                              "types": {"LDS": {"state": "SYNCED"}, "EDS": {"state": "STALE"}}}]);
        let printed = proxy_status_table(&proxies);
        assert!(
            printed
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("grpc-client  cluster01  grpc  NOT SENT  SYNCED  STALE  NOT SENT"),
            "{printed}"
        );
    }
}
