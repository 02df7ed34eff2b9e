//! Starting and stopping an API server: its data, TLS, tokens, built-in objects and controllers,
//! and the HTTPS listener that hands each request to the handlers.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::{ApiServerConfig, NODE_API_PORT};
use super::http::REQUEST_READ_TIMEOUT;
use super::node_ports::{NodePorts, node_ports_of};
use super::resources::id_of;
use super::routing::Target;
use super::service_ips::ServiceIps;
use super::state::ApiState;
use super::status::ApiError;
use super::store::{Store, StoreError, StoreOptions};
use super::tls::{self, TlsError};
use super::tokens::{TokenKeyError, TokenSigner};
use super::writes::{self, create_if_absent};
use super::{controllers, handlers, service_ips};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the API server's data in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    TokenKey(#[from] TokenKeyError),
    #[error("cannot read or write the admin token {path}: {source}")]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}; pick another address or stop what holds it")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "another API server is already serving {path}; stop it first (`causeway lab stop-cluster`)"
    )]
    Locked { path: PathBuf },
    #[error("cannot create the cluster's built-in objects: {0}")]
    Bootstrap(String),
}

/// A started API server; dropping it does not stop it, [`RunningApiServer::shutdown`] does.
pub struct RunningApiServer {
    pub address: SocketAddr,
    pub ca_pem: String,
    pub admin_token: String,
    shared: Arc<ApiState>,
    tls: Arc<rustls::ServerConfig>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Held while serving: two API servers on one data directory would interleave their logs.
    _data_lock: std::fs::File,
}

impl RunningApiServer {
    pub fn shared(&self) -> &Arc<ApiState> {
        &self.shared
    }

    /// Serves on one more listener (the node's, bound inside its namespace); its address.
    pub fn serve_also(&mut self, listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let address = listener.local_addr()?;
        self.tasks
            .spawn(accept_loop(self.shared.clone(), listener, self.tls.clone()));
        tracing::info!(cluster = %self.shared.config.cluster, %address, "API server listening");
        Ok(address)
    }

    /// Stops accepting, ends every watch and waits for the tasks to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

fn load_admin_token(data_dir: &std::path::Path) -> Result<String, StartError> {
    let path = data_dir.join("admin-token");
    let error = |source| StartError::AdminToken {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Ok(_) => Err(error(std::io::Error::other(
            "the file is empty; delete it to get a new token",
        ))),
        Err(read_error) if read_error.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            aws_lc_rs::rand::fill(&mut bytes)
                .map_err(|_| error(std::io::Error::other("no randomness")))?;
            let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            causeway_ca::files::write_atomically(
                &path,
                token.as_bytes(),
                causeway_ca::files::Visibility::Secret,
            )
            .map_err(|write_error| error(write_error.source))?;
            Ok(token)
        }
        Err(read_error) => Err(error(read_error)),
    }
}

/// Starts the API server: opens (or creates) its data, then serves HTTPS until shut down.
pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::AdminToken {
        path: config.data_dir.clone(),
        source,
    })?;
    let data_lock = lock_data_dir(&config.data_dir)?;
    let store_dir = config.data_dir.join("store");
    let store = Store::open(
        &store_dir,
        StoreOptions {
            history_limit: config.history_limit,
            ..StoreOptions::default()
        },
    )
    .map_err(|source| StartError::Store {
        path: store_dir.clone(),
        source,
    })?;
    let tokens = TokenSigner::load_or_create(&config.data_dir)?;
    let admin_token = load_admin_token(&config.data_dir)?;

    let mut service_ips = ServiceIps::new(config.service_subnet);
    let mut dns_names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    dns_names.push(format!("{}-control-plane", config.cluster));
    let mut addresses = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::V4(service_ips.api_server_ip()),
    ];
    addresses.extend(config.extra_addresses.iter().copied());
    addresses.extend(config.node_address.map(IpAddr::V4));
    let serving = tls::load(&config.data_dir, &config.cluster, &dns_names, &addresses)?;

    let services = id_of("", "Service");
    let mut node_ports = NodePorts::default();
    for service in store.list(services, None).0 {
        for address in service_ips::cluster_ips(&service.object) {
            service_ips.mark_used(address);
        }
        for port in node_ports_of(&service.object) {
            node_ports.mark_used(port);
        }
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            address: config.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| StartError::Listen {
        address: config.listen,
        source,
    })?;
    let (stop, shutdown) = watch::channel(false);
    let shared = Arc::new(ApiState {
        config,
        store,
        tokens,
        admin_token: admin_token.clone(),
        ca_pem: serving.ca_pem.clone(),
        service_ips: Mutex::new(service_ips),
        node_ports: Mutex::new(node_ports),
        address,
        shutdown,
        pod_runtime: std::sync::OnceLock::new(),
        dialer: std::sync::OnceLock::new(),
    });
    bootstrap(&shared).map_err(|error| StartError::Bootstrap(error.message))?;

    let mut tasks = JoinSet::new();
    tasks.spawn(controllers::start(shared.clone()));
    tasks.spawn(accept_loop(
        shared.clone(),
        listener,
        serving.config.clone(),
    ));
    tracing::info!(cluster = %shared.config.cluster, %address, "API server listening");
    Ok(RunningApiServer {
        address,
        ca_pem: serving.ca_pem,
        tls: serving.config,
        admin_token,
        shared,
        stop,
        tasks,
        _data_lock: data_lock,
    })
}

fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::AdminToken {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked {
            path: data_dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::AdminToken { path, source }),
    }
}

/// The objects every cluster has: its system namespaces, its node, and the `kubernetes` Service.
fn bootstrap(shared: &ApiState) -> Result<(), ApiError> {
    for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        create_if_absent(
            shared,
            &Target::collection(id_of("", "Namespace"), ""),
            object,
        )?;
    }
    let node_name = format!("{}-control-plane", shared.config.cluster);
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name, "labels": {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "node-role.kubernetes.io/control-plane": "",
        }},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    });
    create_if_absent(shared, &Target::collection(id_of("", "Node"), ""), node)?;
    kubernetes_service(shared)
}

/// The `kubernetes` Service in `default` and where it leads: the node's listener when there is a
/// node (its Endpoints and EndpointSlice name it, as a kube-apiserver keeps them), else the
/// host's. Made on the first start, brought up to date on later ones.
fn kubernetes_service(state: &ApiState) -> Result<(), ApiError> {
    let api_ip = state.service_ips().api_server_ip().to_string();
    let target_port = match state.config.node_address {
        Some(_) => NODE_API_PORT,
        None => state.address.port(),
    };
    let ports =
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}]);
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": api_ip, "clusterIPs": [api_ip], "ports": ports},
    });
    let services = id_of("", "Service");
    create_if_absent(state, &Target::collection(services, "default"), service)?;
    writes::update(
        state,
        &Target::object(services, "default", "kubernetes"),
        |current| {
            let changed = current.data["spec"]["ports"] != ports;
            current.data["spec"]["ports"] = ports.clone();
            changed
        },
    )?;
    let Some(node_address) = state.config.node_address else {
        return Ok(());
    };
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": node_address.to_string()}], "ports": [{"name": "https", "port": NODE_API_PORT, "protocol": "TCP"}]}],
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_address.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": NODE_API_PORT, "protocol": "TCP"}],
    });
    for (resource, object, fields) in [
        (id_of("", "Endpoints"), endpoints, &["subsets"][..]),
        (
            id_of("discovery.k8s.io", "EndpointSlice"),
            slice,
            &["endpoints", "ports"][..],
        ),
    ] {
        create_if_absent(
            state,
            &Target::collection(resource, "default"),
            object.clone(),
        )?;
        writes::update(
            state,
            &Target::object(resource, "default", "kubernetes"),
            |current| {
                let mut changed = false;
                for field in fields {
                    if current.data[*field] != object[*field] {
                        current.data[*field] = object[*field].clone();
                        changed = true;
                    }
                }
                changed
            },
        )?;
    }
    Ok(())
}

async fn accept_loop(shared: Arc<ApiState>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut shutdown = shared.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut shutdown = shared.shutdown.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handlers::handle(shared, request).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that never finishes its request headers is dropped instead of held forever.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_READ_TIMEOUT);
            let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}
