//! A pod's status from what the kubelet knows of its containers, as the kubelet reports it: each
//! container's state (waiting, running, terminated), last state, restarts and readiness; the
//! pod's phase (kubelet's `getPhase`); and its conditions, whose transition times move only when
//! they change. Decisions only: the pod worker keeps the state and writes the result.

use serde_json::{Value, json};

/// Why a container is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: Option<String>,
}

/// A container instance that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting(Waiting),
    Running { started_at: String },
    Terminated(Terminated),
}

/// What the kubelet knows of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last: Option<Terminated>,
    pub restarts: i32,
    pub ready: bool,
    /// Its startup probe passed (or it has none) while running.
    pub started: bool,
    pub container_id: Option<String>,
}

impl ContainerRecord {
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            state: State::Waiting(Waiting {
                reason: reason.to_owned(),
                message: None,
            }),
            last: None,
            restarts: 0,
            ready: false,
            started: false,
            container_id: None,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(ended) if ended.exit_code == 0)
    }
}

/// What the kubelet knows of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodRecord {
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Option<String>,
    pub sandbox_ready: bool,
}

/// `Pending`, `Running`, `Succeeded` or `Failed`, as the kubelet's `getPhase` decides.
pub fn phase(record: &PodRecord, restart_policy: &str) -> &'static str {
    let init_failed = record.init.iter().any(
        |container| matches!(&container.state, State::Terminated(ended) if ended.exit_code != 0),
    );
    if init_failed && restart_policy == "Never" {
        return "Failed";
    }
    if !record.init.iter().all(ContainerRecord::succeeded) {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for container in &record.containers {
        match &container.state {
            State::Running { .. } => running += 1,
            State::Terminated(ended) => {
                stopped += 1;
                if ended.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting(_) if container.last.is_some() => stopped += 1,
            State::Waiting(_) => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if restart_policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

fn terminated_json(ended: &Terminated) -> Value {
    let mut value = json!({
        "exitCode": ended.exit_code,
        "reason": ended.reason,
        "startedAt": ended.started_at,
        "finishedAt": ended.finished_at,
        "containerID": ended.container_id,
    });
    if let Some(signal) = ended.signal {
        value["signal"] = json!(signal);
    }
    if let Some(message) = &ended.message {
        value["message"] = json!(message);
    }
    value
}

fn container_json(container: &ContainerRecord) -> Value {
    let state = match &container.state {
        State::Waiting(waiting) => {
            let mut value = json!({"reason": waiting.reason});
            if let Some(message) = &waiting.message {
                value["message"] = json!(message);
            }
            json!({"waiting": value})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(ended) => json!({"terminated": terminated_json(ended)}),
    };
    let mut value = json!({
        "name": container.name,
        "image": container.image,
        "imageID": container.image,
        "ready": container.ready,
        "started": container.started && matches!(container.state, State::Running { .. }),
        "restartCount": container.restarts,
        "state": state,
        "lastState": container.last.as_ref().map_or_else(|| json!({}), |last| json!({"terminated": terminated_json(last)})),
    });
    if let Some(id) = &container.container_id {
        value["containerID"] = json!(id);
    }
    value
}

/// A condition, keeping `previous`'s transition time while its status is the same.
fn condition(
    previous: &Value,
    kind: &str,
    status: bool,
    reason: Option<String>,
    message: Option<String>,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let earlier = previous["conditions"].as_array().and_then(|conditions| {
        conditions
            .iter()
            .find(|condition| condition["type"] == kind)
    });
    let since = match earlier {
        Some(earlier) if earlier["status"] == status => earlier["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut value =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(reason) = reason {
        value["reason"] = json!(reason);
    }
    if let Some(message) = message {
        value["message"] = json!(message);
    }
    value
}

fn names(containers: &[&ContainerRecord]) -> String {
    let names: Vec<&str> = containers
        .iter()
        .map(|container| container.name.as_str())
        .collect();
    format!("[{}]", names.join(" "))
}

/// The pod's status, from `record`, keeping what `previous` (the stored status) says of what the
/// kubelet does not own (the scheduler's condition, `qosClass`) and its conditions' times.
pub fn pod_status(record: &PodRecord, restart_policy: &str, previous: &Value, now: &str) -> Value {
    let phase = phase(record, restart_policy);
    let initializing: Vec<&ContainerRecord> = record
        .init
        .iter()
        .filter(|container| !container.succeeded())
        .collect();
    let unready: Vec<&ContainerRecord> = record
        .containers
        .iter()
        .filter(|container| !container.ready)
        .collect();
    let finished = matches!(phase, "Succeeded" | "Failed");
    let mut conditions = vec![
        condition(
            previous,
            "PodReadyToStartContainers",
            record.sandbox_ready,
            None,
            None,
            now,
        ),
        if initializing.is_empty() {
            condition(previous, "Initialized", true, None, None, now)
        } else {
            condition(
                previous,
                "Initialized",
                false,
                Some("ContainersNotInitialized".into()),
                Some(format!(
                    "containers with incomplete status: {}",
                    names(&initializing)
                )),
                now,
            )
        },
    ];
    let ready = unready.is_empty() && !finished && !record.containers.is_empty();
    let (reason, message) = if ready {
        (None, None)
    } else if finished {
        (Some("PodCompleted".to_owned()), None)
    } else {
        (
            Some("ContainersNotReady".to_owned()),
            Some(format!(
                "containers with unready status: {}",
                names(&unready)
            )),
        )
    };
    conditions.push(condition(
        previous,
        "ContainersReady",
        ready,
        reason.clone(),
        message.clone(),
        now,
    ));
    conditions.push(condition(previous, "Ready", ready, reason, message, now));
    if let Some(scheduled) = previous["conditions"].as_array().and_then(|all| {
        all.iter()
            .find(|condition| condition["type"] == "PodScheduled")
    }) {
        conditions.push(scheduled.clone());
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": record.host_ip,
        "hostIPs": [{"ip": record.host_ip}],
        "containerStatuses": record.containers.iter().map(container_json).collect::<Vec<_>>(),
    });
    if !record.init.is_empty() {
        status["initContainerStatuses"] =
            json!(record.init.iter().map(container_json).collect::<Vec<_>>());
    }
    if let Some(ip) = &record.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(start) = &record.start_time {
        status["startTime"] = json!(start);
    }
    if !previous["qosClass"].is_null() {
        status["qosClass"] = previous["qosClass"].clone();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str, ready: bool) -> ContainerRecord {
        ContainerRecord {
            state: State::Running {
                started_at: "t0".into(),
            },
            ready,
            started: true,
            ..ContainerRecord::waiting(name, "img", "")
        }
    }

    fn ended(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: State::Terminated(Terminated {
                exit_code: code,
                signal: None,
                reason: if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: None,
                started_at: "t0".into(),
                finished_at: "t1".into(),
                container_id: "causeway://1".into(),
            }),
            ..ContainerRecord::waiting(name, "img", "")
        }
    }

    fn crash_looping(name: &str) -> ContainerRecord {
        let last = match ended(name, 3).state {
            State::Terminated(last) => last,
            _ => unreachable!(),
        };
        ContainerRecord {
            last: Some(last),
            restarts: 2,
            ..ContainerRecord::waiting(name, "img", "CrashLoopBackOff")
        }
    }

    fn record(init: Vec<ContainerRecord>, containers: Vec<ContainerRecord>) -> PodRecord {
        PodRecord {
            init,
            containers,
            pod_ip: Some("10.10.0.5".into()),
            host_ip: "172.18.0.2".into(),
            start_time: Some("t0".into()),
            sandbox_ready: true,
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let cases: Vec<(PodRecord, &str, &str)> = vec![
            (
                record(
                    vec![],
                    vec![ContainerRecord::waiting("a", "i", "ContainerCreating")],
                ),
                "Always",
                "Pending",
            ),
            (
                record(
                    vec![running("init", false)],
                    vec![ContainerRecord::waiting("a", "i", "PodInitializing")],
                ),
                "Always",
                "Pending",
            ),
            (
                record(
                    vec![ended("init", 1)],
                    vec![ContainerRecord::waiting("a", "i", "PodInitializing")],
                ),
                "Never",
                "Failed",
            ),
            (
                record(vec![ended("init", 0)], vec![running("a", true)]),
                "Always",
                "Running",
            ),
            (
                record(vec![], vec![crash_looping("a")]),
                "Always",
                "Running",
            ),
            (record(vec![], vec![ended("a", 0)]), "Never", "Succeeded"),
            (
                record(vec![], vec![ended("a", 0)]),
                "OnFailure",
                "Succeeded",
            ),
            (record(vec![], vec![ended("a", 1)]), "Never", "Failed"),
            (record(vec![], vec![ended("a", 1)]), "OnFailure", "Running"),
            (
                record(vec![], vec![ended("a", 0), running("b", true)]),
                "Never",
                "Running",
            ),
        ];
        for (index, (pod, policy, expected)) in cases.iter().enumerate() {
            assert_eq!(phase(pod, policy), *expected, "case {index}");
        }
    }

    #[test]
    fn conditions_name_what_is_not_ready_and_keep_their_times() {
        let pod = record(vec![], vec![running("a", true), running("b", false)]);
        let status = pod_status(&pod, "Always", &json!({}), "t5");
        let find = |status: &Value, kind: &str| {
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == kind)
                .unwrap()
                .clone()
        };
        let ready = find(&status, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [b]");
        assert_eq!(ready["lastTransitionTime"], "t5");
        let later = pod_status(&pod, "Always", &status, "t9");
        assert_eq!(find(&later, "Ready")["lastTransitionTime"], "t5");
        let now_ready = record(vec![], vec![running("a", true), running("b", true)]);
        let flipped = pod_status(&now_ready, "Always", &later, "t12");
        assert_eq!(find(&flipped, "Ready")["status"], "True");
        assert_eq!(find(&flipped, "Ready")["lastTransitionTime"], "t12");
        assert_eq!(flipped["podIP"], "10.10.0.5");
        assert_eq!(flipped["containerStatuses"][1]["ready"], true);
    }

    #[test]
    fn a_crash_loop_shows_the_last_exit_and_the_back_off() {
        let pod = record(vec![], vec![crash_looping("a")]);
        let status = pod_status(
            &pod,
            "Always",
            &json!({"qosClass": "BestEffort", "conditions": [{"type": "PodScheduled", "status": "True"}]}),
            "t",
        );
        let container = &status["containerStatuses"][0];
        assert_eq!(container["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(container["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(container["restartCount"], 2);
        assert_eq!(status["qosClass"], "BestEffort");
        assert!(
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "PodScheduled")
        );
    }
}
