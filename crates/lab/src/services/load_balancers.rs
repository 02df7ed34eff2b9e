//! LoadBalancer addresses, as metallb's controller gives them out in layer 2 mode: from the
//! `IPAddressPool`s applied to the cluster (`172.18.11.0-172.18.11.255` or a CIDR), the address
//! a Service asks for (`spec.loadBalancerIP`, metallb's `loadBalancerIPs` annotation) or the
//! lowest free one, kept while it stays valid. The lab adds one rule: a pool must lie on the lab
//! network, where every cluster's nodes can reach it. Decisions only; see [`super`] for writes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// One pool: its name (`namespace/name`) and address ranges, inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub auto_assign: bool,
    /// Skip `.0` and `.255` addresses.
    pub avoid_buggy_ips: bool,
}

/// Parses a pool's `spec.addresses` entries: `first-last` ranges or CIDRs.
pub fn parse_ranges(entries: &[String]) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            if let Some((first, last)) = entry.split_once('-') {
                let parse = |text: &str| {
                    text.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| format!("{entry:?} is not an IPv4 range (first-last)"))
                };
                let (first, last) = (parse(first)?, parse(last)?);
                if first > last {
                    return Err(format!("{entry:?} ends before it starts"));
                }
                Ok((first, last))
            } else {
                let net: Ipv4Net = entry
                    .parse()
                    .map_err(|_| format!("{entry:?} is neither a CIDR nor a first-last range"))?;
                Ok((net.network(), net.broadcast()))
            }
        })
        .collect()
}

/// Why a pool cannot be used in the lab, if it cannot.
pub fn pool_problem(pool: &Pool, lab: Ipv4Net) -> Option<String> {
    pool.ranges
        .iter()
        .find(|(first, last)| !lab.contains(first) || !lab.contains(last))
        .map(|(first, last)| {
            format!(
                "the range {first}-{last} of IPAddressPool {} is outside the lab network {lab}; LoadBalancer addresses must be on it to be reachable from every cluster",
                pool.name
            )
        })
}

fn in_pool(pool: &Pool, address: Ipv4Addr) -> bool {
    let buggy = pool.avoid_buggy_ips && matches!(address.octets()[3], 0 | 255);
    !buggy
        && pool
            .ranges
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&address))
}

/// What a LoadBalancer Service asks for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `namespace/name`.
    pub service: String,
    /// The address it has now.
    pub current: Option<Ipv4Addr>,
    /// The address it asks for.
    pub wanted: Option<Ipv4Addr>,
    /// The pool it asks for.
    pub pool: Option<String>,
}

