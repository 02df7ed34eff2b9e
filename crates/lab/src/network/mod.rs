//! The lab network, kind's docker network: a bridge living in a namespace of its own, one "node"
//! namespace per cluster plugged into it, and what each node routes. Nothing is placed in the
//! host's own namespace and no lab namespace has a route out of the lab: a packet to anything
//! but the lab's own addresses fails at once with "network unreachable".
//!
//! Names are machine-wide, as kind's container names are on a docker host: a cluster's node is
//! `<cluster>-control-plane` and its pods are `<cluster>-pod-<12 hex>`, so that a cluster's
//! leftovers can be found from its name alone after a crash.

mod bridge;
pub mod node;
pub mod node_runtime;
pub mod routes;

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::netns::{self, Netns, NetnsError};

pub use bridge::Bridge;
pub use node::{NODE_INTERFACE, Node};

/// kind's docker network: the seeds' metallb pools (`172.18.11.0-255`, `172.18.12.0-255`) are on
/// it.
pub const DEFAULT_LAB_SUBNET: &str = "172.18.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "a network namespace named {name} already exists and is not this lab's (another lab, or a \
         leftover of one); delete that cluster from its own lab, or remove the namespace with \
         `ip netns del {name}`, or pick another cluster name"
    )]
    Taken { name: String },
    #[error("the lab network {subnet} has no free node address left")]
    Full { subnet: Ipv4Net },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The namespace of `cluster`'s node, named like kind's node container.
pub fn node_namespace(cluster: &str) -> String {
    format!("{cluster}-control-plane")
}

const POD_MARK: &str = "-pod-";
const POD_ID_LENGTH: usize = 12;

/// The namespace of a pod of `cluster`, from the pod's uid.
pub fn pod_namespace(cluster: &str, pod_uid: &str) -> String {
    let id: String = pod_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(POD_ID_LENGTH)
        .collect();
    format!("{cluster}{POD_MARK}{id}")
}

