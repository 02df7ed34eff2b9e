//! Istio's `WorkloadEntry` (`networking.istio.io` v1, v1beta1, v1alpha3): a workload outside
//! Kubernetes (a VM, say) described by hand. A ServiceEntry's `workloadSelector` makes the
//! entries of its namespace with matching labels its endpoints.

use crate::service_entry::{EntryEndpoint, FieldProblem, Workload, parse_workload};
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadEntry {
    pub namespace: String,
    pub name: String,
    pub workload: EntryEndpoint,
}

/// A WorkloadEntry that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WorkloadEntry {namespace}/{name}: {field}: {problem}")]
pub struct WorkloadEntryError {
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub problem: String,
}

impl WorkloadEntry {
    /// Reads `spec` of the WorkloadEntry `namespace/name`. Its address must be an IP address:
    /// selected workloads are reached as they are, never resolved.
    pub fn from_spec(
        namespace: &str,
        name: &str,
        spec: &Value,
    ) -> Result<WorkloadEntry, WorkloadEntryError> {
        let fail = |field: String, problem: String| WorkloadEntryError {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            field,
            problem,
        };
        match parse_workload(spec, "spec", false) {
            Ok(Workload::Usable(workload)) => Ok(WorkloadEntry {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                workload,
            }),
            Ok(Workload::Unsupported(sentence)) => Err(fail("spec.address".into(), sentence)),
            Err(FieldProblem { field, problem }) => Err(fail(field, problem)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_entry::{EntryAddress, ServiceEntry};
    use crate::{Locality, TlsMode};
    use serde_json::json;

    #[test]
    fn a_vm_entry_is_selected_by_labels_in_its_namespace_and_keeps_its_identity() {
        let vm = WorkloadEntry::from_spec(
            "sample",
            "vm-1",
            &json!({
                "address": "10.30.0.4",
                "labels": {"app": "helloworld", "version": "vm"},
                "ports": {"http": 5001},
                "network": "vm-network",
                "locality": "r1/z2",
                "weight": 2,
                "serviceAccount": "helloworld-vm",
            }),
        )
        .unwrap();
        assert_eq!(
            vm.workload.address,
            EntryAddress::Ip("10.30.0.4".parse().unwrap())
        );
        let entry = ServiceEntry::from_spec(
            "sample",
            "helloworld-vms",
            &json!({
                "hosts": ["helloworld.vms.example"],
                "location": "MESH_INTERNAL",
                "ports": [{"name": "http", "number": 5000}],
                "resolution": "STATIC",
                "workloadSelector": {"labels": {"app": "helloworld"}},
            }),
        )
        .unwrap();
        assert!(entry.unsupported.is_empty(), "{:?}", entry.unsupported);
        assert!(entry.selects("sample", &vm.workload.labels));
        assert!(
            !entry.selects("other", &vm.workload.labels),
            "its own namespace only"
        );
        assert!(!entry.selects("sample", &[("app".to_owned(), "sleep".to_owned())].into()));
        let endpoint = entry
            .workload_endpoint(&vm.workload, "cluster01", "cluster.local")
            .unwrap();
        assert_eq!(endpoint.port_for("http"), Some(5001));
        assert_eq!(endpoint.network, "vm-network");
        assert_eq!(endpoint.locality, Locality::parse("r1/z2"));
        assert_eq!(endpoint.weight, 2);
        assert_eq!(endpoint.tls_mode, TlsMode::Istio);
        assert_eq!(
            endpoint.identity.as_deref(),
            Some("spiffe://cluster.local/ns/sample/sa/helloworld-vm")
        );

        let mut plain = vm.workload.clone();
        plain
            .labels
            .insert("security.istio.io/tlsMode".into(), "disabled".into());
        let endpoint = entry
            .workload_endpoint(&plain, "cluster01", "cluster.local")
            .unwrap();
        assert_eq!(endpoint.tls_mode, TlsMode::Disabled, "the label wins");
    }

    #[test]
    fn bad_entries_name_the_field() {
        let cases = [
            (
                json!({"labels": {"app": "a"}}),
                "WorkloadEntry ns/bad: spec.address: is required",
            ),
            (
                json!({"address": "vm.example"}),
                "WorkloadEntry ns/bad: spec.address: \"vm.example\" is not an IP address",
            ),
            (
                json!({"address": "10.0.0.1", "ports": {"http": "eighty"}}),
                "WorkloadEntry ns/bad: spec.ports.http: must be a port",
            ),
            (
                json!({"address": "unix:///run/vm.sock"}),
                "WorkloadEntry ns/bad: spec.address: endpoint \"unix:///run/vm.sock\": Unix domain socket",
            ),
        ];
        for (spec, message) in cases {
            let error = WorkloadEntry::from_spec("ns", "bad", &spec)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(message), "{message}: {error}");
        }
        let both = ServiceEntry::from_spec(
            "ns",
            "both",
            &json!({"hosts": ["a"], "ports": [{"name": "http", "number": 80}], "resolution": "STATIC",
                    "endpoints": [{"address": "10.0.0.1"}], "workloadSelector": {"labels": {"app": "a"}}}),
        )
        .unwrap_err();
        assert!(
            both.to_string().contains(
                "spec.workloadSelector: an entry lists endpoints or selects workloads, not both"
            ),
            "{both}"
        );
    }
}
