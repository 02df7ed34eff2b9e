//! Events, as components record them for `kubectl describe` and `kubectl get events`: one Event
//! per object, reason and message, its `count` and `lastTimestamp` moved when it happens again
//! (Kubernetes' event aggregation), and Events older than an hour deleted, as the API server's
//! TTL does.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::DynamicObject;
use serde_json::json;

use super::metadata::now;
use super::resources::id_of;
use super::routing::Target;
use super::state::ApiState;
use super::store::StoredObject;
use super::writes;

/// How long an Event is kept after it last happened.
pub const EVENT_TTL_SECONDS: i64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Who reports: `deployment-controller`, `kubelet` (with its node), ...
#[derive(Debug, Clone)]
pub struct Reporter {
    pub component: &'static str,
    pub host: Option<String>,
}

/// A reference to `object`, as `involvedObject` carries it.
pub fn reference(object: &DynamicObject) -> ObjectReference {
    let types = object.types.as_ref();
    ObjectReference {
        api_version: types.map(|types| types.api_version.clone()),
        kind: types.map(|types| types.kind.clone()),
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        uid: object.metadata.uid.clone(),
        resource_version: object.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Records that `reason` happened to `involved` (`message` says what), or counts it again.
/// Failing to record is logged, never fatal: events are for people, not for correctness.
pub fn record(
    state: &ApiState,
    reporter: &Reporter,
    involved: &ObjectReference,
    kind: EventType,
    reason: &str,
    message: &str,
) {
    let namespace = involved
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let events = id_of("", "Event");
    let same = state
        .store
        .list(events, Some(&namespace))
        .0
        .into_iter()
        .find(|event| is_same(event, involved, reason, message));
    let result = match same {
        Some(existing) => writes::update(
            state,
            &Target::object(events, &namespace, existing.name()),
            |event| {
                let count = event.data["count"].as_i64().unwrap_or(1);
                event.data["count"] = json!(count + 1);
                event.data["lastTimestamp"] = json!(now());
                true
            },
        )
        .map(drop),
        None => {
            let mut bytes = [0u8; 8];
            aws_lc_rs::rand::fill(&mut bytes).expect("the system has randomness");
            let suffix: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            let object_name = involved.name.clone().unwrap_or_default();
            let stamp = now();
            let event = json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": format!("{object_name}.{suffix}"), "namespace": namespace},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "source": {"component": reporter.component, "host": reporter.host},
                "reportingComponent": reporter.component,
                "reportingInstance": reporter.host.clone().unwrap_or_default(),
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "type": kind.as_str(),
            });
            writes::create(state, &Target::collection(events, &namespace), event, false).map(drop)
        }
    };
    if let Err(error) = result
        && error.reason != "NotFound"
    {
        tracing::debug!(%reason, %error, "cannot record an event");
    }
}

fn is_same(event: &StoredObject, involved: &ObjectReference, reason: &str, message: &str) -> bool {
    let data = &event.object.data;
    let about = &data["involvedObject"];
    about["uid"].as_str() == involved.uid.as_deref()
        && about["name"].as_str() == involved.name.as_deref()
        && data["reason"] == reason
        && data["message"] == message
}

/// Deletes Events that last happened more than [`EVENT_TTL_SECONDS`] ago.
pub fn expire(state: &ApiState, now_seconds: i64) {
    let events = id_of("", "Event");
    for event in state.store.list(events, None).0 {
        let last = event.object.data["lastTimestamp"]
            .as_str()
            .and_then(|text| text.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|at| at.as_second());
        if last.is_some_and(|last| now_seconds - last > EVENT_TTL_SECONDS) {
            let target = Target::object(events, event.namespace(), event.name());
            let _ = writes::delete(state, &target, &writes::DeleteOptions::default());
        }
    }
}
