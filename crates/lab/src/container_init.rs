//! The first moments of a container's process (`causeway lab container-init`), between the
//! kubelet's spawn and the container's program: it enters the pod's network namespace, takes a
//! mount and UTS namespace of its own, builds a root where the host's directories are seen
//! through and the container's volumes appear at their `mountPath`s, sets the pod's hostname,
//! drops to the container's user and capabilities, and executes the program. `kubectl exec`
//! runs through here too, joining a running container's namespaces instead.
//!
//! The syscalls (`setns`, `unshare`, `mount`, `pivot_root`, `capset`) go through nix's and caps'
//! safe wrappers, so this module needs no `unsafe` of its own. It runs in a fresh, single-purpose
//! process: whatever it changes dies with the process or passes to the container's program.
//!
//! A mount target that does not exist on the host is made without touching the host: under `/`
//! on the container's own root (a tmpfs), deeper down by laying a copy-on-write overlay over the
//! deepest directory that exists (so `/etc/istio/proxy` appears in the container's `/etc` only).

use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

/// How the process finds its namespaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Namespaces {
    /// A new container: the pod's network namespace (pinned at this path), new mount and UTS
    /// namespaces, and a root built in `scratch`.
    New { network: PathBuf, scratch: PathBuf },
    /// `kubectl exec`: the namespaces of this running container process.
    Join { pid: u32 },
}

/// A volume, or a file the kubelet manages (`/etc/hosts`...), seen at `target`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Who the program runs as.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub supplementary_groups: Vec<u32>,
    /// Capability names (`NET_ADMIN`), or `ALL`.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub privileged: bool,
    pub no_new_privileges: bool,
}

/// Everything the kubelet tells a container's first process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSpec {
    pub namespaces: Namespaces,
    pub hostname: Option<String>,
    pub mounts: Vec<Mount>,
    pub read_only_root: bool,
    pub environment: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub identity: Identity,
    pub argv: Vec<String>,
}

/// Exit code of a container whose program could not be started (as a shell's 127/126 say
/// "not found"/"not executable", and the kubelet reports `StartError`).
pub const EXIT_START_ERROR: i32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum ContainerInitError {
    #[error("cannot read the launch spec {path}: {reason}")]
    Spec { path: String, reason: String },
    #[error("cannot {action}: {source}")]
    System {
        action: String,
        source: nix::errno::Errno,
    },
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("cannot set the capabilities: {0}")]
    Capabilities(String),
    #[error("exec: {program:?}: executable file not found in $PATH")]
    NotFound { program: String },
    #[error("exec {program:?}: {source}")]
    Exec {
        program: String,
        source: nix::errno::Errno,
    },
}

