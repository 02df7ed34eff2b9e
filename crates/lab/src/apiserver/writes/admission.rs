//! What an object goes through before it is stored: its type checked against the target, its
//! namespace placed, its shape decoded into typed metadata, the kind's defaults and rules, the
//! metadata the server owns, and the addresses it is given.

use std::net::Ipv4Addr;

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::super::defaults::apply_defaults;
use super::super::metadata::{carry_over, name_suffix, stamp_new};
use super::super::node_ports::{node_ports_of, wants_node_ports};
use super::super::resources::{Resource, id_of};
use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::status::{ApiError, Cause};
use super::super::store::{Change, StoredObject};
use super::super::validation::{check_shape, check_type, into_object, validate};

/// A new object ready to store, and what was reserved for it (released if it is not stored).
pub struct Admitted {
    pub object: DynamicObject,
    pub allocations: Allocations,
}

/// Addresses and ports reserved for an object on its way in.
#[derive(Default)]
pub struct Allocations {
    cluster_ip: Option<Ipv4Addr>,
    node_ports: Vec<u16>,
}

impl Allocations {
    pub fn release(self, state: &ApiState) {
        if let Some(address) = self.cluster_ip {
            state.service_ips().release(address);
        }
        let mut node_ports = state.node_ports();
        for port in self.node_ports {
            node_ports.release(port);
        }
    }
}

pub fn admit_new(
    state: &ApiState,
    target: &Target,
    mut object: Value,
) -> Result<Admitted, ApiError> {
    let kind = target.kind();
    if !object.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    check_type(kind, &target.version, &mut object)?;
    place(target, &mut object)?;
    require_namespace(state, target)?;
    let metadata = &mut object["metadata"];
    if metadata["name"].as_str().unwrap_or("").is_empty()
        && let Some(prefix) = metadata["generateName"].as_str()
    {
        metadata["name"] = json!(generated_name(prefix));
    }
    if metadata["resourceVersion"]
        .as_str()
        .is_some_and(|version| !version.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    check_shape(kind, &object)?;
    let mut object = into_object(kind, object)?;
    complete(kind, &mut object)?;
    if kind.kind == "Pod" && kind.group.is_empty() {
        super::pod_admission::admit(state, &mut object)?;
        super::mutating_webhooks::admit(state, kind, &target.version, &mut object)?;
    }
    let mut allocations = Allocations {
        cluster_ip: allocate_cluster_ip(state, kind, &mut object)?,
        node_ports: Vec::new(),
    };
    if let Err(error) =
        allocate_node_ports(state, kind, &mut object, &[], &mut allocations.node_ports)
    {
        allocations.release(state);
        return Err(error);
    }
    stamp_new(&mut object, kind);
    Ok(Admitted {
        object,
        allocations,
    })
}

/// Checks and completes `new`, the replacement of `current` (a PUT's body, a patched copy, a
/// controller's update). An unchanged object is kept as it is.
pub fn admit_replacement(
    state: &ApiState,
    target: &Target,
    current: &StoredObject,
    mut new: Value,
    dry_run: bool,
) -> Result<Change, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    if !new.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    check_type(kind, &target.version, &mut new)?;
    place(target, &mut new)?;
    // The shape first: the steps below read fields they expect to have their types.
    check_shape(kind, &new)?;
    match new["metadata"]["name"].as_str() {
        Some(sent) if sent != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({sent}) does not match the name on the URL ({name})"
            )));
        }
        None => new["metadata"]["name"] = json!(name),
        Some(_) => {}
    }
    let mut new = into_object(kind, new)?;
    let sent_version = new.metadata.resource_version.as_deref().unwrap_or("");
    if !sent_version.is_empty() && sent_version != current.revision.to_string() {
        return Err(ApiError::conflict(
            kind.group,
            kind.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if target.subresource.as_deref() == Some("status") {
        let status = new.data.get("status").cloned();
        new = (*current.object).clone();
        match status {
            Some(status) => new.data["status"] = status,
            None => {
                if let Some(fields) = new.data.as_object_mut() {
                    fields.remove("status");
                }
            }
        }
        // The stored object with the sent status is a new object: check its shape too.
        check_shape(kind, &serde_json::to_value(&new).unwrap_or_default())?;
    } else {
        carry_over(kind, &current.object, &mut new);
        keep_cluster_ips(kind, &current.object, &mut new, name)?;
    }
    complete(kind, &mut new)?;
    if target.subresource.is_none() && is_service(kind) {
        let held = node_ports_of(&current.object);
        keep_node_ports(&current.object, &mut new);
        let mut taken = Vec::new();
        if !dry_run {
            allocate_node_ports(state, kind, &mut new, &held, &mut taken)?;
            let kept = node_ports_of(&new);
            let mut node_ports = state.node_ports();
            for port in held.iter().filter(|port| !kept.contains(port)) {
                node_ports.release(*port);
            }
        }
    }
    new.metadata.resource_version = Some(current.revision.to_string());
    if new == *current.object {
        return Ok(Change::Keep);
    }
    Ok(Change::Put(Box::new(new)))
}

/// Puts the object in the target's namespace (or none for cluster-scoped kinds).
fn place(target: &Target, object: &mut Value) -> Result<(), ApiError> {
    let metadata = object["metadata"]
        .as_object_mut()
        .expect("check_type made metadata an object");
    if target.kind().namespaced {
        let namespace = target.namespace().to_owned();
        if namespace.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} are namespaced: send them to /namespaces/<namespace>/{}",
                target.kind().plural,
                target.kind().plural
            )));
        }
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(sent) if !sent.is_empty() && sent != namespace => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({sent}) does not match the namespace sent on the request ({namespace})"
                )));
            }
            _ => {
                metadata.insert("namespace".into(), json!(namespace));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    Ok(())
}

