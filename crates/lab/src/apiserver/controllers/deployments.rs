//! Deployments, as Kubernetes' deployment controller runs them: a ReplicaSet per pod template
//! (`<deployment>-<pod-template-hash>`), rolled over by the strategy [`super::rollout`] plans,
//! revisions annotated, old ReplicaSets kept up to `revisionHistoryLimit`, and the status and
//! conditions `kubectl rollout status` and `kubectl wait --for condition=available` read.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::super::events::{self, EventType, Reporter};
use super::super::metadata::now;
use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::store::StoredObject;
use super::super::writes::{self, DeleteOptions};
use super::replica_sets::{is_active, owned_pods};
use super::rollout::{self, ReplicaSetView, Step, Strategy};
use super::{Kinds, Requeue, controller_of, log_failure};

pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

const REPORTER: Reporter = Reporter {
    component: "deployment-controller",
    host: None,
};

/// The pod-template-hash of a template: FNV-32a of its JSON, written with Kubernetes' safe
/// alphabet over its decimal digits, as `rand.SafeEncodeString(fmt.Sprint(hash))` does.
pub fn template_hash(template: &Value, collisions: u32) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(template).expect("a JSON value always serializes"));
    if collisions > 0 {
        feed(&collisions.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|digit| ALPHABET[usize::from(digit) % ALPHABET.len()] as char)
        .collect()
}

/// A template without the pod-template-hash label, to compare a Deployment's with its
/// ReplicaSets'.
fn without_hash(template: &Value) -> Value {
    let mut copy = template.clone();
    if let Some(labels) = copy
        .get_mut("metadata")
        .and_then(|metadata| metadata.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        labels.remove(TEMPLATE_HASH_LABEL);
        if labels.is_empty() {
            copy["metadata"]
                .as_object_mut()
                .expect("labels live in metadata")
                .remove("labels");
        }
    }
    copy
}

fn view(set: &StoredObject) -> ReplicaSetView {
    let data = &set.object.data;
    let number = |value: &Value| i32::try_from(value.as_i64().unwrap_or(0)).unwrap_or(0);
    ReplicaSetView {
        name: set.name().to_owned(),
        replicas: number(&data["spec"]["replicas"]),
        current: number(&data["status"]["replicas"]),
        ready: number(&data["status"]["readyReplicas"]),
        available: number(&data["status"]["availableReplicas"]),
        created: set
            .object
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |time| time.0.as_second()),
    }
}

fn revision_of(set: &StoredObject) -> i64 {
    set.object
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(REVISION))
        .and_then(|revision| revision.parse().ok())
        .unwrap_or(0)
}

/// The Deployment's ReplicaSets, oldest first.
fn owned_sets(state: &ApiState, kinds: &Kinds, deployment: &StoredObject) -> Vec<StoredObject> {
    let mut sets: Vec<StoredObject> = state
        .store
        .list(kinds.replica_sets, Some(deployment.namespace()))
        .0
        .into_iter()
        .filter(|set| controller_of(set).is_some_and(|owner| owner == deployment.uid()))
        .collect();
    sets.sort_by_key(|set| (view(set).created, set.name().to_owned()));
    sets
}

