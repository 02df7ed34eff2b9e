//! `causeway lab`: clusters on this machine, standing in for kind.

use std::path::PathBuf;

use anyhow::{Context, bail};
use causeway_lab::clusters::{ClusterStatus, Lab};
use causeway_lab::kind_config::{DEFAULT_POD_SUBNET, DEFAULT_SERVICE_SUBNET, KindCluster};
use causeway_lab::kubeconfig;
use clap::{Args, Subcommand};
use ipnet::Ipv4Net;

#[derive(Args)]
pub struct LabArgs {
    /// Where the lab keeps its clusters' state
    #[arg(long, global = true, env = "CAUSEWAY_LAB_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The kubeconfig to update (default: first entry of $KUBECONFIG, else ~/.kube/config)
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create a cluster from a kind Cluster config and start its API server
    CreateCluster {
        /// kind Cluster config (kind.x-k8s.io/v1alpha4): name, networking.podSubnet, networking.serviceSubnet
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Cluster name (overrides the config's; default "kind")
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "CIDR")]
        pod_subnet: Option<Ipv4Net>,
        #[arg(long, value_name = "CIDR")]
        service_subnet: Option<Ipv4Net>,
    },
    /// List the lab's clusters
    GetClusters,
    /// Stop a cluster and delete everything it stored
    DeleteCluster { name: String },
    /// Delete every lab cluster
    Down,
    /// Start a stopped cluster's API server again (its objects are kept)
    StartCluster { name: String },
    /// Stop a cluster's API server, keeping its objects
    StopCluster { name: String },
    /// Print a kubeconfig for the lab's running clusters (or one of them)
    Kubeconfig {
        #[arg(long)]
        name: Option<String>,
    },
    /// Run a cluster's API server in the foreground (what create-cluster starts in the background)
    #[command(hide = true)]
    ServeCluster { name: String },
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    let lab = Lab::new(args.state_dir.unwrap_or_else(Lab::default_root));
    let kubeconfig_path = args.kubeconfig.unwrap_or_else(kubeconfig::default_path);
    let executable = std::env::current_exe()
        .context("cannot find the causeway executable to start the API server with")?;
    match args.command {
        LabCommand::CreateCluster {
            config,
            name,
            pod_subnet,
            service_subnet,
        } => {
            let from_file = match &config {
                Some(path) => KindCluster::read(path)?,
                None => KindCluster {
                    name: None,
                    pod_subnet: None,
                    service_subnet: None,
                    ignored: Vec::new(),
                },
            };
            if !from_file.ignored.is_empty() {
                eprintln!(
                    "note: the lab ignores these kind config fields: {}",
                    from_file.ignored.join(", ")
                );
            }
            let name = name.or(from_file.name).unwrap_or_else(|| "kind".to_owned());
            let default_net =
                |text: &str| text.parse::<Ipv4Net>().expect("kind's defaults are valid");
            let pod_subnet = pod_subnet
                .or(from_file.pod_subnet)
                .unwrap_or_else(|| default_net(DEFAULT_POD_SUBNET))
                .trunc();
            let service_subnet = service_subnet
                .or(from_file.service_subnet)
                .unwrap_or_else(|| default_net(DEFAULT_SERVICE_SUBNET))
                .trunc();
            lab.add(&name, pod_subnet, service_subnet)?;
            let access = match lab.start(&name, &executable) {
                Ok(access) => access,
                Err(error) => {
                    let _ = lab.delete(&name);
                    return Err(error.into());
                }
            };
            kubeconfig::merge(&kubeconfig_path, &access)?;
            println!("Created cluster {name:?}: pods {pod_subnet}, services {service_subnet}");
            println!(
                "API server: {} (log: {})",
                access.server,
                lab.log_path(&name).display()
            );
            println!(
                "Context {name:?} written to {}. Try:\n\n  kubectl --context {name} get namespaces",
                kubeconfig_path.display()
            );
            Ok(())
        }
        LabCommand::GetClusters => {
            let records = lab.clusters()?;
            if records.is_empty() {
                eprintln!("No lab clusters found.");
                return Ok(());
            }
            println!(
                "{:<16} {:<8} {:<24} {:<16} {:<16}",
                "NAME", "STATUS", "API SERVER", "POD SUBNET", "SERVICE SUBNET"
            );
            for record in records {
                let (status, server) = match lab.status(&record.name) {
                    ClusterStatus::Running(endpoint) => {
                        ("running", format!("https://{}", endpoint.address))
                    }
                    ClusterStatus::Stopped => ("stopped", "-".to_owned()),
                };
                println!(
                    "{:<16} {:<8} {:<24} {:<16} {:<16}",
                    record.name,
                    status,
                    server,
                    record.pod_subnet.to_string(),
                    record.service_subnet.to_string()
                );
            }
            Ok(())
        }
        LabCommand::DeleteCluster { name } => {
            lab.delete(&name)?;
            kubeconfig::remove(&kubeconfig_path, &name)?;
            println!("Deleted cluster {name:?}");
            Ok(())
        }
        LabCommand::Down => {
            let records = lab.clusters()?;
            for record in &records {
                lab.delete(&record.name)?;
                kubeconfig::remove(&kubeconfig_path, &record.name)?;
                println!("Deleted cluster {:?}", record.name);
            }
            if records.is_empty() {
                println!("No lab clusters to delete.");
            }
            Ok(())
        }
        LabCommand::StartCluster { name } => {
            let access = lab.start(&name, &executable)?;
            kubeconfig::merge(&kubeconfig_path, &access)?;
            println!("Started cluster {name:?}: API server {}", access.server);
            Ok(())
        }
        LabCommand::StopCluster { name } => {
            lab.stop(&name)?;
            println!("Stopped cluster {name:?}");
            Ok(())
        }
        LabCommand::Kubeconfig { name } => {
            let names: Vec<String> = match name {
                Some(name) => vec![name],
                None => lab
                    .clusters()?
                    .into_iter()
                    .map(|record| record.name)
                    .collect(),
            };
            let mut clusters = Vec::new();
            for name in names {
                match lab.access(&name) {
                    Ok(access) => clusters.push(access),
                    Err(error) => eprintln!("skipping {name}: {error}"),
                }
            }
            if clusters.is_empty() {
                bail!(
                    "no lab cluster is running; create one with `causeway lab create-cluster --config <kind-config.yaml>`"
                );
            }
            print!(
                "{}",
                kubeconfig::render(&kubeconfig::for_clusters(&clusters))
            );
            Ok(())
        }
        LabCommand::ServeCluster { name } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_ansi(false)
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(lab.serve(&name))?;
            Ok(())
        }
    }
}
