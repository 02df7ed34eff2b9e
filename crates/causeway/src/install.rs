//! `causeway install`, `uninstall` and `manifest generate|apply`: istioctl's commands of the same
//! names, with its flags, merge rules and step lines.

use crate::cluster_client::{TargetArgs, connect};
use anyhow::{Context, bail};
use causeway_install::cluster::{self, Change, UninstallScope};
use causeway_install::render::MESH_CONFIG_MAP;
use causeway_install::{Component, Rendered, Settings, render, to_yaml};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::ConfigMap;
use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Default)]
pub struct InputArgs {
    /// IstioOperator files, merged in order (later ones win); `-` reads standard input
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    files: Vec<String>,
    /// Override a setting: `values.global.meshID=mesh1`, `profile=remote`, Helm names such as
    /// `global.network=network1` (repeatable; applied after the files, in order)
    #[arg(short = 's', long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Do not ask for confirmation
    #[arg(short = 'y', long = "skip-confirmation")]
    yes: bool,
    /// How long to wait for each component's Deployments to be available
    #[arg(long, default_value = "300s", value_parser = crate::discovery::parse_duration)]
    readiness_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Remove everything any install made, cluster-scoped objects shared by revisions included
    #[arg(long)]
    purge: bool,
    /// The revision to remove (default: the one of -f/--set, else `default`)
    #[arg(short = 'r', long)]
    revision: Option<String>,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Do not ask for confirmation
    #[arg(short = 'y', long = "skip-confirmation")]
    yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum ManifestCommand {
    /// Print the objects install would apply, as YAML documents
    Generate(InputArgs),
    /// The same as `causeway install` (istioctl's older name for it)
    Apply(InstallArgs),
}

/// Reads `-f` files (stdin for `-`) and `--set`s into settings, printing what is ignored.
fn settings(input: &InputArgs) -> anyhow::Result<Settings> {
    let mut files = Vec::new();
    for file in &input.files {
        let text = if file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the IstioOperator from standard input")?;
            text
        } else {
            std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
        };
        let origin = if file == "-" {
            "<stdin>".to_owned()
        } else {
            file.clone()
        };
        files.push((origin, text));
    }
    let settings = causeway_install::load(&files, &input.sets)?;
    for ignored in &settings.ignored {
        eprintln!("! {ignored}");
    }
    for skipped in &settings.skipped {
        eprintln!("! {skipped}");
    }
    Ok(settings)
}

