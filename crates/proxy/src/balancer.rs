//! Picking an endpoint of a cluster: smooth weighted round robin (Envoy's default, honouring EDS
//! weights), or least request (two random endpoints, the one with fewer active connections).
//! State survives configuration updates that leave a cluster's endpoints unchanged.

use crate::config::{LoadBalancing, UpstreamCluster, UpstreamEndpoint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

struct ClusterState {
    /// The endpoint list the state was built for (replaced lists reset it).
    endpoints: Arc<[UpstreamEndpoint]>,
    /// Smooth round robin's running weights.
    current: Vec<i64>,
    active: Vec<Arc<AtomicUsize>>,
}

impl ClusterState {
    fn new(endpoints: &Arc<[UpstreamEndpoint]>) -> ClusterState {
        ClusterState {
            endpoints: endpoints.clone(),
            current: vec![0; endpoints.len()],
            active: (0..endpoints.len())
                .map(|_| Arc::new(AtomicUsize::new(0)))
                .collect(),
        }
    }

    fn round_robin(&mut self, excluded: &[SocketAddr]) -> Option<usize> {
        let eligible = |i: usize| !excluded.contains(&self.endpoints[i].address);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..self.endpoints.len()).filter(|i| eligible(*i)) {
            let weight = i64::from(self.endpoints[i].weight);
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }

    fn least_request(&self, excluded: &[SocketAddr]) -> Option<usize> {
        let eligible: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !excluded.contains(&self.endpoints[*i].address))
            .collect();
        match eligible.len() {
            0 => None,
            1 => Some(eligible[0]),
            n => {
                let a = eligible[fastrand::usize(..n)];
                let mut b = eligible[fastrand::usize(..n - 1)];
                if b == a {
                    b = eligible[n - 1];
                }
                // Active work relative to weight, so heavier endpoints take more.
                let load = |i: usize| {
                    self.active[i].load(Ordering::Relaxed) as u64 * 1000
                        / u64::from(self.endpoints[i].weight.max(1))
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

/// One endpoint handed out; holds its active-connection count until dropped.
pub struct Pick {
    pub endpoint: UpstreamEndpoint,
    active: Arc<AtomicUsize>,
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Balancer {
    clusters: Mutex<HashMap<Arc<str>, ClusterState>>,
}

impl Balancer {
    /// The next endpoint of `cluster`, skipping `excluded` (endpoints that just failed).
    pub fn pick(&self, cluster: &UpstreamCluster, excluded: &[SocketAddr]) -> Option<Pick> {
        if cluster.endpoints.is_empty() {
            return None;
        }
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let state = clusters
            .entry(cluster.name.clone())
            .or_insert_with(|| ClusterState::new(&cluster.endpoints));
        if !Arc::ptr_eq(&state.endpoints, &cluster.endpoints) {
            *state = ClusterState::new(&cluster.endpoints);
        }
        let index = match cluster.load_balancing {
            LoadBalancing::RoundRobin => state.round_robin(excluded),
            LoadBalancing::LeastRequest => state.least_request(excluded),
        }?;
        let active = state.active[index].clone();
        active.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            endpoint: state.endpoints[index].clone(),
            active,
        })
    }

    /// Forgets clusters that are gone.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.retain(|name, _| exists(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterKind, PortProtocol};
    use std::time::Duration;

    fn cluster(weights: &[u32], load_balancing: LoadBalancing) -> UpstreamCluster {
        let endpoints: Vec<UpstreamEndpoint> = weights
            .iter()
            .enumerate()
            .map(|(i, weight)| UpstreamEndpoint {
                address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 5000)),
                weight: *weight,
                mtls: true,
                via_gateway: false,
                cluster: "c".into(),
                network: "n".into(),
                identity: None,
                workload: None,
            })
            .collect();
        UpstreamCluster {
            name: "outbound|5000||a".into(),
            kind: ClusterKind::Eds,
            load_balancing,
            connect_timeout: Duration::from_secs(1),
            tls: None,
            service: None,
            protocol: PortProtocol::Unknown,
            endpoints: endpoints.into(),
            dns: None,
        }
    }

    fn last_octets(picks: &[Pick]) -> Vec<u8> {
        picks
            .iter()
            .map(|p| match p.endpoint.address.ip() {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn round_robin_alternates_and_honours_weights_smoothly() {
        let balancer = Balancer::default();
        let even = cluster(&[1, 1], LoadBalancing::RoundRobin);
        let picks: Vec<Pick> = (0..4).map(|_| balancer.pick(&even, &[]).unwrap()).collect();
        assert_eq!(last_octets(&picks), [1, 2, 1, 2]);

        let weighted = Balancer::default();
        let skewed = cluster(&[3, 1], LoadBalancing::RoundRobin);
        let picks: Vec<Pick> = (0..8)
            .map(|_| weighted.pick(&skewed, &[]).unwrap())
            .collect();
        assert_eq!(
            last_octets(&picks),
            [1, 1, 2, 1, 1, 1, 2, 1],
            "3:1, interleaved"
        );
    }

    #[test]
    fn excluded_endpoints_are_skipped_and_an_empty_cluster_has_no_pick() {
        let balancer = Balancer::default();
        let two = cluster(&[1, 1], LoadBalancing::RoundRobin);
        let failed = [SocketAddr::from(([10, 0, 0, 1], 5000))];
        for _ in 0..3 {
            assert_eq!(last_octets(&[balancer.pick(&two, &failed).unwrap()]), [2]);
        }
        let all = [failed[0], SocketAddr::from(([10, 0, 0, 2], 5000))];
        assert!(balancer.pick(&two, &all).is_none());
        assert!(
            balancer
                .pick(&cluster(&[], LoadBalancing::RoundRobin), &[])
                .is_none()
        );
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let balancer = Balancer::default();
        let two = cluster(&[1, 1], LoadBalancing::LeastRequest);
        let busy: Vec<Pick> = (0..5)
            .map(|_| {
                balancer
                    .pick(&two, &[SocketAddr::from(([10, 0, 0, 2], 5000))])
                    .unwrap()
            })
            .collect();
        assert_eq!(last_octets(&busy), [1; 5]);
        for _ in 0..20 {
            let pick = balancer.pick(&two, &[]).unwrap();
            assert_eq!(
                last_octets(&[pick]),
                [2],
                "endpoint 1 holds five connections"
            );
        }
        drop(busy);
        let octets: std::collections::BTreeSet<u8> = (0..50)
            .map(|_| last_octets(&[balancer.pick(&two, &[]).unwrap()])[0])
            .collect();
        assert_eq!(octets.len(), 2, "idle endpoints share the load");
    }

    #[test]
    fn new_endpoint_lists_reset_the_state() {
        let balancer = Balancer::default();
        let first = cluster(&[1, 1], LoadBalancing::RoundRobin);
        assert_eq!(last_octets(&[balancer.pick(&first, &[]).unwrap()]), [1]);
        let replaced = cluster(&[1, 1, 1], LoadBalancing::RoundRobin);
        assert_eq!(last_octets(&[balancer.pick(&replaced, &[]).unwrap()]), [1]);
    }
}
