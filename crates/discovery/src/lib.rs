//! The control plane process (`causeway discovery`): the multi-cluster registry, xDS on 15010
//! (plaintext) and 15012 (TLS, with the CA service), and debug and metrics on 15014.

pub mod ca_service;
pub mod ca_source;
pub mod debug;
pub mod injection_webhook;
pub mod leader_election;
pub mod root_cert_configmaps;
mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod webhook_ca_bundles;

use anyhow::Context;
use causeway_ca::{CertificateAuthority, SigningPolicy};
use causeway_registry::{Registry, RegistryConfig};
use causeway_xds::server::{XdsMetrics, XdsServer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub cluster_id: String,
    pub network: String,
    pub mesh_id: String,
    pub trust_domain: String,
    /// The control plane's namespace: remote secrets, `cacerts`, the network label.
    pub namespace: String,
    pub domain_suffix: String,
    pub xds_address: SocketAddr,
    pub secure_xds_address: SocketAddr,
    pub monitoring_address: SocketAddr,
    /// The sidecar injection webhook (HTTPS).
    pub webhook_address: SocketAddr,
    /// The install revision whose injector ConfigMaps and webhooks this discovery serves.
    pub revision: String,
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub remote_cluster_timeout: Duration,
    /// More DNS names (or IPs) for the 15012 serving certificate.
    pub extra_dns_names: Vec<String>,
    /// A `cacerts` directory to use instead of the Secret.
    pub cacerts_dir: Option<PathBuf>,
    pub token_audiences: Vec<String>,
    pub signing: SigningPolicy,
    /// This replica's name in the leader Lease (the pod's name in a cluster).
    pub leader_identity: String,
    /// How long the leader Lease holds without renewal (istiod: 30 s).
    pub leader_lease_duration: Duration,
}

impl DiscoveryConfig {
    pub fn new(cluster_id: &str) -> DiscoveryConfig {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        DiscoveryConfig {
            cluster_id: cluster_id.to_owned(),
            network: String::new(),
            mesh_id: String::new(),
            trust_domain: "cluster.local".into(),
            namespace: "istio-system".into(),
            domain_suffix: "cluster.local".into(),
            xds_address: any(15010),
            secure_xds_address: any(15012),
            monitoring_address: any(15014),
            webhook_address: any(15017),
            revision: "default".into(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(10),
            remote_cluster_timeout: Duration::from_secs(30),
            extra_dns_names: Vec::new(),
            cacerts_dir: None,
            token_audiences: vec!["istio-ca".into()],
            signing: SigningPolicy::default(),
            leader_identity: default_leader_identity(),
            leader_lease_duration: Duration::from_secs(30),
        }
    }
}

/// Outside a pod (no `--leader-identity`/`POD_NAME`): the host's name and the process ID, which
/// tell two replicas on one host apart.
fn default_leader_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "unknown".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// Parses a listen address as Istio writes it: `:15010` means every interface.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse().map_err(|_| {
        format!(
            "`{text}` is not a listen address; write `:15010`, `0.0.0.0:15010` or `127.0.0.1:0`"
        )
    })
}

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const _: () = assert!(
    leader_election::RELEASE_TIMEOUT.as_millis() < SHUTDOWN_GRACE.as_millis(),
    "a graceful stop must leave time to release the leader lease"
);

