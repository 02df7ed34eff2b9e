//! Resource generation: what each kind of client is told, from one mesh snapshot.

mod common;
pub mod endpoints;
pub mod grpc;
pub mod router;
pub mod sidecar;

use crate::proxy::{ProxyInfo, ProxyKind};
use crate::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource};
use causeway_model::MeshSnapshot;
use causeway_model::split_horizon::View;
use endpoints::EndpointCache;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Which resources of a type a stream asked for.
#[derive(Clone, Copy, Debug)]
pub enum Wanted<'a> {
    All,
    Named(&'a BTreeSet<String>),
}

impl Wanted<'_> {
    fn names(&self) -> Option<&BTreeSet<String>> {
        match self {
            Wanted::All => None,
            Wanted::Named(names) => Some(names),
        }
    }

    fn keep(&self, resources: Vec<Arc<Resource>>) -> Vec<Arc<Resource>> {
        match self {
            Wanted::All => resources,
            Wanted::Named(names) => resources
                .into_iter()
                .filter(|r| names.contains(&*r.name))
                .collect(),
        }
    }
}

/// Shared by every stream: caches what many streams would otherwise each compute.
#[derive(Default)]
pub struct Generator {
    endpoints: EndpointCache,
}

impl Generator {
    pub fn generate(
        &self,
        type_url: &str,
        snapshot: &MeshSnapshot,
        proxy: &ProxyInfo,
        wanted: Wanted<'_>,
    ) -> Vec<Arc<Resource>> {
        match (type_url, proxy.kind) {
            (CLUSTER, ProxyKind::Sidecar) => wanted.keep(sidecar::clusters(snapshot, proxy)),
            (LISTENER, ProxyKind::Sidecar) => wanted.keep(sidecar::listeners(snapshot, proxy)),
            (CLUSTER, ProxyKind::Router) => wanted.keep(router::clusters(snapshot, proxy)),
            (LISTENER, ProxyKind::Router) => wanted.keep(router::listeners(snapshot, proxy)),
            (CLUSTER, ProxyKind::Grpc) => wanted.keep(grpc::clusters(snapshot)),
            (LISTENER, ProxyKind::Grpc) => grpc::listeners(snapshot, proxy, wanted.names()),
            (ROUTE, ProxyKind::Grpc) => grpc::routes(snapshot, proxy, wanted.names()),
            (ENDPOINT, _) => {
                let networks = proxy.router_networks();
                let view = match proxy.kind {
                    ProxyKind::Router => View::Router(&networks),
                    _ => View::Network(&proxy.network),
                };
                let names: Vec<String> = match wanted {
                    Wanted::Named(names) => names.iter().cloned().collect(),
                    // EDS is never a wildcard in practice; answer with every cluster sent.
                    Wanted::All => self
                        .generate(CLUSTER, snapshot, proxy, Wanted::All)
                        .iter()
                        .map(|c| c.name.to_string())
                        .collect(),
                };
                names
                    .iter()
                    .filter_map(|name| self.endpoints.get(name, snapshot, view))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Called once per snapshot: forgets cached assignments of services that are gone.
    pub fn forget_removed(&self, snapshot: &MeshSnapshot) {
        self.endpoints.retain_existing(snapshot);
    }
}
