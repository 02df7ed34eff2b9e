//! `causeway lab`: clusters on this machine, standing in for kind.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use causeway_lab::clusters::{ClusterOptions, ClusterStatus, Lab};
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
        /// Addresses for LoadBalancer Services, as a metallb IPAddressPool lists them
        /// (172.18.11.0-172.18.11.255 or 172.18.11.0/24); metallb's own objects work too
        #[arg(long, value_name = "RANGE")]
        load_balancer_pool: Option<String>,
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
    /// Route two clusters' pod and service subnets to each other through their nodes (the seeds'
    /// `ip route add ... via <node> dev eth0` on both nodes), now and whenever they restart
    Connect { first: String, second: String },
    /// Remove the routes `connect` added
    Disconnect { first: String, second: String },
    /// Run a command in a pod's container, as `kubectl exec` does
    Exec {
        /// The kubeconfig context (default: the current one)
        #[arg(long)]
        context: Option<String>,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// The pod: NAME, pod/NAME, or deploy/NAME for one of the Deployment's running pods
        target: String,
        /// The container (default: the pod's default container, else its first)
        #[arg(long, short = 'c')]
        container: Option<String>,
        /// Pass this command's standard input to the container's command
        #[arg(long, short = 'i')]
        stdin: bool,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Run a command in a cluster's node namespace (the seeds' `docker container exec
    /// cluster01-control-plane ...`)
    NodeExec {
        cluster: String,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Run a seed walkthrough from nothing to a verified mesh (default: multi-primary on two
    /// networks); the lab stays up afterwards
    Demo(crate::lab_demo::DemoArgs),
    /// Memory of the running clusters' processes, by role (API servers, discovery, gateways,
    /// sidecars, apps)
    Memory,
    /// What the proxies' access logs say about the client pods' requests: who answered, and
    /// whether directly or through which cluster's east-west gateway
    Traffic(crate::lab_traffic::TrafficArgs),
    /// Run a cluster's API server in the foreground (what create-cluster starts in the background)
    #[command(hide = true)]
    ServeCluster { name: String },
    /// A container's first process: what the kubelet starts each container with
    #[command(hide = true)]
    ContainerInit,
    /// The built-in apps of Istio's sample images
    #[command(hide = true, subcommand)]
    App(AppCommand),
}

#[derive(Subcommand)]
enum AppCommand {
    /// Istio's helloworld sample: GET /hello answers `Hello version: <version>, instance: <pod>`
    #[command(disable_version_flag = true)]
    Helloworld {
        #[arg(long)]
        version: String,
        #[arg(long, default_value_t = 5000)]
        port: u16,
    },
    /// httpbin's basic endpoints
    Httpbin {
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
}

/// The container's first process: sets it up and executes its program, or says why it cannot.
fn container_init() -> ! {
    use causeway_lab::container_init::{EXIT_START_ERROR, run, spec_from_environment};
    let error = match spec_from_environment() {
        Ok(spec) => match run(&spec) {
            Ok(never) => match never {},
            Err(error) => error,
        },
        Err(error) => error,
    };
    eprintln!("causeway lab container-init: {error}");
    std::process::exit(EXIT_START_ERROR);
}

fn run_app(command: AppCommand) -> anyhow::Result<()> {
    // Several apps run in every lab cluster; their memory is mostly the binary's start-up pages.
    causeway_proxy::resident::no_fault_around();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let port = match &command {
            AppCommand::Helloworld { port, .. } | AppCommand::Httpbin { port } => *port,
        };
        let listener = causeway_lab::apps::listen(port)
            .await
            .with_context(|| format!("cannot listen on port {port}"))?;
        causeway_proxy::resident::drop_startup_pages();
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch for SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        match command {
            AppCommand::Helloworld { version, .. } => {
                println!("helloworld {version} listening on 0.0.0.0:{port}");
                let app = causeway_lab::apps::HelloWorld::new(&version);
                causeway_lab::apps::serve(app, listener, shutdown).await
            }
            AppCommand::Httpbin { .. } => {
                println!("httpbin listening on 0.0.0.0:{port}");
                causeway_lab::apps::serve(causeway_lab::apps::HttpBin, listener, shutdown).await
            }
        }
        .context("the app stopped")
    })
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::ContainerInit => container_init(),
        LabCommand::App(command) => return run_app(command),
        LabCommand::Demo(demo) => {
            let code = crate::lab_demo::run(demo)?;
            if code != 0 {
                std::process::exit(code);
            }
            return Ok(());
        }
        _ => {}
    }
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
            load_balancer_pool,
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
            let options = ClusterOptions { load_balancer_pool };
            lab.add(&name, pod_subnet, service_subnet, options)?;
            let access = match lab.start(&name, &executable) {
                Ok(access) => access,
                Err(error) => {
                    let _ = lab.delete(&name);
                    return Err(error.into());
                }
            };
            kubeconfig::merge(&kubeconfig_path, &access)?;
            let record = lab.record(&name)?;
            let context = kubeconfig::context_name(&name);
            println!("Created cluster {name:?}: pods {pod_subnet}, services {service_subnet}");
            println!(
                "Node {} at {} on the lab network",
                causeway_lab::network::node_namespace(&name),
                record
                    .node_address
                    .map_or_else(|| "-".to_owned(), |address| address.to_string())
            );
            println!(
                "API server: {} (log: {})",
                access.server,
                lab.log_path(&name).display()
            );
            println!(
                "Context {context:?} written to {}. Try:\n\n  kubectl --context {context} get nodes",
                kubeconfig_path.display()
            );
            Ok(())
        }
        LabCommand::Memory => crate::lab_memory::run(&lab),
        LabCommand::Traffic(traffic) => {
            let names: Vec<String> = lab
                .clusters()?
                .into_iter()
                .map(|record| record.name)
                .collect();
            crate::lab_traffic::run(&kubeconfig_path, &names, traffic)
        }
        LabCommand::GetClusters => {
            let records = lab.clusters()?;
            if records.is_empty() {
                eprintln!("No lab clusters found.");
                return Ok(());
            }
            println!(
                "{:<16} {:<8} {:<14} {:<24} {:<16} {:<16}",
                "NAME", "STATUS", "NODE ADDRESS", "API SERVER", "POD SUBNET", "SERVICE SUBNET"
            );
            for record in records {
                let (status, server) = match lab.status(&record.name) {
                    ClusterStatus::Running(endpoint) => {
                        ("running", format!("https://{}", endpoint.address))
                    }
                    ClusterStatus::Stopped => ("stopped", "-".to_owned()),
                };
                println!(
                    "{:<16} {:<8} {:<14} {:<24} {:<16} {:<16}",
                    record.name,
                    status,
                    record
                        .node_address
                        .map_or_else(|| "-".to_owned(), |address| address.to_string()),
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
        LabCommand::Connect { first, second } => {
            if lab.connect(&first, &second)? {
                println!(
                    "Connected {first} and {second}: each node routes the other's pod and service subnets"
                );
            } else {
                println!("{first} and {second} were connected already");
            }
            Ok(())
        }
        LabCommand::Disconnect { first, second } => {
            if lab.disconnect(&first, &second)? {
                println!("Disconnected {first} and {second}");
            } else {
                println!("{first} and {second} were not connected");
            }
            Ok(())
        }
        LabCommand::Exec {
            context,
            namespace,
            target,
            container,
            stdin,
            command,
        } => {
            let code = crate::lab_exec::run(crate::lab_exec::ExecArgs {
                kubeconfig: kubeconfig_path,
                context,
                namespace,
                target,
                container,
                stdin,
                command,
            })?;
            std::process::exit(code);
        }
        LabCommand::NodeExec { cluster, command } => {
            lab.record(&cluster)?;
            let node = causeway_lab::network::node_namespace(&cluster);
            if !causeway_lab::netns::Netns::exists(&node) {
                bail!(
                    "cluster {cluster:?} has no running node; start it with `causeway lab start-cluster {cluster}`"
                );
            }
            let status = causeway_lab::netns::Netns::open(&node)
                .command(&command[0])
                .args(&command[1..])
                .status()
                .with_context(|| format!("cannot run {:?} in {node}", command[0]))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCommand::ContainerInit | LabCommand::App(_) | LabCommand::Demo(_) => {
            unreachable!("handled above")
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
            // Most of an idle cluster process's memory is the binary's pages: start-up (TLS, the
            // store), then code run now and then (a `kubectl apply`, a rollout). They are given
            // back once the cluster serves, and again every 10 s.
            causeway_proxy::resident::no_fault_around();
            runtime.block_on(causeway_lab::cluster_process::serve(&lab, &name, || {
                causeway_proxy::resident::drop_startup_pages();
                causeway_proxy::resident::drop_code_pages_every(Duration::from_secs(10));
            }))?;
            Ok(())
        }
    }
}