pub(super) fn reconcile(state: &ApiState, kinds: &Kinds, namespace: &str, name: &str) -> Requeue {
    let Some(stored) = state.store.get(kinds.deployments, namespace, name) else {
        return Requeue::No;
    };
    let Ok(deployment) = stored.decode::<Deployment>() else {
        return Requeue::No;
    };
    if deployment.metadata.deletion_timestamp.is_some() {
        return Requeue::No;
    }
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let strategy = match spec
        .strategy
        .as_ref()
        .and_then(|strategy| strategy.type_.as_deref())
    {
        Some("Recreate") => Strategy::Recreate,
        _ => {
            let rolling = spec
                .strategy
                .as_ref()
                .and_then(|strategy| strategy.rolling_update.as_ref());
            Strategy::rolling(
                rolling.and_then(|rolling| rolling.max_surge.as_ref()),
                rolling.and_then(|rolling| rolling.max_unavailable.as_ref()),
                desired,
            )
        }
    };
    let template = stored.object.data["spec"]["template"].clone();
    let involved = events::reference(&stored.object);

    let sets = owned_sets(state, kinds, &stored);
    let new_set = sets
        .iter()
        .find(|set| without_hash(&set.object.data["spec"]["template"]) == template);
    let new_view = new_set.map(view);
    let old: Vec<&StoredObject> = sets
        .iter()
        .filter(|set| Some(set.name()) != new_set.map(StoredObject::name))
        .collect();
    let old_views: Vec<ReplicaSetView> = old.iter().map(|set| view(set)).collect();
    let old_pods: usize = old
        .iter()
        .map(|set| {
            owned_pods(state, kinds, set)
                .iter()
                .filter(|pod| is_active(pod) || pod.metadata.deletion_timestamp.is_some())
                .count()
        })
        .sum();

    let steps = rollout::plan(strategy, desired, new_view.as_ref(), &old_views, old_pods);
    let mut created = None;
    let progressed = !steps.is_empty();
    for step in steps {
        match step {
            Step::CreateNew { replicas } => {
                let revision = sets.iter().map(revision_of).max().unwrap_or(0) + 1;
                match create_set(
                    state, kinds, &stored, &template, replicas, revision, strategy,
                ) {
                    Ok(set) => {
                        events::record(
                            state,
                            &REPORTER,
                            &involved,
                            EventType::Normal,
                            "ScalingReplicaSet",
                            &format!("Scaled up replica set {} from 0 to {replicas}", set.name()),
                        );
                        created = Some(set.name().to_owned());
                    }
                    Err(error) => {
                        log_failure(
                            "create a ReplicaSet for",
                            &Target::object(kinds.deployments, namespace, name),
                            &error,
                        );
                        return Requeue::After(Duration::from_secs(2));
                    }
                }
            }
            Step::Scale {
                name: set_name,
                replicas,
            } => {
                let from = sets
                    .iter()
                    .find(|set| set.name() == set_name)
                    .map_or(0, |set| view(set).replicas);
                if scale_set(
                    state, kinds, namespace, &set_name, replicas, desired, strategy,
                ) {
                    let direction = if replicas > from { "up" } else { "down" };
                    events::record(
                        state,
                        &REPORTER,
                        &involved,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        &format!(
                            "Scaled {direction} replica set {set_name} from {from} to {replicas}"
                        ),
                    );
                }
            }
        }
    }

    // The status, from the ReplicaSets as they are now.
    let sets = owned_sets(state, kinds, &stored);
    let new_set = sets
        .iter()
        .find(|set| without_hash(&set.object.data["spec"]["template"]) == template);
    let views: Vec<ReplicaSetView> = sets.iter().map(view).collect();
    let new_view = new_set.map(view);
    let counts = rollout::counts(desired, new_view.as_ref(), &views);
    let complete = rollout::complete(desired, &counts);
    if complete {
        clean_up_history(
            state,
            kinds,
            &sets,
            new_set,
            spec.revision_history_limit.unwrap_or(10),
        );
    }
    if let Some(new_set) = new_set {
        annotate_revision(state, kinds, namespace, name, revision_of(new_set));
    }
    let new_name = new_set.map_or_else(String::new, |set| set.name().to_owned());
    let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
    write_status(
        state,
        kinds,
        &stored,
        StatusInput {
            counts,
            complete,
            minimum_available: counts.available >= desired - strategy.max_unavailable(),
            new_set: &new_name,
            created: created.is_some(),
            progressed,
            deadline,
        },
    );
    if complete {
        Requeue::No
    } else {
        Requeue::After(Duration::from_secs(deadline.clamp(1, 600).unsigned_abs()))
    }
}

