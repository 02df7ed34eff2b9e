//! The scheduler of a one-node cluster: every new pod is bound to the cluster's node, with its
//! `PodScheduled` condition and a `Scheduled` event, as kube-scheduler does.

use serde_json::json;

use super::super::events::{self, EventType, Reporter};
use super::super::metadata::now;
use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::store::StoredObject;
use super::super::writes;
use super::{Kinds, log_failure};

/// The node every pod of `cluster` runs on, named like kind's node.
pub fn node_name(cluster: &str) -> String {
    format!("{cluster}-control-plane")
}

pub(super) fn schedule(state: &ApiState, kinds: &Kinds, pod: &StoredObject) {
    let spec = &pod.object.data["spec"];
    if spec["nodeName"]
        .as_str()
        .is_some_and(|node| !node.is_empty())
        || pod.object.metadata.deletion_timestamp.is_some()
    {
        return;
    }
    let node = node_name(&state.config.cluster);
    if state.store.get(kinds.nodes, "", &node).is_none() {
        return;
    }
    let target = Target::object(kinds.pods, pod.namespace(), pod.name());
    let bound = writes::update(state, &target, |current| {
        if current.data["spec"]["nodeName"]
            .as_str()
            .is_some_and(|bound| !bound.is_empty())
        {
            return false;
        }
        current.data["spec"]["nodeName"] = json!(node);
        true
    });
    let bound = match bound {
        Ok(bound) => bound,
        Err(error) => {
            if error.reason != "NotFound" {
                log_failure("bind", &target, &error);
            }
            return;
        }
    };
    let status = Target::status(kinds.pods, pod.namespace(), pod.name());
    let _ = writes::update(state, &status, |current| {
        let conditions = &mut current.data["status"]["conditions"];
        if !conditions.is_array() {
            *conditions = json!([]);
        }
        let conditions = conditions.as_array_mut().expect("made an array");
        if conditions
            .iter()
            .any(|condition| condition["type"] == "PodScheduled")
        {
            return false;
        }
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        true
    });
    events::record(
        state,
        &Reporter {
            component: "default-scheduler",
            host: None,
        },
        &events::reference(&bound.object),
        EventType::Normal,
        "Scheduled",
        &format!(
            "Successfully assigned {}/{} to {node}",
            pod.namespace(),
            pod.name()
        ),
    );
}
