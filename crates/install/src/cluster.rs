//! Rendered objects applied to a cluster and taken out again. Install creates what is missing and
//! merges the rest (a JSON merge patch, so fields others own, a Service's clusterIP or the webhook's
//! caBundle discovery fills in, are kept); it then waits for the component's Deployments to be
//! available. Uninstall deletes objects by the labels install put on them, never by name alone.

use crate::render::{COMPONENT_LABEL, Component, Ownership, REVISION_LABEL, Rendered};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "{object} is not available after {waited:?}: {why}; see `kubectl describe` and `kubectl logs` for it, or raise --readiness-timeout"
    )]
    NotAvailable {
        object: String,
        waited: Duration,
        why: String,
    },
}

fn api_error(action: &'static str, object: String) -> impl FnOnce(kube::Error) -> ClusterError {
    move |source| ClusterError::Api {
        action,
        object,
        source: Box::new(source),
    }
}

/// What install did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Kept,
}

fn api_for(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Creates or merges one object.
pub async fn apply_one(client: &kube::Client, rendered: &Rendered) -> Result<Change, ClusterError> {
    let api = api_for(client, &rendered.resource, rendered.namespace());
    let name = rendered.name();
    let existing = api
        .get_opt(name)
        .await
        .map_err(api_error("read", rendered.describe()))?;
    match (existing, rendered.ownership) {
        (None, _) => {
            api.create(&PostParams::default(), &rendered.object)
                .await
                .map_err(api_error("create", rendered.describe()))?;
            Ok(Change::Created)
        }
        (Some(_), Ownership::CreateIfMissing) => Ok(Change::Kept),
        (Some(_), Ownership::Owned) => {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&rendered.object),
            )
            .await
            .map_err(api_error("update", rendered.describe()))?;
            Ok(Change::Updated)
        }
    }
}

/// Waits until every Deployment among `objects` is available with all replicas updated, or says
/// why not (the pods' waiting reasons) after `timeout`.
pub async fn wait_for_deployments(
    client: &kube::Client,
    objects: &[Rendered],
    timeout: Duration,
) -> Result<(), ClusterError> {
    let started = Instant::now();
    for rendered in objects
        .iter()
        .filter(|object| object.kind() == "Deployment")
    {
        let namespace = rendered.namespace().unwrap_or("default");
        let api = Api::<Deployment>::namespaced(client.clone(), namespace);
        loop {
            let deployment = api
                .get(rendered.name())
                .await
                .map_err(api_error("read", rendered.describe()))?;
            if is_available(&deployment) {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(ClusterError::NotAvailable {
                    object: rendered.describe(),
                    waited: timeout,
                    why: why_unavailable(client, &deployment).await,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The Deployments among `objects` that are not available yet, each with why (`Deployment
/// istio-system/istiod: pod istiod-x container discovery is not ready`); empty when all are.
pub async fn unavailable_deployments(
    client: &kube::Client,
    objects: &[Rendered],
) -> Result<Vec<String>, ClusterError> {
    let mut waiting = Vec::new();
    for rendered in objects
        .iter()
        .filter(|object| object.kind() == "Deployment")
    {
        let namespace = rendered.namespace().unwrap_or("default");
        let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(rendered.name())
            .await
            .map_err(api_error("read", rendered.describe()))?;
        if !is_available(&deployment) {
            let why = why_unavailable(client, &deployment).await;
            waiting.push(format!("{}: {why}", rendered.describe()));
        }
    }
    Ok(waiting)
}

fn is_available(deployment: &Deployment) -> bool {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return false;
    };
    let generation = deployment.metadata.generation.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) == wanted
}

/// The first reason a pod of the Deployment gives for not running, else its conditions.
async fn why_unavailable(client: &kube::Client, deployment: &Deployment) -> String {
    let namespace = deployment
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default");
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await;
    let mut reasons = Vec::new();
    for pod in pods.map(|list| list.items).unwrap_or_default() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|status| status.container_statuses.clone())
            .unwrap_or_default();
        for container in statuses {
            if let Some(waiting) = container
                .state
                .as_ref()
                .and_then(|state| state.waiting.as_ref())
            {
                reasons.push(format!(
                    "pod {name} container {}: {} {}",
                    container.name,
                    waiting.reason.as_deref().unwrap_or("waiting"),
                    waiting.message.as_deref().unwrap_or("")
                ));
            } else if !container.ready {
                reasons.push(format!(
                    "pod {name} container {} is not ready",
                    container.name
                ));
            }
        }
    }
    if reasons.is_empty() {
        let status = deployment.status.as_ref();
        format!(
            "{} of {} replicas available",
            status
                .and_then(|status| status.available_replicas)
                .unwrap_or(0),
            deployment
                .spec
                .as_ref()
                .and_then(|spec| spec.replicas)
                .unwrap_or(1)
        )
    } else {
        reasons.join("; ")
    }
}

/// The kinds install makes, in the order uninstall removes them (workloads before their
/// accounts and roles, the webhook first so that nothing is injected by a discovery going away).
fn removable_kinds() -> Vec<(ApiResource, bool)> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    vec![
        (
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
            false,
        ),
        (ApiResource::erase::<Deployment>(&()), true),
        (ApiResource::erase::<Service>(&()), true),
        (ApiResource::erase::<Endpoints>(&()), true),
        (ApiResource::erase::<ConfigMap>(&()), true),
        (ApiResource::erase::<RoleBinding>(&()), true),
        (ApiResource::erase::<Role>(&()), true),
        (ApiResource::erase::<ServiceAccount>(&()), true),
        (ApiResource::erase::<ClusterRoleBinding>(&()), false),
        (ApiResource::erase::<ClusterRole>(&()), false),
    ]
}

/// What to remove: one revision's objects (all but the cluster-scoped part of `Base`, which
/// revisions share), or with `purge` everything any install made.
#[derive(Debug, Clone)]
pub struct UninstallScope {
    pub revision: String,
    pub purge: bool,
}

/// Deletes what install made; returns what it removed (empty when there was nothing).
pub async fn uninstall(
    client: &kube::Client,
    scope: &UninstallScope,
) -> Result<Vec<String>, ClusterError> {
    // The Sail operator is not part of the mesh it installs: `install-operator` made it.
    let selector = if scope.purge {
        format!(
            "{COMPONENT_LABEL},{COMPONENT_LABEL}!={}",
            Component::Operator.label()
        )
    } else {
        format!("{COMPONENT_LABEL},{REVISION_LABEL}={}", scope.revision)
    };
    let mut removed = Vec::new();
    for (resource, namespaced) in removable_kinds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let listed = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_error("list", format!("{} objects", resource.kind)))?;
        for object in listed.items {
            let shared = !namespaced
                && object
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(COMPONENT_LABEL))
                    .is_some_and(|component| component == Component::Base.label());
            if shared && !scope.purge {
                continue;
            }
            let name = object.metadata.name.clone().unwrap_or_default();
            let namespace = object.metadata.namespace.clone();
            let described = match &namespace {
                Some(namespace) => format!("{} {namespace}/{name}", resource.kind),
                None => format!("{} {name}", resource.kind),
            };
            let api = api_for(client, &resource, namespace.as_deref());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => removed.push(described),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(api_error("delete", described)(error)),
            }
        }
    }
    Ok(removed)
}

/// The components among `objects`, in install order.
pub fn components(objects: &[Rendered]) -> Vec<Component> {
    let mut components: Vec<Component> = objects.iter().map(|object| object.component).collect();
    components.sort();
    components.dedup();
    components
}
