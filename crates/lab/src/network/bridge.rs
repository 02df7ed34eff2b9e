//! The lab's bridge: `br0` in a namespace of its own, with no address and no route. It only
//! carries frames between the nodes plugged into it, as kind's docker bridge does between its node
//! containers, minus the host's side.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::NetworkError;
use crate::netns::Netns;

const BRIDGE: &str = "br0";

pub struct Bridge {
    netns: Netns,
}

impl Bridge {
    /// The bridge in namespace `name`, made when missing. Callers hold the lab's lock, so two
    /// clusters starting at once do not both make it.
    pub fn ensure(name: &str) -> Result<Bridge, NetworkError> {
        let netns = if Netns::exists(name) {
            Netns::open(name)
        } else {
            Netns::create(name)?
        };
        let has_bridge = netns
            .ip(&["-o", "link", "show", "dev", BRIDGE])
            .is_ok_and(|output| !output.is_empty());
        if !has_bridge {
            netns.ip_batch(&[
                format!("link add {BRIDGE} type bridge"),
                format!("link set {BRIDGE} up"),
            ])?;
        }
        Ok(Bridge { netns })
    }

    pub fn namespace(&self) -> &Netns {
        &self.netns
    }

    /// The bridge port of `cluster`'s node: a veth end named from the cluster's name (at most 15
    /// characters, the kernel's limit).
    pub fn port_name(cluster: &str) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cluster.as_bytes());
        let id: String = digest.as_ref()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("vn{id}")
    }

    /// Plugs `node` into the bridge: a veth pair, `interface` on the node's side with `address`
    /// (in `subnet`), the other end a bridge port. A port left by a crashed node is replaced.
    pub fn plug(
        &self,
        cluster: &str,
        node: &Netns,
        interface: &str,
        address: Ipv4Addr,
        subnet: Ipv4Net,
    ) -> Result<(), NetworkError> {
        let port = Self::port_name(cluster);
        let _ = self.netns.ip(&["link", "del", &port]);
        self.netns.ip_batch(&[
            format!(
                "link add {port} type veth peer name {interface} netns {}",
                node.name()
            ),
            format!("link set {port} master {BRIDGE}"),
            format!("link set {port} up"),
        ])?;
        node.ip_batch(&[
            format!("addr add {address}/{} dev {interface}", subnet.prefix_len()),
            format!("link set {interface} up"),
        ])?;
        Ok(())
    }

    /// Removes the bridge and its namespace (when the lab's last cluster is deleted).
    pub fn remove(name: &str) -> Result<(), NetworkError> {
        Netns::open(name).delete()?;
        Ok(())
    }
}
