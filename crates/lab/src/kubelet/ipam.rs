//! Pod addresses from the cluster's pod subnet, as a one-node cluster's CNI hands them out: the
//! subnet's first host is the gateway (the node's side of every pod's link), pods get the others
//! in turn (a freed address comes back when the search wraps round), and a pod keeps its address
//! across a kubelet restart.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub struct PodAddresses {
    subnet: Ipv4Net,
    used: HashSet<Ipv4Addr>,
    /// Offset into the subnet where the search for a free address starts.
    next: u32,
}

impl PodAddresses {
    pub fn new(subnet: Ipv4Net) -> Self {
        Self {
            subnet,
            used: HashSet::new(),
            next: 2,
        }
    }

    /// The pods' gateway: the subnet's first host address, on the node's side of each link.
    pub fn gateway(&self) -> Ipv4Addr {
        self.at(1)
    }

    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + offset)
    }

    fn host_count(&self) -> u32 {
        let size = 1u64 << (32 - self.subnet.prefix_len());
        u32::try_from(size.saturating_sub(2)).unwrap_or(u32::MAX)
    }

    /// Takes `address` for a pod that had it (a restart adopting what it gave before); false when
    /// it is not this subnet's or is taken.
    pub fn reserve(&mut self, address: Ipv4Addr) -> bool {
        let offset = u32::from(address).wrapping_sub(u32::from(self.subnet.network()));
        if !self.subnet.contains(&address) || offset < 2 || offset > self.host_count() {
            return false;
        }
        self.used.insert(address)
    }

    /// The next free address, `None` when the subnet is full.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let hosts = self.host_count();
        if hosts < 2 {
            return None;
        }
        // Offsets 2..=hosts, starting where the last search ended.
        let span = hosts - 1;
        for step in 0..span {
            let offset = (self.next - 2 + step) % span + 2;
            let address = self.at(offset);
            if self.used.insert(address) {
                self.next = offset % hosts + 1;
                if self.next < 2 {
                    self.next = 2;
                }
                return Some(address);
            }
        }
        None
    }

    pub fn release(&mut self, address: Ipv4Addr) {
        self.used.remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_gateway_run_out_cleanly_and_come_back_last() {
        let mut pods = PodAddresses::new("10.10.0.0/29".parse().unwrap());
        assert_eq!(pods.gateway(), Ipv4Addr::new(10, 10, 0, 1));
        let handed: Vec<Ipv4Addr> = (0..5).map(|_| pods.allocate().unwrap()).collect();
        assert_eq!(
            handed,
            (2..=6)
                .map(|last| Ipv4Addr::new(10, 10, 0, last))
                .collect::<Vec<_>>()
        );
        assert_eq!(pods.allocate(), None);
        pods.release(Ipv4Addr::new(10, 10, 0, 3));
        assert_eq!(pods.allocate(), Some(Ipv4Addr::new(10, 10, 0, 3)));
    }

    #[test]
    fn reserved_addresses_must_be_free_pod_addresses_of_the_subnet() {
        let mut pods = PodAddresses::new("10.10.0.0/16".parse().unwrap());
        assert!(pods.reserve(Ipv4Addr::new(10, 10, 3, 7)));
        assert!(!pods.reserve(Ipv4Addr::new(10, 10, 3, 7)));
        assert!(!pods.reserve(Ipv4Addr::new(10, 10, 0, 1)), "the gateway");
        assert!(!pods.reserve(Ipv4Addr::new(10, 20, 0, 5)), "another subnet");
        assert_eq!(pods.allocate(), Some(Ipv4Addr::new(10, 10, 0, 2)));
    }
}
