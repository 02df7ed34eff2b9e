//! The ADS server: one task per stream, fed by the stream's requests and by the registry's pushes.

mod batched_writes;
mod gated_io;
mod interner;
pub mod metrics;
mod read_gate;
mod request;
mod sent_versions;
mod stream;
mod subscription;
mod wire;

use crate::generate::Generator;
use crate::proxy::ProxyInfo;
pub use batched_writes::BatchedWrites;
use causeway_model::{MeshSnapshot, Push};
pub use gated_io::GatedIo;
pub use metrics::XdsMetrics;
use read_gate::ReadGate;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{broadcast, watch};
pub use wire::AdsService;
#[cfg(feature = "testing")]
pub(crate) use wire::GRPC_PREFIX_BYTES;

/// Responses a stream may have queued before its task waits for the client to read. Small, so
/// that a slow client holds back its own stream rather than the server's memory.
const STREAM_BUFFER: usize = 2;

/// What a proxy was last sent and whether it accepted it, per type.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub sent_nonce: Option<String>,
    pub sent_version: Option<String>,
    pub acked_nonce: Option<String>,
    pub acked_version: Option<String>,
    /// The error of the last NACK, until a later response is ACKed.
    pub rejected: Option<String>,
    pub resources: usize,
}

impl TypeStatus {
    /// `istioctl proxy-status` words: SYNCED (the last response was ACKed), STALE (sent and not
    /// ACKed, or NACKed) or NOT SENT.
    pub fn sync_state(&self) -> &'static str {
        match (&self.sent_nonce, &self.acked_nonce) {
            (None, _) => "NOT SENT",
            (Some(sent), Some(acked)) if sent == acked && self.rejected.is_none() => "SYNCED",
            _ => "STALE",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    pub connection_id: String,
    pub proxy: ProxyInfo,
    pub delta: bool,
    pub connected_at: SystemTime,
    pub types: Mutex<BTreeMap<String, TypeStatus>>,
}

impl ConnectionStatus {
    pub fn types(&self) -> BTreeMap<String, TypeStatus> {
        self.types.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, type_url: &str, change: impl FnOnce(&mut TypeStatus)) {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before inserting: an owned key for every ACK of every stream adds up.
        match types.get_mut(type_url) {
            Some(status) => change(status),
            None => change(types.entry(type_url.to_owned()).or_default()),
        }
    }
}

pub(crate) struct Shared {
    generator: Generator,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pushes: broadcast::Sender<Arc<Push>>,
    connections: Mutex<BTreeMap<u64, Arc<ConnectionStatus>>>,
    metrics: XdsMetrics,
    default_cluster: String,
    next_connection: AtomicU64,
    /// Turns true when the server drains: every stream ends, and its client reconnects elsewhere.
    closing: watch::Sender<bool>,
    /// The registry's readiness. Streams are refused until it has been ready once, so that no
    /// proxy is configured from a half-listed mesh (and then churned as the rest arrives).
    ready: watch::Receiver<bool>,
    serving: AtomicBool,
    interner: interner::Interner,
    sent_tables: sent_versions::SharedTables,
    /// Holds back reading from connections while a push is fanned out (see `read_gate`).
    read_gate: Arc<ReadGate>,
}

/// The ADS service. Cheap to clone: every clone serves the same mesh.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl XdsServer {
    /// `default_cluster`: the cluster of proxies whose node metadata names none. `ready`: the
    /// registry's readiness; streams are served once it has been true.
    pub fn new(
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        pushes: broadcast::Sender<Arc<Push>>,
        ready: watch::Receiver<bool>,
        metrics: XdsMetrics,
        default_cluster: &str,
    ) -> XdsServer {
        let overrides = metrics.read_gate_overrides.clone();
        let shared = Arc::new(Shared {
            generator: Generator::default(),
            snapshots,
            pushes,
            connections: Mutex::new(BTreeMap::new()),
            metrics,
            default_cluster: default_cluster.to_owned(),
            next_connection: AtomicU64::new(1),
            closing: watch::Sender::new(false),
            ready,
            serving: AtomicBool::new(false),
            interner: interner::Interner::default(),
            sent_tables: sent_versions::SharedTables::default(),
            read_gate: ReadGate::start(overrides),
        });
        // Cached endpoint assignments of deleted services are dropped as snapshots go by.
        let janitor = Arc::downgrade(&shared);
        let mut updates = shared.snapshots.clone();
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let Some(shared) = janitor.upgrade() else {
                    return;
                };
                let snapshot = updates.borrow_and_update().clone();
                shared.generator.forget_removed(&snapshot);
            }
        });
        XdsServer { shared }
    }

    /// The ADS gRPC service, for a tonic server's `add_service`.
    pub fn service(&self) -> AdsService {
        AdsService {
            shared: self.shared.clone(),
        }
    }

    /// Wraps an accepted connection so that its reads wait while a push is being fanned out
    /// (proxies get their config first, and their ACKs are read after), and so that a push goes
    /// out to all of the connection's streams in one write.
    pub fn wrap_connection<T>(&self, connection: T) -> BatchedWrites<GatedIo<T>> {
        BatchedWrites::new(
            GatedIo::new(connection, self.shared.read_gate.clone()),
            self.shared.metrics.socket_writes.clone(),
        )
    }

    /// Ends every stream (and refuses none: new ones end at once too), so that a graceful
    /// shutdown of the gRPC servers is not held up by long-lived ADS streams.
    pub fn close_streams(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Every connected stream, oldest first.
    pub fn connections(&self) -> Vec<Arc<ConnectionStatus>> {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The resources `proxy` would be sent now, by type (for `/debug/config_dump`).
    pub fn config_for(
        &self,
        proxy: &ProxyInfo,
    ) -> BTreeMap<&'static str, Vec<Arc<crate::resources::Resource>>> {
        let snapshot = self.shared.snapshots.borrow().clone();
        crate::resources::PUSH_ORDER
            .iter()
            .map(|type_url| {
                let resources = self.shared.generator.generate(
                    type_url,
                    &snapshot,
                    proxy,
                    crate::generate::Wanted::All,
                );
                (*type_url, resources)
            })
            .collect()
    }
}

impl Shared {
    /// Whether the registry has been ready at least once. Later outages of a cluster do not
    /// stop serving: its last known state is still the best answer.
    fn serving(&self) -> bool {
        if self.serving.load(Ordering::Relaxed) {
            return true;
        }
        let ready = *self.ready.borrow();
        if ready {
            self.serving.store(true, Ordering::Relaxed);
        }
        ready
    }

    fn register(&self, proxy: ProxyInfo, delta: bool) -> (u64, Arc<ConnectionStatus>) {
        let number = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(ConnectionStatus {
            connection_id: format!("{}-{number}", proxy.id),
            proxy,
            delta,
            connected_at: SystemTime::now(),
            types: Mutex::new(BTreeMap::new()),
        });
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, status.clone());
        self.metrics.connected.inc();
        (number, status)
    }

    /// After a stream received a push or left: reads are held back while any stream has a push
    /// still to receive.
    fn after_receive(&self) {
        self.read_gate.after_receive(|| !self.pushes.is_empty());
    }

    fn unregister(&self, number: u64) {
        if self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&number)
            .is_some()
        {
            self.metrics.connected.dec();
        }
    }
}
