//! Causeway's data plane: [`capture`], the iptables rules that send a pod's traffic through its
//! sidecar (istio-init's job, `causeway proxy init`); [`config`], the routing tables built from
//! discovery's xDS; [`passthrough`], how a captured connection reaches where it was going.
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod ads;
pub mod balancer;
pub mod bootstrap;
pub mod capture;
pub mod config;
mod control_channel;
pub mod dataplane;
pub mod dns;
pub mod dns_clusters;
pub mod drain;
pub mod http1;
pub mod http_proxy;
pub mod identity;
pub mod inbound;
pub mod launch;
pub mod outbound;
pub mod passthrough;
pub mod peer_metadata;
pub mod relay;
pub mod resident;
mod retry;
pub mod router;
pub mod sniff;
pub mod tcp_peer_exchange;
pub mod telemetry;
pub mod upstream_pool;