fn system(action: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ContainerInitError {
    let action = action.into();
    move |source| ContainerInitError::System { action, source }
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerInitError {
    let action = action.into();
    move |source| ContainerInitError::Io { action, source }
}

/// The environment variable the kubelet passes the spec in (the container's program gets the
/// spec's environment instead of the process's).
pub const SPEC_VARIABLE: &str = "CAUSEWAY_LAUNCH_SPEC";

/// Reads the spec the kubelet passed in [`SPEC_VARIABLE`].
pub fn spec_from_environment() -> Result<LaunchSpec, ContainerInitError> {
    let text = std::env::var(SPEC_VARIABLE).map_err(|error| ContainerInitError::Spec {
        path: SPEC_VARIABLE.to_owned(),
        reason: error.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|error| ContainerInitError::Spec {
        path: SPEC_VARIABLE.to_owned(),
        reason: error.to_string(),
    })
}

/// Sets the process up as `spec` says and executes its program; returns only on failure.
pub fn run(spec: &LaunchSpec) -> Result<Infallible, ContainerInitError> {
    match &spec.namespaces {
        Namespaces::New { network, scratch } => {
            enter_network(network)?;
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
                .map_err(system("make the container's mount and UTS namespaces"))?;
            build_root(scratch, &spec.mounts, spec.read_only_root)?;
            if let Some(hostname) = &spec.hostname {
                nix::unistd::sethostname(hostname).map_err(system("set the hostname"))?;
            }
        }
        Namespaces::Join { pid } => join(*pid)?,
    }
    let directory = spec.working_dir.as_deref().unwrap_or("/");
    nix::unistd::chdir(directory)
        .map_err(system(format!("enter the working directory {directory}")))?;
    become_identity(&spec.identity)?;
    exec(&spec.argv, &spec.environment)
}

fn enter_network(path: &Path) -> Result<(), ContainerInitError> {
    let handle = std::fs::File::open(path).map_err(io(format!(
        "open the pod's network namespace {}",
        path.display()
    )))?;
    setns(handle, CloneFlags::CLONE_NEWNET).map_err(system("enter the pod's network namespace"))
}

/// Joins a running container's namespaces. A process with threads must not share its
/// filesystem attributes to enter a mount namespace: it stops sharing them first.
fn join(pid: u32) -> Result<(), ContainerInitError> {
    let open = |kind: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).map_err(io(format!(
            "open the {kind} namespace of container process {pid}"
        )))
    };
    let (network, uts, mounts) = (open("net")?, open("uts")?, open("mnt")?);
    unshare(CloneFlags::CLONE_FS).map_err(system("stop sharing filesystem attributes"))?;
    setns(network, CloneFlags::CLONE_NEWNET)
        .map_err(system("join the container's network namespace"))?;
    setns(uts, CloneFlags::CLONE_NEWUTS).map_err(system("join the container's UTS namespace"))?;
    setns(mounts, CloneFlags::CLONE_NEWNS).map_err(system("join the container's mount namespace"))
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), ContainerInitError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(system(format!(
        "bind {} at {}",
        source.display(),
        target.display()
    )))
}

fn remount_read_only(target: &Path) -> Result<(), ContainerInitError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(system(format!("make {} read-only", target.display())))
}

