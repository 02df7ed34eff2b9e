//! `causeway lab exec`: `kubectl exec` without kubectl. It finds the pod (a name, or
//! `deploy/NAME` for one of the Deployment's running pods), then runs the command through the
//! API server's `pods/exec`, as kubectl does, and exits with the command's exit code.

use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::AsyncWriteExt;

pub struct ExecArgs {
    pub kubeconfig: std::path::PathBuf,
    pub context: Option<String>,
    pub namespace: String,
    pub target: String,
    pub container: Option<String>,
    pub stdin: bool,
    pub command: Vec<String>,
}

/// Runs the command; its exit code.
pub fn run(args: ExecArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(exec(args))
}

async fn client(kubeconfig: &Path, context: Option<String>) -> anyhow::Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read the kubeconfig {}", kubeconfig.display()))?;
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(config, &options)
        .await
        .context("cannot use the kubeconfig")?;
    kube::Client::try_from(config).context("cannot make a client for the cluster")
}

/// The pod a target names: `NAME`, `pod/NAME`, or `deploy/NAME` (its first running pod).
async fn find_pod(client: &kube::Client, namespace: &str, target: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (kind, name) = target.split_once('/').unwrap_or(("pod", target));
    match kind {
        "pod" | "pods" | "po" => pods
            .get_opt(name)
            .await?
            .with_context(|| format!("pods \"{name}\" not found in namespace {namespace}")),
        "deploy" | "deployment" | "deployments" => {
            let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .with_context(|| {
                    format!("deployments.apps \"{name}\" not found in namespace {namespace}")
                })?;
            let labels = deployment
                .spec
                .and_then(|spec| spec.selector.match_labels)
                .unwrap_or_default();
            let selector = labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut candidates = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items;
            candidates.retain(|pod| {
                pod.metadata.deletion_timestamp.is_none()
                    && pod
                        .status
                        .as_ref()
                        .and_then(|status| status.phase.as_deref())
                        == Some("Running")
            });
            candidates
                .sort_by_key(|pod| pod.metadata.creation_timestamp.clone().map(|time| time.0));
            candidates
                .into_iter()
                .next()
                .with_context(|| format!("deployment {name} has no running pod"))
        }
        other => bail!("cannot exec into a {other}: name a pod, pod/NAME or deploy/NAME"),
    }
}

async fn exec(args: ExecArgs) -> anyhow::Result<i32> {
    let client = client(&args.kubeconfig, args.context.clone()).await?;
    let pod = find_pod(&client, &args.namespace, &args.target).await?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|spec| {
            spec.containers
                .iter()
                .map(|container| container.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let container = match args.container {
        Some(container) => container,
        None => {
            let annotated = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get("kubectl.kubernetes.io/default-container"))
                .cloned();
            let chosen = annotated
                .or_else(|| containers.first().cloned())
                .with_context(|| format!("pod {pod_name} has no containers"))?;
            if containers.len() > 1 {
                eprintln!(
                    "Defaulted container \"{chosen}\" out of: {}",
                    containers.join(", ")
                );
            }
            chosen
        }
    };
    let params = AttachParams::default()
        .container(container)
        .stdin(args.stdin)
        .stdout(true)
        .stderr(true);
    let pods: Api<Pod> = Api::namespaced(client, &args.namespace);
    let mut process = pods
        .exec(&pod_name, args.command.clone(), &params)
        .await
        .with_context(|| format!("cannot exec in pod {pod_name}"))?;
    let status = process.take_status();
    let mut stdout = process.stdout();
    let mut stderr = process.stderr();
    let copy_out = async {
        if let Some(stream) = stdout.as_mut() {
            let _ = tokio::io::copy(stream, &mut tokio::io::stdout()).await;
        }
        let _ = tokio::io::stdout().flush().await;
    };
    let copy_err = async {
        if let Some(stream) = stderr.as_mut() {
            let _ = tokio::io::copy(stream, &mut tokio::io::stderr()).await;
        }
    };
    let mut input = process.stdin();
    let copy_in = async {
        if let Some(mut stream) = input.take() {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut stream).await;
            let _ = stream.shutdown().await;
        }
    };
    let (_, _, _) = tokio::join!(copy_out, copy_err, async {
        if args.stdin {
            copy_in.await;
        }
    });
    let status = match status {
        Some(status) => status.await,
        None => None,
    };
    process.join().await.context("the exec connection failed")?;
    let Some(status) = status else {
        return Ok(0);
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|details| details.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|cause| cause.message.as_deref())
        .and_then(|code| code.parse().ok());
    match code {
        Some(code) => {
            eprintln!("command terminated with exit code {code}");
            Ok(code)
        }
        None => bail!(
            "{}",
            status
                .message
                .unwrap_or_else(|| "the command failed".into())
        ),
    }
}
