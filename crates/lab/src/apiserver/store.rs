//! The API server's objects: an ordered map in memory, every change written ahead to disk, and a
//! history of recent changes that watches resume from.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::resources::{RESOURCES, ResourceId, find_by_storage_name, id_of};
use super::status::ApiError;
use super::wal::{Record, Snapshot, SnapshotEntry, Wal, WalError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "the stored data names a kind this API server does not serve ({name}); it was written by a \
         newer version: run that version, or move the data directory aside"
    )]
    UnknownResource { name: String },
    #[error("a stored {resource} object has no metadata.name")]
    Unnamed { resource: String },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: ResourceId,
    namespace: String,
    name: String,
}

/// An object as stored: typed metadata and the rest as JSON, for selectors, patches and
/// controllers, and serialized for fast reads.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub object: Arc<DynamicObject>,
    pub json: Bytes,
    pub revision: u64,
}

impl StoredObject {
    pub fn new(object: DynamicObject, revision: u64) -> Self {
        let json = Bytes::from(serde_json::to_vec(&object).expect("an object always serializes"));
        Self {
            object: Arc::new(object),
            json,
            revision,
        }
    }

    /// The object as its Kubernetes type (a `Pod`, a `Service`...), decoded from its JSON.
    pub fn decode<K: DeserializeOwned>(&self) -> Result<K, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }

    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.object.metadata.namespace.as_deref().unwrap_or("")
    }

    pub fn uid(&self) -> &str {
        self.object.metadata.uid.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it. For a delete, `object` is the last state with the deletion's
/// resourceVersion.
#[derive(Debug)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    pub resource: ResourceId,
    pub namespace: String,
    pub name: String,
    pub object: StoredObject,
    pub previous: Option<Arc<DynamicObject>>,
}

/// What a change decided, given the current object.
pub enum Change {
    Put(Box<DynamicObject>),
    Delete,
    Keep,
}

/// The object before and after a change.
pub struct Outcome {
    pub previous: Option<StoredObject>,
    pub current: Option<StoredObject>,
}

/// Where a watch starts: the changes already past its revision, a receiver of later ones, and the
/// current revision.
#[derive(Debug)]
pub struct WatchStart {
    pub backlog: Vec<Arc<Event>>,
    pub receiver: broadcast::Receiver<Arc<Event>>,
    pub revision: u64,
}

/// A watch could not start at the revision asked for: its events were compacted away.
#[derive(Debug)]
pub struct Compacted {
    pub oldest: u64,
}

struct Inner {
    objects: BTreeMap<Key, StoredObject>,
    revision: u64,
    history: VecDeque<Arc<Event>>,
    /// Every event after this revision is in `history`.
    history_start: u64,
    history_limit: usize,
    wal: Wal,
    wal_limit: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

/// How many events a watcher may fall behind before it is told to relist.
const WATCHER_BACKLOG: usize = 16 * 1024;

pub struct StoreOptions {
    /// How many recent changes watches can resume from.
    pub history_limit: usize,
    /// Log size that triggers a snapshot.
    pub wal_limit: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            wal_limit: 64 << 20,
        }
    }
}

fn set_resource_version(object: &mut DynamicObject, revision: u64) {
    object.metadata.resource_version = Some(revision.to_string());
}

fn name_of(object: &DynamicObject) -> Option<(&str, &str)> {
    let name = object.metadata.name.as_deref()?;
    let namespace = object.metadata.namespace.as_deref().unwrap_or("");
    Some((namespace, name))
}

