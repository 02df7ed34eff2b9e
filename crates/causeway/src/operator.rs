//! `causeway operator`: the Sail operator's job for Causeway. It reconciles `sailoperator.io`
//! `Istio` resources into the objects `causeway install` makes (owned by the `Istio`, so
//! deleting it removes them), reports `Reconciled`/`Ready` in their status, and accepts
//! `IstioCNI`. What it decides lives in `causeway_install::sail`; this module does the I/O.
//! `causeway install-operator` installs it into a cluster.

use crate::cluster_client::{TargetArgs, WhenUnset, client_for, connect};
use anyhow::Context;
use causeway_install::Rendered;
use causeway_install::cluster::{self, ClusterError};
use causeway_install::sail::{self, Observed};
use clap::Args;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Kubeconfig of the cluster to manage (default: in-cluster, else $KUBECONFIG)
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: in-cluster, else the current context)
    #[arg(long)]
    context: Option<String>,
    /// Opened once the resources are listed: the Deployment's readiness probe
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_address: SocketAddr,
}

#[derive(Args, Debug)]
pub struct InstallOperatorArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The operator's image
    #[arg(long, default_value = "causeway")]
    image: String,
    /// How long to wait for the operator to be available
    #[arg(long, default_value = "300s", value_parser = crate::discovery::parse_duration)]
    readiness_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum OperatorError {
    #[error("cannot write the status of {kind} {name}: {source}")]
    Status {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// How soon an `Istio` is looked at again, by what its last reconcile found.
fn requeue_after(observed: &Observed) -> Duration {
    match observed {
        Observed::Ready => Duration::from_secs(60),
        Observed::Waiting(_) => Duration::from_secs(1),
        Observed::Failed(_) => Duration::from_secs(5),
    }
}

struct OperatorContext {
    client: kube::Client,
    /// What each `Istio` (by uid) was applied at (its generation, and whether an `IstioCNI`
    /// was there): unchanged ones are only watched for readiness, not written again.
    applied: Mutex<HashMap<String, (i64, bool)>>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|time| time.to_string())
        .unwrap_or_default()
}

/// Writes `status` on the `resource` object `name` unless it equals `previous`. Transition times
/// are carried over while a condition holds, so an unchanged status compares equal: no write per
/// requeue to wake every watcher for nothing.
async fn write_status(
    client: &kube::Client,
    resource: &ApiResource,
    name: &str,
    previous: &Value,
    status: Value,
) -> Result<(), OperatorError> {
    if *previous == status {
        return Ok(());
    }
    tracing::info!(kind = %resource.kind, %name, state = %status["state"], "status");
    Api::<DynamicObject>::all_with(client.clone(), resource)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(|_| ())
        .map_err(|source| OperatorError::Status {
            kind: resource.kind.clone(),
            name: name.to_owned(),
            source,
        })
}

/// Applies `objects` in order, stopping at the first that fails.
async fn apply_all(client: &kube::Client, objects: &[Rendered]) -> Result<(), ClusterError> {
    for object in objects {
        cluster::apply_one(client, object).await?;
    }
    Ok(())
}

/// Whether the cluster has an `IstioCNI` (then the `Istio`'s pods are captured by the plugin).
async fn cni_installed(client: &kube::Client) -> Result<bool, kube::Error> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &sail::istio_cni_resource());
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(|cni| cni.metadata.deletion_timestamp.is_none()))
}

async fn observe(istio: &DynamicObject, context: &OperatorContext) -> Observed {
    let cni = match cni_installed(&context.client).await {
        Ok(cni) => cni,
        Err(error) => return Observed::Failed(format!("cannot list IstioCNI resources: {error}")),
    };
    let settings = match sail::settings(istio, cni) {
        Ok(settings) => settings,
        Err(error) => return Observed::Failed(error.to_string()),
    };
    let objects = sail::owned_by(causeway_install::render(&settings), istio);
    let uid = istio.metadata.uid.clone().unwrap_or_default();
    let generation = (istio.metadata.generation.unwrap_or(0), cni);
    let applied = context
        .applied
        .lock()
        .ok()
        .and_then(|applied| applied.get(&uid).copied());
    if applied != Some(generation) {
        for ignored in &settings.ignored {
            tracing::warn!(istio = %settings.owner, "{ignored}");
        }
        for skipped in &settings.skipped {
            tracing::warn!(istio = %settings.owner, "{skipped}");
        }
        if let Err(error) = apply_all(&context.client, &objects).await {
            return Observed::Failed(error.to_string());
        }
        tracing::info!(istio = %settings.owner, generation = generation.0, cni, objects = objects.len(), "applied");
        if let Ok(mut applied) = context.applied.lock() {
            applied.insert(uid, generation);
        }
    }
    match cluster::unavailable_deployments(&context.client, &objects).await {
        Ok(waiting) if waiting.is_empty() => Observed::Ready,
        Ok(waiting) => Observed::Waiting(waiting),
        Err(error) => Observed::Failed(error.to_string()),
    }
}

