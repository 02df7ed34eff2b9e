//! Network namespaces for pods, nodes and test networks: create one with its loopback up, link
//! two with a veth pair, route, run processes inside, and remove it all again.
//!
//! The work is done by iproute2's `ip` (Debian's `iproute2`), so that this module needs no
//! `unsafe`: `ip netns add` pins a namespace under `/run/netns/<name>` where `ip netns exec` and
//! every later command find it. Both ends of every link live in namespaces made here, so the
//! host's own network is never touched, and deleting a namespace deletes its links.
//!
//! A [`Netns`] is a named namespace that outlives the process that made it (a lab node or pod,
//! deleted explicitly). A [`Namespace`] is a temporary one for tests, named
//! `cw-<pid>-<sequence>-<label>`: it kills the processes inside it and deletes itself when dropped
//! (also when a test panics), and [`sweep_stale`] removes what a process that was killed outright
//! left behind, by checking that the pid in the name is gone.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "cw-";
/// Longest label kept in a namespace's name, so that names stay readable in `ip netns list`.
const MAX_LABEL: usize = 24;

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "cannot run `{command}`: {source}; network namespaces need iproute2's `ip` (Debian package `iproute2`) on the PATH"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "cannot enter the network namespace {namespace}: {source}; entering one needs root (CAP_SYS_ADMIN)"
    )]
    Enter {
        namespace: String,
        source: std::io::Error,
    },
    #[error(
        "`{command}` failed ({status}): {stderr}; network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot write {path}: {source}; per-namespace files under /etc/netns need root")]
    Files {
        path: String,
        source: std::io::Error,
    },
}

/// Runs `ip` with `args`; its standard output on success.
fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<String, NetnsError> {
    let described = describe(command);
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: described.clone(),
            source,
        })?;
    if !status.success() {
        return Err(NetnsError::Failed {
            command: described,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A named network namespace pinned under `/run/netns`. It stays until [`Netns::delete`], also
/// after the process that made it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace `name` with its loopback up. If making it fails half way, it is removed.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        ip(&["netns", "add", name])?;
        let namespace = Netns {
            name: name.to_owned(),
        };
        if let Err(error) = namespace.ip(&["link", "set", "lo", "up"]) {
            let _ = namespace.delete();
            return Err(error);
        }
        Ok(namespace)
    }

    /// A handle on an existing namespace `name` (see [`Netns::exists`]).
    pub fn open(name: &str) -> Netns {
        Netns {
            name: name.to_owned(),
        }
    }

    /// Whether a namespace `name` is pinned under `/run/netns`.
    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the namespace is pinned; `setns(2)` takes it.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`) inside the namespace
    /// with a single `ip -batch`, stopping at the first that fails.
    pub fn ip_batch(&self, commands: &[String]) -> Result<(), NetnsError> {
        use std::io::Write;
        if commands.is_empty() {
            return Ok(());
        }
        let mut child = Command::new("ip")
            .args(["-netns", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetnsError::Spawn {
                command: format!("ip -netns {} -batch -", self.name),
                source,
            })?;
        let script = commands.join("\n") + "\n";
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|source| NetnsError::Spawn {
                command: format!("ip -netns {} -batch -", self.name),
                source,
            })?;
        if !output.status.success() {
            return Err(NetnsError::Failed {
                command: format!("ip -netns {} -batch: {}", self.name, commands.join("; ")),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Runs `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-netns", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside the namespace (through `ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program args...` inside the namespace to completion; its standard output.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        run(self.command(program).args(args))
    }

    /// A veth pair between this namespace and `peer`, with `address` (CIDR) here and
    /// `peer_address` there, both up. The interfaces are named `<name>` here and `<peer_name>`
    /// there (at most 15 characters each, the kernel's limit).
    pub fn link(
        &self,
        name: &str,
        address: &str,
        peer: &Netns,
        peer_name: &str,
        peer_address: &str,
    ) -> Result<(), NetnsError> {
        self.ip(&[
            "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", &peer.name,
        ])?;
        self.ip(&["addr", "add", address, "dev", name])?;
        peer.ip(&["addr", "add", peer_address, "dev", peer_name])?;
        self.ip(&["link", "set", name, "up"])?;
        peer.ip(&["link", "set", peer_name, "up"])?;
        Ok(())
    }

    /// A route to `destination` (CIDR, or `default`) through the neighbour `via`.
    pub fn route(&self, destination: &str, via: &str) -> Result<(), NetnsError> {
        self.ip(&["route", "replace", destination, "via", via])
            .map(drop)
    }

    /// Lets the namespace forward IPv4 packets between its interfaces, as a node or a router
    /// between networks does. The setting is the namespace's own.
    pub fn enable_forwarding(&self) -> Result<(), NetnsError> {
        self.run("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
            .map(drop)
    }

    /// Runs `work` on a new thread inside the namespace: sockets it creates (a tokio runtime
    /// built there, say) live in the namespace, while the rest of the process stays where it is.
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, NetnsError>> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let entered = std::fs::File::open(format!("/run/netns/{name}")).and_then(|handle| {
                // Only this thread moves: setns(2) with CLONE_NEWNET changes the caller's thread.
                nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
            entered.map_err(|source| NetnsError::Enter {
                namespace: name,
                source,
            })?;
            Ok(work())
        })
    }

    /// The namespace's own `/etc/resolv.conf`, which `ip netns exec` mounts over the host's for
    /// every process started through [`Namespace::command`] (a pod's DNS settings).
    pub fn set_resolv_conf(&self, text: &str) -> Result<(), NetnsError> {
        let dir = etc_dir(&self.name);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("resolv.conf"), text))
            .map_err(|source| NetnsError::Files {
                path: dir.display().to_string(),
                source,
            })
    }

    /// The processes inside the namespace.
    pub fn pids(&self) -> Result<Vec<i32>, NetnsError> {
        Ok(parse_pids(&ip(&["netns", "pids", &self.name])?))
    }

    /// Kills every process inside, then removes the namespace (and its links, and its files
    /// under `/etc/netns`). A namespace that is already gone is no error.
    pub fn delete(&self) -> Result<(), NetnsError> {
        kill_all(&self.name);
        let _ = std::fs::remove_dir_all(etc_dir(&self.name));
        if !Self::exists(&self.name) {
            return Ok(());
        }
        ip(&["netns", "del", &self.name]).map(drop)
    }
}

