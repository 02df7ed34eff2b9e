//! ClusterIP allocation from the cluster's service subnet. The first host address is the
//! `kubernetes` Service's and the tenth the cluster DNS's, as in every kubeadm and kind cluster:
//! neither is handed out unless asked for.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kube::core::DynamicObject;

use super::status::Cause;

/// Offsets only given when asked for: the `kubernetes` Service's and `kube-dns`'s.
const RESERVED: [u32; 2] = [1, 10];

pub struct ServiceIps {
    subnet: Ipv4Net,
    used: HashSet<Ipv4Addr>,
    next: u32,
}

impl ServiceIps {
    pub fn new(subnet: Ipv4Net) -> Self {
        Self {
            subnet,
            used: HashSet::new(),
            next: 2,
        }
    }

    /// The address of the `kubernetes` Service.
    pub fn api_server_ip(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The address of the cluster DNS (`kube-dns`).
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.nth(10)
    }

    fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + offset)
    }

    fn host_count(&self) -> u32 {
        // Network and broadcast addresses are never handed out.
        (1u64 << (32 - self.subnet.prefix_len()))
            .saturating_sub(2)
            .min(u64::from(u32::MAX)) as u32
    }

    /// Marks an address already held by a stored Service.
    pub fn mark_used(&mut self, address: Ipv4Addr) {
        self.used.insert(address);
    }

    pub fn release(&mut self, address: Ipv4Addr) {
        self.used.remove(&address);
    }

    /// Reserves `requested`, or the next free address when `None`.
    pub fn allocate(&mut self, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, Cause> {
        if let Some(address) = requested {
            let hosts = self.host_count();
            let offset = u32::from(address).wrapping_sub(u32::from(self.subnet.network()));
            if !self.subnet.contains(&address) || offset == 0 || offset > hosts {
                return Err(Cause::new(
                    "spec.clusterIPs",
                    format!(
                        "Invalid value: {address}: provided IP is not in the valid range. The range of valid IPs is {}",
                        self.subnet
                    ),
                ));
            }
            if !self.used.insert(address) {
                return Err(Cause::new(
                    "spec.clusterIPs",
                    format!("Invalid value: {address}: provided IP is already allocated"),
                ));
            }
            return Ok(address);
        }
        let hosts = self.host_count();
        for step in 0..hosts {
            let offset = (self.next - 1 + step) % hosts + 1;
            let address = self.nth(offset);
            if !RESERVED.contains(&offset) && self.used.insert(address) {
                self.next = offset % hosts + 1;
                return Ok(address);
            }
        }
        Err(Cause::new(
            "spec.clusterIPs",
            format!(
                "Internal error: no free addresses left in the service subnet {}",
                self.subnet
            ),
        ))
    }
}

/// The addresses in a Service's `spec.clusterIPs` (none for headless Services).
pub fn cluster_ips(service: &DynamicObject) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
    service.data["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|address| address.as_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_skip_the_api_server_and_run_out_cleanly() {
        let mut ips = ServiceIps::new("10.11.0.0/29".parse().unwrap());
        assert_eq!(ips.api_server_ip(), Ipv4Addr::new(10, 11, 0, 1));
        assert_eq!(ips.dns_ip(), Ipv4Addr::new(10, 11, 0, 10));
        let mut seen: Vec<Ipv4Addr> = (0..5).map(|_| ips.allocate(None).unwrap()).collect();
        seen.sort();
        assert_eq!(seen.first(), Some(&Ipv4Addr::new(10, 11, 0, 2)));
        assert_eq!(seen.last(), Some(&Ipv4Addr::new(10, 11, 0, 6)));
        assert!(
            ips.allocate(None)
                .unwrap_err()
                .message
                .contains("no free addresses")
        );
        ips.release(Ipv4Addr::new(10, 11, 0, 4));
        assert_eq!(ips.allocate(None).unwrap(), Ipv4Addr::new(10, 11, 0, 4));
    }

    #[test]
    fn the_dns_address_is_only_given_when_asked_for() {
        let mut ips = ServiceIps::new("10.11.0.0/28".parse().unwrap());
        let handed: Vec<Ipv4Addr> = std::iter::from_fn(|| ips.allocate(None).ok()).collect();
        assert!(!handed.contains(&Ipv4Addr::new(10, 11, 0, 10)));
        assert!(!handed.contains(&Ipv4Addr::new(10, 11, 0, 1)));
        assert_eq!(handed.len(), 12);
        assert!(ips.allocate(Some(Ipv4Addr::new(10, 11, 0, 10))).is_ok());
    }

    #[test]
    fn requested_addresses_must_be_free_and_in_range() {
        let mut ips = ServiceIps::new("10.11.0.0/16".parse().unwrap());
        assert!(ips.allocate(Some(Ipv4Addr::new(10, 11, 3, 3))).is_ok());
        assert!(
            ips.allocate(Some(Ipv4Addr::new(10, 11, 3, 3)))
                .unwrap_err()
                .message
                .contains("already allocated")
        );
        assert!(
            ips.allocate(Some(Ipv4Addr::new(10, 12, 0, 1)))
                .unwrap_err()
                .message
                .contains("not in the valid range")
        );
    }
}
