//! The watches of one cluster: Services, EndpointSlices, Pods and the system Namespace (plus Istio
//! Gateways in the config cluster), merged into one task that feeds the aggregator.

use crate::aggregator::Message;
use crate::backoff::RetryBackoff;
use crate::records::{self, Kind, ObjectKey, Record};
use causeway_model::SyncState;
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// While a watch is failing, the API server is probed this often to tell when it is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

type KindEvent = (Kind, Result<Change, watcher::Error>);

pub(crate) struct ClusterWatch {
    pub cluster: String,
    pub generation: u64,
    pub client: Client,
    pub system_namespace: String,
    /// The config cluster also supplies Istio configuration (Gateway objects).
    pub config_cluster: bool,
}

impl ClusterWatch {
    pub fn spawn(self, to_aggregator: mpsc::Sender<Message>) -> JoinHandle<()> {
        tokio::spawn(self.run(to_aggregator))
    }

    fn streams(&self) -> SelectAll<BoxStream<'static, KindEvent>> {
        let client = &self.client;
        let cluster = self.cluster.clone();
        let mut streams = futures::stream::select_all([
            kind_stream(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                Kind::Service,
                move |s| Some(Record::Service(records::service_record(&cluster, s))),
            ),
            kind_stream(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                Kind::EndpointSlice,
                |s| records::slice_record(s).map(Record::EndpointSlice),
            ),
            kind_stream(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default(),
                Kind::Pod,
                |p| Some(Record::Pod(records::pod_record(p))),
            ),
            kind_stream(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default()
                    .fields(&format!("metadata.name={}", self.system_namespace)),
                Kind::Namespace,
                |n| Some(Record::Namespace(records::namespace_record(n))),
            ),
        ]);
        if self.config_cluster {
            let gateway = ApiResource::from_gvk(&GroupVersionKind::gvk(
                "networking.istio.io",
                "v1alpha3",
                "Gateway",
            ));
            streams.push(kind_stream(
                Api::<DynamicObject>::all_with(client.clone(), &gateway),
                watcher::Config::default(),
                Kind::Gateway,
                |g| Some(Record::Gateway(records::gateway_record(g))),
            ));
            let virtual_service = ApiResource::from_gvk(&GroupVersionKind::gvk(
                "networking.istio.io",
                "v1alpha3",
                "VirtualService",
            ));
            streams.push(kind_stream(
                Api::<DynamicObject>::all_with(client.clone(), &virtual_service),
                watcher::Config::default(),
                Kind::VirtualService,
                |v| Some(Record::VirtualService(records::virtual_service_record(v))),
            ));
            let peer_authentication = ApiResource::from_gvk(&GroupVersionKind::gvk(
                "security.istio.io",
                "v1beta1",
                "PeerAuthentication",
            ));
            streams.push(kind_stream(
                Api::<DynamicObject>::all_with(client.clone(), &peer_authentication),
                watcher::Config::default(),
                Kind::PeerAuthentication,
                |p| {
                    Some(Record::PeerAuthentication(
                        records::peer_authentication_record(p),
                    ))
                },
            ));
            let service_entry = ApiResource::from_gvk(&GroupVersionKind::gvk(
                "networking.istio.io",
                "v1beta1",
                "ServiceEntry",
            ));
            streams.push(kind_stream(
                Api::<DynamicObject>::all_with(client.clone(), &service_entry),
                watcher::Config::default(),
                Kind::ServiceEntry,
                |e| {
                    records::service_entry_record(e)
                        .map(|entry| Record::ServiceEntry(Box::new(entry)))
                },
            ));
            let workload_entry = ApiResource::from_gvk(&GroupVersionKind::gvk(
                "networking.istio.io",
                "v1beta1",
                "WorkloadEntry",
            ));
            streams.push(kind_stream(
                Api::<DynamicObject>::all_with(client.clone(), &workload_entry),
                watcher::Config::default(),
                Kind::WorkloadEntry,
                |e| {
                    records::workload_entry_record(e)
                        .map(|entry| Record::WorkloadEntry(Box::new(entry)))
                },
            ));
        }
        streams
    }

    async fn run(self, to_aggregator: mpsc::Sender<Message>) {
        let mut streams = self.streams();
        let kinds = streams.len();
        let mut listing: BTreeMap<Kind, Vec<Record>> = BTreeMap::new();
        let mut listed: BTreeSet<Kind> = BTreeSet::new();
        let mut failing: Option<String> = None;
        let mut reported: Option<SyncState> = None;
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let send = |message: Message| to_aggregator.send(message);
        loop {
            let message = tokio::select! {
                item = streams.next() => match item {
                    None => return,
                    Some((kind, Ok(event))) => {
                        failing = None;
                        match event {
                            Change::Init => {
                                listing.insert(kind, Vec::new());
                                None
                            }
                            Change::Listed(record) => {
                                listing.entry(kind).or_default().push(record);
                                None
                            }
                            Change::InitDone => {
                                listed.insert(kind);
                                let records = listing.remove(&kind).unwrap_or_default();
                                Some(Message::Reset { cluster: self.cluster.clone(), generation: self.generation, kind, records })
                            }
                            Change::Applied(record) => {
                                Some(Message::Apply { cluster: self.cluster.clone(), generation: self.generation, record })
                            }
                            Change::Deleted(key) => Some(Message::Delete {
                                cluster: self.cluster.clone(),
                                generation: self.generation,
                                kind,
                                key,
                            }),
                        }
                    }
                    Some((kind, Err(error))) if matches!(kind, Kind::Gateway | Kind::VirtualService | Kind::PeerAuthentication | Kind::ServiceEntry | Kind::WorkloadEntry) && is_not_found(&error) => {
                        // Istio's CRDs are not installed in this cluster: no Gateways, not a failure.
                        if listed.insert(kind) {
                            Some(Message::Reset { cluster: self.cluster.clone(), generation: self.generation, kind, records: Vec::new() })
                        } else {
                            None
                        }
                    }
                    Some((kind, Err(error))) => {
                        let reason = format!("watching {} failed: {error}", kind.as_str());
                        tracing::warn!(cluster = %self.cluster, "{reason}; retrying with backoff");
                        failing = Some(reason);
                        None
                    }
                },
                _ = probe.tick(), if failing.is_some() => {
                    if self.client.apiserver_version().await.is_ok() {
                        tracing::info!(cluster = %self.cluster, "API server reachable again");
                        failing = None;
                    }
                    None
                }
            };
            if let Some(message) = message
                && send(message).await.is_err()
            {
                return;
            }
            let state = match &failing {
                Some(reason) => SyncState::NotSynced(reason.clone()),
                None if listed.len() == kinds => SyncState::Synced,
                None => SyncState::NotSynced("listing objects for the first time".into()),
            };
            if reported.as_ref() != Some(&state) {
                reported = Some(state.clone());
                let message = Message::Sync {
                    cluster: self.cluster.clone(),
                    generation: self.generation,
                    state,
                };
                if send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The API server does not serve the kind (its CRD is not installed).
fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_not_found(),
        watcher::Error::WatchError(status) => status.is_not_found(),
        _ => false,
    }
}

/// A watch event reduced to what the aggregator needs. An object the mesh cannot use (an FQDN
/// EndpointSlice, say) counts as deleted: if an earlier version was usable, it must go.
enum Change {
    Init,
    Listed(Record),
    InitDone,
    Applied(Record),
    Deleted(ObjectKey),
}

fn kind_stream<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    convert: impl Fn(&K) -> Option<Record> + Send + 'static,
) -> BoxStream<'static, KindEvent>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let key_of = |object: &K| {
        let meta = object.meta();
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    watcher(api, config)
        .backoff(RetryBackoff::default())
        .filter_map(move |result| {
            let change = match result {
                Err(error) => Some(Err(error)),
                Ok(watcher::Event::Init) => Some(Ok(Change::Init)),
                Ok(watcher::Event::InitDone) => Some(Ok(Change::InitDone)),
                Ok(watcher::Event::InitApply(object)) => {
                    convert(&object).map(|r| Ok(Change::Listed(r)))
                }
                Ok(watcher::Event::Apply(object)) => Some(Ok(match convert(&object) {
                    Some(record) => Change::Applied(record),
                    None => Change::Deleted(key_of(&object)),
                })),
                Ok(watcher::Event::Delete(object)) => Some(Ok(Change::Deleted(key_of(&object)))),
            };
            std::future::ready(change.map(|change| (kind, change)))
        })
        .boxed()
}
