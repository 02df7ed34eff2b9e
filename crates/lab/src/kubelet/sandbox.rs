//! A pod's sandbox: its network namespace, linked to the node by a veth pair (`eth0` in the pod,
//! a `cw<id>` link on the node, point to point: the pod's address is a /32 and the node's side
//! carries the subnet's gateway address), routes through the node to the lab and nothing else,
//! and the files the kubelet manages in every container (`/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::netns::{Netns, NetnsError};

/// The pod's interface, as in any Kubernetes pod.
pub const POD_INTERFACE: &str = "eth0";

/// The node's side of a pod's link, named from the pod's namespace (at most 15 characters).
pub fn node_link_name(pod_namespace: &str) -> String {
    let id: String = pod_namespace
        .rsplit('-')
        .next()
        .unwrap_or(pod_namespace)
        .chars()
        .take(12)
        .collect();
    format!("cw{id}")
}

/// A pod's network.
pub struct Sandbox {
    pub netns: Netns,
    pub address: Ipv4Addr,
}

impl Sandbox {
    /// Makes the pod's namespace `name` with `address`, linked to `node` through `gateway`, with
    /// routes to `prefixes` through it.
    pub fn create(
        node: &Netns,
        name: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
        prefixes: &[Ipv4Net],
    ) -> Result<Sandbox, NetnsError> {
        let netns = Netns::create(name)?;
        let sandbox = Sandbox { netns, address };
        if let Err(error) = sandbox.link(node, gateway, prefixes) {
            let _ = sandbox.netns.delete();
            return Err(error);
        }
        Ok(sandbox)
    }

    fn link(
        &self,
        node: &Netns,
        gateway: Ipv4Addr,
        prefixes: &[Ipv4Net],
    ) -> Result<(), NetnsError> {
        let link = node_link_name(self.netns.name());
        let address = self.address;
        node.ip_batch(&[
            format!(
                "link add {link} type veth peer name {POD_INTERFACE} netns {}",
                self.netns.name()
            ),
            format!("addr add {gateway}/32 dev {link}"),
            format!("link set {link} up"),
            format!("route replace {address}/32 dev {link} scope link"),
        ])?;
        let mut commands = vec![
            format!("addr add {address}/32 dev {POD_INTERFACE}"),
            format!("link set {POD_INTERFACE} up"),
            format!("route add {gateway} dev {POD_INTERFACE} scope link"),
        ];
        commands.extend(prefixes.iter().map(|prefix| route(prefix, gateway)));
        self.netns.ip_batch(&commands)
    }

    /// Brings the pod's routes from `old` to `new` (a lab cluster came or went).
    pub fn reroute(
        netns: &Netns,
        gateway: Ipv4Addr,
        old: &[Ipv4Net],
        new: &[Ipv4Net],
    ) -> Result<(), NetnsError> {
        let mut commands: Vec<String> = old
            .iter()
            .filter(|prefix| !new.contains(prefix))
            .map(|prefix| format!("route del {prefix} via {gateway} dev {POD_INTERFACE}"))
            .collect();
        commands.extend(
            new.iter()
                .filter(|prefix| !old.contains(prefix))
                .map(|prefix| route(prefix, gateway)),
        );
        netns.ip_batch(&commands)
    }
}

fn route(prefix: &Ipv4Net, gateway: Ipv4Addr) -> String {
    format!("route replace {prefix} via {gateway} dev {POD_INTERFACE}")
}

/// The cluster's DNS as a pod with `dnsPolicy: ClusterFirst` sees it.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub nameserver: Ipv4Addr,
    pub namespace: String,
}

/// `/etc/resolv.conf` for a pod: the cluster DNS, and the search path that makes `helloworld`
/// and `helloworld.sample` resolve.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    format!(
        "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5\n",
        dns.nameserver,
        ns = dns.namespace
    )
}

/// `/etc/hosts` for a pod, as the kubelet writes it.
pub fn hosts_file(pod_name: &str, address: Ipv4Addr) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{address}\t{pod_name}\n"
    )
}

/// Writes the pod's managed files into `directory`; their paths, to mount over the container's
/// `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
pub fn write_files(
    directory: &Path,
    pod_name: &str,
    address: Ipv4Addr,
    dns: &DnsConfig,
) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    std::fs::create_dir_all(directory)?;
    let files = [
        ("hosts", hosts_file(pod_name, address), "/etc/hosts"),
        ("resolv.conf", resolv_conf(dns), "/etc/resolv.conf"),
        ("hostname", format!("{pod_name}\n"), "/etc/hostname"),
    ];
    let mut written = Vec::new();
    for (name, content, target) in files {
        let path = directory.join(name);
        std::fs::write(&path, content)?;
        written.push((path, target));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_links_fit_the_kernels_limit_and_follow_the_pod() {
        let link = node_link_name("cluster01-pod-0b1c2d3e4f50");
        assert_eq!(link, "cw0b1c2d3e4f50");
        assert!(link.len() <= 15);
    }

    #[test]
    fn a_pods_dns_searches_its_namespace_first() {
        let text = resolv_conf(&DnsConfig {
            nameserver: Ipv4Addr::new(10, 11, 0, 10),
            namespace: "sample".into(),
        });
        assert_eq!(
            text,
            "search sample.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.11.0.10\noptions ndots:5\n"
        );
        assert!(
            hosts_file("sleep-1", Ipv4Addr::new(10, 10, 0, 5)).ends_with("10.10.0.5\tsleep-1\n")
        );
    }
}
