//! The controllers that make a cluster work, run inside the API server and fed by its change
//! stream, as kube-controller-manager and kube-scheduler run beside a kube-apiserver: Endpoints
//! and EndpointSlices, namespaces' default accounts and root CA, token Secrets, Deployments and
//! ReplicaSets, the scheduler, the garbage collector, and Events' expiry. Each works in a module
//! of its own and writes through [`super::writes`], as any client would.

mod deployments;
mod endpoint_mirroring;
mod endpoints;
mod garbage_collector;
mod replica_sets;
pub mod rollout;
mod root_ca;
pub mod scheduler;
mod service_accounts;
mod token_secrets;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::events;
use super::resources::{ResourceId, id_of};
use super::routing::Target;
use super::state::ApiState;
use super::status::ApiError;
use super::store::{Event, EventType, StoredObject};
use super::writes;

pub use deployments::TEMPLATE_HASH_LABEL;

/// The kinds the controllers watch and write.
struct Kinds {
    namespaces: ResourceId,
    services: ResourceId,
    pods: ResourceId,
    endpoints: ResourceId,
    slices: ResourceId,
    accounts: ResourceId,
    secrets: ResourceId,
    config_maps: ResourceId,
    deployments: ResourceId,
    replica_sets: ResourceId,
    nodes: ResourceId,
    events: ResourceId,
}

impl Kinds {
    fn new() -> Self {
        Self {
            namespaces: id_of("", "Namespace"),
            services: id_of("", "Service"),
            pods: id_of("", "Pod"),
            endpoints: id_of("", "Endpoints"),
            slices: id_of("discovery.k8s.io", "EndpointSlice"),
            accounts: id_of("", "ServiceAccount"),
            secrets: id_of("", "Secret"),
            config_maps: id_of("", "ConfigMap"),
            deployments: id_of("apps", "Deployment"),
            replica_sets: id_of("apps", "ReplicaSet"),
            nodes: id_of("", "Node"),
            events: id_of("", "Event"),
        }
    }
}

/// Whether a controller wants to look at an object again later (a pod becoming available after
/// `minReadySeconds`, a rollout's progress deadline, a failed create).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requeue {
    No,
    After(Duration),
}

impl Requeue {
    fn sooner(self, after: Duration) -> Self {
        match self {
            Requeue::No => Requeue::After(after),
            Requeue::After(current) => Requeue::After(current.min(after)),
        }
    }
}

/// Objects to reconcile again, and when.
#[derive(Default)]
struct Later(BTreeMap<(ResourceId, String, String), Instant>);

impl Later {
    fn add(&mut self, resource: ResourceId, namespace: &str, name: &str, requeue: Requeue) {
        if let Requeue::After(after) = requeue {
            let due = Instant::now() + after;
            let entry = self
                .0
                .entry((resource, namespace.to_owned(), name.to_owned()))
                .or_insert(due);
            *entry = (*entry).min(due);
        }
    }

    fn take_due(&mut self) -> Vec<(ResourceId, String, String)> {
        let now = Instant::now();
        let due: Vec<_> = self
            .0
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &due {
            self.0.remove(key);
        }
        due
    }
}

/// How often due requeues and Events' expiry are looked at.
const TICK: Duration = Duration::from_millis(250);
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// Subscribes to changes, then brings everything up to date, so that the API server answers its
/// first request with every namespace's default account in place. Returns the loop to run next.
pub fn start(state: Arc<ApiState>) -> impl std::future::Future<Output = ()> {
    let kinds = Kinds::new();
    let (events, _) = state.store.subscribe();
    let mut later = Later::default();
    reconcile_everything(&state, &kinds, &mut later);
    run(state, kinds, events, later)
}

async fn run(
    state: Arc<ApiState>,
    kinds: Kinds,
    mut changes: broadcast::Receiver<Arc<Event>>,
    mut later: Later,
) {
    let mut shutdown = state.shutdown.clone();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_expiry = Instant::now() + EXPIRY_EVERY;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            received = changes.recv() => match received {
                Ok(event) => on_event(&state, &kinds, &event, &mut later),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    reconcile_everything(&state, &kinds, &mut later)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick() => {
                for (resource, namespace, name) in later.take_due() {
                    reconcile(&state, &kinds, resource, &namespace, &name, &mut later);
                }
                if Instant::now() >= next_expiry {
                    next_expiry = Instant::now() + EXPIRY_EVERY;
                    events::expire(&state, time::OffsetDateTime::now_utc().unix_timestamp());
                }
            }
        }
    }
}

fn reconcile_everything(state: &ApiState, kinds: &Kinds, later: &mut Later) {
    for namespace in state.store.list(kinds.namespaces, None).0 {
        service_accounts::ensure_default(state, kinds, namespace.name());
        root_ca::publish(state, kinds, namespace.name());
    }
    for service in state.store.list(kinds.services, None).0 {
        endpoints::reconcile_service(state, kinds, service.namespace(), service.name());
    }
    for secret in state.store.list(kinds.secrets, None).0 {
        token_secrets::fill(state, kinds, &secret);
    }
    for kind in [kinds.deployments, kinds.replica_sets] {
        for object in state.store.list(kind, None).0 {
            reconcile(state, kinds, kind, object.namespace(), object.name(), later);
        }
    }
    for pod in state.store.list(kinds.pods, None).0 {
        scheduler::schedule(state, kinds, &pod);
    }
}

/// Reconciles one Deployment or ReplicaSet.
fn reconcile(
    state: &ApiState,
    kinds: &Kinds,
    resource: ResourceId,
    namespace: &str,
    name: &str,
    later: &mut Later,
) {
    let requeue = if resource == kinds.deployments {
        deployments::reconcile(state, kinds, namespace, name)
    } else if resource == kinds.replica_sets {
        replica_sets::reconcile(state, kinds, namespace, name)
    } else {
        Requeue::No
    };
    later.add(resource, namespace, name, requeue);
}

