//! Proxyless gRPC clients: an LDS `api_listener` per `host:port` the client dials (any form of
//! the host it may write), RDS routing every path to the service port's cluster, CDS and EDS.
//! gRPC's xDS client names the listeners it wants; the wildcard gives the canonical FQDN names.

use super::common::eds_cluster;
use super::sidecar::routable_ports;
use crate::envoy::{ads, any};
use crate::proxy::ProxyInfo;
use crate::resources::{Resource, outbound_cluster};
use causeway_model::{MeshSnapshot, Service};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The route configuration (and canonical listener) name of a service port.
fn canonical(service: &Service, port: u16) -> String {
    format!("{}:{port}", service.fqdn)
}

/// Splits `host:port` and finds the service and port it names for this client.
fn resolve<'a>(
    snapshot: &'a MeshSnapshot,
    proxy: &ProxyInfo,
    name: &str,
) -> Option<(&'a Arc<Service>, u16)> {
    let (host, port) = name.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let service = snapshot.resolve_host(host, proxy.namespace.as_deref())?;
    service.port(port)?;
    Some((service, port))
}

fn api_listener(name: &str, route_name: String) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name,
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..HttpFilter::default()
        }],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&manager)),
        }),
        ..Listener::default()
    }
}

fn all_names(snapshot: &MeshSnapshot) -> BTreeSet<Arc<str>> {
    snapshot
        .services
        .values()
        .flat_map(|service| {
            routable_ports(service).map(|port| Arc::from(canonical(service, port.port)))
        })
        .collect()
}

/// `names` (every service port's canonical name when `None`) with the service port each names
/// for this client; names that name nothing are left out.
fn resolve_all<'a>(
    snapshot: &'a MeshSnapshot,
    proxy: &ProxyInfo,
    names: Option<&BTreeSet<Arc<str>>>,
) -> Vec<(Arc<str>, &'a Arc<Service>, u16)> {
    let wanted = names.cloned().unwrap_or_else(|| all_names(snapshot));
    wanted
        .into_iter()
        .filter_map(|name| {
            let (service, port) = resolve(snapshot, proxy, &name)?;
            // A host not exported to the client's namespace does not exist for it.
            service
                .visible_to(proxy.namespace.as_deref())
                .then_some((name, service, port))
        })
        .collect()
}

/// Listeners for `names`, or for every service port when `names` is `None`.
pub fn listeners(
    snapshot: &MeshSnapshot,
    proxy: &ProxyInfo,
    names: Option<&BTreeSet<Arc<str>>>,
) -> Vec<Arc<Resource>> {
    resolve_all(snapshot, proxy, names)
        .into_iter()
        .map(|(name, service, port)| {
            let listener = api_listener(&name, canonical(service, port));
            Resource::new(name, &listener)
        })
        .collect()
}

pub fn routes(
    snapshot: &MeshSnapshot,
    proxy: &ProxyInfo,
    names: Option<&BTreeSet<Arc<str>>>,
) -> Vec<Arc<Resource>> {
    resolve_all(snapshot, proxy, names)
        .into_iter()
        .map(|(name, service, port)| {
            let domains = service
                .host_aliases(proxy.namespace.as_deref())
                .into_iter()
                .flat_map(|host| [format!("{host}:{port}"), host])
                .collect();
            let route = Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..RouteMatch::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        outbound_cluster(port, &service.fqdn),
                    )),
                    ..RouteAction::default()
                })),
                ..Route::default()
            };
            let config = RouteConfiguration {
                name: name.to_string(),
                virtual_hosts: vec![VirtualHost {
                    name: canonical(service, port),
                    domains,
                    routes: vec![route],
                    ..VirtualHost::default()
                }],
                ..RouteConfiguration::default()
            };
            Resource::new(name, &config)
        })
        .collect()
}

/// Plain EDS clusters: gRPC brings its own credentials, so no transport socket is sent.
pub fn clusters(snapshot: &MeshSnapshot) -> Vec<Arc<Resource>> {
    snapshot
        .services
        .values()
        .flat_map(|service| {
            routable_ports(service).map(|port| {
                let name = outbound_cluster(port.port, &service.fqdn);
                Resource::new(name.as_str(), &eds_cluster(&name))
            })
        })
        .collect()
}