/// A running control plane. Dropping it stops everything.
pub struct Discovery {
    pub xds_address: SocketAddr,
    pub secure_xds_address: SocketAddr,
    pub monitoring_address: SocketAddr,
    pub webhook_address: SocketAddr,
    pub authority: Arc<CertificateAuthority>,
    pub ca_origin: ca_source::CaOrigin,
    pub registry: Registry,
    pub xds: XdsServer,
    /// Whether this replica holds the leader Lease and runs the writers.
    pub leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

/// The leader election, and the writers that run on the leader only: every replica would
/// write the same objects, and replicas of different versions would fight over them.
fn start_writers(
    tasks: &mut tokio::task::JoinSet<()>,
    config: &DiscoveryConfig,
    authority: &CertificateAuthority,
    registry: &Registry,
    client: kube::Client,
    stopped: &watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (leads, leading) = watch::channel(false);
    let election = leader_election::Election {
        namespace: config.namespace.clone(),
        lease_name: leader_election::lease_name(&config.revision),
        identity: config.leader_identity.clone(),
        lease_duration: config.leader_lease_duration,
    };
    tasks.spawn(election.run(client.clone(), leads, stopped.clone()));

    let publisher = root_cert_configmaps::RootCertPublisher {
        local_cluster: config.cluster_id.clone(),
        system_namespace: config.namespace.clone(),
        roots_pem: authority.roots_pem().into(),
    };
    let clients = registry.clients.clone();
    tasks.spawn(leader_election::while_leading(
        leading.clone(),
        stopped.clone(),
        move |term| publisher.clone().run(clients.clone(), term),
    ));
    let local_bundle = webhook_ca_bundles::LocalCaBundle {
        namespace: config.namespace.clone(),
        revision: config.revision.clone(),
        roots_pem: authority.roots_pem(),
    };
    tasks.spawn(leader_election::while_leading(
        leading.clone(),
        stopped.clone(),
        move |term| local_bundle.clone().run(client.clone(), term),
    ));
    let remote_bundles = webhook_ca_bundles::RemoteCaBundles {
        local_cluster: config.cluster_id.clone(),
        namespace: config.namespace.clone(),
        revision: config.revision.clone(),
        roots_pem: authority.roots_pem(),
    };
    let clients = registry.clients.clone();
    tasks.spawn(leader_election::while_leading(
        leading.clone(),
        stopped.clone(),
        move |term| remote_bundles.clone().run(clients.clone(), term),
    ));
    leading
}

impl Discovery {
    /// Starts serving with `client` as the control plane's own cluster.
    pub async fn start(config: DiscoveryConfig, client: kube::Client) -> anyhow::Result<Discovery> {
        anyhow::ensure!(
            config.leader_lease_duration >= Duration::from_secs(1),
            "the leader lease duration {:?} is shorter than a Lease can hold (whole seconds); use 1 s or more",
            config.leader_lease_duration
        );
        let (authority, ca_origin) = ca_source::load(
            &client,
            &config.namespace,
            config.cacerts_dir.as_deref(),
            &config.trust_domain,
            config.signing,
        )
        .await
        .context("cannot set up the mesh CA")?;
        tracing::info!(origin = %ca_origin, "mesh CA loaded");
        let authority = Arc::new(authority);
        let mut dns_names = tls::default_dns_names(&config.namespace);
        dns_names.extend(config.extra_dns_names.iter().cloned());
        let tls_config = tls::serving_config(&authority, &dns_names)
            .context("cannot make the 15012 serving certificate")?;

        let webhook_client = client.clone();
        let election_client = client.clone();
        let registry = Registry::start(
            RegistryConfig {
                cluster_id: config.cluster_id.clone(),
                network: config.network.clone(),
                system_namespace: config.namespace.clone(),
                trust_domain: config.trust_domain.clone(),
                domain_suffix: config.domain_suffix.clone(),
                debounce: config.debounce,
                debounce_max: config.debounce_max,
                remote_cluster_timeout: config.remote_cluster_timeout,
            },
            client,
        );
        let mut metrics_registry = prometheus_client::registry::Registry::default();
        let xds_metrics = XdsMetrics::default();
        xds_metrics.register(&mut metrics_registry);
        let gauges = debug::MeshGauges::default();
        gauges.register(&mut metrics_registry);
        let xds = XdsServer::new(
            registry.snapshots.clone(),
            registry.pushes.clone(),
            registry.ready.clone(),
            xds_metrics,
            &config.cluster_id,
        );
        let ca = ca_service::CaService {
            authority: authority.clone(),
            clients: registry.clients.clone(),
            local_cluster: config.cluster_id.clone(),
            trust_domain: config.trust_domain.clone(),
            audiences: config.token_audiences.clone(),
        };
        let debug_state = debug::DebugState {
            snapshots: registry.snapshots.clone(),
            ready: registry.ready.clone(),
            xds: xds.clone(),
            metrics: Arc::new(Mutex::new(metrics_registry)),
            gauges,
        };

        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let xds_address =
            serve::grpc_plaintext(&mut tasks, config.xds_address, xds.clone(), stopped.clone())
                .await?;
        let webhook_address = injection_webhook::serve(
            &mut tasks,
            config.webhook_address,
            tls_config.clone(),
            webhook_client,
            injection_webhook::WebhookSettings {
                namespace: config.namespace.clone(),
                revision: config.revision.clone(),
            },
            stopped.clone(),
        )
        .await?;
        let secure_xds_address = serve::grpc_tls(
            &mut tasks,
            config.secure_xds_address,
            xds.clone(),
            ca,
            tls_config,
            stopped.clone(),
        )
        .await?;
        let monitoring_address = serve::monitoring(
            &mut tasks,
            config.monitoring_address,
            debug_state,
            stopped.clone(),
        )
        .await?;
        let leading = start_writers(
            &mut tasks,
            &config,
            &authority,
            &registry,
            election_client,
            &stopped,
        );
        tracing::info!(%xds_address, %secure_xds_address, %monitoring_address, %webhook_address, cluster = %config.cluster_id, "discovery serving");
        Ok(Discovery {
            xds_address,
            secure_xds_address,
            monitoring_address,
            webhook_address,
            authority,
            ca_origin,
            registry,
            xds,
            leading,
            stop,
            tasks,
        })
    }

    /// The mesh roots (`root-cert.pem`) that proxies trust 15012 with.
    pub fn roots_pem(&self) -> String {
        self.authority.roots_pem()
    }

    /// Ends every xDS stream, stops the listeners, and waits (5 s at most) for them to finish.
    pub async fn shutdown(mut self) {
        self.xds.close_streams();
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
            self.tasks.abort_all();
        }
    }
}
