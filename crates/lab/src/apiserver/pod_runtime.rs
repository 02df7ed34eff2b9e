//! What the API server asks of the kubelet that runs its pods (in the same process): running a
//! command in a container (`pods/exec`) and finding a container's log (`pods/log`). An API server
//! without one (in tests) answers those with an error, and deletes pods at once instead of
//! gracefully.

use std::path::PathBuf;

use tokio::sync::watch;

use super::status::ApiError;

/// `kubectl exec`'s request, once the pod is known.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    /// The container; the pod's first (or its `kubectl.kubernetes.io/default-container`) when
    /// absent.
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
}

/// Where a container's log is, and whether it may still grow.
#[derive(Debug)]
pub struct LogSource {
    /// The log file, in the CRI format (`<RFC 3339 time> <stream> <F|P> <text>`).
    pub path: PathBuf,
    /// Becomes `true` when the container instance writing the file has ended; `None` when it
    /// ended before.
    pub ended: Option<watch::Receiver<bool>>,
}

pub trait PodRuntime: Send + Sync {
    /// Starts `request.command` in a running container of the pod, with stdout and stderr (and
    /// stdin when asked) piped.
    fn exec(&self, request: &ExecRequest) -> Result<tokio::process::Child, ApiError>;

    /// The log of a container of the pod: its current instance, or the one before
    /// (`--previous`).
    fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<LogSource, ApiError>;
}