fn create_set(
    state: &ApiState,
    kinds: &Kinds,
    deployment: &StoredObject,
    template: &Value,
    replicas: i32,
    revision: i64,
    strategy: Strategy,
) -> Result<StoredObject, super::super::status::ApiError> {
    let desired = deployment.object.data["spec"]["replicas"]
        .as_i64()
        .unwrap_or(1);
    let mut collisions = 0;
    loop {
        let hash = template_hash(template, collisions);
        let name = format!("{}-{hash}", deployment.name());
        if let Some(existing) = state
            .store
            .get(kinds.replica_sets, deployment.namespace(), &name)
        {
            if controller_of(&existing).is_some_and(|owner| owner == deployment.uid()) {
                return Ok(existing);
            }
            collisions += 1;
            continue;
        }
        let mut template = template.clone();
        template["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
        let mut selector = deployment.object.data["spec"]["selector"].clone();
        selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);
        let set = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": deployment.namespace(),
                "labels": template["metadata"]["labels"],
                "annotations": {
                    REVISION: revision.to_string(),
                    DESIRED_REPLICAS: desired.to_string(),
                    MAX_REPLICAS: (desired + i64::from(strategy.max_surge())).to_string(),
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": deployment.name(),
                    "uid": deployment.uid(),
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": deployment.object.data["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        });
        return writes::create(
            state,
            &Target::collection(kinds.replica_sets, deployment.namespace()),
            set,
            false,
        );
    }
}

/// Sets a ReplicaSet's replicas; whether that changed anything.
fn scale_set(
    state: &ApiState,
    kinds: &Kinds,
    namespace: &str,
    name: &str,
    replicas: i32,
    desired: i32,
    strategy: Strategy,
) -> bool {
    let target = Target::object(kinds.replica_sets, namespace, name);
    let mut changed = false;
    let result = writes::update(state, &target, |set| {
        if set.data["spec"]["replicas"].as_i64() == Some(i64::from(replicas)) {
            return false;
        }
        set.data["spec"]["replicas"] = json!(replicas);
        let annotations = set.metadata.annotations.get_or_insert_default();
        annotations.insert(DESIRED_REPLICAS.into(), desired.to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (desired + strategy.max_surge()).to_string(),
        );
        changed = true;
        true
    });
    if let Err(error) = result {
        log_failure("scale", &target, &error);
        return false;
    }
    changed
}

fn annotate_revision(state: &ApiState, kinds: &Kinds, namespace: &str, name: &str, revision: i64) {
    let target = Target::object(kinds.deployments, namespace, name);
    let revision = revision.to_string();
    if let Err(error) = writes::update(state, &target, |deployment| {
        let annotations = deployment.metadata.annotations.get_or_insert_default();
        if annotations.get(REVISION) == Some(&revision) {
            return false;
        }
        annotations.insert(REVISION.into(), revision.clone());
        true
    }) && error.reason != "NotFound"
    {
        log_failure("annotate", &target, &error);
    }
}

/// Deletes old, empty ReplicaSets beyond the history limit, oldest first.
fn clean_up_history(
    state: &ApiState,
    kinds: &Kinds,
    sets: &[StoredObject],
    new_set: Option<&StoredObject>,
    limit: i32,
) {
    let empty: Vec<&StoredObject> = sets
        .iter()
        .filter(|set| Some(set.name()) != new_set.map(StoredObject::name))
        .filter(|set| {
            let view = view(set);
            view.replicas == 0 && view.current == 0
        })
        .collect();
    let excess = empty
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    for set in empty.into_iter().take(excess) {
        let target = Target::object(kinds.replica_sets, set.namespace(), set.name());
        if let Err(error) = writes::delete(state, &target, &DeleteOptions::default()) {
            log_failure("delete", &target, &error);
        }
    }
}

struct StatusInput<'a> {
    counts: rollout::Counts,
    complete: bool,
    minimum_available: bool,
    new_set: &'a str,
    created: bool,
    progressed: bool,
    deadline: i64,
}

/// A condition, its times kept from `previous` unless it changed.
fn condition(
    previous: Option<&Value>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Value {
    let stamp = now();
    let same_status = previous.is_some_and(|previous| previous["status"] == status);
    let same = same_status
        && previous
            .is_some_and(|previous| previous["reason"] == reason && previous["message"] == message);
    let keep = |field: &str, changed: bool| match previous {
        Some(previous) if !changed => previous[field].clone(),
        _ => json!(stamp),
    };
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": keep("lastUpdateTime", !same),
        "lastTransitionTime": keep("lastTransitionTime", !same_status),
    })
}

