//! A pod's volumes on disk, as the kubelet makes them: `emptyDir` (a directory the pod's
//! containers share), `hostPath`, and the volumes made of files (`configMap`, `secret`,
//! `downwardAPI`, `projected` with `serviceAccountToken`), written the way the kubelet's atomic
//! writer does (a `..<time>` directory, `..data` pointing at it, each entry a link through
//! `..data`), so that an update (a changed ConfigMap, a token refreshed before it expires) swaps
//! every file at once. Each volume is mounted at its `mountPath` by the container's first
//! process.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use super::env::{PodPlacement, field_value};

/// Default file mode of volumes made of files (0644).
const DEFAULT_MODE: u32 = 0o644;

/// A volume that cannot be set up, with the kubelet's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {reason}")]
pub struct VolumeError {
    pub volume: String,
    pub reason: String,
}

/// The data of ConfigMaps (`data` and `binaryData`) and Secrets (decoded) of the pod's namespace.
pub trait ObjectData {
    fn config_map_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    fn secret_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
}

/// Issues a service-account token of the pod for `audience` (the API server's when `None`)
/// valid for `seconds`.
pub trait TokenIssuer {
    fn token(&self, audience: Option<&str>, seconds: i64) -> Result<String, String>;
}

/// The files of a volume made of files: relative path to content and mode.
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// A volume's files, and when they must be written again (a token's refresh, in seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    pub files: Files,
    pub refresh_at: Option<i64>,
}

/// What the kubelet needs to make a volume's files.
pub struct Sources<'a> {
    pub pod: &'a Pod,
    pub placement: &'a PodPlacement,
    pub data: &'a dyn ObjectData,
    pub tokens: &'a dyn TokenIssuer,
    /// Now, in seconds.
    pub now: i64,
}

/// How a volume appears on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory the kubelet makes and keeps (`emptyDir`).
    Directory,
    /// A path of the host (`hostPath`).
    Host(PathBuf),
    /// Files the kubelet writes and updates.
    Projected(Projection),
}

fn error(volume: &str, reason: impl Into<String>) -> VolumeError {
    VolumeError {
        volume: volume.to_owned(),
        reason: reason.into(),
    }
}

fn mode_of(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|mode| u32::try_from(mode).ok())
        .map_or(default, |mode| mode & 0o777)
}

/// The keys of a ConfigMap or Secret that a volume shows.
struct KeySource<'a> {
    /// `configmap "name"` or `secret "name"`, for errors.
    what: String,
    /// The object's data; `None` when it does not exist.
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&'a Vec<KeyToPath>>,
    optional: Option<bool>,
}