async fn reconcile_istio(
    istio: Arc<DynamicObject>,
    context: Arc<OperatorContext>,
) -> Result<Action, OperatorError> {
    if istio.metadata.deletion_timestamp.is_some() {
        // Its objects name it as their owner: the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let name = istio.metadata.name.clone().unwrap_or_default();
    let observed = observe(&istio, &context).await;
    let previous = istio.data.get("status").cloned().unwrap_or(Value::Null);
    let version = istio.data["spec"]["version"].as_str();
    let status = sail::istio_status(
        &observed,
        istio.metadata.generation,
        version,
        &previous,
        &now(),
    );
    let resource = sail::istio_resource();
    write_status(&context.client, &resource, &name, &previous, status).await?;
    Ok(Action::requeue(requeue_after(&observed)))
}

async fn reconcile_cni(
    cni: Arc<DynamicObject>,
    context: Arc<OperatorContext>,
) -> Result<Action, OperatorError> {
    if cni.metadata.deletion_timestamp.is_some() {
        // Its configuration names it as its owner: the garbage collector removes it.
        return Ok(Action::await_change());
    }
    let name = cni.metadata.name.clone().unwrap_or_default();
    let applied = match sail::istio_cni_objects(&cni) {
        Err(error) => Err(error.to_string()),
        Ok(objects) => apply_all(&context.client, &objects)
            .await
            .map_err(|error| error.to_string()),
    };
    let observed = match applied {
        Ok(()) => Observed::Ready,
        Err(why) => Observed::Failed(why),
    };
    let previous = cni.data.get("status").cloned().unwrap_or(Value::Null);
    let status = sail::istio_cni_status(&observed, cni.metadata.generation, &previous, &now());
    let resource = sail::istio_cni_resource();
    write_status(&context.client, &resource, &name, &previous, status).await?;
    Ok(Action::requeue(requeue_after(&observed)))
}

fn on_error(
    _object: Arc<DynamicObject>,
    error: &OperatorError,
    _context: Arc<OperatorContext>,
) -> Action {
    tracing::warn!(%error, "reconcile failed; trying again in 5 s");
    Action::requeue(Duration::from_secs(5))
}

/// Opens the health port once both kinds can be listed, so that the Deployment is available
/// only when the operator can do its job.
async fn open_health_port(client: kube::Client, address: SocketAddr) -> anyhow::Result<()> {
    for resource in [sail::istio_resource(), sail::istio_cni_resource()] {
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let started = Instant::now();
        while let Err(error) = api.list(&Default::default()).await {
            if started.elapsed() > Duration::from_secs(30) {
                tracing::warn!(%error, kind = %resource.kind, "cannot list; are the CRDs installed? (`causeway install-operator`)");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for the health check"))?;
    tracing::info!(%address, "ready");
    loop {
        // Accepted and dropped: the probe only connects.
        let _ = listener.accept().await;
    }
}

pub fn run(args: OperatorArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let cluster = client_for(
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
            WhenUnset::InCluster,
        )
        .await?;
        tracing::info!(context = %cluster.context, server = %cluster.server, "operator started");
        let client = cluster.client;
        let context = Arc::new(OperatorContext {
            client: client.clone(),
            applied: Mutex::default(),
        });
        let istio = sail::istio_resource();
        let controller = Controller::new_with(
            Api::<DynamicObject>::all_with(client.clone(), &istio),
            watcher::Config::default(),
            istio.clone(),
        );
        // An IstioCNI coming or going changes how every Istio's pods are captured.
        let known_istios = controller.store();
        let istios = controller
            .watches_with(
                Api::<DynamicObject>::all_with(client.clone(), &sail::istio_cni_resource()),
                sail::istio_cni_resource(),
                watcher::Config::default(),
                move |_cni| {
                    known_istios
                        .state()
                        .iter()
                        .map(|known| ObjectRef::from_obj_with(known.as_ref(), istio.clone()))
                        .collect::<Vec<_>>()
                },
            )
            .shutdown_on_signal()
            .run(reconcile_istio, on_error, context.clone())
            .for_each(|_| async {});
        let cni = sail::istio_cni_resource();
        let cnis = Controller::new_with(
            Api::<DynamicObject>::all_with(client.clone(), &cni),
            watcher::Config::default(),
            cni,
        )
        .shutdown_on_signal()
        .run(reconcile_cni, on_error, context)
        .for_each(|_| async {});
        tokio::select! {
            ((), ()) = futures::future::join(istios, cnis) => Ok(()),
            ended = open_health_port(client, args.health_address) => ended,
        }
    })
}

/// `causeway install-operator`: the CRDs, the operator's rights and its Deployment, then a wait
/// until it is available.
pub fn install_operator(args: InstallOperatorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = connect(&args.target).await?;
        let started = Instant::now();
        let objects = sail::operator_objects(&args.image);
        apply_all(&client, &objects).await?;
        cluster::wait_for_deployments(&client, &objects, args.readiness_timeout).await?;
        println!(
            "✔ Sail operator installed ({:.1} s): apply an Istio resource (sailoperator.io/v1), then `kubectl wait --for condition=Ready istio/<name>`",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}
