//! Addresses for services in clusters that do not define them.
//!
//! A Service that exists only in cluster02 is still a mesh service for proxies in cluster01, but
//! cluster01 has no ClusterIP for it, and cluster02's ClusterIP may collide with cluster01's own
//! service subnet. Like Istio's DNS proxy (`ISTIO_META_DNS_AUTO_ALLOCATE`), every mesh service
//! gets an address from the reserved class-E block 240.240.0.0/16; a proxy uses it only where its
//! own cluster lacks the Service. Listeners are bound to it and the DNS proxy answers with it, both
//! from the same listener resources, so the two always agree.
//!
//! The address is derived from a hash of the FQDN, so it is the same across restarts and across
//! control planes that see the same services; a collision moves the later arrival to the next
//! free address, and an address stays with its service for as long as the service exists.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

const BLOCK: [u8; 2] = [240, 240];
const BLOCK_SIZE: u32 = 1 << 16;

#[derive(Debug)]
pub struct VipAllocator {
    by_fqdn: BTreeMap<String, Ipv4Addr>,
    taken: HashMap<u16, String>,
    /// How many offsets of the block are used: all of them, except in tests of exhaustion.
    size: u32,
}

impl Default for VipAllocator {
    fn default() -> Self {
        VipAllocator {
            by_fqdn: BTreeMap::new(),
            taken: HashMap::new(),
            size: BLOCK_SIZE,
        }
    }
}

impl VipAllocator {
    /// The service's address, allocating one on first use. `None` only when all 65,024 usable
    /// addresses of the block are taken.
    pub fn assign(&mut self, fqdn: &str) -> Option<Ipv4Addr> {
        if let Some(address) = self.by_fqdn.get(fqdn) {
            return Some(*address);
        }
        let start = (fnv1a(fqdn.as_bytes()) % u64::from(self.size)) as u32;
        let offset = (0..self.size)
            .map(|step| ((start + step) % self.size) as u16)
            .find(|offset| usable(*offset) && !self.taken.contains_key(offset))?;
        let address = Ipv4Addr::new(BLOCK[0], BLOCK[1], (offset >> 8) as u8, offset as u8);
        self.taken.insert(offset, fqdn.to_owned());
        self.by_fqdn.insert(fqdn.to_owned(), address);
        Some(address)
    }

    pub fn release(&mut self, fqdn: &str) {
        if let Some(address) = self.by_fqdn.remove(fqdn) {
            let [_, _, high, low] = address.octets();
            self.taken.remove(&u16::from_be_bytes([high, low]));
        }
    }

    pub fn len(&self) -> usize {
        self.by_fqdn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fqdn.is_empty()
    }
}

/// Network and broadcast-looking addresses (`x.y.z.0`, `x.y.z.255`) confuse some resolvers.
fn usable(offset: u16) -> bool {
    !matches!(offset & 0xff, 0 | 255)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_unique_and_in_the_block() {
        let mut first = VipAllocator::default();
        let mut second = VipAllocator::default();
        let names: Vec<String> = (0..2000)
            .map(|i| format!("svc{i}.ns.svc.cluster.local"))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for name in &names {
            let address = first.assign(name).unwrap();
            assert_eq!(&address.octets()[..2], &BLOCK);
            assert!(!matches!(address.octets()[3], 0 | 255), "{address}");
            assert!(seen.insert(address), "{address} given twice");
            assert_eq!(first.assign(name), Some(address), "not stable");
        }
        // Same arrivals, same addresses: a restarted control plane agrees with itself.
        for name in &names {
            assert_eq!(second.assign(name), first.assign(name));
        }
    }

    #[test]
    fn a_released_address_is_reused_and_others_do_not_move() {
        let mut allocator = VipAllocator::default();
        let a = allocator.assign("a.ns.svc.cluster.local").unwrap();
        let b = allocator.assign("b.ns.svc.cluster.local").unwrap();
        allocator.release("a.ns.svc.cluster.local");
        assert_eq!(allocator.len(), 1);
        assert_eq!(allocator.assign("b.ns.svc.cluster.local"), Some(b));
        assert_eq!(allocator.assign("a.ns.svc.cluster.local"), Some(a));
    }

    #[test]
    fn the_block_runs_out_cleanly() {
        let mut allocator = VipAllocator {
            size: 1024,
            ..VipAllocator::default()
        };
        let usable_count = (0..1024).filter(|o| usable(*o)).count();
        assert_eq!(usable_count, 1024 - 8);
        for i in 0..usable_count {
            assert!(allocator.assign(&format!("s{i}")).is_some());
        }
        assert_eq!(allocator.assign("one-too-many"), None);
    }
}