/// Picks the source's `items` out of its data (all keys when there are none) into `files`; a
/// missing object or key is an error unless the source is optional.
fn select(
    volume: &str,
    source: KeySource<'_>,
    default_mode: u32,
    files: &mut Files,
) -> Result<(), VolumeError> {
    let KeySource {
        what,
        data,
        items,
        optional,
    } = source;
    let optional = optional == Some(true);
    let Some(data) = data else {
        return if optional {
            Ok(())
        } else {
            Err(error(volume, format!("{what} not found")))
        };
    };
    match items {
        None => {
            for (key, value) in data {
                files.insert(key.clone(), (value.clone(), default_mode));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        files.insert(
                            item.path.clone(),
                            (value.clone(), mode_of(item.mode, default_mode)),
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(error(volume, format!("{what} has no key {:?}", item.key)));
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward_files(
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    sources: &Sources<'_>,
    files: &mut Files,
) -> Result<(), VolumeError> {
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            field_value(&field.field_path, sources.pod, sources.placement)
                .map_err(|reason| error(volume, reason))?
        } else if let Some(resource) = &item.resource_field_ref {
            let container = sources
                .pod
                .spec
                .as_ref()
                .and_then(|spec| {
                    spec.containers.iter().find(|container| {
                        resource
                            .container_name
                            .as_deref()
                            .is_none_or(|name| container.name == name)
                    })
                })
                .ok_or_else(|| error(volume, format!("no container for {}", resource.resource)))?;
            let variable = k8s_openapi::api::core::v1::EnvVar {
                name: item.path.clone(),
                value: None,
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    resource_field_ref: Some(resource.clone()),
                    ..Default::default()
                }),
            };
            let mut probe = container.clone();
            probe.env = Some(vec![variable]);
            probe.env_from = None;
            struct Nothing;
            impl super::env::Lookup for Nothing {
                fn config_map(&self, _: &str) -> Option<BTreeMap<String, String>> {
                    None
                }
                fn secret(&self, _: &str) -> Option<BTreeMap<String, String>> {
                    None
                }
            }
            super::env::environment(sources.pod, &probe, sources.placement, &[], &Nothing)
                .map_err(|reason| error(volume, reason))?
                .into_iter()
                .find(|(name, _)| *name == item.path)
                .map(|(_, value)| value)
                .unwrap_or_default()
        } else {
            continue;
        };
        files.insert(
            item.path.clone(),
            (value.into_bytes(), mode_of(item.mode, default_mode)),
        );
    }
    Ok(())
}

/// How `volume` appears on disk, with the files of a volume made of files.
pub fn kind_of(volume: &Volume, sources: &Sources<'_>) -> Result<Kind, VolumeError> {
    let name = volume.name.as_str();
    if volume.empty_dir.is_some() {
        return Ok(Kind::Directory);
    }
    if let Some(host) = &volume.host_path {
        return Ok(Kind::Host(PathBuf::from(&host.path)));
    }
    let mut projection = Projection::default();
    if let Some(config_map) = &volume.config_map {
        let source = KeySource {
            what: format!("configmap \"{}\"", config_map.name),
            data: sources.data.config_map_bytes(&config_map.name),
            items: config_map.items.as_ref(),
            optional: config_map.optional,
        };
        let default_mode = mode_of(config_map.default_mode, DEFAULT_MODE);
        select(name, source, default_mode, &mut projection.files)?;
        return Ok(Kind::Projected(projection));
    }
    if let Some(secret) = &volume.secret {
        let secret_name = secret.secret_name.as_deref().unwrap_or_default();
        let source = KeySource {
            what: format!("secret \"{secret_name}\""),
            data: sources.data.secret_bytes(secret_name),
            items: secret.items.as_ref(),
            optional: secret.optional,
        };
        let default_mode = mode_of(secret.default_mode, DEFAULT_MODE);
        select(name, source, default_mode, &mut projection.files)?;
        return Ok(Kind::Projected(projection));
    }
    if let Some(source) = &volume.downward_api {
        let default_mode = mode_of(source.default_mode, DEFAULT_MODE);
        downward_files(
            name,
            source.items.as_deref().unwrap_or(&[]),
            default_mode,
            sources,
            &mut projection.files,
        )?;
        return Ok(Kind::Projected(projection));
    }
    if let Some(source) = &volume.projected {
        let default_mode = mode_of(source.default_mode, DEFAULT_MODE);
        for part in source.sources.iter().flatten() {
            if let Some(token) = &part.service_account_token {
                let seconds = token.expiration_seconds.unwrap_or(3600).max(600);
                let value = sources
                    .tokens
                    .token(
                        token
                            .audience
                            .as_deref()
                            .filter(|audience| !audience.is_empty()),
                        seconds,
                    )
                    .map_err(|reason| error(name, reason))?;
                projection
                    .files
                    .insert(token.path.clone(), (value.into_bytes(), default_mode));
                // Refreshed at 80% of its life, as the kubelet does.
                let refresh = sources.now + seconds * 8 / 10;
                projection.refresh_at =
                    Some(projection.refresh_at.map_or(refresh, |at| at.min(refresh)));
            }
            if let Some(config_map) = &part.config_map {
                let source = KeySource {
                    what: format!("configmap \"{}\"", config_map.name),
                    data: sources.data.config_map_bytes(&config_map.name),
                    items: config_map.items.as_ref(),
                    optional: config_map.optional,
                };
                select(name, source, default_mode, &mut projection.files)?;
            }
            if let Some(secret) = &part.secret {
                let source = KeySource {
                    what: format!("secret \"{}\"", secret.name),
                    data: sources.data.secret_bytes(&secret.name),
                    items: secret.items.as_ref(),
                    optional: secret.optional,
                };
                select(name, source, default_mode, &mut projection.files)?;
            }
            if let Some(downward) = &part.downward_api {
                downward_files(
                    name,
                    downward.items.as_deref().unwrap_or(&[]),
                    default_mode,
                    sources,
                    &mut projection.files,
                )?;
            }
        }
        return Ok(Kind::Projected(projection));
    }
    Err(error(
        name,
        "this volume type is not supported in the lab (emptyDir, hostPath, configMap, secret, downwardAPI and projected are)",
    ))
}

/// Makes `directory` hold exactly `files`, switched all at once: the files go into a new
/// `..<n>` directory, `..data` is pointed at it with an atomic rename, the top-level names are
/// links through `..data`, and the previous directory is removed. `group` (the pod's `fsGroup`)
/// owns the files and may read them.
pub fn write_atomically(
    directory: &Path,
    files: &Files,
    group: Option<u32>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    let data_link = directory.join("..data");
    let previous = std::fs::read_link(&data_link).ok();
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let generation = format!("..{stamp}");
    let target = directory.join(&generation);
    std::fs::create_dir(&target)?;
    for (path, (content, mode)) in files {
        let file = target.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        let mode = if group.is_some() { mode | 0o040 } else { *mode };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
        if let Some(group) = group {
            std::os::unix::fs::chown(&file, None, Some(group))?;
        }
    }
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    let staging = directory.join("..data_tmp");
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(&generation, &staging)?;
    std::fs::rename(&staging, &data_link)?;
    let top: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|path| path.split('/').next().map(str::to_owned))
        .collect();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for name in &top {
        let link = directory.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    if let Some(previous) = previous
        && previous != Path::new(&generation)
    {
        let _ = std::fs::remove_dir_all(directory.join(previous));
    }
    Ok(())
}

/// Makes an `emptyDir`: writable by every user, as the kubelet makes it, owned by `group`.
pub fn make_directory(directory: &Path, group: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o777))?;
    if let Some(group) = group {
        std::os::unix::fs::chown(directory, None, Some(group))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Data;

    impl ObjectData for Data {
        fn config_map_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "istio-ca-root-cert")
                .then(|| [("root-cert.pem".to_owned(), b"ROOT".to_vec())].into())
        }

        fn secret_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "cacerts").then(|| {
                [
                    ("ca-cert.pem".to_owned(), b"CA".to_vec()),
                    ("ca-key.pem".to_owned(), b"KEY".to_vec()),
                ]
                .into()
            })
        }
    }

    struct Tokens;

    impl TokenIssuer for Tokens {
        fn token(&self, audience: Option<&str>, seconds: i64) -> Result<String, String> {
            Ok(format!("token:{}:{seconds}", audience.unwrap_or("api")))
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "sample", "labels": {"app": "sleep"}, "annotations": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "2"}}}]},
        }))
        .unwrap()
    }

    fn volume(value: serde_json::Value) -> Volume {
        serde_json::from_value(value).unwrap()
    }

    fn files_of(value: serde_json::Value) -> Result<Projection, VolumeError> {
        let pod = pod();
        let placement = PodPlacement {
            pod_ip: "10.10.0.5".into(),
            ..PodPlacement::default()
        };
        let sources = Sources {
            pod: &pod,
            placement: &placement,
            data: &Data,
            tokens: &Tokens,
            now: 1000,
        };
        match kind_of(&volume(value), &sources)? {
            Kind::Projected(projection) => Ok(projection),
            other => panic!("not files: {other:?}"),
        }
    }

    #[test]
    fn volumes_of_files_get_their_contents_and_modes() {
        let istio = files_of(json!({"name": "istio-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}},
            {"configMap": {"name": "istio-ca-root-cert", "items": [{"key": "root-cert.pem", "path": "root-cert.pem", "mode": 256}]}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}, {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}},
        ]}}))
        .unwrap();
        assert_eq!(
            istio.files["istio-token"],
            (b"token:istio-ca:43200".to_vec(), 0o644)
        );
        assert_eq!(istio.files["root-cert.pem"], (b"ROOT".to_vec(), 0o400));
        assert_eq!(istio.files["labels"].0, b"app=\"sleep\"");
        assert_eq!(istio.files["cpu"].0, b"2");
        assert_eq!(istio.refresh_at, Some(1000 + 43200 * 8 / 10));

        let cacerts = files_of(
            json!({"name": "cacerts", "secret": {"secretName": "cacerts", "defaultMode": 384}}),
        )
        .unwrap();
        assert_eq!(cacerts.files.len(), 2);
        assert_eq!(cacerts.files["ca-key.pem"], (b"KEY".to_vec(), 0o600));
        let downward = files_of(json!({"name": "podinfo", "downwardAPI": {"items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}, {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}})).unwrap();
        assert_eq!(downward.files["annotations"].0, b"a=\"1\"");
        assert_eq!(downward.files["ip"].0, b"10.10.0.5");
    }

    #[test]
    fn missing_sources_fail_unless_optional() {
        let error =
            files_of(json!({"name": "tls", "secret": {"secretName": "sleep-secret"}})).unwrap_err();
        assert_eq!(
            error.to_string(),
            "MountVolume.SetUp failed for volume \"tls\" : secret \"sleep-secret\" not found"
        );
        let optional = files_of(
            json!({"name": "tls", "secret": {"secretName": "sleep-secret", "optional": true}}),
        )
        .unwrap();
        assert!(optional.files.is_empty());
        let error = files_of(json!({"name": "c", "configMap": {"name": "istio-ca-root-cert", "items": [{"key": "nope", "path": "x"}]}})).unwrap_err();
        assert!(error.reason.contains("has no key \"nope\""), "{error}");
        let pod = pod();
        let placement = PodPlacement::default();
        let sources = Sources {
            pod: &pod,
            placement: &placement,
            data: &Data,
            tokens: &Tokens,
            now: 0,
        };
        let unsupported = kind_of(
            &volume(json!({"name": "data", "persistentVolumeClaim": {"claimName": "x"}})),
            &sources,
        );
        assert!(
            unsupported
                .unwrap_err()
                .reason
                .contains("not supported in the lab")
        );
    }

    #[test]
    fn updates_swap_every_file_at_once_and_leave_no_old_generation() {
        let directory = tempfile::tempdir().unwrap();
        let volume = directory.path().join("config");
        let first: Files = [
            ("a".to_owned(), (b"1".to_vec(), 0o644)),
            ("dir/b".to_owned(), (b"2".to_vec(), 0o600)),
        ]
        .into();
        write_atomically(&volume, &first, None).unwrap();
        assert_eq!(std::fs::read(volume.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(volume.join("dir/b")).unwrap(), b"2");
        assert!(
            volume
                .join("a")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let second: Files = [("a".to_owned(), (b"3".to_vec(), 0o644))].into();
        write_atomically(&volume, &second, None).unwrap();
        assert_eq!(std::fs::read(volume.join("a")).unwrap(), b"3");
        assert!(
            volume.join("dir").symlink_metadata().is_err(),
            "a dropped entry is gone"
        );
        let generations = std::fs::read_dir(&volume)
            .unwrap()
            .filter(|entry| {
                let name = entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                name.starts_with("..") && name != "..data"
            })
            .count();
        assert_eq!(generations, 1);
    }
}
