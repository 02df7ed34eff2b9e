//! The lab: several Kubernetes-like clusters on one machine. Each cluster has its own API server
//! ([`apiserver`]), which the mesh and a real `kubectl` talk to; [`clusters`] runs them in the
//! background and [`kubeconfig`] tells clients where they are.

pub mod apiserver;
pub mod cluster_process;
pub mod clusters;
pub mod kind_config;
pub mod kubeconfig;
pub mod netns;
pub mod network;
#[cfg(feature = "testing")]
pub mod testing;