/// A temporary network namespace for tests, deleted (with every process inside) when dropped.
#[derive(Debug)]
pub struct Namespace {
    inner: Netns,
}

impl Namespace {
    /// A new namespace with its loopback up. `label` says what it is for (`pod-sleep`, say).
    pub fn create(label: &str) -> Result<Namespace, NetnsError> {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(MAX_LABEL)
            .collect();
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{sequence}-{label}", std::process::id());
        Ok(Namespace {
            inner: Netns::create(&name)?,
        })
    }
}

impl std::ops::Deref for Namespace {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.inner
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = self.inner.delete() {
            tracing::warn!(namespace = %self.inner.name, %error, "could not delete a network namespace; `causeway lab down` or the next sweep removes it");
        }
    }
}

/// Every namespace pinned under `/run/netns`, by name.
pub fn list() -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Where `ip netns exec` finds files to mount over `/etc` for namespace `name`.
fn etc_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(name)
}

fn parse_pids(listing: &str) -> Vec<i32> {
    listing
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// Kills every process inside the namespace `name`, and waits (briefly) for them to go, so that
/// the namespace is not kept alive by them once deleted.
fn kill_all(name: &str) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for _ in 0..50 {
        let pids = ip(&["netns", "pids", name])
            .map(|listing| parse_pids(&listing))
            .unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Namespaces made here by processes that no longer run (killed before they could clean up):
/// the processes inside are killed and the namespaces deleted. Returns their names.
pub fn sweep_stale() -> Result<Vec<String>, NetnsError> {
    let mut swept = Vec::new();
    for name in list()? {
        let name = name.as_str();
        let Some(owner) = owner_pid(name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        kill_all(name);
        let _ = std::fs::remove_dir_all(etc_dir(name));
        ip(&["netns", "del", name])?;
        swept.push(name.to_owned());
    }
    Ok(swept)
}

/// The pid in a name made by [`Namespace::create`]: `None` for every other namespace (a lab
/// cluster's nodes and pods), so a check of what the lab left behind can tell a test's temporary
/// namespaces, which come and go with tests running alongside, from the lab's own.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_our_names_only() {
        assert_eq!(owner_pid("cw-4242-7-pod-sleep"), Some(4242));
        assert_eq!(owner_pid("cw-x-7"), None);
        assert_eq!(owner_pid("cni-1234"), None);
        assert_eq!(owner_pid("cw-"), None);
    }

    #[test]
    fn pid_listings_are_parsed() {
        assert_eq!(parse_pids("12\n345\n"), [12, 345]);
        assert!(parse_pids("").is_empty());
    }
}
