//! `causeway kube-inject`: istioctl's manual injection. The injector's config comes from the
//! cluster's ConfigMaps (as `--injectConfigMapName`/`--meshConfigMapName` name them) or from
//! files (`--valuesFile`, `--injectConfigFile`, `--meshConfigFile`).

use crate::cluster_client::{TargetArgs, connect};
use anyhow::{Context, bail};
use causeway_install::inject::{ConfigError, InjectionConfig};
use causeway_install::kube_inject::kube_inject;
use clap::Args;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KubeInjectArgs {
    /// The manifest to inject (`-` for standard input)
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
    /// Write the result here instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// The injector's ConfigMap in the control plane's namespace
    #[arg(long = "injectConfigMapName", default_value = "istio-sidecar-injector")]
    inject_config_map: String,
    /// The mesh config's ConfigMap in the control plane's namespace
    #[arg(long = "meshConfigMapName", default_value = "istio")]
    mesh_config_map: String,
    /// The control plane's namespace
    #[arg(short = 'i', long = "istioNamespace", default_value = "istio-system")]
    istio_namespace: String,
    /// The injector's `values` (JSON) from a file instead of the cluster
    #[arg(long = "valuesFile", value_name = "FILE")]
    values_file: Option<PathBuf>,
    /// The injector's `config` (YAML) from a file instead of the cluster
    #[arg(long = "injectConfigFile", value_name = "FILE")]
    inject_config_file: Option<PathBuf>,
    /// The mesh config (YAML) from a file instead of the cluster
    #[arg(long = "meshConfigFile", value_name = "FILE")]
    mesh_config_file: Option<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

fn read(path: &PathBuf) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((path.display().to_string(), text))
}

async fn config_from_cluster(args: &KubeInjectArgs) -> anyhow::Result<InjectionConfig> {
    let client = connect(&args.target).await?;
    let config = InjectionConfig::from_cluster(
        &client,
        &args.istio_namespace,
        &args.inject_config_map,
        &args.mesh_config_map,
    )
    .await;
    match config {
        Err(missing @ ConfigError::Missing { .. }) => Err(anyhow::anyhow!(
            "{missing}, or pass --valuesFile and --injectConfigFile"
        )),
        other => Ok(other?),
    }
}

fn config_from_files(args: &KubeInjectArgs) -> anyhow::Result<Option<InjectionConfig>> {
    let (Some(values), Some(config)) = (&args.values_file, &args.inject_config_file) else {
        if args.values_file.is_some()
            || args.inject_config_file.is_some()
            || args.mesh_config_file.is_some()
        {
            bail!(
                "--valuesFile and --injectConfigFile go together (and --meshConfigFile with them); give both, or neither to read the cluster's ConfigMaps"
            );
        }
        return Ok(None);
    };
    let values = read(values)?;
    let config = read(config)?;
    let mesh = match &args.mesh_config_file {
        Some(path) => read(path)?,
        None => ("(no mesh config)".to_owned(), String::new()),
    };
    Ok(Some(InjectionConfig::parse(
        (&values.0, &values.1),
        (&config.0, &config.1),
        (&mesh.0, &mesh.1),
    )?))
}

pub fn run(args: KubeInjectArgs) -> anyhow::Result<()> {
    let (origin, text) = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the manifest from standard input")?;
        ("<stdin>".to_owned(), text)
    } else {
        read(&PathBuf::from(&args.file))?
    };
    let config = match config_from_files(&args)? {
        Some(config) => config,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(config_from_cluster(&args))?,
    };
    let injected = kube_inject(&origin, &text, &config)?;
    match &args.output {
        Some(path) => std::fs::write(path, injected)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout()
            .write_all(injected.as_bytes())
            .context("cannot write the result")?,
    }
    Ok(())
}