impl Store {
    pub fn open(directory: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let (wal, recovered) = Wal::open(directory)?;
        if recovered.dropped_bytes > 0 {
            tracing::warn!(
                bytes = recovered.dropped_bytes,
                "dropped a torn record at the end of the write-ahead log (written when the API \
                 server stopped; it was never acknowledged)"
            );
        }
        let mut objects = BTreeMap::new();
        for entry in recovered.snapshot.objects {
            let resource = find_by_storage_name(&entry.resource).ok_or_else(|| {
                StoreError::UnknownResource {
                    name: entry.resource.clone(),
                }
            })?;
            let (namespace, name) = name_of(&entry.object).ok_or_else(|| StoreError::Unnamed {
                resource: entry.resource.clone(),
            })?;
            let key = Key {
                resource,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            let revision = entry
                .object
                .metadata
                .resource_version
                .as_deref()
                .and_then(|text| text.parse().ok())
                .unwrap_or(recovered.snapshot.revision);
            objects.insert(key, StoredObject::new(entry.object, revision));
        }
        let mut inner = Inner {
            objects,
            revision: recovered.snapshot.revision,
            history: VecDeque::new(),
            history_start: recovered.snapshot.revision,
            history_limit: options.history_limit.max(1),
            wal,
            wal_limit: options.wal_limit,
        };
        for record in recovered.records {
            let resource = find_by_storage_name(&record.resource).ok_or_else(|| {
                StoreError::UnknownResource {
                    name: record.resource.clone(),
                }
            })?;
            let key = Key {
                resource,
                namespace: record.namespace,
                name: record.name,
            };
            inner.apply(key, record.object, record.revision);
        }
        let (events, _) = broadcast::channel(WATCHER_BACKLOG);
        Ok(Self {
            inner: Mutex::new(inner),
            events,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-changed: every change is
        // applied with single inserts/removes after its record is durable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn get(&self, resource: ResourceId, namespace: &str, name: &str) -> Option<StoredObject> {
        let key = Key {
            resource,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.lock().objects.get(&key).cloned()
    }

    /// Every object of a kind (in one namespace, or all), ordered by namespace and name, and the
    /// revision the list is consistent at.
    pub fn list(&self, resource: ResourceId, namespace: Option<&str>) -> (Vec<StoredObject>, u64) {
        let inner = self.lock();
        (inner.of_kind(resource, namespace), inner.revision)
    }

    /// Names of the namespaced objects of every kind in `namespace`.
    pub fn names_in_namespace(&self, namespace: &str) -> Vec<(ResourceId, String)> {
        let inner = self.lock();
        inner
            .objects
            .keys()
            .filter(|key| key.namespace == namespace && RESOURCES[key.resource].namespaced)
            .map(|key| (key.resource, key.name.clone()))
            .collect()
    }

    /// Where every object is: its kind, namespace (empty for cluster-scoped ones) and name.
    pub fn all_names(&self) -> Vec<(ResourceId, String, String)> {
        let inner = self.lock();
        inner
            .objects
            .keys()
            .map(|key| (key.resource, key.namespace.clone(), key.name.clone()))
            .collect()
    }

    /// Changes one object. `decide` sees the current object under the store's lock, so a change
    /// computed from it (update, patch) cannot race another. With `dry_run` nothing is stored.
    pub fn change(
        &self,
        resource: ResourceId,
        namespace: &str,
        name: &str,
        dry_run: bool,
        decide: impl FnOnce(Option<&StoredObject>) -> Result<Change, ApiError>,
    ) -> Result<Outcome, ApiError> {
        let key = Key {
            resource,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let mut inner = self.lock();
        let previous = inner.objects.get(&key).cloned();
        let mut object = match decide(previous.as_ref())? {
            Change::Keep => {
                return Ok(Outcome {
                    current: previous.clone(),
                    previous,
                });
            }
            Change::Delete if previous.is_none() => {
                return Ok(Outcome {
                    previous: None,
                    current: None,
                });
            }
            Change::Delete => None,
            Change::Put(object) => {
                if previous.is_none() && RESOURCES[resource].namespaced {
                    inner.check_namespace_open(namespace)?;
                }
                Some(*object)
            }
        };
        let revision = inner.revision + 1;
        if let Some(object) = object.as_mut() {
            set_resource_version(object, revision);
        }
        if dry_run {
            let current = object.map(|object| StoredObject::new(object, revision));
            return Ok(Outcome { previous, current });
        }
        let record = Record {
            revision,
            resource: RESOURCES[resource].storage_name(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            object,
        };
        inner
            .wal
            .append(&record)
            .map_err(|error| ApiError::internal(format!("the change was not stored: {error}")))?;
        let event = inner.apply(key.clone(), record.object, revision);
        let _ = self.events.send(event);
        if inner.wal.len() > inner.wal_limit
            && let Err(error) = inner.compact()
        {
            tracing::error!(%error, "cannot write a snapshot; the write-ahead log keeps growing");
        }
        Ok(Outcome {
            previous,
            current: inner.objects.get(&key).cloned(),
        })
    }

    /// Starts a watch of `resource` after `since`: the events already past it, and a receiver of
    /// later ones. `None` starts at the current revision.
    pub fn watch(&self, resource: ResourceId, since: Option<u64>) -> Result<WatchStart, Compacted> {
        let inner = self.lock();
        let receiver = self.events.subscribe();
        let since = since.unwrap_or(inner.revision);
        if since < inner.history_start {
            return Err(Compacted {
                oldest: inner.history_start,
            });
        }
        let backlog = inner
            .history
            .iter()
            .filter(|event| event.revision > since && event.resource == resource)
            .cloned()
            .collect();
        Ok(WatchStart {
            backlog,
            receiver,
            revision: inner.revision,
        })
    }

    /// The current objects of a kind and a receiver of every later change, taken together so that
    /// nothing falls between them.
    pub fn list_and_watch(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
    ) -> (Vec<StoredObject>, broadcast::Receiver<Arc<Event>>, u64) {
        // Changes are sent under the lock, so subscribing and listing under one guard is atomic.
        let inner = self.lock();
        let receiver = self.events.subscribe();
        (inner.of_kind(resource, namespace), receiver, inner.revision)
    }

    /// A receiver of every change from now on, and the current revision.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Event>>, u64) {
        let inner = self.lock();
        (self.events.subscribe(), inner.revision)
    }

    /// Writes a snapshot now and empties the log.
    pub fn compact(&self) -> Result<(), WalError> {
        self.lock().compact()
    }

    /// Forgets the change history, as etcd's compaction does: watches from older revisions get
    /// `410 Gone`.
    pub fn forget_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.history_start = inner.revision;
    }
}

impl Inner {
    /// The objects of a kind (in one namespace, or all), ordered by namespace and name.
    fn of_kind(&self, resource: ResourceId, namespace: Option<&str>) -> Vec<StoredObject> {
        let start = Key {
            resource,
            namespace: namespace.unwrap_or("").to_owned(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(|(key, _)| {
                key.resource == resource
                    && namespace.is_none_or(|namespace| key.namespace == namespace)
            })
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// New objects may only go into a namespace that exists and is not being deleted; checked under
    /// the same lock as the write, so a namespace's deletion never leaves objects behind.
    fn check_namespace_open(&self, namespace: &str) -> Result<(), ApiError> {
        let key = Key {
            resource: id_of("", "Namespace"),
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        match self.objects.get(&key) {
            None => Err(ApiError::not_found("", "namespaces", namespace)),
            Some(stored) if stored.object.data["status"]["phase"] == "Terminating" => {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    fn apply(&mut self, key: Key, object: Option<DynamicObject>, revision: u64) -> Arc<Event> {
        self.revision = revision;
        let previous = self.objects.get(&key).cloned();
        let (kind, stored) = match object {
            Some(object) => {
                let stored = StoredObject::new(object, revision);
                self.objects.insert(key.clone(), stored.clone());
                let kind = if previous.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, stored)
            }
            None => {
                self.objects.remove(&key);
                let mut last = previous
                    .as_ref()
                    .map(|previous| (*previous.object).clone())
                    .unwrap_or_else(|| DynamicObject {
                        types: None,
                        metadata: Default::default(),
                        data: serde_json::Value::Null,
                    });
                set_resource_version(&mut last, revision);
                (EventType::Deleted, StoredObject::new(last, revision))
            }
        };
        let event = Arc::new(Event {
            revision,
            kind,
            resource: key.resource,
            namespace: key.namespace,
            name: key.name,
            object: stored,
            previous: previous.map(|previous| previous.object),
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.history_start = dropped.revision;
            }
        }
        event
    }

    fn compact(&mut self) -> Result<(), WalError> {
        let snapshot = Snapshot {
            revision: self.revision,
            objects: self
                .objects
                .iter()
                .map(|(key, stored)| SnapshotEntry {
                    resource: RESOURCES[key.resource].storage_name(),
                    object: (*stored.object).clone(),
                })
                .collect(),
        };
        self.wal.compact(&snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::id_of;
    use crate::apiserver::test_objects::object;
    use serde_json::json;

    // Cluster-scoped objects, so that revisions count only the test's own writes.
    fn role(name: &str, value: &str) -> DynamicObject {
        object(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": [{"verbs": [value]}]}),
        )
    }

    fn roles() -> ResourceId {
        id_of("rbac.authorization.k8s.io", "ClusterRole")
    }

    fn put(store: &Store, name: &str, value: &str) -> StoredObject {
        let object = role(name, value);
        store
            .change(roles(), "", name, false, |_| {
                Ok(Change::Put(Box::new(object)))
            })
            .unwrap()
            .current
            .unwrap()
    }

    #[test]
    fn objects_and_revisions_survive_reopening_with_and_without_a_snapshot() {
        let directory = tempfile::tempdir().unwrap();
        let configmaps = roles();
        {
            let store = Store::open(directory.path(), StoreOptions::default()).unwrap();
            put(&store, "a", "1");
            store.compact().unwrap();
            put(&store, "b", "2");
            put(&store, "a", "3");
            store
                .change(configmaps, "", "b", false, |_| Ok(Change::Delete))
                .unwrap();
        }
        let store = Store::open(directory.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.revision(), 4);
        let (items, _) = store.list(configmaps, None);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].object.data["rules"][0]["verbs"][0], "3");
        assert_eq!(
            items[0].object.metadata.resource_version.as_deref(),
            Some("3")
        );
        // Events after the snapshot were replayed into the history: a watch can resume from 1.
        let backlog = store.watch(configmaps, Some(1)).unwrap().backlog;
        let kinds: Vec<_> = backlog
            .iter()
            .map(|event| (event.kind, event.revision))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventType::Added, 2),
                (EventType::Modified, 3),
                (EventType::Deleted, 4)
            ]
        );
        assert_eq!(store.watch(configmaps, Some(0)).unwrap_err().oldest, 1);
    }

    #[test]
    fn a_failed_decision_changes_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), StoreOptions::default()).unwrap();
        put(&store, "a", "1");
        let before = store.revision();
        let result = store.change(roles(), "", "a", false, |_| {
            Err(ApiError::bad_request("no"))
        });
        assert!(result.is_err());
        assert_eq!(store.revision(), before);
    }

    #[test]
    fn new_objects_need_an_open_namespace() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), StoreOptions::default()).unwrap();
        let configmaps = id_of("", "ConfigMap");
        let config_map = || object(json!({"metadata": {"name": "c", "namespace": "sample"}}));
        let error = store
            .change(configmaps, "sample", "c", false, |_| {
                Ok(Change::Put(Box::new(config_map())))
            })
            .err()
            .unwrap();
        assert_eq!(error.code, 404);
        let namespace =
            object(json!({"metadata": {"name": "sample"}, "status": {"phase": "Terminating"}}));
        store
            .change(id_of("", "Namespace"), "", "sample", false, |_| {
                Ok(Change::Put(Box::new(namespace)))
            })
            .unwrap();
        let error = store
            .change(configmaps, "sample", "c", false, |_| {
                Ok(Change::Put(Box::new(config_map())))
            })
            .err()
            .unwrap();
        assert_eq!(error.code, 403);
        assert!(
            error.message.contains("being terminated"),
            "{}",
            error.message
        );
    }

    #[test]
    fn history_beyond_its_limit_is_forgotten() {
        let directory = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            history_limit: 2,
            ..StoreOptions::default()
        };
        let store = Store::open(directory.path(), options).unwrap();
        for value in ["1", "2", "3", "4"] {
            put(&store, "a", value);
        }
        let configmaps = roles();
        assert!(store.watch(configmaps, Some(1)).is_err());
        assert_eq!(store.watch(configmaps, Some(2)).unwrap().backlog.len(), 2);
    }
}
