//! A Kubernetes-compatible API server for one lab cluster.

pub mod auth;
pub mod body;
pub mod config;
pub mod controllers;
pub mod defaults;
pub mod discovery;
pub mod events;
pub mod handlers;
pub mod http;
pub mod metadata;
pub mod node_ports;
pub mod openapi_v2;
pub mod paging;
pub mod patch;
pub mod pod_exec;
pub mod pod_log;
pub mod pod_proxy;
pub mod pod_runtime;
pub mod protobuf;
pub mod render;
pub mod resources;
pub mod routing;
pub mod scale;
pub mod selectors;
pub mod server;
pub mod service_ips;
pub mod state;
pub mod status;
pub mod store;
pub mod tables;
#[cfg(test)]
mod test_objects;
pub mod tls;
pub mod token_api;
pub mod tokens;
pub mod validation;
pub mod wal;
pub mod watch;
pub mod writes;

pub use config::ApiServerConfig;
pub use server::{RunningApiServer, StartError, start};
