//! Starting a container's process and reading how it ended. A container is a process the
//! kubelet spawns as `causeway lab container-init` (see [`crate::container_init`]) with the
//! container's launch spec; its output goes to the container's log; `kubectl exec` and exec
//! probes join it the same way.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::status::Terminated;
use crate::container_init::{
    EXIT_START_ERROR, Identity, LaunchSpec, Mount, Namespaces, SPEC_VARIABLE,
};
use crate::container_log::{self as logs, Stream};

/// Who a container runs as, from its security context over the pod's.
pub fn identity(pod: &Pod, container: &Container) -> Identity {
    let pod_context = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.security_context.clone())
        .unwrap_or_default();
    let context = container.security_context.clone().unwrap_or_default();
    let as_u32 = |value: Option<i64>| value.and_then(|value| u32::try_from(value).ok());
    let uid = as_u32(context.run_as_user)
        .or(as_u32(pod_context.run_as_user))
        .unwrap_or(0);
    let gid = as_u32(context.run_as_group)
        .or(as_u32(pod_context.run_as_group))
        .unwrap_or(0);
    let mut supplementary_groups: Vec<u32> = pod_context
        .supplemental_groups
        .iter()
        .flatten()
        .filter_map(|group| u32::try_from(*group).ok())
        .collect();
    if let Some(group) = as_u32(pod_context.fs_group) {
        supplementary_groups.push(group);
    }
    let capabilities = context.capabilities.clone().unwrap_or_default();
    Identity {
        uid,
        gid,
        supplementary_groups,
        add_capabilities: capabilities.add.unwrap_or_default(),
        drop_capabilities: capabilities.drop.unwrap_or_default(),
        privileged: context.privileged == Some(true),
        no_new_privileges: context.allow_privilege_escalation == Some(false),
    }
}

/// A container's process as spawned.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
}

/// Spawns the container's first process with `spec`; its output goes to `log`.
pub fn spawn(causeway: &Path, spec: &LaunchSpec, log: &Path) -> std::io::Result<Spawned> {
    let encoded = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut child = tokio::process::Command::new(causeway)
        .args(["lab", "container-init"])
        .env_clear()
        .env(SPEC_VARIABLE, encoded)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(logs::pump(stdout, Stream::Stdout, log.to_owned()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(logs::pump(stderr, Stream::Stderr, log.to_owned()));
    }
    Ok(Spawned { child, pid })
}

/// What an exec into a running container needs: its process, and what its program got.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub pid: u32,
    pub environment: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub identity: Identity,
}

/// Starts `command` inside a running container (`kubectl exec`, exec probes), with stdout and
/// stderr piped, and stdin too when `stdin`.
pub fn exec(
    causeway: &Path,
    context: &ExecContext,
    command: &[String],
    stdin: bool,
) -> std::io::Result<tokio::process::Child> {
    let spec = LaunchSpec {
        namespaces: Namespaces::Join { pid: context.pid },
        hostname: None,
        mounts: Vec::new(),
        read_only_root: false,
        environment: context.environment.clone(),
        working_dir: context.working_dir.clone(),
        identity: context.identity.clone(),
        argv: exec_argv(causeway, command),
    };
    let encoded = serde_json::to_string(&spec).map_err(std::io::Error::other)?;
    tokio::process::Command::new(causeway)
        .args(["lab", "container-init"])
        .env_clear()
        .env(SPEC_VARIABLE, encoded)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// `causeway` by any path is this build's, as in a `causeway` image (the injected proxy's
/// postStart hook runs `causeway proxy wait`); anything else is looked up in the container.
fn exec_argv(causeway: &Path, command: &[String]) -> Vec<String> {
    match command.split_first() {
        Some((program, rest))
            if Path::new(program)
                .file_name()
                .is_some_and(|name| name == "causeway") =>
        {
            std::iter::once(causeway.display().to_string())
                .chain(rest.iter().cloned())
                .collect()
        }
        _ => command.to_vec(),
    }
}

/// The new container's spec.
pub struct NewContainer<'a> {
    pub network: PathBuf,
    pub scratch: PathBuf,
    pub hostname: &'a str,
    pub mounts: Vec<Mount>,
    pub read_only_root: bool,
    pub environment: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub identity: Identity,
    pub argv: Vec<String>,
}