/// Gives each request an address, or says why it has none. Requests keep a valid current
/// address first; then, in order, the others get theirs.
pub fn assign(requests: &[Request], pools: &[Pool]) -> BTreeMap<String, Result<Ipv4Addr, String>> {
    let mut taken: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut results = BTreeMap::new();
    let allowed = |request: &Request, pool: &Pool| {
        request
            .pool
            .as_deref()
            .is_none_or(|wanted| pool.name == wanted || pool.name.ends_with(&format!("/{wanted}")))
    };
    for request in requests {
        let Some(current) = request.current else {
            continue;
        };
        let valid = request.wanted.is_none_or(|wanted| wanted == current)
            && pools
                .iter()
                .any(|pool| allowed(request, pool) && in_pool(pool, current))
            && !taken.contains_key(&current);
        if valid {
            taken.insert(current, request.service.clone());
            results.insert(request.service.clone(), Ok(current));
        }
    }
    for request in requests {
        if results.contains_key(&request.service) {
            continue;
        }
        let result = if let Some(wanted) = request.wanted {
            if let Some(holder) = taken.get(&wanted) {
                Err(format!("{wanted} is already in use by {holder}"))
            } else if pools
                .iter()
                .any(|pool| allowed(request, pool) && in_pool(pool, wanted))
            {
                Ok(wanted)
            } else {
                Err(format!("{wanted} is not allowed in config"))
            }
        } else {
            pools
                .iter()
                .filter(|pool| {
                    allowed(request, pool) && (pool.auto_assign || request.pool.is_some())
                })
                .find_map(|pool| {
                    pool.ranges.iter().find_map(|(first, last)| {
                        (u32::from(*first)..=u32::from(*last))
                            .map(Ipv4Addr::from)
                            .find(|address| in_pool(pool, *address) && !taken.contains_key(address))
                    })
                })
                .ok_or_else(|| "no available IPs".to_owned())
        };
        if let Ok(address) = &result {
            taken.insert(*address, request.service.clone());
        }
        results.insert(request.service.clone(), result);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, addresses: &[&str]) -> Pool {
        let entries: Vec<String> = addresses.iter().map(|entry| (*entry).to_owned()).collect();
        Pool {
            name: name.into(),
            ranges: parse_ranges(&entries).unwrap(),
            auto_assign: true,
            avoid_buggy_ips: false,
        }
    }

    fn request(service: &str, current: Option<[u8; 4]>, wanted: Option<[u8; 4]>) -> Request {
        Request {
            service: service.into(),
            current: current.map(Ipv4Addr::from),
            wanted: wanted.map(Ipv4Addr::from),
            pool: None,
        }
    }

    #[test]
    fn the_seeds_pools_parse_and_must_be_on_the_lab_network() {
        let seed = pool(
            "metallb-system/custom-172.168.11.0-255",
            &["172.18.11.0-172.18.11.255"],
        );
        assert_eq!(
            seed.ranges,
            [(
                Ipv4Addr::new(172, 18, 11, 0),
                Ipv4Addr::new(172, 18, 11, 255)
            )]
        );
        let lab: Ipv4Net = "172.18.0.0/16".parse().unwrap();
        assert_eq!(pool_problem(&seed, lab), None);
        let elsewhere = pool("metallb-system/home", &["192.168.1.0/24"]);
        assert!(
            pool_problem(&elsewhere, lab)
                .unwrap()
                .contains("outside the lab network 172.18.0.0/16")
        );
        assert!(parse_ranges(&["10.0.0.9-10.0.0.1".to_owned()]).is_err());
        assert!(parse_ranges(&["banana".to_owned()]).is_err());
    }

    #[test]
    fn addresses_are_kept_asked_for_or_the_lowest_free() {
        let pools = [pool("metallb-system/a", &["172.18.11.0-172.18.11.2"])];
        let results = assign(
            &[
                request("istio-system/new", None, None),
                request("istio-system/old", Some([172, 18, 11, 0]), None),
                request("sample/asks", None, Some([172, 18, 11, 2])),
                request("sample/greedy", None, Some([172, 18, 11, 0])),
                request("sample/outside", None, Some([10, 0, 0, 1])),
                request("sample/late", None, None),
            ],
            &pools,
        );
        assert_eq!(
            results["istio-system/old"],
            Ok(Ipv4Addr::new(172, 18, 11, 0))
        );
        assert_eq!(
            results["istio-system/new"],
            Ok(Ipv4Addr::new(172, 18, 11, 1))
        );
        assert_eq!(results["sample/asks"], Ok(Ipv4Addr::new(172, 18, 11, 2)));
        assert_eq!(
            results["sample/greedy"],
            Err("172.18.11.0 is already in use by istio-system/old".into())
        );
        assert_eq!(
            results["sample/outside"],
            Err("10.0.0.1 is not allowed in config".into())
        );
        assert_eq!(results["sample/late"], Err("no available IPs".into()));
    }

    #[test]
    fn buggy_addresses_can_be_avoided() {
        let mut careful = pool("metallb-system/c", &["172.18.12.0/24"]);
        careful.avoid_buggy_ips = true;
        let results = assign(&[request("a/b", None, None)], &[careful]);
        assert_eq!(results["a/b"], Ok(Ipv4Addr::new(172, 18, 12, 1)));
    }
}
