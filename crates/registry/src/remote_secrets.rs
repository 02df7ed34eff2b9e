//! Remote secrets: Secrets labelled `istio/multiCluster=true` in the control plane's namespace.
//! Each data key is a cluster ID and its value a kubeconfig for that cluster (the layout
//! `create-remote-secret` prints). Clusters come and go with their secrets' keys.

use crate::aggregator::Message;
use crate::backoff::RetryBackoff;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use tokio::sync::mpsc;

pub const MULTI_CLUSTER_LABEL: &str = "istio/multiCluster";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a client from one key of a remote secret.
pub async fn client_from_kubeconfig(cluster: &str, text: &str) -> Result<Client, String> {
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|error| {
        format!("the kubeconfig under key `{cluster}` is not valid YAML kubeconfig: {error}")
    })?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|error| format!("the kubeconfig under key `{cluster}` cannot be used: {error}"))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(config)
        .map_err(|error| format!("cannot build a client for cluster `{cluster}`: {error}"))
}

fn fingerprint(text: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    // Zero means "no usable credentials" to the aggregator.
    hasher.finish().max(1)
}

pub(crate) async fn run(client: Client, namespace: String, to_aggregator: mpsc::Sender<Message>) {
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{MULTI_CLUSTER_LABEL}=true"));
    let mut events = std::pin::pin!(watcher(secrets, config).backoff(RetryBackoff::default()));
    // Secret name to the cluster IDs it holds, as last applied.
    let mut known: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut listing: Option<BTreeSet<String>> = None;
    while let Some(event) = futures::StreamExt::next(&mut events).await {
        let outcome = match event {
            Err(error) => {
                tracing::warn!(%namespace, "watching remote secrets failed: {error}; retrying");
                continue;
            }
            Ok(watcher::Event::Init) => {
                listing = Some(BTreeSet::new());
                Ok(())
            }
            Ok(watcher::Event::InitApply(secret)) => {
                let name = secret.metadata.name.clone().unwrap_or_default();
                listing.get_or_insert_default().insert(name);
                apply(&namespace, &secret, &mut known, &to_aggregator).await
            }
            Ok(watcher::Event::Apply(secret)) => {
                apply(&namespace, &secret, &mut known, &to_aggregator).await
            }
            Ok(watcher::Event::Delete(secret)) => {
                let name = secret.metadata.name.clone().unwrap_or_default();
                remove(
                    &namespace,
                    &name,
                    known.remove(&name).unwrap_or_default(),
                    &to_aggregator,
                )
                .await
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let gone: Vec<String> = known
                    .keys()
                    .filter(|name| !listed.contains(*name))
                    .cloned()
                    .collect();
                let mut outcome = Ok(());
                for name in gone {
                    let clusters = known.remove(&name).unwrap_or_default();
                    outcome =
                        outcome.and(remove(&namespace, &name, clusters, &to_aggregator).await);
                }
                outcome
            }
        };
        if outcome.is_err() {
            return;
        }
    }
}

type Closed = mpsc::error::SendError<Message>;

async fn apply(
    namespace: &str,
    secret: &Secret,
    known: &mut BTreeMap<String, BTreeSet<String>>,
    to_aggregator: &mpsc::Sender<Message>,
) -> Result<(), Closed> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let qualified = format!("{namespace}/{name}");
    let data = secret.data.clone().unwrap_or_default();
    let clusters: BTreeSet<String> = data.keys().cloned().collect();
    for (cluster, value) in &data {
        let message = match std::str::from_utf8(&value.0) {
            Err(_) => Message::FailedRemote {
                cluster: cluster.clone(),
                secret: qualified.clone(),
                error: format!(
                    "key `{cluster}` of secret {qualified} is not UTF-8 text; it must hold a kubeconfig"
                ),
            },
            Ok(text) => match client_from_kubeconfig(cluster, text).await {
                Ok(client) => Message::UpsertRemote {
                    cluster: cluster.clone(),
                    secret: qualified.clone(),
                    fingerprint: fingerprint(&value.0),
                    client: Box::new(client),
                },
                Err(error) => Message::FailedRemote {
                    cluster: cluster.clone(),
                    secret: qualified.clone(),
                    error: format!("{error} (secret {qualified})"),
                },
            },
        };
        to_aggregator.send(message).await?;
    }
    let previous = known
        .insert(name.clone(), clusters.clone())
        .unwrap_or_default();
    let dropped: BTreeSet<String> = previous.difference(&clusters).cloned().collect();
    remove(namespace, &name, dropped, to_aggregator).await
}

async fn remove(
    namespace: &str,
    name: &str,
    clusters: BTreeSet<String>,
    to_aggregator: &mpsc::Sender<Message>,
) -> Result<(), Closed> {
    for cluster in clusters {
        to_aggregator
            .send(Message::RemoveRemote {
                cluster,
                secret: format!("{namespace}/{name}"),
            })
            .await?;
    }
    Ok(())
}
