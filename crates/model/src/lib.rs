//! Causeway's mesh data model: what the control plane knows and the proxies are told.
//!
//! - [`service`]: services by FQDN, merged across clusters ("namespace sameness").
//! - [`endpoint`]: workload endpoints with cluster, network, locality, identity and readiness.
//! - [`gateway`]: network gateways (east-west) and Istio `Gateway` objects.
//! - [`split_horizon`]: the endpoints of a service as a proxy on one network sees them.
//! - [`vip`]: the address a service answers on in a cluster that does not define it.
//! - [`service_entry`]: ServiceEntries, as the services and endpoints they define.
//! - [`workload_entry`]: WorkloadEntries, the workloads outside Kubernetes entries select.
//! - [`mesh`]: one immutable snapshot of all of the above.
//!
//! Nothing here does I/O; the registry fills these types from the clusters' APIs and the xDS
//! generators read them.

pub mod endpoint;
pub mod gateway;
pub mod mesh;
pub mod policy;
pub mod service;
pub mod service_entry;
pub mod split_horizon;
pub mod vip;
pub mod workload_entry;

pub use endpoint::{DnsEndpoint, Endpoint, EndpointPort, Locality, TlsMode, workload_of_pod};
pub use gateway::{GatewayServer, IstioGateway, NetworkGateway, TlsRoute};
pub use mesh::{ClusterStatus, MeshSnapshot, Push, ServiceEndpoints, SyncState};
pub use policy::{MtlsMode, PeerAuthentication, WorkloadMtls, workload_mtls};
pub use service::{ClusterService, DefinedBy, Protocol, Service, ServicePort};
pub use service_entry::{Location, Resolution, ServiceEntry, ServiceEntryError};
pub use workload_entry::{WorkloadEntry, WorkloadEntryError};
