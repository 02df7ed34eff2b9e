//! The API server process: configuration, start-up (data, TLS, tokens, controllers), the HTTPS
//! listener, and authentication of every request.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::resources::{RESOURCES, id_of};
use super::service_ips::ServiceIps;
use super::store::{Change, Store, StoreError, StoreOptions};
use super::tls::{self, TlsError};
use super::tokens::{self, TokenKeyError, TokenSigner};
use super::{controllers, handlers, objects};

#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    pub cluster: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub service_subnet: Ipv4Net,
    /// More addresses the serving certificate must name (the node address, later).
    pub extra_addresses: Vec<IpAddr>,
    /// Recent changes kept for watches to resume from; older resourceVersions get `410 Gone`.
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    pub max_body_bytes: usize,
}

impl ApiServerConfig {
    pub fn new(
        cluster: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        service_subnet: Ipv4Net,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            service_subnet,
            extra_addresses: Vec::new(),
            history_limit: StoreOptions::default().history_limit,
            bookmark_interval: Duration::from_secs(30),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

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

/// Everything request handlers share.
pub struct Shared {
    pub config: ApiServerConfig,
    pub store: Store,
    pub tokens: TokenSigner,
    pub admin_token: String,
    pub ca_pem: String,
    pub service_ips: Mutex<ServiceIps>,
    pub address: SocketAddr,
    pub shutdown: watch::Receiver<bool>,
}

/// A started API server; dropping it does not stop it, [`RunningApiServer::shutdown`] does.
pub struct RunningApiServer {
    pub address: SocketAddr,
    pub ca_pem: String,
    pub admin_token: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Held while serving: two API servers on one data directory would interleave their logs.
    _data_lock: std::fs::File,
}

impl RunningApiServer {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
    let serving = tls::load(&config.data_dir, &config.cluster, &dns_names, &addresses)?;

    let services = id_of("", "Service");
    for service in store.list(services, None).0 {
        for address in objects::cluster_ips(&service.object) {
            service_ips.mark_used(address);
        }
    }
    service_ips.mark_used(service_ips.api_server_ip());

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
    let shared = Arc::new(Shared {
        config,
        store,
        tokens,
        admin_token: admin_token.clone(),
        ca_pem: serving.ca_pem.clone(),
        service_ips: Mutex::new(service_ips),
        address,
        shutdown,
    });
    bootstrap(&shared).map_err(|error| StartError::Bootstrap(error.message))?;

    let mut tasks = JoinSet::new();
    tasks.spawn(controllers::start(shared.clone()));
    tasks.spawn(accept_loop(shared.clone(), listener, serving.config));
    tracing::info!(cluster = %shared.config.cluster, %address, "API server listening");
    Ok(RunningApiServer {
        address,
        ca_pem: serving.ca_pem,
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
fn bootstrap(shared: &Shared) -> Result<(), super::status::ApiError> {
    for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        create_if_absent(shared, id_of("", "Namespace"), "", object)?;
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
    create_if_absent(shared, id_of("", "Node"), "", node)?;
    let api_ip = shared.service_ips().api_server_ip().to_string();
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": api_ip, "clusterIPs": [api_ip], "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": shared.address.port()}]},
    });
    create_if_absent(shared, id_of("", "Service"), "default", service)
}

/// Creates a server-made object unless one of that name exists.
pub fn create_if_absent(
    shared: &Shared,
    resource: usize,
    namespace: &str,
    mut object: serde_json::Value,
) -> Result<(), super::status::ApiError> {
    let kind = &RESOURCES[resource];
    objects::apply_defaults(kind, &mut object);
    objects::stamp_new(&mut object, kind);
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    shared
        .store
        .change(resource, namespace, &name, false, |current| {
            Ok(match current {
                Some(_) => Change::Keep,
                None => Change::Put(object),
            })
        })?;
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
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
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
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

/// How long a client may take to send its request headers, or its body.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Who a request or a TokenReview authenticated as.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Shared {
    /// The ClusterIP allocator. Its state stays consistent through a panic elsewhere: every
    /// operation on it is a single set insert or remove.
    pub fn service_ips(&self) -> std::sync::MutexGuard<'_, ServiceIps> {
        self.service_ips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks a bearer token: the admin token, or a service-account token this cluster signed whose
    /// service account (and bound pod or secret) still exist. `audiences` empty means the API
    /// server's own audience.
    pub fn authenticate(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(UserInfo, Vec<String>), String> {
        let audiences: Vec<String> = if audiences.is_empty() {
            vec![tokens::ISSUER.to_owned()]
        } else {
            audiences.to_vec()
        };
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            if !audiences.iter().any(|audience| audience == tokens::ISSUER) {
                return Err(
                    "the admin token is only valid for the API server's own audience".into(),
                );
            }
            let user = UserInfo {
                username: "kubernetes-admin".into(),
                uid: String::new(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                extra: serde_json::Map::new(),
            };
            return Ok((user, vec![tokens::ISSUER.to_owned()]));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = self
            .tokens
            .verify(token, &audiences, now)
            .map_err(|rejection| rejection.to_string())?;
        let binding = &claims.kubernetes;
        let exists = |kind: &str, name: &str, uid: &str| -> Result<(), String> {
            let found = self.store.get(id_of("", kind), &binding.namespace, name);
            match found {
                Some(object) if object.object["metadata"]["uid"] == uid => Ok(()),
                Some(_) => Err(format!(
                    "the {kind} {}/{name} the token is bound to was deleted and recreated",
                    binding.namespace
                )),
                None => Err(format!(
                    "the {kind} {}/{name} the token is bound to no longer exists",
                    binding.namespace
                )),
            }
        };
        exists(
            "ServiceAccount",
            &binding.serviceaccount.name,
            &binding.serviceaccount.uid,
        )?;
        let mut extra = serde_json::Map::new();
        if let Some(pod) = &binding.pod {
            exists("Pod", &pod.name, &pod.uid)?;
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                json!([pod.name]),
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                json!([pod.uid]),
            );
        }
        if let Some(secret) = &binding.secret {
            exists("Secret", &secret.name, &secret.uid)?;
        }
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={}", claims.jti)]),
        );
        let matched = claims
            .aud
            .iter()
            .filter(|audience| audiences.contains(audience))
            .cloned()
            .collect();
        let user = UserInfo {
            username: claims.sub.clone(),
            uid: binding.serviceaccount.uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", binding.namespace),
                "system:authenticated".into(),
            ],
            extra,
        };
        Ok((user, matched))
    }
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
