//! A running proxy. A sidecar: the ADS client, the identity, and the listeners (15001 outbound,
//! 15006 inbound, 15053 DNS). A router: the ADS client and the router ports its configuration
//! names. Both: 15000 admin, 15090/15020 metrics, 15021 health.

use crate::access_log::{AccessLog, Encoding};
use crate::admin::{self, AdminState};
use crate::ads::{self, AdsSettings, AdsStatus};
use crate::balancer::Balancer;
use crate::bootstrap::{Role, Workload};
use crate::dataplane::DataPlane;
use crate::dns::{self, DnsSettings};
use crate::dns_clusters;
use crate::drain::DrainPolicy;
use crate::identity::{self, CaSettings};
use crate::peer_metadata::OwnMetadata;
use crate::telemetry::Telemetry;
use crate::{inbound, outbound, router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

#[derive(Clone, Debug)]
pub struct Listen {
    /// For routers, only its IP counts: where the configured router ports are bound.
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// `None`: no DNS proxy.
    pub dns: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub prometheus: SocketAddr,
    pub merged: SocketAddr,
    pub health: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Listen {
            outbound: any(15001),
            inbound: any(15006),
            dns: Some(SocketAddr::from(([127, 0, 0, 1], 15053))),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            prometheus: any(15090),
            merged: any(15020),
            health: any(15021),
        }
    }
}

/// `meshConfig.accessLogFile`, `accessLogFormat` and `accessLogEncoding`.
#[derive(Clone, Debug)]
pub struct AccessLogSettings {
    pub path: String,
    pub format: Option<String>,
    pub encoding: Encoding,
}

#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub workload: Workload,
    pub ads: AdsSettings,
    /// Sidecars get a certificate; routers splice TLS without one.
    pub ca: Option<CaSettings>,
    pub listen: Listen,
    pub mark: u32,
    /// `meshConfig.accessLogFile` and `accessLogFormat`.
    pub access_log: Option<AccessLogSettings>,
    pub protocol_detection_timeout: Duration,
    /// Where names the mesh does not know are resolved (`resolv.conf`'s servers).
    pub upstream_dns: Vec<SocketAddr>,
    /// Once ready, give back the executable's start-up pages ([`crate::resident`]). For the
    /// proxy process; not for a test binary that embeds a proxy.
    pub trim_resident_pages: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {address} for {what}: {source}; stop what holds the port or pick another"
    )]
    Listen {
        address: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    AccessLog(String),
    #[error("the workload's identity is not a valid SPIFFE ID: {0}")]
    Identity(#[from] causeway_ca::SpiffeIdError),
}

/// The addresses actually bound (tests ask for port 0).
#[derive(Clone, Debug)]
pub struct Bound {
    /// Sidecars only.
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub prometheus: SocketAddr,
    pub merged: SocketAddr,
    pub health: SocketAddr,
}

pub struct RunningProxy {
    pub bound: Bound,
    pub dataplane: Arc<DataPlane>,
    pub ads: Arc<AdsStatus>,
    tasks: JoinSet<()>,
}

impl RunningProxy {
    /// Runs until a task ends (none does unless it fails).
    pub async fn wait(&mut self) {
        let _ = self.tasks.join_next().await;
    }

    /// Drains as `policy` says (see [`crate::drain`]); the proxy keeps serving meanwhile.
    pub async fn drain(&mut self, policy: DrainPolicy) {
        tracing::info!(
            active = self.dataplane.drain.active_connections(),
            ?policy,
            "draining"
        );
        let drain = self.dataplane.drain.clone();
        tokio::select! {
            () = policy.run(&drain) => {}
            _ = self.tasks.join_next() => tracing::warn!("a proxy task stopped while draining"),
        }
    }
}

async fn bind(address: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            address,
            what,
            source,
        })
}

fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

