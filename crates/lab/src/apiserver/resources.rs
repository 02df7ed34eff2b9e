//! The kinds the lab API server serves: their group, versions, names and scope. Discovery, routing,
//! storage keys and validation all read this one table.

/// How the API server treats a kind beyond storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Stored objects with the usual verbs.
    Objects,
    /// Only `create`, answered without storing anything (TokenReview).
    Review,
}

#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    /// Served versions, preferred first. Objects are stored once; a read at another version only
    /// changes `apiVersion`, as for CRDs without conversion webhooks.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// `status` when updates of the main resource leave `.status` alone.
    pub has_status: bool,
    pub storage: Storage,
    /// Extra field selectors, beyond `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
}

/// Index of a kind in [`RESOURCES`]; stable for the life of the process only (the write-ahead log
/// names kinds by `group/plural`).
pub type ResourceId = usize;

#[expect(
    clippy::too_many_arguments,
    reason = "one positional row per kind keeps the table readable"
)]
const fn objects(
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
) -> Resource {
    Resource {
        group,
        versions,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        has_status,
        storage: Storage::Objects,
        field_selectors: &[],
    }
}

const V1: &[&str] = &["v1"];
const ISTIO_NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const ISTIO_SECURITY: &[&str] = &["v1", "v1beta1"];
/// metallb's CRDs, which the seeds apply with kubectl (the lab's metallb is built in).
const SAIL: &[&str] = &["v1", "v1alpha1"];
const METALLB: &[&str] = &["v1beta1"];

pub static RESOURCES: &[Resource] = &[
    objects(
        "",
        V1,
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        true,
    ),
    objects(
        "",
        V1,
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        true,
    ),
    objects(
        "",
        V1,
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        false,
    ),
    Resource {
        field_selectors: &["spec.nodeName", "status.phase", "status.podIP"],
        ..objects("", V1, "Pod", "pods", "pod", true, &["po"], true)
    },
    Resource {
        field_selectors: &["type"],
        ..objects("", V1, "Secret", "secrets", "secret", true, &[], false)
    },
    objects(
        "",
        V1,
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        false,
    ),
    objects(
        "",
        V1,
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        false,
    ),
    Resource {
        field_selectors: &[
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.kind",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ..objects("", V1, "Event", "events", "event", true, &["ev"], false)
    },
    objects("", V1, "Node", "nodes", "node", false, &["no"], true),
    objects(
        "apps",
        V1,
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        true,
    ),
    objects(
        "apps",
        V1,
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        true,
    ),
    objects(
        "discovery.k8s.io",
        V1,
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        false,
    ),
    Resource {
        storage: Storage::Review,
        ..objects(
            "authentication.k8s.io",
            V1,
            "TokenReview",
            "tokenreviews",
            "tokenreview",
            false,
            &[],
            false,
        )
    },
    objects(
        "admissionregistration.k8s.io",
        V1,
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        false,
        &[],
        false,
    ),
    objects(
        "admissionregistration.k8s.io",
        V1,
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        false,
        &[],
        false,
    ),
    objects(
        "coordination.k8s.io",
        V1,
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        false,
    ),
    objects(
        "rbac.authorization.k8s.io",
        V1,
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        &[],
        false,
    ),
    objects(
        "rbac.authorization.k8s.io",
        V1,
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        &[],
        false,
    ),
    objects(
        "rbac.authorization.k8s.io",
        V1,
        "Role",
        "roles",
        "role",
        true,
        &[],
        false,
    ),
    objects(
        "rbac.authorization.k8s.io",
        V1,
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        &[],
        false,
    ),
    objects(
        "apiextensions.k8s.io",
        V1,
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        &["crd", "crds"],
        true,
    ),
    objects(
        "policy",
        V1,
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        true,
    ),
    objects(
        "autoscaling",
        &["v2"],
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        true,
    ),
    objects(
        "metallb.io",
        METALLB,
        "IPAddressPool",
        "ipaddresspools",
        "ipaddresspool",
        true,
        &[],
        false,
    ),
    objects(
        "metallb.io",
        METALLB,
        "L2Advertisement",
        "l2advertisements",
        "l2advertisement",
        true,
        &[],
        false,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "Gateway",
        "gateways",
        "gateway",
        true,
        &["gw"],
        true,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "VirtualService",
        "virtualservices",
        "virtualservice",
        true,
        &["vs"],
        true,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "DestinationRule",
        "destinationrules",
        "destinationrule",
        true,
        &["dr"],
        true,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "ServiceEntry",
        "serviceentries",
        "serviceentry",
        true,
        &["se"],
        true,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "Sidecar",
        "sidecars",
        "sidecar",
        true,
        &[],
        true,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "WorkloadEntry",
        "workloadentries",
        "workloadentry",
        true,
        &["we"],
        true,
    ),
    objects(
        "networking.istio.io",
        ISTIO_NETWORKING,
        "WorkloadGroup",
        "workloadgroups",
        "workloadgroup",
        true,
        &["wg"],
        true,
    ),
    objects(
        "networking.istio.io",
        &["v1alpha3"],
        "EnvoyFilter",
        "envoyfilters",
        "envoyfilter",
        true,
        &[],
        true,
    ),
    objects(
        "security.istio.io",
        ISTIO_SECURITY,
        "PeerAuthentication",
        "peerauthentications",
        "peerauthentication",
        true,
        &["pa"],
        true,
    ),
    objects(
        "security.istio.io",
        ISTIO_SECURITY,
        "AuthorizationPolicy",
        "authorizationpolicies",
        "authorizationpolicy",
        true,
        &["ap"],
        true,
    ),
    objects(
        "security.istio.io",
        ISTIO_SECURITY,
        "RequestAuthentication",
        "requestauthentications",
        "requestauthentication",
        true,
        &["ra"],
        true,
    ),
    objects(
        "telemetry.istio.io",
        &["v1", "v1alpha1"],
        "Telemetry",
        "telemetries",
        "telemetry",
        true,
        &["telemetry"],
        true,
    ),
    // The Sail operator's kinds (its CRDs, which `causeway install-operator` also applies).
    objects(
        "sailoperator.io",
        SAIL,
        "Istio",
        "istios",
        "istio",
        false,
        &[],
        true,
    ),
    objects(
        "sailoperator.io",
        SAIL,
        "IstioCNI",
        "istiocnis",
        "istiocni",
        false,
        &[],
        true,
    ),
    objects(
        "install.istio.io",
        &["v1alpha1"],
        "IstioOperator",
        "istiooperators",
        "istiooperator",
        true,
        &["iop", "io"],
        true,
    ),
];

/// The id of the resource served at `group`/`version`/`plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<ResourceId> {
    RESOURCES.iter().position(|resource| {
        resource.group == group && resource.plural == plural && resource.versions.contains(&version)
    })
}

