//! The cluster a command acts on: a kubeconfig context, checked to answer before anything is
//! changed, with an error that says which context and server did not.

use anyhow::{Context, bail};
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Kubeconfig to use (default: $KUBECONFIG, else ~/.kube/config)
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context of the cluster (default: the current context)
    #[arg(long)]
    pub context: Option<String>,
}

/// Where a client's cluster is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnset {
    /// Neither kubeconfig nor context given: the kubeconfig's current context (a CLI).
    CurrentContext,
    /// Neither given: the pod's in-cluster configuration (a control-plane process in a pod).
    InCluster,
}

/// A client and, for messages, which cluster it talks to.
pub struct ClusterClient {
    pub client: kube::Client,
    /// The kubeconfig context, or `in-cluster`.
    pub context: String,
    pub server: String,
}

/// A client for `kubeconfig`'s `context`.
pub async fn client_for(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    when_unset: WhenUnset,
) -> anyhow::Result<ClusterClient> {
    if kubeconfig.is_none() && context.is_none() && when_unset == WhenUnset::InCluster {
        let config = kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig; pass --kubeconfig and --context")?;
        let server = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).context("cannot make a client for the cluster")?;
        return Ok(ClusterClient {
            client,
            context: "in-cluster".into(),
            server,
        });
    }
    let kubeconfig = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?,
        None => Kubeconfig::read().context(
            "cannot read the kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig",
        )?,
    };
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let name = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("cannot use context {name:?} of the kubeconfig"))?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("cannot make a client for the cluster")?;
    Ok(ClusterClient {
        client,
        context: name,
        server,
    })
}

/// A client for the context, checked to answer before anything is changed.
pub async fn connect(target: &TargetArgs) -> anyhow::Result<kube::Client> {
    let cluster = client_for(
        target.kubeconfig.as_deref(),
        target.context.as_deref(),
        WhenUnset::CurrentContext,
    )
    .await?;
    let ClusterClient {
        client,
        context,
        server,
    } = cluster;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(error)) => bail!(
            "cannot reach the cluster of context {context:?} at {server}: {error}; is it running? (`causeway lab get-clusters` lists lab clusters)"
        ),
        Err(_) => bail!(
            "the cluster of context {context:?} at {server} did not answer within 10 s; is it running?"
        ),
    }
}
