//! The `caBundle` of the injection webhooks, kept equal to the roots that signed discovery's
//! serving certificate, as istiod keeps it, so that the API server trusts 15017: in this
//! discovery's own cluster ([`LocalCaBundle`]), and ([`RemoteCaBundles`]), as istiod with `EXTERNAL_ISTIOD`
//! does, in every remote cluster whose system namespace names this cluster in
//! `topology.istio.io/controlPlaneClusters` (the consent the seeds' primary-remote step gives;
//! the same rule as for the root-certificate ConfigMaps). A remote cluster's webhook calls its
//! `istiod` Service, whose endpoints are this discovery, so without its `caBundle` no pod of that
//! cluster could be created.

use crate::root_cert_configmaps::{CONTROL_PLANE_CLUSTERS, names_control_plane};
use causeway_registry::ClusterClients;
use futures::{FutureExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::time::Duration;
use tokio::sync::watch;

/// How often remote clusters are looked at; each look is two reads when nothing changed.
const REMOTE_REFRESH: Duration = Duration::from_secs(2);
/// One slow cluster does not hold up the others for longer than this.
const PER_CLUSTER: Duration = Duration::from_secs(5);

/// The injection webhooks are watched; this is how often they are looked at anyway.
const LOCAL_RESYNC: Duration = Duration::from_secs(60);

/// Keeps the `caBundle` of `revision`'s injection webhooks in discovery's own cluster: at
/// start, whenever an injection webhook changes (install rewrites it without one), and every
/// minute.
#[derive(Clone, Debug)]
pub struct LocalCaBundle {
    pub namespace: String,
    pub revision: String,
    pub roots_pem: String,
}

impl LocalCaBundle {
    pub async fn run(self, client: kube::Client, mut stopped: watch::Receiver<bool>) {
        let mut changes = watcher(
            Api::<MutatingWebhookConfiguration>::all(client.clone()),
            watcher::Config::default().labels("app=sidecar-injector"),
        )
        .default_backoff()
        .boxed();
        let mut last_error = String::new();
        loop {
            match keep(&client, &self.namespace, &self.revision, &self.roots_pem).await {
                Ok(()) => last_error.clear(),
                Err(error) => {
                    let error = error.to_string();
                    if error != last_error {
                        tracing::warn!(%error, "cannot update the injection webhook's caBundle; retrying");
                        last_error = error;
                    }
                }
            }
            tokio::select! {
                next = changes.next() => if next.is_none() { return },
                () = tokio::time::sleep(LOCAL_RESYNC) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            // A relist sends every webhook at once: one look covers them all.
            while let Some(Some(_)) = changes.next().now_or_never() {}
        }
    }
}

/// Keeps the injection webhooks' `caBundle` of remote clusters that name `local_cluster`.
#[derive(Clone, Debug)]
pub struct RemoteCaBundles {
    pub local_cluster: String,
    /// The system namespace: where the consent is read, and whose `istiod` the webhooks call.
    pub namespace: String,
    pub revision: String,
    pub roots_pem: String,
}

impl RemoteCaBundles {
    /// Runs until `stopped` turns true, following the clusters `clients` knows (remote
    /// secrets come and go).
    pub async fn run(self, clients: ClusterClients, mut stopped: watch::Receiver<bool>) {
        let known = clients.subscribe();
        loop {
            let current = known.borrow().clone();
            for (cluster, known) in current {
                if cluster == self.local_cluster {
                    continue;
                }
                match tokio::time::timeout(PER_CLUSTER, self.keep_cluster(&known.client)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(%cluster, %error, "cannot keep the remote injection webhook's caBundle; retrying");
                    }
                    Err(_) => {
                        tracing::debug!(%cluster, "the remote cluster did not answer in time; retrying");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(REMOTE_REFRESH) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn keep_cluster(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let Some(namespace) = Api::<Namespace>::all(client.clone())
            .get_opt(&self.namespace)
            .await?
        else {
            return Ok(());
        };
        let consent = namespace
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(CONTROL_PLANE_CLUSTERS))
            .map(String::as_str);
        if !names_control_plane(consent, &self.local_cluster) {
            return Ok(());
        }
        keep(client, &self.namespace, &self.revision, &self.roots_pem).await
    }
}

/// Sets `caBundle` on `revision`'s injection webhooks that call discovery in `namespace`.
pub async fn keep(
    client: &kube::Client,
    namespace: &str,
    revision: &str,
    roots_pem: &str,
) -> Result<(), kube::Error> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let selector = format!("app=sidecar-injector,istio.io/rev={revision}");
    let bundle = ByteString(roots_pem.as_bytes().to_vec());
    for mut configuration in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let mut changed = false;
        for webhook in configuration.webhooks.iter_mut().flatten() {
            let ours = webhook
                .client_config
                .service
                .as_ref()
                .is_some_and(|service| service.namespace == namespace);
            if ours && webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if changed {
            let name = configuration.metadata.name.clone().unwrap_or_default();
            match api
                .replace(&name, &PostParams::default(), &configuration)
                .await
            {
                Ok(_) => tracing::info!(webhook = %name, "caBundle set to the mesh roots"),
                // Someone wrote it meanwhile: the next round sees their version.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}