/// The id of the resource stored under `group/plural` (the write-ahead log's name for it).
pub fn find_by_storage_name(name: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|resource| resource.storage_name() == name)
}

/// The id of a kind, for objects the server makes itself.
pub fn id_of(group: &str, kind: &str) -> ResourceId {
    RESOURCES
        .iter()
        .position(|resource| resource.group == group && resource.kind == kind)
        .unwrap_or_else(|| panic!("{group}/{kind} is not in the resource table"))
}

impl Resource {
    pub fn storage_name(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// Kinds a real cluster has as custom resources (Istio's, metallb's): they take merge
    /// patches, not strategic ones.
    pub fn is_custom(&self) -> bool {
        self.group.ends_with(".istio.io") || self.group == "metallb.io"
    }

    pub fn preferred_version(&self) -> &'static str {
        self.versions[0]
    }
}

/// The groups in discovery order (the core group first, then by first appearance).
pub fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for resource in RESOURCES {
        if !resource.group.is_empty() && !groups.contains(&resource.group) {
            groups.push(resource.group);
        }
    }
    groups
}

/// Every version any kind of `group` serves, preferred first.
pub fn group_versions(group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&'static str> = Vec::new();
    for resource in RESOURCES.iter().filter(|resource| resource.group == group) {
        for version in resource.versions {
            if !versions.contains(version) {
                versions.push(version);
            }
        }
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_storage_name_and_one_plural_per_group() {
        for (index, resource) in RESOURCES.iter().enumerate() {
            assert_eq!(find_by_storage_name(&resource.storage_name()), Some(index));
            for version in resource.versions {
                assert_eq!(find(resource.group, version, resource.plural), Some(index));
            }
        }
    }

    #[test]
    fn istio_kinds_are_served_at_every_version_the_seeds_use() {
        assert!(find("networking.istio.io", "v1alpha3", "gateways").is_some());
        assert!(find("networking.istio.io", "v1", "gateways").is_some());
        assert!(find("install.istio.io", "v1alpha1", "istiooperators").is_some());
        assert_eq!(
            group_versions("networking.istio.io"),
            ["v1", "v1beta1", "v1alpha3"]
        );
    }
}
