//! Kubernetes' garbage collector, as far as the lab's objects own each other: when an object is
//! deleted, the objects that name it as an owner are deleted too (a Deployment's ReplicaSets, a
//! ReplicaSet's pods; everything an operator's cluster-scoped resource made, in any namespace),
//! as `propagationPolicy: Background` does. A namespaced owner owns only objects of its own
//! namespace, as in Kubernetes.

use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::store::Event;
use super::super::writes::{self, DeleteOptions};
use super::log_failure;

pub(super) fn collect(state: &ApiState, deleted: &Event) {
    let uid = deleted.object.uid();
    if uid.is_empty() {
        return;
    }
    let candidates: Vec<(_, String, String)> = if deleted.namespace.is_empty() {
        state.store.all_names()
    } else {
        state
            .store
            .names_in_namespace(&deleted.namespace)
            .into_iter()
            .map(|(resource, name)| (resource, deleted.namespace.clone(), name))
            .collect()
    };
    for (resource, namespace, name) in candidates {
        let Some(object) = state.store.get(resource, &namespace, &name) else {
            continue;
        };
        let owned = object
            .object
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.uid == uid);
        if !owned {
            continue;
        }
        let target = Target::object(resource, &namespace, &name);
        if let Err(error) = writes::delete(state, &target, &DeleteOptions::default())
            && error.reason != "NotFound"
        {
            log_failure("delete a dependent of a deleted object,", &target, &error);
        }
    }
}
