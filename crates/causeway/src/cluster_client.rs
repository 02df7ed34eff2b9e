//! The cluster a command acts on: a kubeconfig context, checked to answer before anything is
//! changed, with an error that says which context and server did not.

use anyhow::{Context, bail};
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
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

/// A client for the context, checked to answer before anything is changed.
pub async fn connect(target: &TargetArgs) -> anyhow::Result<kube::Client> {
    let kubeconfig = match &target.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?,
        None => Kubeconfig::read().context(
            "cannot read the kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig",
        )?,
    };
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..KubeConfigOptions::default()
    };
    let context = target
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("cannot use context {context:?} of the kubeconfig"))?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("cannot make a client for the cluster")?;
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
