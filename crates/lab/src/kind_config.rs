//! kind's `Cluster` config (`kind.x-k8s.io/v1alpha4`), the file `kind create cluster --config`
//! takes and `causeway lab create-cluster --config` accepts. Only what a lab cluster uses is read:
//! the name and the pod and service subnets; other fields are accepted and reported as ignored.

use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

/// kind's defaults.
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum KindConfigError {
    #[error("cannot read the cluster config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid kind Cluster config: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    kind: Option<String>,
    api_version: Option<String>,
    name: Option<String>,
    #[serde(default)]
    networking: RawNetworking,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetworking {
    pod_subnet: Option<String>,
    service_subnet: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// What a lab cluster takes from a kind config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCluster {
    pub name: Option<String>,
    pub pod_subnet: Option<Ipv4Net>,
    pub service_subnet: Option<Ipv4Net>,
    /// Fields that were present but mean nothing to the lab (`nodes`, `networking.kubeProxyMode`...).
    pub ignored: Vec<String>,
}

impl KindCluster {
    pub fn read(path: &Path) -> Result<Self, KindConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KindConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, KindConfigError> {
        let invalid = |reason: String| KindConfigError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|error| invalid(error.to_string()))?;
        match raw.kind.as_deref() {
            Some("Cluster") => {}
            Some(other) => return Err(invalid(format!("kind is {other:?}; expected \"Cluster\""))),
            None => return Err(invalid("it has no `kind: Cluster`".into())),
        }
        match raw.api_version.as_deref() {
            Some(version) if version.starts_with("kind.x-k8s.io/") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "apiVersion is {other:?}; expected kind.x-k8s.io/v1alpha4"
                )));
            }
            None => {
                return Err(invalid(
                    "it has no apiVersion (kind.x-k8s.io/v1alpha4)".into(),
                ));
            }
        }
        let subnet =
            |field: &str, value: Option<String>| -> Result<Option<Ipv4Net>, KindConfigError> {
                value
                    .map(|text| {
                        text.parse::<Ipv4Net>().map(|net| net.trunc()).map_err(|_| {
                            invalid(format!(
                                "networking.{field} {text:?} is not an IPv4 CIDR like 10.10.0.0/16"
                            ))
                        })
                    })
                    .transpose()
            };
        let mut ignored: Vec<String> = raw.other.keys().cloned().collect();
        ignored.extend(
            raw.networking
                .other
                .keys()
                .map(|key| format!("networking.{key}")),
        );
        Ok(Self {
            name: raw.name,
            pod_subnet: subnet("podSubnet", raw.networking.pod_subnet)?,
            service_subnet: subnet("serviceSubnet", raw.networking.service_subnet)?,
            ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_kind_configs_parse() {
        let text = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: cluster01\nnodes:\n- role: control-plane\nnetworking:\n  podSubnet: \"10.10.0.0/16\"\n  serviceSubnet: \"10.11.0.0/16\"\n";
        let config = KindCluster::parse(text, "cluster01-kind.yaml").unwrap();
        assert_eq!(config.name.as_deref(), Some("cluster01"));
        assert_eq!(config.pod_subnet, Some("10.10.0.0/16".parse().unwrap()));
        assert_eq!(config.service_subnet, Some("10.11.0.0/16".parse().unwrap()));
        assert_eq!(config.ignored, ["nodes"]);
    }

    #[test]
    fn malformed_configs_say_what_is_wrong() {
        let error = KindCluster::parse(
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  podSubnet: banana\n",
            "c.yaml",
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("podSubnet \"banana\" is not an IPv4 CIDR"),
            "{error}"
        );
        let error = KindCluster::parse("kind: Pod\napiVersion: v1\n", "c.yaml").unwrap_err();
        assert!(
            error.to_string().contains("expected \"Cluster\""),
            "{error}"
        );
        let error = KindCluster::parse("kind: Cluster\n  name: [", "c.yaml").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("c.yaml is not a valid kind Cluster config"),
            "{error}"
        );
    }
}