/// Whether `name` is one of `cluster`'s pod namespaces (and not another cluster's whose name
/// starts the same).
pub fn is_pod_namespace_of(cluster: &str, name: &str) -> bool {
    name.strip_prefix(cluster)
        .and_then(|rest| rest.strip_prefix(POD_MARK))
        .is_some_and(|id| id.len() == POD_ID_LENGTH && id.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Every namespace `cluster` made (its node and its pods), as `ip netns list` shows them.
pub fn namespaces_of(cluster: &str) -> Result<Vec<String>, NetworkError> {
    let node = node_namespace(cluster);
    Ok(netns::list()?
        .into_iter()
        .filter(|name| *name == node || is_pod_namespace_of(cluster, name))
        .collect())
}

/// Removes every namespace `cluster` made and every process inside them: what a crashed cluster
/// leaves behind. Pods first, so that nothing is left plugged into a deleted node.
pub fn remove_cluster_namespaces(cluster: &str) -> Result<Vec<String>, NetworkError> {
    let mut names = namespaces_of(cluster)?;
    let node = node_namespace(cluster);
    names.sort_by_key(|name| *name == node);
    for name in &names {
        Netns::open(name).delete()?;
    }
    Ok(names)
}

/// The lab-wide part of the network: its subnet, the bridge's namespace, and which clusters are
/// connected (the routes the seeds add with `docker exec ... ip route add`). Kept in `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabNetwork {
    pub subnet: Ipv4Net,
    pub bridge_namespace: String,
    /// Pairs of cluster names, each pair in name order.
    #[serde(default)]
    pub connections: Vec<(String, String)>,
}

impl LabNetwork {
    /// A new lab network for the lab kept in `root`: the bridge's namespace is named after the
    /// directory, so that two labs on one machine never share a bridge.
    pub fn new(root: &Path, subnet: Ipv4Net) -> Self {
        let canonical = root.canonicalize().unwrap_or_else(|_| root.to_owned());
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.to_string_lossy().as_bytes(),
        );
        let id: String = digest.as_ref()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self {
            subnet,
            bridge_namespace: format!("causeway-lab-{id}"),
            connections: Vec::new(),
        }
    }

    /// The first address for a new node: `.2` upwards (`.1` is left free, as docker keeps it
    /// for the host), skipping `taken`.
    pub fn free_node_address(&self, taken: &[Ipv4Addr]) -> Result<Ipv4Addr, NetworkError> {
        self.subnet
            .hosts()
            .skip(1)
            .find(|address| !taken.contains(address))
            .ok_or(NetworkError::Full {
                subnet: self.subnet,
            })
    }

    pub fn connected(&self, a: &str, b: &str) -> bool {
        self.connections.contains(&pair(a, b))
    }

    /// Records that `a` and `b` route to each other; whether that is new.
    pub fn connect(&mut self, a: &str, b: &str) -> bool {
        let pair = pair(a, b);
        if self.connections.contains(&pair) {
            return false;
        }
        self.connections.push(pair);
        self.connections.sort();
        true
    }

    /// Forgets that `a` and `b` route to each other; whether they did.
    pub fn disconnect(&mut self, a: &str, b: &str) -> bool {
        let pair = pair(a, b);
        let before = self.connections.len();
        self.connections.retain(|existing| *existing != pair);
        self.connections.len() != before
    }

    /// The clusters `cluster` is connected to.
    pub fn peers_of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.connections.iter().filter_map(move |(a, b)| {
            if a == cluster {
                Some(b.as_str())
            } else if b == cluster {
                Some(a.as_str())
            } else {
                None
            }
        })
    }

    /// Forgets every connection of a deleted cluster.
    pub fn forget(&mut self, cluster: &str) {
        self.connections
            .retain(|(a, b)| a != cluster && b != cluster);
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_namespaces_belong_to_exactly_one_cluster() {
        let name = pod_namespace("cluster01", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0");
        assert_eq!(name, "cluster01-pod-0b1c2d3e4f50");
        assert!(is_pod_namespace_of("cluster01", &name));
        assert!(!is_pod_namespace_of("cluster0", &name));
        // A cluster named like another's pod prefix owns none of its pods.
        assert!(!is_pod_namespace_of("cluster01-pod", &name));
        assert!(!is_pod_namespace_of(
            "cluster01",
            "cluster01-pod-b-control-plane"
        ));
        assert!(!is_pod_namespace_of("cluster01", "cluster01-control-plane"));
    }

    #[test]
    fn node_addresses_start_at_two_and_skip_taken_ones() {
        let network = LabNetwork::new(Path::new("/tmp/lab"), DEFAULT_LAB_SUBNET.parse().unwrap());
        let two = Ipv4Addr::new(172, 18, 0, 2);
        let three = Ipv4Addr::new(172, 18, 0, 3);
        assert_eq!(network.free_node_address(&[]).unwrap(), two);
        assert_eq!(network.free_node_address(&[two]).unwrap(), three);
        let tiny = LabNetwork::new(Path::new("/tmp/lab"), "10.9.0.0/30".parse().unwrap());
        assert!(matches!(
            tiny.free_node_address(&[Ipv4Addr::new(10, 9, 0, 2)]),
            Err(NetworkError::Full { .. })
        ));
        assert!(network.bridge_namespace.starts_with("causeway-lab-"));
        assert_eq!(network.bridge_namespace.len(), "causeway-lab-".len() + 8);
    }

    #[test]
    fn connections_are_unordered_pairs() {
        let mut network =
            LabNetwork::new(Path::new("/tmp/lab"), DEFAULT_LAB_SUBNET.parse().unwrap());
        assert!(network.connect("cluster02", "cluster01"));
        assert!(!network.connect("cluster01", "cluster02"));
        assert!(network.connected("cluster02", "cluster01"));
        assert_eq!(
            network.peers_of("cluster01").collect::<Vec<_>>(),
            ["cluster02"]
        );
        assert!(network.disconnect("cluster01", "cluster02"));
        assert!(!network.disconnect("cluster01", "cluster02"));
        network.connect("a", "b");
        network.forget("a");
        assert!(network.connections.is_empty());
    }
}
