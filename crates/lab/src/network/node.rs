//! A cluster's node: a namespace named like kind's node container, plugged into the lab's bridge,
//! forwarding between its pods and the lab network. Its routes are the lab's and its pods' only:
//! no default route, so a packet to an address outside the lab fails at once.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Bridge, NetworkError, node_namespace};
use crate::netns::Netns;

/// The node's interface on the lab network, as in a kind node container.
pub const NODE_INTERFACE: &str = "eth0";

/// Chains the node's service routing (kube-proxy's job) fills; made empty with the node.
pub const SERVICES_CHAIN: &str = "CW-SERVICES";
pub const POSTROUTING_CHAIN: &str = "CW-POSTROUTING";
pub const FILTER_CHAIN: &str = "CW-FILTER";

/// What a node is made with.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub cluster: String,
    pub address: Ipv4Addr,
    pub lab_subnet: Ipv4Net,
    pub pod_subnet: Ipv4Net,
    pub service_subnet: Ipv4Net,
}

pub struct Node {
    pub netns: Netns,
    pub spec: NodeSpec,
}

impl Node {
    /// Makes the node's namespace and plugs it into `bridge`. A namespace of that name must not
    /// exist: the caller removes what a crashed run left first.
    pub fn create(spec: NodeSpec, bridge: &Bridge) -> Result<Node, NetworkError> {
        let name = node_namespace(&spec.cluster);
        if Netns::exists(&name) {
            return Err(NetworkError::Taken { name });
        }
        let netns = Netns::create(&name)?;
        let node = Node { netns, spec };
        if let Err(error) = node.set_up(bridge) {
            let _ = node.netns.delete();
            return Err(error);
        }
        Ok(node)
    }

    fn set_up(&self, bridge: &Bridge) -> Result<(), NetworkError> {
        let spec = &self.spec;
        bridge.plug(
            &spec.cluster,
            &self.netns,
            NODE_INTERFACE,
            spec.address,
            spec.lab_subnet,
        )?;
        // Locally made packets to a ClusterIP need a route before the OUTPUT hook rewrites their
        // destination; one through the lab interface does, as a node's default route would.
        self.netns.ip_batch(&[format!(
            "route add {} dev {NODE_INTERFACE} src {}",
            spec.service_subnet, spec.address
        )])?;
        // The settings are the namespace's own; rp_filter off because replies to masqueraded
        // and DNATed connections may come back on another interface than they left.
        self.netns.run(
            "sh",
            &[
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward && \
                 echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter && \
                 echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter",
            ],
        )?;
        self.restore_tables(&base_tables(spec))?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        self.netns.name()
    }

    /// Loads iptables rules (`iptables-restore` input) into the node, leaving other chains as they
    /// are.
    pub fn restore_tables(&self, rules: &str) -> Result<(), NetworkError> {
        Self::restore_into(&self.netns, rules)
    }

    /// [`Node::restore_tables`] for a node known by its namespace.
    pub fn restore_into(netns: &Netns, rules: &str) -> Result<(), NetworkError> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = netns
            .command("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetworkError::Io {
                action: "run iptables-restore (Debian package iptables) in",
                path: netns.name().to_owned(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(rules.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|source| NetworkError::Io {
                action: "run iptables-restore in",
                path: netns.name().to_owned(),
                source,
            })?;
        if !output.status.success() {
            return Err(NetworkError::Io {
                action: "load iptables rules into",
                path: netns.name().to_owned(),
                source: std::io::Error::other(format!(
                    "{}; the rules were:\n{rules}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
            });
        }
        Ok(())
    }

    /// Routes `prefix` through `via` (a peer node, for `lab connect`).
    pub fn add_route(&self, prefix: Ipv4Net, via: Ipv4Addr) -> Result<(), NetworkError> {
        self.netns.ip_batch(&[format!(
            "route replace {prefix} via {via} dev {NODE_INTERFACE}"
        )])?;
        Ok(())
    }

    /// Removes a route `add_route` made; one already gone is no error.
    pub fn remove_route(&self, prefix: Ipv4Net, via: Ipv4Addr) {
        let _ = self
            .netns
            .ip_batch(&[format!("route del {prefix} via {via} dev {NODE_INTERFACE}")]);
    }

    /// Deletes the node's namespace (its link to the bridge goes with it).
    pub fn delete(self) -> Result<(), NetworkError> {
        self.netns.delete()?;
        Ok(())
    }
}

/// The node's tables before any Service exists: the jumps into the chains service routing fills,
/// and masquerading of pods' connections to the lab network (the addresses of other nodes and of
/// LoadBalancer Services), so that replies find their way back, as kind's nodes masquerade what
/// leaves for the docker network.
fn base_tables(spec: &NodeSpec) -> String {
    format!(
        "*nat\n\
         :{SERVICES_CHAIN} - [0:0]\n\
         :{POSTROUTING_CHAIN} - [0:0]\n\
         -A PREROUTING -j {SERVICES_CHAIN}\n\
         -A OUTPUT -j {SERVICES_CHAIN}\n\
         -A POSTROUTING -j {POSTROUTING_CHAIN}\n\
         -A POSTROUTING -s {pods} -d {lab} -o {NODE_INTERFACE} -j MASQUERADE\n\
         COMMIT\n\
         *filter\n\
         :{FILTER_CHAIN} - [0:0]\n\
         -A INPUT -j {FILTER_CHAIN}\n\
         -A FORWARD -j {FILTER_CHAIN}\n\
         -A OUTPUT -j {FILTER_CHAIN}\n\
         COMMIT\n",
        pods = spec.pod_subnet,
        lab = spec.lab_subnet,
    )
}
