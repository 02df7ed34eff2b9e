//! `causeway discovery`: the control plane (istiod). Flags follow istiod's, with Istio's
//! environment variable names where Istio has them.

use anyhow::Context;
use causeway_discovery::{Discovery, DiscoveryConfig, parse_listen_address};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct DiscoveryArgs {
    /// Kubeconfig of the control plane's own cluster (default: in-cluster, else $KUBECONFIG or ~/.kube/config)
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context of that kubeconfig (default: its current context)
    #[arg(long)]
    context: Option<String>,
    /// This cluster's ID in the mesh (values.global.multiCluster.clusterName)
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// This cluster's network (values.global.network)
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// The mesh ID (values.global.meshID)
    #[arg(long, env = "MESH_ID", default_value = "")]
    mesh_id: String,
    /// Trust domain of workload identities
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The control plane's namespace: remote secrets, cacerts, the network label
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    namespace: String,
    /// Plaintext xDS
    #[arg(long, default_value = ":15010", value_parser = parse_listen_address)]
    xds_address: SocketAddr,
    /// xDS and the CA service over TLS
    #[arg(long, default_value = ":15012", value_parser = parse_listen_address)]
    secure_xds_address: SocketAddr,
    /// Debug endpoints, readiness and Prometheus metrics
    #[arg(long, default_value = ":15014", value_parser = parse_listen_address)]
    monitoring_address: SocketAddr,
    /// The sidecar injection webhook (HTTPS, the serving certificate of 15012)
    #[arg(long, default_value = ":15017", value_parser = parse_listen_address)]
    webhook_address: SocketAddr,
    /// The install revision whose injector config and webhooks this discovery serves
    #[arg(long, env = "REVISION", default_value = "default")]
    revision: String,
    /// Quiet time after a change before pushing (e.g. 100ms; 0 pushes at once)
    #[arg(long, env = "PILOT_DEBOUNCE_AFTER", default_value = "100ms", value_parser = parse_duration)]
    debounce: Duration,
    /// Longest a push waits under a stream of changes
    #[arg(long, env = "PILOT_DEBOUNCE_MAX", default_value = "10s", value_parser = parse_duration)]
    debounce_max: Duration,
    /// How long readiness waits for remote clusters to sync
    #[arg(long, env = "PILOT_REMOTE_CLUSTER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    remote_cluster_timeout: Duration,
    /// More DNS names or IPs for the 15012 serving certificate (repeatable)
    #[arg(long = "dns-name", value_name = "NAME")]
    dns_names: Vec<String>,
    /// A cacerts directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem); default:
    /// /etc/cacerts when the cacerts Secret is mounted there, else the Secret read through the API
    #[arg(long, value_name = "DIR")]
    cacerts_dir: Option<PathBuf>,
    /// Audiences a workload's token must carry (comma-separated)
    #[arg(
        long,
        env = "TOKEN_AUDIENCES",
        default_value = "istio-ca",
        value_delimiter = ','
    )]
    token_audiences: Vec<String>,
    /// This replica's name in the leader Lease that picks the one replica writing cluster state
    /// (default: the host's name and the process ID)
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    leader_identity: Option<String>,
    /// How long the leader Lease holds without renewal; another replica takes over after it
    #[arg(long, default_value = "30s", value_parser = parse_lease_duration)]
    leader_lease_duration: Duration,
}

/// Durations as Istio writes them: `100ms`, `1s`, `2m`, `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. 100ms, 1s or 2m"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "us" | "µs" => value / 1_000_000.0,
        _ => return Err(format!("`{unit}` is not a unit; use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// A Lease counts whole seconds, and a leader renews it four times per lease.
fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err(format!(
            "`{text}` is shorter than a Lease can hold (whole seconds); use 1s or more (istiod: 30s)"
        ));
    }
    Ok(duration)
}

async fn cluster_client(args: &DiscoveryArgs) -> anyhow::Result<kube::Client> {
    let cluster = crate::cluster_client::client_for(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        crate::cluster_client::WhenUnset::InCluster,
    )
    .await?;
    Ok(cluster.client)
}

pub fn run(args: DiscoveryArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = cluster_client(&args).await?;
        let config = DiscoveryConfig {
            network: args.network,
            mesh_id: args.mesh_id,
            trust_domain: args.trust_domain,
            namespace: args.namespace,
            xds_address: args.xds_address,
            secure_xds_address: args.secure_xds_address,
            monitoring_address: args.monitoring_address,
            webhook_address: args.webhook_address,
            revision: args.revision,
            debounce: args.debounce,
            debounce_max: args.debounce_max,
            remote_cluster_timeout: args.remote_cluster_timeout,
            extra_dns_names: args.dns_names,
            cacerts_dir: args.cacerts_dir,
            token_audiences: args.token_audiences,
            leader_lease_duration: args.leader_lease_duration,
            ..DiscoveryConfig::new(&args.cluster_id)
        };
        let config = match args.leader_identity {
            Some(identity) if !identity.is_empty() => DiscoveryConfig {
                leader_identity: identity,
                ..config
            },
            _ => config,
        };
        let discovery = Discovery::start(config, client).await?;
        // One line on stdout, for scripts: where everything listens.
        println!(
            "{}",
            serde_json::json!({
                "xds": discovery.xds_address.to_string(),
                "secure_xds": discovery.secure_xds_address.to_string(),
                "monitoring": discovery.monitoring_address.to_string(),
                "webhook": discovery.webhook_address.to_string(),
                "ca": discovery.ca_origin.to_string(),
            })
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        discovery.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_istio_writes_them() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("100").unwrap_err().contains("no unit"));
        assert!(parse_duration("5d").unwrap_err().contains("not a unit"));
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn a_leader_lease_holds_whole_seconds() {
        assert_eq!(parse_lease_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_lease_duration("1s"), Ok(Duration::from_secs(1)));
        assert!(
            parse_lease_duration("500ms")
                .unwrap_err()
                .contains("1s or more")
        );
        assert!(
            parse_lease_duration("0")
                .unwrap_err()
                .contains("1s or more")
        );
    }
}