/// The uid of an object's controller (its owner reference with `controller: true`).
fn controller_of(object: &StoredObject) -> Option<&str> {
    object
        .object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| owner.uid.as_str())
}

/// The owner of kind `kind` (its name) that controls `object`.
fn controlling_owner<'a>(object: &'a DynamicObject, kind: &str) -> Option<&'a str> {
    object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true) && owner.kind == kind)
        .map(|owner| owner.name.as_str())
}

fn on_event(state: &ApiState, kinds: &Kinds, event: &Event, later: &mut Later) {
    let resource = event.resource;
    if event.kind == EventType::Deleted && resource != kinds.events && resource != kinds.pods {
        garbage_collector::collect(state, event);
    }
    if resource == kinds.namespaces && event.kind == EventType::Added {
        service_accounts::ensure_default(state, kinds, &event.name);
        root_ca::publish(state, kinds, &event.name);
    } else if resource == kinds.config_maps
        && event.kind == EventType::Deleted
        && event.name == root_ca::NAME
    {
        root_ca::publish(state, kinds, &event.namespace);
    } else if resource == kinds.services {
        endpoints::reconcile_service(state, kinds, &event.namespace, &event.name);
        endpoint_mirroring::reconcile(state, kinds, &event.namespace, &event.name);
    } else if resource == kinds.endpoints {
        endpoint_mirroring::reconcile(state, kinds, &event.namespace, &event.name);
    } else if resource == kinds.pods {
        endpoints::on_pod_change(state, kinds, event);
        if event.kind != EventType::Deleted {
            scheduler::schedule(state, kinds, &event.object);
        }
        let pod = event.previous.as_deref().unwrap_or(&event.object.object);
        if let Some(set) = controlling_owner(pod, "ReplicaSet") {
            reconcile(
                state,
                kinds,
                kinds.replica_sets,
                &event.namespace,
                set,
                later,
            );
        }
    } else if resource == kinds.secrets && event.kind != EventType::Deleted {
        token_secrets::fill(state, kinds, &event.object);
    } else if resource == kinds.deployments && event.kind != EventType::Deleted {
        reconcile(
            state,
            kinds,
            kinds.deployments,
            &event.namespace,
            &event.name,
            later,
        );
    } else if resource == kinds.replica_sets {
        if event.kind != EventType::Deleted {
            reconcile(
                state,
                kinds,
                kinds.replica_sets,
                &event.namespace,
                &event.name,
                later,
            );
        }
        if let Some(deployment) = controlling_owner(&event.object.object, "Deployment") {
            reconcile(
                state,
                kinds,
                kinds.deployments,
                &event.namespace,
                deployment,
                later,
            );
        }
    }
}

/// Writes a controller-owned object: creates it, or updates its labels, owners and `fields` where
/// they differ from `desired`.
fn write_owned<K>(state: &ApiState, resource: ResourceId, desired: &K, fields: &[&str])
where
    K: Serialize + Metadata<Ty = ObjectMeta>,
{
    let metadata = desired.metadata();
    let namespace = metadata.namespace.as_deref().unwrap_or("");
    let name = metadata.name.as_deref().unwrap_or("");
    let target = Target::object(resource, namespace, name);
    let desired_json = serde_json::to_value(desired).expect("Kubernetes objects serialize");
    let result = match state.store.get(resource, namespace, name) {
        None => writes::create_if_absent(
            state,
            &Target::collection(resource, namespace),
            desired_json,
        )
        .map(drop),
        Some(_) => writes::update(state, &target, |current| {
            let mut changed = false;
            if current.metadata.labels != metadata.labels {
                current.metadata.labels.clone_from(&metadata.labels);
                changed = true;
            }
            if current.metadata.owner_references != metadata.owner_references {
                current
                    .metadata
                    .owner_references
                    .clone_from(&metadata.owner_references);
                changed = true;
            }
            for field in fields {
                changed |= copy_field(&mut current.data, &desired_json, field);
            }
            changed
        })
        .map(drop),
    };
    if let Err(error) = result {
        log_failure("write", &target, &error);
    }
}

/// Sets `to[field]` to `from[field]` (removing it when `from` has none); whether it changed.
fn copy_field(to: &mut Value, from: &Value, field: &str) -> bool {
    let wanted = from.get(field);
    if to.get(field) == wanted {
        return false;
    }
    match (wanted, to.as_object_mut()) {
        (Some(value), Some(map)) => {
            map.insert(field.to_owned(), value.clone());
        }
        (None, Some(map)) => {
            map.remove(field);
        }
        (_, None) => return false,
    }
    true
}

/// Deletes the controller-owned objects of a kind in `namespace` that `doomed` picks.
fn delete_owned(
    state: &ApiState,
    resource: ResourceId,
    namespace: &str,
    doomed: impl Fn(&super::store::StoredObject) -> bool,
) {
    for object in state.store.list(resource, Some(namespace)).0 {
        if !doomed(&object) {
            continue;
        }
        let target = Target::object(resource, namespace, object.name());
        if let Err(error) = writes::delete(state, &target, &writes::DeleteOptions::default()) {
            log_failure("delete", &target, &error);
        }
    }
}

fn log_failure(action: &str, target: &Target, error: &ApiError) {
    tracing::warn!(
        kind = target.kind().kind,
        namespace = target.namespace(),
        name = target.name.as_deref().unwrap_or(""),
        %error,
        "a controller cannot {action} an object it owns"
    );
}