/// Builds the container's root in `scratch` and moves into it.
fn build_root(scratch: &Path, mounts: &[Mount], read_only: bool) -> Result<(), ContainerInitError> {
    // Nothing done from here on may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(system("make the mount namespace private"))?;
    let root = scratch.join("root");
    std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )
    .map_err(system(format!(
        "mount the container's root at {}",
        root.display()
    )))?;
    // Unbindable, so that binding a host directory that holds `root` does not copy it into itself.
    mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_UNBINDABLE,
        None::<&str>,
    )
    .map_err(system("make the container's root unbindable"))?;

    let mut top_level = Vec::new();
    for entry in std::fs::read_dir("/").map_err(io("list the host's root directory"))? {
        let entry = entry.map_err(io("list the host's root directory"))?;
        let name = entry.file_name();
        let source = Path::new("/").join(&name);
        let target = root.join(&name);
        let kind = entry
            .file_type()
            .map_err(io(format!("inspect {}", source.display())))?;
        if kind.is_symlink() {
            let link = std::fs::read_link(&source)
                .map_err(io(format!("read the link {}", source.display())))?;
            std::os::unix::fs::symlink(&link, &target)
                .map_err(io(format!("link {}", target.display())))?;
        } else if kind.is_dir() {
            std::fs::create_dir(&target).map_err(io(format!("create {}", target.display())))?;
            bind(&source, &target, true)?;
            top_level.push(PathBuf::from(&name));
        } else {
            std::fs::write(&target, b"").map_err(io(format!("create {}", target.display())))?;
            bind(&source, &target, false)?;
        }
    }

    let old = root.join(".old-root");
    std::fs::create_dir(&old).map_err(io("create the old root's mount point"))?;
    nix::unistd::pivot_root(&root, &old).map_err(system("move into the container's root"))?;
    nix::unistd::chdir("/").map_err(system("enter the container's root"))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(system("let go of the host's root"))?;
    std::fs::remove_dir("/.old-root").map_err(io("remove the old root's mount point"))?;

    // From here on paths are the container's, so that absolute links (`/var/run` -> `/run`)
    // resolve inside it. Targets that do not exist are made on the root's tmpfs, or inside an
    // overlay of their deepest existing directory; shallower ones first, so that one overlay
    // serves all below it. The volumes' sources are seen through the host's directories.
    let mut overlaid: Vec<PathBuf> = Vec::new();
    let mut sorted: Vec<&Mount> = mounts.iter().collect();
    sorted.sort_by_key(|mount| mount.target.components().count());
    // Overlays first: one laid later would hide the binds made under it before.
    for (index, volume) in sorted.iter().enumerate() {
        let target = volume.target.as_path();
        if target.symlink_metadata().is_ok() {
            continue;
        }
        let existing = deepest_existing(target);
        let real = std::fs::canonicalize(&existing).unwrap_or_else(|_| existing.clone());
        let writable =
            real == Path::new("/") || overlaid.iter().any(|layer| real.starts_with(layer));
        if writable {
            continue;
        }
        let layer = scratch.join("overlays").join(index.to_string());
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        for directory in [&upper, &work] {
            std::fs::create_dir_all(directory)
                .map_err(io(format!("create {}", directory.display())))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            real.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &real,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(system(format!("lay an overlay over {}", real.display())))?;
        overlaid.push(real);
    }
    for volume in &sorted {
        let target = volume.target.as_path();
        if target.symlink_metadata().is_err() {
            let is_dir = volume.source.is_dir();
            let directory = if is_dir {
                target
            } else {
                target.parent().unwrap_or(Path::new("/"))
            };
            std::fs::create_dir_all(directory)
                .map_err(io(format!("create {}", directory.display())))?;
            if !is_dir {
                std::fs::write(target, b"").map_err(io(format!("create {}", target.display())))?;
            }
        }
        bind(&volume.source, target, true)?;
        if volume.read_only {
            remount_read_only(target)?;
        }
    }

    if read_only {
        for name in top_level {
            if !matches!(name.to_str(), Some("proc" | "sys" | "dev")) {
                remount_read_only(&Path::new("/").join(name))?;
            }
        }
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(system("make the container's root read-only"))?;
    }
    Ok(())
}

fn deepest_existing(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while current.symlink_metadata().is_err() {
        if !current.pop() {
            break;
        }
    }
    current
}

/// The capabilities a container's root process has by default, as container runtimes give them.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capability(name: &str) -> Result<caps::Capability, ContainerInitError> {
    caps::to_canonical(name)
        .parse()
        .map_err(|_| ContainerInitError::Capabilities(format!("unknown capability {name:?}")))
}

/// The capabilities `identity` keeps.
pub fn wanted_capabilities(
    identity: &Identity,
) -> Result<HashSet<caps::Capability>, ContainerInitError> {
    let supported = caps::runtime::thread_all_supported();
    if identity.privileged {
        return Ok(supported.into_iter().collect());
    }
    let mut wanted: HashSet<caps::Capability> = DEFAULT_CAPABILITIES
        .iter()
        .map(|name| capability(name))
        .collect::<Result<_, _>>()?;
    for name in &identity.drop_capabilities {
        if name.eq_ignore_ascii_case("ALL") {
            wanted.clear();
        } else {
            wanted.remove(&capability(name)?);
        }
    }
    for name in &identity.add_capabilities {
        if name.eq_ignore_ascii_case("ALL") {
            wanted.extend(supported.iter().copied());
        } else {
            wanted.insert(capability(name)?);
        }
    }
    wanted.retain(|cap| supported.contains(cap));
    Ok(wanted)
}

