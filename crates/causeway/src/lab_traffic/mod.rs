//! `causeway lab traffic`: reads every proxy's access log in the lab's clusters and shows, for the
//! client pods' requests, which cluster and version answered and the path each took. With
//! `--expect`, it also checks them against the walkthrough's topology and exits non-zero on
//! anything else (the walkthroughs' last check).

mod analysis;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, LogParams};

use crate::cluster_client::{WhenUnset, client_for};
pub use analysis::Expect;
use analysis::{Gateway, ProxyLog};

#[derive(Args)]
pub struct TrafficArgs {
    /// The clients' namespace
    #[arg(long, short = 'n', default_value = "sample")]
    namespace: String,
    /// The clients' `app` label
    #[arg(long, default_value = "sleep")]
    client_app: String,
    /// Check the paths against the topology and every access-log line against what Envoy writes;
    /// exit 1 naming each request or line that differs
    #[arg(long, value_enum)]
    expect: Option<Expect>,
}

const PROXY_CONTAINER: &str = "istio-proxy";

fn ip_of(text: Option<&String>) -> Option<IpAddr> {
    text.and_then(|text| text.parse().ok())
}

/// One cluster's proxy logs and gateways (the pods running the router).
async fn collect(
    kubeconfig: &Path,
    cluster: &str,
) -> anyhow::Result<(Vec<ProxyLog>, Vec<Gateway>)> {
    let context = causeway_lab::kubeconfig::context_name(cluster);
    let client = client_for(Some(kubeconfig), Some(&context), WhenUnset::CurrentContext)
        .await?
        .client;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .with_context(|| format!("cannot list the pods of {context}"))?;
    let mut logs = Vec::new();
    let mut gateways: Vec<Gateway> = Vec::new();
    let mut gateway_labels: Vec<BTreeMap<String, String>> = Vec::new();
    for pod in pods.items {
        let Some(proxy) = pod.spec.as_ref().and_then(|spec| {
            spec.containers
                .iter()
                .find(|container| container.name == PROXY_CONTAINER)
        }) else {
            continue;
        };
        // A gateway (east-west or ingress) runs the router; a sidecar runs `proxy sidecar`.
        let is_gateway = proxy.args.as_deref().is_some_and(|args| {
            args.iter()
                .map(String::as_str)
                .take(2)
                .eq(["proxy", "router"])
        });
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
        let ip = ip_of(
            pod.status
                .as_ref()
                .and_then(|status| status.pod_ip.as_ref()),
        );
        if is_gateway {
            let name = labels.get("app").cloned().unwrap_or_else(|| name.clone());
            match gateways.iter_mut().find(|gateway| gateway.name == name) {
                Some(gateway) => gateway.pod_ips.extend(ip),
                None => gateways.push(Gateway {
                    cluster: cluster.to_owned(),
                    name,
                    pod_ips: ip.into_iter().collect(),
                    addresses: Vec::new(),
                }),
            }
            gateway_labels.push(labels.clone());
        }
        let params = LogParams {
            container: Some(PROXY_CONTAINER.into()),
            ..LogParams::default()
        };
        let text = Api::<Pod>::namespaced(client.clone(), &namespace)
            .logs(&name, &params)
            .await
            .with_context(|| {
                format!("cannot read the proxy log of {context} {namespace}/{name}")
            })?;
        logs.push(ProxyLog {
            cluster: cluster.to_owned(),
            namespace,
            pod: name,
            labels,
            gateway: is_gateway,
            text,
        });
    }
    let services = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("cannot list the services of {context}"))?;
    for service in services.items {
        let Some(selector) = service
            .spec
            .as_ref()
            .and_then(|spec| spec.selector.as_ref())
            .filter(|selector| !selector.is_empty())
        else {
            continue;
        };
        // The Service in front of a gateway: its selector picks that gateway's pods.
        let selected = gateway_labels.iter().find(|labels| {
            selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        });
        let Some(app) = selected.and_then(|labels| labels.get("app")).cloned() else {
            continue;
        };
        let ingress = service
            .status
            .and_then(|status| status.load_balancer)
            .and_then(|balancer| balancer.ingress)
            .unwrap_or_default();
        if let Some(gateway) = gateways.iter_mut().find(|gateway| gateway.name == app) {
            gateway
                .addresses
                .extend(ingress.iter().filter_map(|entry| ip_of(entry.ip.as_ref())));
        }
    }
    Ok((logs, gateways))
}

/// Prints the summary of the lab's `clusters`; with `--expect`, fails on what differs.
pub fn run(kubeconfig: &Path, clusters: &[String], args: TrafficArgs) -> anyhow::Result<()> {
    if clusters.is_empty() {
        bail!("the lab has no clusters; create them first (`causeway lab create-cluster`)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (logs, gateways) = runtime.block_on(async {
        let mut logs = Vec::new();
        let mut gateways = Vec::new();
        for cluster in clusters {
            let (cluster_logs, cluster_gateways) = collect(kubeconfig, cluster).await?;
            logs.extend(cluster_logs);
            gateways.extend(cluster_gateways);
        }
        anyhow::Ok((logs, gateways))
    })?;
    let traffic = analysis::analyse(&logs, &gateways, &args.namespace, &args.client_app);
    println!(
        "Requests from the {} pods in {}, by who answered and the path taken (from the proxies' access logs):",
        args.client_app, args.namespace
    );
    print!("{}", analysis::render(&traffic));
    let Some(expect) = args.expect else {
        for problem in &traffic.problems {
            eprintln!("note: {problem}");
        }
        return Ok(());
    };
    let unexpected = analysis::unexpected(&traffic, expect);
    if !unexpected.is_empty() {
        for problem in &unexpected {
            eprintln!("✘ {problem}");
        }
        bail!(
            "{} of the access logs' findings differ from a {expect:?} topology (listed above)",
            unexpected.len()
        );
    }
    println!(
        "✔ every request took the {} path and every access-log line has the fields Envoy fills",
        match expect {
            Expect::Direct => "direct",
            Expect::Gateway => "expected (gateway across networks, direct within one)",
        }
    );
    Ok(())
}