pub fn manifest(command: ManifestCommand) -> anyhow::Result<()> {
    match command {
        ManifestCommand::Generate(input) => {
            let settings = settings(&input)?;
            print!("{}", to_yaml(&render(&settings)));
            Ok(())
        }
        ManifestCommand::Apply(args) => install(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// istioctl's question; anything but y/yes cancels. Standard input that holds the file (`-f -`)
/// cannot answer, so `-y` is needed there.
fn confirmed(question: &str, input: &InputArgs) -> anyhow::Result<bool> {
    if input.files.iter().any(|file| file == "-") {
        bail!(
            "standard input holds the IstioOperator (-f -), so it cannot answer the confirmation; add -y"
        );
    }
    print!("{question} Proceed? (y/N) ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).ok();
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    let mut settings = settings(&args.input)?;
    let runtime = runtime()?;
    let client = runtime.block_on(connect(&args.target))?;
    if settings.pilot.is_none() && !settings.gateways.is_empty() {
        runtime.block_on(adopt_control_plane_access_log(&client, &mut settings))?;
    }
    let objects = render(&settings);
    if objects.is_empty() {
        bail!(
            "nothing to install: profile {:?} with these settings enables no component",
            settings.profile
        );
    }
    if !args.yes
        && !confirmed(
            &format!(
                "This will install the Causeway {:?} profile (revision {:?}) into the cluster.",
                settings.profile, settings.revision
            ),
            &args.input,
        )?
    {
        println!("Cancelled.");
        return Ok(());
    }
    runtime.block_on(apply_components(&client, &objects, args.readiness_timeout))
}

/// A gateway installed on its own logs as the control plane's mesh config (the `istio` ConfigMap
/// of its revision) says, as Istio's gateways do.
async fn adopt_control_plane_access_log(
    client: &kube::Client,
    settings: &mut Settings,
) -> anyhow::Result<()> {
    let name = if settings.revision == "default" {
        MESH_CONFIG_MAP.to_owned()
    } else {
        format!("{MESH_CONFIG_MAP}-{}", settings.revision)
    };
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &settings.namespace);
    let Some(map) = maps
        .get_opt(&name)
        .await
        .with_context(|| format!("cannot read ConfigMap {}/{name}", settings.namespace))?
    else {
        return Ok(());
    };
    let mesh = map
        .data
        .and_then(|data| data.get("mesh").cloned())
        .unwrap_or_default();
    let adopted = settings
        .adopt_control_plane_access_log(&mesh)
        .map_err(|error| anyhow::anyhow!("ConfigMap {}/{name}: {error}", settings.namespace))?;
    if adopted {
        println!(
            "  Gateways log as the control plane's mesh config ({}/{name}) says",
            settings.namespace
        );
    }
    Ok(())
}

async fn apply_components(
    client: &kube::Client,
    objects: &[Rendered],
    readiness_timeout: Duration,
) -> anyhow::Result<()> {
    let mut applied: Vec<String> = Vec::new();
    for component in cluster::components(objects) {
        let started = Instant::now();
        let part: Vec<Rendered> = objects
            .iter()
            .filter(|object| object.component == component)
            .cloned()
            .collect();
        let result = async {
            for object in &part {
                if cluster::apply_one(client, object).await? == Change::Created {
                    applied.push(object.describe());
                }
            }
            cluster::wait_for_deployments(client, &part, readiness_timeout).await
        }
        .await;
        if let Err(error) = result {
            println!("✘ {} encountered an error: {error}", step_name(component));
            let created = if applied.is_empty() {
                "nothing was created".to_owned()
            } else {
                format!("created so far: {}", applied.join(", "))
            };
            bail!(
                "installation incomplete ({created}); fix the cause and run install again (it is idempotent), or remove it with `causeway uninstall --purge`"
            );
        }
        println!(
            "✔ {} ({:.1} s)",
            component.installed_line(),
            started.elapsed().as_secs_f64()
        );
    }
    println!("✔ Installation complete");
    Ok(())
}

fn step_name(component: Component) -> &'static str {
    match component {
        Component::Base => "Istio core",
        Component::Pilot => "Istiod",
        Component::IstiodRemote => "Istiod remote",
        Component::IngressGateways => "Ingress gateways",
        Component::Cni => "CNI",
        Component::Operator => "Sail operator",
    }
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let revision = match (
        &args.revision,
        args.input.files.is_empty() && args.input.sets.is_empty(),
    ) {
        (Some(revision), _) => revision.clone(),
        (None, true) => "default".to_owned(),
        (None, false) => settings(&args.input)?.revision,
    };
    let scope = UninstallScope {
        revision,
        purge: args.purge,
    };
    let what = if scope.purge {
        "everything Causeway's installs made".to_owned()
    } else {
        format!("revision {:?}", scope.revision)
    };
    if !args.yes
        && !confirmed(
            &format!("All of {what} will be removed from the cluster."),
            &args.input,
        )?
    {
        println!("Cancelled.");
        return Ok(());
    }
    runtime()?.block_on(async {
        let client = connect(&args.target).await?;
        let removed = cluster::uninstall(&client, &scope).await?;
        if removed.is_empty() {
            println!("Nothing to remove: no object of {what} is in the cluster.");
        } else {
            for object in &removed {
                println!("  removed {object}");
            }
            println!("✔ Uninstall complete ({} objects removed)", removed.len());
        }
        Ok(())
    })
}