fn write_status(
    state: &ApiState,
    kinds: &Kinds,
    deployment: &StoredObject,
    input: StatusInput<'_>,
) {
    let target = Target::status(kinds.deployments, deployment.namespace(), deployment.name());
    let generation = deployment.object.metadata.generation;
    let result = writes::update(state, &target, |current| {
        let previous_conditions = current.data["status"]["conditions"].clone();
        let find = |kind: &str| {
            previous_conditions.as_array().and_then(|conditions| {
                conditions
                    .iter()
                    .find(|condition| condition["type"] == kind)
            })
        };
        let counts = input.counts;
        let previous_counts = &current.data["status"];
        let moved = [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ]
        .iter()
        .zip([
            counts.replicas,
            counts.updated,
            counts.ready,
            counts.available,
        ])
        .any(|(field, now)| previous_counts[*field].as_i64().unwrap_or(0) != i64::from(now));
        let available = if input.minimum_available {
            condition(
                find("Available"),
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            condition(
                find("Available"),
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        let set = input.new_set;
        let previous_progress = find("Progressing");
        let progressing = if input.complete {
            condition(
                previous_progress,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{set}\" has successfully progressed."),
            )
        } else if input.created {
            condition(
                previous_progress,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &format!("Created new replica set \"{set}\""),
            )
        } else if input.progressed || moved || previous_progress.is_none() {
            condition(
                previous_progress,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{set}\" is progressing."),
            )
        } else {
            let last = previous_progress
                .and_then(|previous| previous["lastUpdateTime"].as_str())
                .and_then(|text| text.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map_or(0, |at| at.as_second());
            let now_seconds = time::OffsetDateTime::now_utc().unix_timestamp();
            if now_seconds - last > input.deadline {
                condition(
                    previous_progress,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{set}\" has timed out progressing."),
                )
            } else {
                previous_progress.cloned().unwrap_or(Value::Null)
            }
        };
        let mut status = json!({
            "observedGeneration": generation,
            "replicas": counts.replicas,
            "updatedReplicas": counts.updated,
            "readyReplicas": counts.ready,
            "availableReplicas": counts.available,
            "conditions": [available, progressing],
        });
        if counts.unavailable > 0 {
            status["unavailableReplicas"] = json!(counts.unavailable);
        }
        // Only a change of substance is written; times alone do not count.
        let substance = |status: &Value| {
            let mut copy = status.clone();
            for condition in copy
                .get_mut("conditions")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(map) = condition.as_object_mut() {
                    map.remove("lastUpdateTime");
                    map.remove("lastTransitionTime");
                }
            }
            copy
        };
        if substance(&current.data["status"]) == substance(&status) {
            return false;
        }
        current.data["status"] = status;
        true
    });
    if let Err(error) = result
        && error.reason != "NotFound"
    {
        log_failure("update the status of", &target, &error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_safe_and_follow_the_template() {
        let template = json!({"metadata": {"labels": {"app": "helloworld"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
        let hash = template_hash(&template, 0);
        assert_eq!(hash, template_hash(&template, 0));
        assert!(
            hash.len() <= 10
                && hash
                    .bytes()
                    .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{hash}"
        );
        let mut changed = template.clone();
        changed["spec"]["containers"][0]["image"] = json!("y");
        assert_ne!(hash, template_hash(&changed, 0));
        assert_ne!(hash, template_hash(&template, 1));
    }

    #[test]
    fn the_hash_label_is_ignored_when_templates_are_compared() {
        let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": {}});
        let mut labelled = template.clone();
        labelled["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!("x");
        assert_eq!(without_hash(&labelled), template);
    }

    #[test]
    fn condition_times_move_only_with_the_condition() {
        let first = condition(None, "Available", "True", "MinimumReplicasAvailable", "m");
        let mut old = first.clone();
        old["lastUpdateTime"] = json!("2020-01-01T00:00:00Z");
        old["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        let same = condition(
            Some(&old),
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "m",
        );
        assert_eq!(same["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(same["lastUpdateTime"], "2020-01-01T00:00:00Z");
        let flipped = condition(
            Some(&old),
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "n",
        );
        assert_ne!(flipped["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }
}
