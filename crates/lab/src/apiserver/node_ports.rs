//! NodePort allocation, as kube-apiserver's: every port of a `NodePort` or `LoadBalancer`
//! Service gets a port of the node from 30000-32767 (or the one it asks for, when free), kept
//! while the Service keeps the port, given back when it goes.

use std::collections::HashSet;

use kube::core::DynamicObject;

use super::status::Cause;

pub const FIRST: u16 = 30000;
pub const LAST: u16 = 32767;

pub struct NodePorts {
    used: HashSet<u16>,
    next: u16,
}

impl Default for NodePorts {
    fn default() -> Self {
        Self {
            used: HashSet::new(),
            next: FIRST,
        }
    }
}

impl NodePorts {
    pub fn mark_used(&mut self, port: u16) {
        self.used.insert(port);
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    /// Reserves `requested` (for the port at `field`), or the next free port.
    pub fn allocate(&mut self, requested: Option<u16>, field: &str) -> Result<u16, Cause> {
        if let Some(port) = requested {
            if !(FIRST..=LAST).contains(&port) {
                return Err(Cause::new(
                    field,
                    format!(
                        "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {FIRST}-{LAST}"
                    ),
                ));
            }
            if !self.used.insert(port) {
                return Err(Cause::new(
                    field,
                    format!("Invalid value: {port}: provided port is already allocated"),
                ));
            }
            return Ok(port);
        }
        let span = u32::from(LAST - FIRST) + 1;
        for step in 0..span {
            let offset = (u32::from(self.next - FIRST) + step) % span;
            let port = FIRST + u16::try_from(offset).expect("within the range");
            if self.used.insert(port) {
                self.next = if port == LAST { FIRST } else { port + 1 };
                return Ok(port);
            }
        }
        Err(Cause::new(field, "Internal error: no free node ports left"))
    }
}

/// Whether a Service's ports get node ports.
pub fn wants_node_ports(service: &DynamicObject) -> bool {
    let spec = &service.data["spec"];
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false),
        _ => false,
    }
}

/// The node ports a Service holds.
pub fn node_ports_of(service: &DynamicObject) -> Vec<u16> {
    service.data["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|port| port["nodePort"].as_u64())
        .filter_map(|port| u16::try_from(port).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_range_once_each() {
        let mut ports = NodePorts::default();
        assert_eq!(ports.allocate(None, "p").unwrap(), 30000);
        assert_eq!(ports.allocate(Some(30001), "p").unwrap(), 30001);
        assert_eq!(ports.allocate(None, "p").unwrap(), 30002);
        assert!(
            ports
                .allocate(Some(30001), "p")
                .unwrap_err()
                .message
                .contains("already allocated")
        );
        assert!(
            ports
                .allocate(Some(80), "p")
                .unwrap_err()
                .message
                .contains("valid range")
        );
        ports.release(30001);
        assert_eq!(ports.allocate(Some(30001), "p").unwrap(), 30001);
    }
}
