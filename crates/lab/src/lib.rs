//! The lab: several Kubernetes-like clusters on one machine. Each cluster has its own API server
//! ([`apiserver`]), which the mesh and a real `kubectl` talk to; [`clusters`] runs them in the
//! background and [`kubeconfig`] tells clients where they are.

pub mod apiserver;
pub mod apps;
pub mod cluster_process;
pub mod clusters;
pub mod container_init;
pub mod container_log;
pub mod kind_config;
pub mod kubeconfig;
pub mod kubelet;
pub mod netns;
pub mod network;
pub mod services;
#[cfg(feature = "testing")]
pub mod testing;
