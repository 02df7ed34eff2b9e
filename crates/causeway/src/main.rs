//! `causeway`: one binary, one subcommand per process or tool of the mesh.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, configured in `.cargo/config.toml` to give freed pages back to the system within a
/// second: the control plane's memory is mostly many streams' small allocations, and the peak
/// of a thousand proxies syncing at once should not stay resident afterwards.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod certs;
mod cluster_client;
mod discovery;
mod install;
mod kube_inject;
mod lab;
mod lab_demo;
mod lab_exec;
mod lab_memory;
mod lab_traffic;
mod logging;
mod mesh_status;
mod operator;
mod proxy;
mod remote_secret;
mod table;

#[derive(Parser)]
#[command(
    name = "causeway",
    version,
    about = "Causeway, a multi-cluster service mesh that runs Istio's multicluster setups",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the mesh's certificates: root CA, per-cluster intermediate CAs (cacerts), workload
    /// certificates (Istio's tools/certs Makefiles)
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Clusters on this machine, standing in for kind: each with its own Kubernetes-compatible API
    /// server
    Lab(lab::LabArgs),
    /// Print the Secret that lets a control plane read another cluster (istioctl
    /// create-remote-secret): apply it to the control plane's cluster
    CreateRemoteSecret(remote_secret::CreateRemoteSecretArgs),
    /// The control plane (istiod): watches every cluster it has credentials for, serves xDS on
    /// 15010/15012 and workload certificates on 15012, debug and metrics on 15014
    Discovery(Box<discovery::DiscoveryArgs>),
    /// The clusters discovery watches and whether each is synced (istioctl remote-clusters)
    RemoteClusters(mesh_status::StatusArgs),
    /// Each proxy connected to discovery and whether it has its latest config (istioctl proxy-status)
    ProxyStatus(mesh_status::StatusArgs),
    /// The data plane: traffic capture for sidecars (istio-init)
    #[command(subcommand)]
    Proxy(proxy::ProxyCommand),
    /// Install the mesh into a cluster from IstioOperator files and --set flags (istioctl install)
    Install(Box<install::InstallArgs>),
    /// Remove what install made (istioctl uninstall)
    Uninstall(Box<install::UninstallArgs>),
    /// Add the proxy to the workloads of a manifest (istioctl kube-inject)
    KubeInject(Box<kube_inject::KubeInjectArgs>),
    /// The objects install applies: `generate` prints them, `apply` installs them
    #[command(subcommand)]
    Manifest(Box<install::ManifestCommand>),
    /// Reconcile Sail's `Istio` and `IstioCNI` resources into the mesh (the Sail operator)
    Operator(operator::OperatorArgs),
    /// Install the Sail operator: its CRDs, rights and Deployment
    InstallOperator(operator::InstallOperatorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(command) => certs::run(command),
        Command::Lab(args) => lab::run(args),
        Command::CreateRemoteSecret(args) => remote_secret::run(args),
        Command::Discovery(args) => discovery::run(*args),
        Command::RemoteClusters(args) => mesh_status::remote_clusters(args),
        Command::ProxyStatus(args) => mesh_status::proxy_status(args),
        Command::Proxy(command) => proxy::run(command),
        Command::Install(args) => install::install(*args),
        Command::Uninstall(args) => install::uninstall(*args),
        Command::Manifest(command) => install::manifest(*command),
        Command::KubeInject(args) => kube_inject::run(*args),
        Command::Operator(args) => operator::run(args),
        Command::InstallOperator(args) => operator::install_operator(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("causeway: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already quotes.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn causes_already_quoted_by_their_parent_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let error = anyhow::Error::new(causeway_ca::files::WriteError {
            path: "x/key.pem".into(),
            source: io,
        })
        .context("writing the workload key");
        assert_eq!(
            describe(&error),
            "writing the workload key: cannot write x/key.pem: No such file"
        );
    }
}
