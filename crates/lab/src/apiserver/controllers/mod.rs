//! The controllers that make a fresh cluster useful to the mesh, run inside the API server and fed
//! by its change stream. Each works in a module of its own and writes through
//! [`super::writes`], as any client would.

mod endpoints;
mod service_accounts;
mod token_secrets;

use std::sync::Arc;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::resources::{ResourceId, id_of};
use super::routing::Target;
use super::state::ApiState;
use super::status::ApiError;
use super::store::{Event, EventType};
use super::writes;

/// The kinds the controllers watch and write.
struct Kinds {
    namespaces: ResourceId,
    services: ResourceId,
    pods: ResourceId,
    endpoints: ResourceId,
    slices: ResourceId,
    accounts: ResourceId,
    secrets: ResourceId,
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
        }
    }
}

/// Subscribes to changes, then brings everything up to date, so that the API server answers its
/// first request with every namespace's default account in place. Returns the loop to run next.
pub fn start(state: Arc<ApiState>) -> impl std::future::Future<Output = ()> {
    let kinds = Kinds::new();
    let (events, _) = state.store.subscribe();
    reconcile_everything(&state, &kinds);
    run(state, kinds, events)
}

async fn run(state: Arc<ApiState>, kinds: Kinds, mut events: broadcast::Receiver<Arc<Event>>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            received = events.recv() => match received {
                Ok(event) => on_event(&state, &kinds, &event),
                Err(broadcast::error::RecvError::Lagged(_)) => reconcile_everything(&state, &kinds),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

fn reconcile_everything(state: &ApiState, kinds: &Kinds) {
    for namespace in state.store.list(kinds.namespaces, None).0 {
        service_accounts::ensure_default(state, kinds, namespace.name());
    }
    for service in state.store.list(kinds.services, None).0 {
        endpoints::reconcile_service(state, kinds, service.namespace(), service.name());
    }
    for secret in state.store.list(kinds.secrets, None).0 {
        token_secrets::fill(state, kinds, &secret);
    }
}

fn on_event(state: &ApiState, kinds: &Kinds, event: &Event) {
    let resource = event.resource;
    if resource == kinds.namespaces && event.kind == EventType::Added {
        service_accounts::ensure_default(state, kinds, &event.name);
    } else if resource == kinds.services {
        endpoints::reconcile_service(state, kinds, &event.namespace, &event.name);
    } else if resource == kinds.pods {
        endpoints::on_pod_change(state, kinds, event);
    } else if resource == kinds.secrets && event.kind != EventType::Deleted {
        token_secrets::fill(state, kinds, &event.object);
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
