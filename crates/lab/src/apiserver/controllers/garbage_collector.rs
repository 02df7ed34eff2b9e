//! Kubernetes' garbage collector, as far as the lab's objects own each other: when an object is
//! deleted, the objects in its namespace that name it as an owner are deleted too (a
//! Deployment's ReplicaSets, a ReplicaSet's pods), as `propagationPolicy: Background` does.

use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::store::Event;
use super::super::writes::{self, DeleteOptions};
use super::log_failure;

pub(super) fn collect(state: &ApiState, deleted: &Event) {
    let uid = deleted.object.uid();
    if uid.is_empty() || deleted.namespace.is_empty() {
        return;
    }
    for (resource, name) in state.store.names_in_namespace(&deleted.namespace) {
        let Some(object) = state.store.get(resource, &deleted.namespace, &name) else {
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
        let target = Target::object(resource, &deleted.namespace, &name);
        if let Err(error) = writes::delete(state, &target, &DeleteOptions::default())
            && error.reason != "NotFound"
        {
            log_failure("delete a dependent of a deleted object,", &target, &error);
        }
    }
}