fn become_identity(identity: &Identity) -> Result<(), ContainerInitError> {
    let wanted = wanted_capabilities(identity)?;
    let failed =
        |error: caps::errors::CapsError| ContainerInitError::Capabilities(error.to_string());
    for cap in caps::runtime::thread_all_supported() {
        if !wanted.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(failed)?;
        }
    }
    let groups: Vec<Gid> = identity
        .supplementary_groups
        .iter()
        .chain(std::iter::once(&identity.gid))
        .map(|gid| Gid::from_raw(*gid))
        .collect();
    nix::unistd::setgroups(&groups).map_err(system("set the supplementary groups"))?;
    nix::unistd::setgid(Gid::from_raw(identity.gid))
        .map_err(system(format!("become group {}", identity.gid)))?;
    // A user other than root has no capabilities once it is that user, as with containerd.
    nix::unistd::setuid(Uid::from_raw(identity.uid))
        .map_err(system(format!("become user {}", identity.uid)))?;
    if identity.uid == 0 {
        caps::set(None, caps::CapSet::Inheritable, &wanted).map_err(failed)?;
        caps::set(None, caps::CapSet::Effective, &wanted).map_err(failed)?;
        caps::set(None, caps::CapSet::Permitted, &wanted).map_err(failed)?;
    }
    if identity.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(system("forbid privilege escalation"))?;
    }
    Ok(())
}

/// The program's path: as given when it has a `/`, else the first executable of that name in
/// the container's `PATH`.
pub fn find_program(program: &str, environment: &[(String, String)]) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = environment
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map_or(crate::kubelet::env::DEFAULT_PATH, |(_, value)| {
            value.as_str()
        });
    path.split(':')
        .filter(|directory| !directory.is_empty())
        .map(|directory| Path::new(directory).join(program))
        .find(|candidate| {
            candidate.metadata().is_ok_and(|metadata| {
                metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
            })
        })
}

fn exec(
    argv: &[String],
    environment: &[(String, String)],
) -> Result<Infallible, ContainerInitError> {
    let program = argv.first().cloned().unwrap_or_default();
    let path = find_program(&program, environment).ok_or_else(|| ContainerInitError::NotFound {
        program: program.clone(),
    })?;
    let text = |value: &str| CString::new(value.replace('\0', "")).expect("NULs were removed");
    let arguments: Vec<CString> = argv.iter().map(|argument| text(argument)).collect();
    let variables: Vec<CString> = environment
        .iter()
        .map(|(name, value)| text(&format!("{name}={value}")))
        .collect();
    let path = text(&path.display().to_string());
    nix::unistd::execve(&path, &arguments, &variables)
        .map_err(|source| ContainerInitError::Exec { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(add: &[&str], drop: &[&str]) -> Identity {
        Identity {
            add_capabilities: add.iter().map(|name| (*name).to_owned()).collect(),
            drop_capabilities: drop.iter().map(|name| (*name).to_owned()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn capabilities_start_from_the_runtime_default() {
        let default = wanted_capabilities(&identity(&[], &[])).unwrap();
        assert!(default.contains(&caps::Capability::CAP_NET_RAW));
        assert!(!default.contains(&caps::Capability::CAP_NET_ADMIN));
        let init = wanted_capabilities(&identity(&["NET_ADMIN", "NET_RAW"], &["ALL"])).unwrap();
        assert_eq!(
            init,
            HashSet::from([
                caps::Capability::CAP_NET_ADMIN,
                caps::Capability::CAP_NET_RAW
            ])
        );
        let none = wanted_capabilities(&identity(&[], &["ALL"])).unwrap();
        assert!(none.is_empty());
        assert!(wanted_capabilities(&identity(&["FLY"], &[])).is_err());
    }

    #[test]
    fn programs_are_found_in_the_containers_path() {
        let environment = [("PATH".to_owned(), "/nonexistent:/bin:/usr/bin".to_owned())];
        let sleep = find_program("sleep", &environment).unwrap();
        assert!(sleep.ends_with("sleep"), "{}", sleep.display());
        assert_eq!(
            find_program("/bin/sleep", &[]),
            Some(PathBuf::from("/bin/sleep"))
        );
        assert_eq!(find_program("no-such-program-here", &environment), None);
    }

    #[test]
    fn the_deepest_existing_directory_is_found() {
        let directory = tempfile::tempdir().unwrap();
        let target = directory.path().join("a/b/c");
        assert_eq!(deepest_existing(&target), directory.path());
    }
}
