//! ReplicaSets keep their number of pods, as Kubernetes' replicaset controller does: pods are made
//! from the template (`<replicaset>-<suffix>`, owned by the ReplicaSet) or deleted (the least
//! useful first: unscheduled, not running, not ready, restarted most, newest), and the status
//! counts them (ready, and available once ready for `minReadySeconds`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::super::events::{self, EventType, Reporter};
use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::store::StoredObject;
use super::super::writes::{self, DeleteOptions};
use super::{Kinds, Requeue, controller_of, log_failure};

const REPORTER: Reporter = Reporter {
    component: "replicaset-controller",
    host: None,
};

/// Whether a pod counts towards its ReplicaSet: not finished and not being deleted.
pub(super) fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod became ready (seconds), if it is.
pub(super) fn ready_since(pod: &Pod) -> Option<i64> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == "Ready")?;
    if condition.status != "True" {
        return None;
    }
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map_or(0, |time| time.0.as_second()),
    )
}

/// Ready and ready long enough: `Some(0)` when available now, `Some(seconds)` until it will be.
fn available_in(pod: &Pod, min_ready_seconds: i64, now: i64) -> Option<i64> {
    let since = ready_since(pod)?;
    Some((since + min_ready_seconds - now).max(0))
}

/// The order in which excess pods are deleted: the least useful first.
fn deletion_rank(
    pod: &Pod,
) -> (
    bool,
    u8,
    bool,
    std::cmp::Reverse<i32>,
    std::cmp::Reverse<i64>,
) {
    let spec = pod.spec.as_ref();
    let scheduled = spec.and_then(|spec| spec.node_name.as_deref()).is_some();
    let phase = match pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
    {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        Some(_) => 1,
    };
    let restarts = pod
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .map_or(0, |statuses| {
            statuses.iter().map(|status| status.restart_count).sum()
        });
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |time| time.0.as_second());
    (
        scheduled,
        phase,
        ready_since(pod).is_some(),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

pub(super) fn reconcile(state: &ApiState, kinds: &Kinds, namespace: &str, name: &str) -> Requeue {
    let Some(stored) = state.store.get(kinds.replica_sets, namespace, name) else {
        return Requeue::No;
    };
    let Ok(set) = stored.decode::<ReplicaSet>() else {
        return Requeue::No;
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Requeue::No;
    }
    let spec = set.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let mut pods: Vec<Pod> = owned_pods(state, kinds, &stored)
        .into_iter()
        .filter(is_active)
        .collect();
    let involved = events::reference(&stored.object);
    let mut requeue = Requeue::No;
    let difference = desired - i32::try_from(pods.len()).unwrap_or(i32::MAX);
    if difference > 0 {
        for _ in 0..difference {
            match create_pod(state, kinds, &stored, &set) {
                Ok(pod) => {
                    events::record(
                        state,
                        &REPORTER,
                        &involved,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.name()),
                    );
                    if let Ok(pod) = pod.decode::<Pod>() {
                        pods.push(pod);
                    }
                }
                Err(error) => {
                    events::record(
                        state,
                        &REPORTER,
                        &involved,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {error}"),
                    );
                    requeue = Requeue::After(Duration::from_secs(2));
                    break;
                }
            }
        }
    } else if difference < 0 {
        pods.sort_by_key(deletion_rank);
        let excess = usize::try_from(-difference).unwrap_or(0);
        for pod in pods.drain(..excess.min(pods.len())) {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let target = Target::object(kinds.pods, namespace, &pod_name);
            match writes::delete(state, &target, &DeleteOptions::default()) {
                Ok(_) => events::record(
                    state,
                    &REPORTER,
                    &involved,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pod_name}"),
                ),
                Err(error) => log_failure("delete", &target, &error),
            }
        }
    }

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|template| template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default();
    let count = |keep: &dyn Fn(&Pod) -> bool| pods.iter().filter(|pod| keep(pod)).count();
    let ready = count(&|pod| ready_since(pod).is_some());
    let available = count(&|pod| available_in(pod, min_ready, now) == Some(0));
    let fully_labeled = count(&|pod| {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    });
    if let Some(wait) = pods
        .iter()
        .filter_map(|pod| available_in(pod, min_ready, now))
        .filter(|seconds| *seconds > 0)
        .min()
    {
        requeue = requeue.sooner(Duration::from_secs(wait.unsigned_abs()));
    }
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": stored.object.metadata.generation,
    });
    let target = Target::status(kinds.replica_sets, namespace, name);
    if let Err(error) = writes::update(state, &target, |current| {
        let mut merged = current.data["status"].clone();
        if !merged.is_object() {
            merged = json!({});
        }
        for (key, value) in status.as_object().expect("a status object") {
            merged[key] = value.clone();
        }
        let changed = current.data["status"] != merged;
        current.data["status"] = merged;
        changed
    }) && error.reason != "NotFound"
    {
        log_failure("update the status of", &target, &error);
    }
    requeue
}

/// Pods of the namespace whose controller is this ReplicaSet.
pub(super) fn owned_pods(state: &ApiState, kinds: &Kinds, set: &StoredObject) -> Vec<Pod> {
    state
        .store
        .list(kinds.pods, Some(set.namespace()))
        .0
        .iter()
        .filter(|pod| controller_of(pod).is_some_and(|owner| owner == set.uid()))
        .filter_map(|pod| pod.decode::<Pod>().ok())
        .collect()
}

fn create_pod(
    state: &ApiState,
    kinds: &Kinds,
    stored: &StoredObject,
    set: &ReplicaSet,
) -> Result<StoredObject, super::super::status::ApiError> {
    let template = set
        .spec
        .as_ref()
        .and_then(|spec| spec.template.clone())
        .unwrap_or_default();
    let metadata = template.metadata.unwrap_or_default();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", stored.name()),
            "namespace": stored.namespace(),
            "labels": metadata.labels,
            "annotations": metadata.annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": stored.name(),
                "uid": stored.uid(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": template.spec,
    });
    writes::create(
        state,
        &Target::collection(kinds.pods, stored.namespace()),
        pod,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_least_useful_pods_are_deleted_first() {
        let unscheduled = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": []}}));
        let pending = pod(
            json!({"metadata": {"name": "b"}, "spec": {"containers": [], "nodeName": "n"}, "status": {"phase": "Pending"}}),
        );
        let running = pod(
            json!({"metadata": {"name": "c"}, "spec": {"containers": [], "nodeName": "n"}, "status": {"phase": "Running"}}),
        );
        let ready = pod(
            json!({"metadata": {"name": "d"}, "spec": {"containers": [], "nodeName": "n"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        let mut pods = [ready, running, pending, unscheduled];
        pods.sort_by_key(deletion_rank);
        let names: Vec<_> = pods
            .iter()
            .map(|pod| pod.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let ready = pod(
            json!({"metadata": {"name": "d"}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        );
        let at = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(available_in(&ready, 0, at), Some(0));
        assert_eq!(available_in(&ready, 5, at + 2), Some(3));
        assert_eq!(available_in(&ready, 5, at + 9), Some(0));
        let finished = pod(json!({"metadata": {"name": "e"}, "status": {"phase": "Succeeded"}}));
        assert!(!is_active(&finished));
        assert_eq!(available_in(&finished, 0, at), None);
    }
}
