//! A Kubernetes-compatible API server for one lab cluster.

pub mod controllers;
pub mod discovery;
pub mod handlers;
pub mod objects;
pub mod openapi_v2;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod service_ips;
pub mod status;
pub mod store;
pub mod tables;
pub mod tls;
pub mod token_api;
pub mod tokens;
pub mod wal;
pub mod watch;

pub use server::{ApiServerConfig, RunningApiServer, StartError, start};