pub async fn start(settings: ProxySettings) -> Result<RunningProxy, StartError> {
    let workload = Arc::new(settings.workload.clone());
    let identity = causeway_ca::SpiffeId::new(
        &workload.trust_domain,
        &workload.namespace,
        &workload.service_account,
    )?;
    let access_log = settings
        .access_log
        .as_ref()
        .map(|log| AccessLog::open(&log.path, log.format.as_deref(), log.encoding))
        .transpose()
        .map_err(StartError::AccessLog)?;
    let listen = &settings.listen;
    let sidecar = workload.role == Role::Sidecar;
    let (outbound_listener, inbound_listener) = if sidecar {
        (
            Some(bind(listen.outbound, "captured outbound traffic").await?),
            Some(bind(listen.inbound, "captured inbound traffic").await?),
        )
    } else {
        (None, None)
    };
    let admin_listener = bind(listen.admin, "the admin port").await?;
    let prometheus_listener = bind(listen.prometheus, "Prometheus metrics").await?;
    let merged_listener = bind(listen.merged, "merged metrics").await?;
    let health_listener = bind(listen.health, "the health check").await?;
    let dns_sockets = match listen.dns.filter(|_| sidecar) {
        Some(address) => Some((
            UdpSocket::bind(address)
                .await
                .map_err(|source| StartError::Listen {
                    address,
                    what: "the DNS proxy (UDP)",
                    source,
                })?,
            bind(address, "the DNS proxy (TCP)").await?,
        )),
        None => None,
    };

    let mut tasks = JoinSet::new();
    let mut ads_settings = settings.ads.clone();
    ads_settings.node = workload.node();
    let (config, ads_status, ads_task) = ads::start(ads_settings);
    tasks.spawn(async move {
        let _ = ads_task.await;
    });
    let (config, dns_clusters_task) = dns_clusters::start(
        config,
        DnsSettings {
            search_domains: Vec::new(),
            upstream: settings.upstream_dns.clone(),
            mark: settings.mark,
        },
    );
    tasks.spawn(async move {
        let _ = dns_clusters_task.await;
    });
    let tls = match &settings.ca {
        Some(ca) => {
            let (tls, identity_task) = identity::start(ca.clone(), identity);
            tasks.spawn(async move {
                let _ = identity_task.await;
            });
            tls
        }
        None => tokio::sync::watch::channel(None).1,
    };
    let dataplane = Arc::new(DataPlane {
        workload: workload.clone(),
        config: config.clone(),
        tls,
        balancer: Balancer::default(),
        telemetry: Arc::new(Telemetry::default()),
        mark: settings.mark,
        access_log,
        own_metadata: OwnMetadata::of(&workload),
        protocol_detection_timeout: settings.protocol_detection_timeout,
        upstream_pool: Default::default(),
        drain: Default::default(),
    });
    tasks.spawn(dataplane.upstream_pool.clone().sweep_forever());
    let bound = Bound {
        outbound: outbound_listener.as_ref().map(local),
        inbound: inbound_listener.as_ref().map(local),
        dns: dns_sockets
            .as_ref()
            .and_then(|(udp, _)| udp.local_addr().ok()),
        admin: local(&admin_listener),
        prometheus: local(&prometheus_listener),
        merged: local(&merged_listener),
        health: local(&health_listener),
    };
    if let (Some(outbound_listener), Some(inbound_listener)) = (outbound_listener, inbound_listener)
    {
        tasks.spawn(outbound::serve(outbound_listener, dataplane.clone()));
        tasks.spawn(inbound::serve(inbound_listener, dataplane.clone()));
    } else {
        // The gateway's ports come from its configuration (15443, 15012, 15017, ...).
        tasks.spawn(router::manage_listeners(
            dataplane.clone(),
            listen.outbound.ip(),
        ));
    }
    if let Some((udp, tcp)) = dns_sockets {
        let dns_settings = DnsSettings {
            search_domains: workload.search_domains(),
            upstream: settings.upstream_dns.clone(),
            mark: settings.mark,
        };
        tasks.spawn(dns::serve(udp, tcp, config.clone(), dns_settings));
    }
    let state = AdminState {
        dataplane: dataplane.clone(),
        ads: ads_status.clone(),
        needs_certificate: settings.ca.is_some(),
    };
    if settings.trim_resident_pages {
        let state = state.clone();
        tasks.spawn(async move {
            while !state.ready() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Let the first connections' set-up finish before the pages go.
            tokio::time::sleep(Duration::from_secs(1)).await;
            crate::resident::drop_startup_pages();
            tracing::debug!("start-up pages given back");
            std::future::pending::<()>().await;
        });
    }
    for (listener, port) in [
        (admin_listener, admin::Port::Admin),
        (prometheus_listener, admin::Port::Prometheus),
        (merged_listener, admin::Port::Merged),
        (health_listener, admin::Port::Health),
    ] {
        tasks.spawn(admin::serve(listener, port, state.clone()));
    }
    // Forget load-balancer state of clusters that are gone.
    let balancer_owner = dataplane.clone();
    let mut changes = config;
    tasks.spawn(async move {
        while changes.changed().await.is_ok() {
            let current = changes.borrow_and_update().clone();
            balancer_owner
                .balancer
                .retain(|name| current.clusters.contains_key(name));
        }
    });
    tracing::info!(node = %workload.node_id(), "proxy started");
    Ok(RunningProxy {
        bound,
        dataplane,
        ads: ads_status,
        tasks,
    })
}