fn require_namespace(state: &ApiState, target: &Target) -> Result<(), ApiError> {
    if target.kind().namespaced
        && state
            .store
            .get(id_of("", "Namespace"), "", target.namespace())
            .is_none()
    {
        return Err(ApiError::not_found("", "namespaces", target.namespace()));
    }
    Ok(())
}

fn generated_name(prefix: &str) -> String {
    let mut bytes = [0u8; 5];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system has randomness");
    format!("{prefix}{}", name_suffix(&bytes))
}

/// Applies the kind's defaults, then its rules: the last steps before an object is stored.
fn complete(kind: &Resource, object: &mut DynamicObject) -> Result<(), ApiError> {
    apply_defaults(kind, object);
    let causes = validate(kind, object);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(kind, object, causes))
    }
}

/// A 422 naming the object and what is wrong with it.
fn invalid(kind: &Resource, object: &DynamicObject, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(
        kind.kind,
        kind.group,
        object.metadata.name.as_deref().unwrap_or(""),
        causes,
    )
}

fn is_service(kind: &Resource) -> bool {
    kind.kind == "Service" && kind.group.is_empty()
}

/// Gives a new Service its cluster IP (unless headless or ExternalName).
fn allocate_cluster_ip(
    state: &ApiState,
    kind: &Resource,
    object: &mut DynamicObject,
) -> Result<Option<Ipv4Addr>, ApiError> {
    if !is_service(kind) {
        return Ok(None);
    }
    let spec = &mut object.data["spec"];
    if spec["type"] == "ExternalName" {
        return Ok(None);
    }
    let requested = spec["clusterIP"].as_str().unwrap_or("").to_owned();
    if requested == "None" {
        spec["clusterIPs"] = json!(["None"]);
        return Ok(None);
    }
    let requested = if requested.is_empty() {
        None
    } else {
        Some(requested.parse().map_err(|_| {
            invalid(
                kind,
                object,
                vec![Cause::new(
                    "spec.clusterIP",
                    format!("Invalid value: {requested:?}: must be a valid IPv4 address"),
                )],
            )
        })?)
    };
    let address = state
        .service_ips()
        .allocate(requested)
        .map_err(|cause| invalid(kind, object, vec![cause]))?;
    object.data["spec"]["clusterIP"] = json!(address.to_string());
    object.data["spec"]["clusterIPs"] = json!([address.to_string()]);
    Ok(Some(address))
}

/// Gives every port of a `NodePort` or `LoadBalancer` Service a node port (or the one it asks
/// for); ports in `held` are the Service's already. Those taken go into `taken`.
fn allocate_node_ports(
    state: &ApiState,
    kind: &Resource,
    object: &mut DynamicObject,
    held: &[u16],
    taken: &mut Vec<u16>,
) -> Result<(), ApiError> {
    if !is_service(kind) {
        return Ok(());
    }
    let wanted = wants_node_ports(object);
    let name = object.metadata.name.clone().unwrap_or_default();
    let Some(ports) = object.data["spec"]
        .get_mut("ports")
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    let mut node_ports = state.node_ports();
    for (index, port) in ports.iter_mut().enumerate() {
        if !wanted {
            if let Some(port) = port.as_object_mut() {
                port.remove("nodePort");
            }
            continue;
        }
        let requested = port["nodePort"]
            .as_u64()
            .and_then(|number| u16::try_from(number).ok());
        if requested.is_some_and(|requested| held.contains(&requested)) {
            continue;
        }
        match node_ports.allocate(requested, &format!("spec.ports[{index}].nodePort")) {
            Ok(allocated) => {
                port["nodePort"] = json!(allocated);
                taken.push(allocated);
            }
            Err(cause) => {
                for port in taken.drain(..) {
                    node_ports.release(port);
                }
                return Err(ApiError::invalid(kind.kind, kind.group, &name, vec![cause]));
            }
        }
    }
    Ok(())
}

/// A port an update leaves without a node port keeps the one it had (matched by port and
/// protocol), as on Kubernetes.
fn keep_node_ports(current: &DynamicObject, new: &mut DynamicObject) {
    let old_ports = current.data["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(ports) = new.data["spec"]
        .get_mut("ports")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for port in ports {
        if !port["nodePort"].is_null() {
            continue;
        }
        if let Some(old) = old_ports.iter().find(|old| {
            old["port"] == port["port"]
                && old["protocol"].as_str().unwrap_or("TCP")
                    == port["protocol"].as_str().unwrap_or("TCP")
        }) && !old["nodePort"].is_null()
        {
            port["nodePort"] = old["nodePort"].clone();
        }
    }
}

/// A Service's cluster IP is immutable; an update that leaves it out keeps it.
fn keep_cluster_ips(
    kind: &Resource,
    current: &DynamicObject,
    new: &mut DynamicObject,
    name: &str,
) -> Result<(), ApiError> {
    if !is_service(kind) {
        return Ok(());
    }
    for field in ["clusterIP", "clusterIPs"] {
        let old = &current.data["spec"][field];
        let sent = &new.data["spec"][field];
        if sent.is_null() || sent == "" {
            new.data["spec"][field] = old.clone();
        } else if sent != old && !old.is_null() {
            return Err(ApiError::invalid(
                kind.kind,
                kind.group,
                name,
                vec![Cause::new(
                    format!("spec.{field}"),
                    "Invalid value: field is immutable",
                )],
            ));
        }
    }
    Ok(())
}
