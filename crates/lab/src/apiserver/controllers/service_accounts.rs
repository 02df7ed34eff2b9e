//! A `default` ServiceAccount in every namespace, as Kubernetes' service-account controller makes.

use serde_json::json;

use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::writes;
use super::Kinds;

pub(super) fn ensure_default(state: &ApiState, kinds: &Kinds, namespace: &str) {
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace}});
    let target = Target::collection(kinds.accounts, namespace);
    // A namespace deleted in the meantime is no failure.
    if let Err(error) = writes::create_if_absent(state, &target, account)
        && state.store.get(kinds.namespaces, "", namespace).is_some()
    {
        tracing::warn!(%namespace, %error, "cannot create the default service account");
    }
}
