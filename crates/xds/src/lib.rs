//! Causeway's Envoy v3 xDS.
//!
//! - [`proxy`]: who a stream belongs to (sidecar, router, proxyless gRPC), from its node.
//! - [`generate`]: the resources each kind of client gets from a mesh snapshot.
//! - [`resources`]: type URLs, Istio's resource names, encoded resources.
//! - [`server`]: the ADS service (state of the world and delta), pushes, ACK/NACK bookkeeping.

mod envoy;
pub mod generate;
pub mod proxy;
pub mod resources;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
