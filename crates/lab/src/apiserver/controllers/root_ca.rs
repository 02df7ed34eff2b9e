//! `kube-root-ca.crt` in every namespace, holding the API server's CA as `ca.crt`, as Kubernetes'
//! root CA publisher makes it: pods' `kube-api-access-*` volumes read it.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::super::state::ApiState;
use super::{Kinds, write_owned};

pub const NAME: &str = "kube-root-ca.crt";

pub(super) fn publish(state: &ApiState, kinds: &Kinds, namespace: &str) {
    if state.store.get(kinds.namespaces, "", namespace).is_none() {
        return;
    }
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            annotations: Some(
                [(
                    "kubernetes.io/description".to_owned(),
                    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some([("ca.crt".to_owned(), state.ca_pem.clone())].into()),
        ..ConfigMap::default()
    };
    write_owned(state, kinds.config_maps, &config_map, &["data"]);
}