pub fn launch_spec(new: NewContainer<'_>) -> LaunchSpec {
    LaunchSpec {
        namespaces: Namespaces::New {
            network: new.network,
            scratch: new.scratch,
        },
        hostname: Some(new.hostname.to_owned()),
        mounts: new.mounts,
        read_only_root: new.read_only_root,
        environment: new.environment,
        working_dir: new.working_dir,
        identity: new.identity,
        argv: new.argv,
    }
}

/// How a container instance ended: its exit code (128 + the signal when killed), and the
/// kubelet's reason (`Completed`, `Error`, or `StartError` with the message the start failed
/// with, read from the end of its log).
pub fn ended(
    status: ExitStatus,
    started_at: &str,
    finished_at: &str,
    container_id: &str,
    log: &Path,
) -> Terminated {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    let exit_code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(9));
    let (reason, message) = if exit_code == 0 {
        ("Completed".to_owned(), None)
    } else if exit_code == EXIT_START_ERROR && signal.is_none() {
        ("StartError".to_owned(), last_log_line(log))
    } else {
        ("Error".to_owned(), None)
    };
    Terminated {
        exit_code,
        signal,
        reason,
        message,
        started_at: started_at.to_owned(),
        finished_at: finished_at.to_owned(),
        container_id: container_id.to_owned(),
    }
}

fn last_log_line(log: &Path) -> Option<String> {
    let content = std::fs::read(log).ok()?;
    let text = logs::render(
        &content,
        &logs::LogOptions {
            tail_lines: Some(1),
            ..logs::LogOptions::default()
        },
    );
    let line = String::from_utf8_lossy(&text).trim().to_owned();
    (!line.is_empty()).then_some(line)
}

/// A new container id, as a runtime gives one (64 hex digits), with the lab's scheme.
pub fn new_container_id() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system has randomness");
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("causeway://{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identities_take_the_containers_context_over_the_pods() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1337, "supplementalGroups": [5]},
                     "containers": [
                        {"name": "app"},
                        {"name": "istio-proxy", "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "allowPrivilegeEscalation": false,
                                                                 "capabilities": {"drop": ["ALL"]}}},
                        {"name": "istio-init", "securityContext": {"runAsUser": 0, "runAsGroup": 0, "privileged": false,
                                                                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}},
                     ]}
        }))
        .unwrap();
        let containers = &pod.spec.as_ref().unwrap().containers;
        let app = identity(&pod, &containers[0]);
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.supplementary_groups, [5, 1337]);
        let proxy = identity(&pod, &containers[1]);
        assert_eq!((proxy.uid, proxy.gid), (1337, 1337));
        assert!(proxy.no_new_privileges);
        assert_eq!(proxy.drop_capabilities, ["ALL"]);
        let init = identity(&pod, &containers[2]);
        assert_eq!(init.uid, 0);
        assert_eq!(init.add_capabilities, ["NET_ADMIN", "NET_RAW"]);
    }

    #[test]
    fn exits_are_reported_as_the_kubelet_reports_them() {
        use std::os::unix::process::ExitStatusExt;
        let directory = tempfile::tempdir().unwrap();
        let log = directory.path().join("0.log");
        std::fs::write(
            &log,
            logs::record(
                time::OffsetDateTime::now_utc(),
                Stream::Stderr,
                false,
                b"causeway lab container-init: exec: \"nope\": executable file not found in $PATH",
            ),
        )
        .unwrap();
        let done = ended(ExitStatus::from_raw(0), "a", "b", "id", &log);
        assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));
        let failed = ended(ExitStatus::from_raw(3 << 8), "a", "b", "id", &log);
        assert_eq!((failed.exit_code, failed.reason.as_str()), (3, "Error"));
        let killed = ended(ExitStatus::from_raw(9), "a", "b", "id", &log);
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
        let start = ended(ExitStatus::from_raw(128 << 8), "a", "b", "id", &log);
        assert_eq!(start.reason, "StartError");
        assert!(start.message.unwrap().contains("executable file not found"));
    }
}
