//! `security.istio.io` PeerAuthentication: which inbound ports of a workload require mutual TLS.
//! Istio's precedence: a workload policy (selector matching the workload, in its namespace), then
//! the namespace's policy (no selector), then the mesh's (no selector, in the root namespace),
//! then PERMISSIVE. `UNSET` inherits from the next level; a workload policy's `portLevelMtls`
//! overrides it for those ports.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn parse(text: &str) -> Option<MtlsMode> {
        Some(match text {
            "UNSET" | "" => MtlsMode::Unset,
            "DISABLE" => MtlsMode::Disable,
            "PERMISSIVE" => MtlsMode::Permissive,
            "STRICT" => MtlsMode::Strict,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerAuthentication {
    pub namespace: String,
    pub name: String,
    /// `selector.matchLabels`; `None` for a namespace- or mesh-wide policy.
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
    /// `portLevelMtls`, by workload port (workload policies only).
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

/// The modes that apply to one workload: for ports without their own, and per port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadMtls {
    pub default: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl WorkloadMtls {
    pub fn for_port(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

fn inherit(own: MtlsMode, parent: MtlsMode) -> MtlsMode {
    if own == MtlsMode::Unset { parent } else { own }
}

/// The effective modes for a workload in `namespace` with `labels`; `root_namespace` holds the
/// mesh-wide policy. Among several policies of one level, the oldest wins in Istio; here the
/// first by name.
pub fn workload_mtls(
    policies: &[PeerAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> WorkloadMtls {
    let first = |filter: &dyn Fn(&PeerAuthentication) -> bool| {
        policies
            .iter()
            .filter(|p| filter(p))
            .min_by(|a, b| a.name.cmp(&b.name))
    };
    let mesh = first(&|p| p.namespace == root_namespace && p.selector.is_none())
        .map_or(MtlsMode::Unset, |p| p.mode);
    let namespace_wide = first(&|p| p.namespace == namespace && p.selector.is_none())
        .map_or(MtlsMode::Unset, |p| p.mode);
    let workload = first(&|p| {
        p.namespace == namespace
            && p.selector.as_ref().is_some_and(|selector| {
                !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
    });
    let inherited = inherit(namespace_wide, inherit(mesh, MtlsMode::Permissive));
    let default = inherit(workload.map_or(MtlsMode::Unset, |p| p.mode), inherited);
    let ports = workload
        .map(|p| {
            p.port_modes
                .iter()
                .map(|(port, mode)| (*port, inherit(*mode, default)))
                .collect()
        })
        .unwrap_or_default();
    WorkloadMtls { default, ports }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        namespace: &str,
        name: &str,
        selector: Option<&[(&str, &str)]>,
        mode: MtlsMode,
    ) -> PeerAuthentication {
        PeerAuthentication {
            namespace: namespace.into(),
            name: name.into(),
            selector: selector.map(|pairs| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            mode,
            port_modes: BTreeMap::new(),
        }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into()
    }

    #[test]
    fn workload_beats_namespace_beats_mesh_beats_permissive() {
        let none: Vec<PeerAuthentication> = vec![];
        assert_eq!(
            workload_mtls(&none, "istio-system", "sample", &labels("a")).default,
            MtlsMode::Permissive
        );
        let mut policies = vec![policy("istio-system", "default", None, MtlsMode::Strict)];
        assert_eq!(
            workload_mtls(&policies, "istio-system", "sample", &labels("a")).default,
            MtlsMode::Strict
        );
        policies.push(policy("sample", "default", None, MtlsMode::Permissive));
        assert_eq!(
            workload_mtls(&policies, "istio-system", "sample", &labels("a")).default,
            MtlsMode::Permissive
        );
        policies.push(policy(
            "sample",
            "hw",
            Some(&[("app", "helloworld")]),
            MtlsMode::Strict,
        ));
        assert_eq!(
            workload_mtls(&policies, "istio-system", "sample", &labels("helloworld")).default,
            MtlsMode::Strict
        );
        assert_eq!(
            workload_mtls(&policies, "istio-system", "sample", &labels("sleep")).default,
            MtlsMode::Permissive
        );
        assert_eq!(
            workload_mtls(&policies, "istio-system", "other", &labels("helloworld")).default,
            MtlsMode::Strict,
            "mesh-wide"
        );
    }

    #[test]
    fn unset_inherits_and_port_levels_override() {
        let mut workload = policy(
            "sample",
            "hw",
            Some(&[("app", "helloworld")]),
            MtlsMode::Unset,
        );
        workload.port_modes.insert(8080, MtlsMode::Disable);
        workload.port_modes.insert(9090, MtlsMode::Unset);
        let policies = vec![
            policy("sample", "default", None, MtlsMode::Strict),
            workload,
        ];
        let mtls = workload_mtls(&policies, "istio-system", "sample", &labels("helloworld"));
        assert_eq!(mtls.default, MtlsMode::Strict);
        assert_eq!(mtls.for_port(8080), MtlsMode::Disable);
        assert_eq!(mtls.for_port(9090), MtlsMode::Strict);
        assert_eq!(mtls.for_port(5000), MtlsMode::Strict);
    }
}
