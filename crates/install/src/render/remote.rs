//! Istio's `istiod-remote` chart (`profile: remote`): the cluster has no discovery of its own. Its
//! `istiod` Service points at the primary's discovery (`remotePilotAddress`, reached through the
//! primary's east-west gateway or directly on a flat network), and its injection webhook calls
//! that discovery through the Service (or by `injectionURL` when one is given).

use super::istiod::{discovery_ports, mesh_config, webhook};
use super::{Component, Rendered, install_labels, revisioned};
use crate::settings::{Injection, Remote, Settings};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service};
use serde_json::json;
use std::net::IpAddr;

pub fn render(settings: &Settings, remote: &Remote) -> Vec<Rendered> {
    let component = Component::IstiodRemote;
    let namespace = &settings.namespace;
    let name = revisioned("istiod", settings);
    let mut labels = install_labels(settings, component);
    labels.insert("app".into(), "istiod".into());
    labels.insert("istio".into(), "pilot".into());
    let mut objects = vec![Rendered::typed::<ConfigMap>(
        component,
        json!({
            "metadata": {"name": revisioned(super::MESH_CONFIG_MAP, settings), "namespace": namespace, "labels": labels},
            "data": {
                "mesh": serde_saphyr::to_string(&mesh_config(settings)).expect("mesh config serializes"),
                "meshNetworks": "networks: {}\n",
            },
        }),
    )];
    match remote.pilot_address.parse::<IpAddr>() {
        Ok(address) => {
            objects.push(Rendered::typed::<Service>(
                component,
                json!({
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "spec": {"ports": discovery_ports()},
                }),
            ));
            objects.push(Rendered::typed::<Endpoints>(
                component,
                json!({
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "subsets": [{
                        "addresses": [{"ip": address.to_string()}],
                        "ports": [
                            {"name": "https-dns", "port": 15012, "protocol": "TCP"},
                            {"name": "https-webhook", "port": 15017, "protocol": "TCP"},
                        ],
                    }],
                }),
            ));
        }
        // A name: the Service is an alias for it, as the chart does.
        Err(_) => objects.push(Rendered::typed::<Service>(
            component,
            json!({
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"type": "ExternalName", "externalName": remote.pilot_address, "ports": discovery_ports()},
            }),
        )),
    }
    let client_config = match &remote.injection {
        Injection::ServicePath(path) => json!({
            "service": {"name": name, "namespace": namespace, "path": path, "port": 443},
        }),
        Injection::Url(url) => json!({"url": url}),
    };
    objects.push(webhook(settings, component, client_config));
    // As istiod-remote's chart does: `kube-inject --injectConfigMapName istio-sidecar-injector`
    // in the remote cluster reads the remote's own cluster name and network from it.
    objects.push(super::istiod::injector_config_map(
        settings, &labels, component,
    ));
    objects
}
