//! The lab's kubeconfig entries: one cluster, user and context per lab cluster, named as kind names
//! them (`kind-cluster01`, which the seeds' `--context kind-cluster01` uses). Merging keeps
//! everything else in the file.

use std::path::{Path, PathBuf};

use base64::Engine;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read the kubeconfig {path}: {reason}; fix or move the file")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the kubeconfig {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// The name of a lab cluster's kubeconfig cluster, user and context, as kind names them.
pub fn context_name(cluster: &str) -> String {
    format!("kind-{cluster}")
}

/// How to reach one lab cluster's API server.
#[derive(Debug, Clone)]
pub struct ClusterAccess {
    pub name: String,
    pub server: String,
    pub ca_pem: String,
    pub token: String,
}

/// A kubeconfig with just these clusters; the first becomes the current context.
pub fn for_clusters(clusters: &[ClusterAccess]) -> Kubeconfig {
    let mut config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Kubeconfig::default()
    };
    for access in clusters {
        upsert(&mut config, access);
    }
    config.current_context = clusters.first().map(|access| context_name(&access.name));
    config
}

/// A kubeconfig for one cluster whose cluster, user and context are all named `name`, as a remote
/// secret carries it.
pub fn named(access: &ClusterAccess, name: &str) -> Kubeconfig {
    let mut config = for_clusters(&[]);
    upsert_as(&mut config, access, name.to_owned());
    config.current_context = Some(name.to_owned());
    config
}

fn upsert(config: &mut Kubeconfig, access: &ClusterAccess) {
    upsert_as(config, access, context_name(&access.name));
}

fn upsert_as(config: &mut Kubeconfig, access: &ClusterAccess, name: String) {
    config.clusters.retain(|entry| entry.name != name);
    config.auth_infos.retain(|entry| entry.name != name);
    config.contexts.retain(|entry| entry.name != name);
    config.clusters.push(NamedCluster {
        name: name.clone(),
        cluster: Some(Cluster {
            server: Some(access.server.clone()),
            certificate_authority_data: Some(
                base64::engine::general_purpose::STANDARD.encode(&access.ca_pem),
            ),
            ..Cluster::default()
        }),
        other: Default::default(),
    });
    config.auth_infos.push(NamedAuthInfo {
        name: name.clone(),
        auth_info: Some(AuthInfo {
            token: Some(access.token.clone().into()),
            ..AuthInfo::default()
        }),
        other: Default::default(),
    });
    config.contexts.push(NamedContext {
        name: name.clone(),
        context: Some(Context {
            cluster: name.clone(),
            user: Some(name),
            ..Context::default()
        }),
        other: Default::default(),
    });
}

pub fn render(config: &Kubeconfig) -> String {
    serde_saphyr::to_string(config).expect("a kubeconfig always serializes")
}

fn read_or_empty(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(for_clusters(&[])),
        Ok(text) => Kubeconfig::from_yaml(&text).map_err(|error| KubeconfigError::Read {
            path: path.to_owned(),
            reason: error.to_string(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(for_clusters(&[])),
        Err(error) => Err(KubeconfigError::Read {
            path: path.to_owned(),
            reason: error.to_string(),
        }),
    }
}

fn write(path: &Path, config: &Kubeconfig) -> Result<(), KubeconfigError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| KubeconfigError::Write {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    }
    causeway_ca::files::write_atomically(
        path,
        render(config).as_bytes(),
        causeway_ca::files::Visibility::Secret,
    )
    .map_err(|error| KubeconfigError::Write {
        path: path.to_owned(),
        reason: error.source.to_string(),
    })
}

/// Adds or replaces a cluster's entries in the kubeconfig at `path`. The current context is set
/// only when the file had none.
pub fn merge(path: &Path, access: &ClusterAccess) -> Result<(), KubeconfigError> {
    let mut config = read_or_empty(path)?;
    upsert(&mut config, access);
    if config.current_context.as_deref().is_none_or(str::is_empty) {
        config.current_context = Some(context_name(&access.name));
    }
    write(path, &config)
}

/// Removes a cluster's entries; a current context naming it is cleared.
pub fn remove(path: &Path, cluster: &str) -> Result<(), KubeconfigError> {
    if !path.exists() {
        return Ok(());
    }
    let name = context_name(cluster);
    let name = name.as_str();
    let mut config = read_or_empty(path)?;
    config.clusters.retain(|entry| entry.name != name);
    config.auth_infos.retain(|entry| entry.name != name);
    config.contexts.retain(|entry| entry.name != name);
    if config.current_context.as_deref() == Some(name) {
        config.current_context = None;
    }
    write(path, &config)
}

/// `--kubeconfig`, else the first entry of `$KUBECONFIG`, else `~/.kube/config`, as kind does.
pub fn default_path() -> PathBuf {
    if let Some(first) =
        std::env::var_os("KUBECONFIG").and_then(|value| std::env::split_paths(&value).next())
        && !first.as_os_str().is_empty()
    {
        return first;
    }
    home_dir().join(".kube").join("config")
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(name: &str) -> ClusterAccess {
        ClusterAccess {
            name: name.into(),
            server: "https://127.0.0.1:1234".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            token: "t".into(),
        }
    }

    #[test]
    fn merging_keeps_other_entries_and_the_current_context() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config");
        std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod\ncontexts:\n- name: prod\n  context:\n    cluster: prod\ncurrent-context: prod\nusers: []\n").unwrap();
        merge(&path, &access("cluster01")).unwrap();
        merge(&path, &access("cluster02")).unwrap();
        let config = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("prod"));
        let names: Vec<&str> = config
            .contexts
            .iter()
            .map(|context| context.name.as_str())
            .collect();
        assert_eq!(names, ["prod", "kind-cluster01", "kind-cluster02"]);
        remove(&path, "cluster01").unwrap();
        let config = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(config.clusters.len(), 2);
    }

    #[test]
    fn an_empty_current_context_is_filled_and_cleared_on_removal() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("nested").join("config");
        merge(&path, &access("cluster01")).unwrap();
        assert_eq!(
            Kubeconfig::read_from(&path)
                .unwrap()
                .current_context
                .as_deref(),
            Some("kind-cluster01")
        );
        remove(&path, "cluster01").unwrap();
        assert_eq!(Kubeconfig::read_from(&path).unwrap().current_context, None);
    }

    #[test]
    fn a_broken_kubeconfig_is_not_overwritten() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config");
        std::fs::write(&path, "clusters: [").unwrap();
        let error = merge(&path, &access("cluster01")).unwrap_err();
        assert!(
            error.to_string().contains("fix or move the file"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "clusters: [");
    }
}
