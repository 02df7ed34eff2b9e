//! What one stream asked for of one type, and what it was sent: kept small, because a thousand
//! streams each subscribed to a thousand names is the server's largest state.
//!
//! - Names and name sets are interned ([`super::interner`]).
//! - Versions sent are a sorted vector ([`super::sent_versions`]).
//! - There is no per-stream index from service to names: the names a service's change touches
//!   are derived from its ports (see `names_of_services`).

pub use super::interner::{Name, NameSet};
use super::sent_versions::SentVersions;
use crate::resources::{outbound_cluster, parse_service_name, sni_cluster};
use causeway_model::MeshSnapshot;
use std::collections::BTreeSet;

#[derive(Default)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: NameSet,
    /// Subscribed names of a service in a form `names_of_services` does not derive (a subset,
    /// say): looked at on every change of their service.
    pub irregular: Vec<Name>,
    /// A hash of the last SotW name list: Envoy repeats its whole list (a thousand EDS names) in
    /// every ACK, and an unchanged list should cost one hash, not a rebuilt set.
    pub last_names_hash: Option<u64>,
    pub sent: SentVersions,
    pub nonce: Option<String>,
    pub answered: bool,
}

impl Subscription {
    /// Call after `names` changed.
    pub fn reindex(&mut self) {
        self.irregular = self
            .names
            .iter()
            .filter(|name| parse_service_name(name).is_some() && !is_canonical(name))
            .cloned()
            .collect();
    }

    /// The subscribed names that belong to the services `fqdns`: their cluster names for every
    /// port the service has in `before` or `after`, plus irregular names of those services.
    pub fn names_of_services<'a>(
        &self,
        fqdns: impl IntoIterator<Item = &'a String>,
        before: &MeshSnapshot,
        after: &MeshSnapshot,
    ) -> BTreeSet<Name> {
        let mut found = BTreeSet::new();
        for fqdn in fqdns {
            // Usually the same ports before and after: look each up once.
            let mut ports: Vec<u16> = [before, after]
                .into_iter()
                .filter_map(|snapshot| snapshot.services.get(fqdn))
                .flat_map(|service| service.ports.iter().map(|port| port.port))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            for port in ports {
                for candidate in [outbound_cluster(port, fqdn), sni_cluster(port, fqdn)] {
                    if let Some(name) = self.names.get(candidate.as_str()) {
                        found.insert(name.clone());
                    }
                }
            }
            found.extend(
                self.irregular
                    .iter()
                    .filter(|name| parse_service_name(name).is_some_and(|(_, of)| of == fqdn))
                    .cloned(),
            );
        }
        found
    }
}

/// Whether `name` is exactly `outbound|<port>||<fqdn>` or `outbound_.<port>_._.<fqdn>` with the
/// port written plainly: the two forms `names_of_services` derives.
fn is_canonical(name: &str) -> bool {
    let plain_port = |port: &str| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (port == "0" || !port.starts_with('0'))
            && port.parse::<u16>().is_ok()
    };
    if let Some(rest) = name.strip_prefix("outbound|") {
        return rest
            .split_once("||")
            .is_some_and(|(port, fqdn)| plain_port(port) && !fqdn.contains('|'));
    }
    if let Some(rest) = name.strip_prefix("outbound_.") {
        return rest
            .split_once("_._.")
            .is_some_and(|(port, _)| plain_port(port));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn name(text: &str) -> Name {
        text.into()
    }

    #[test]
    fn canonical_names_are_the_derived_forms() {
        let fqdn = "a.b.svc.cluster.local";
        assert!(is_canonical(&outbound_cluster(8080, fqdn)));
        assert!(is_canonical(&sni_cluster(8080, fqdn)));
        assert!(!is_canonical("outbound|8080|v1|a.b.svc.cluster.local"));
        assert!(!is_canonical("outbound|08080||a.b.svc.cluster.local"));
        assert!(!is_canonical("outbound_.8080_.v1_.a.b.svc.cluster.local"));
    }

    #[test]
    fn a_change_finds_its_services_names_including_irregular_ones() {
        use causeway_model::{Protocol, Service, ServicePort};
        let fqdn = "a.b.svc.cluster.local";
        let service = Service {
            fqdn: fqdn.into(),
            name: "a".into(),
            namespace: "b".into(),
            clusters: Default::default(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http,
            }],
            auto_vip: std::net::Ipv4Addr::UNSPECIFIED,
            defined_by: causeway_model::DefinedBy::Kubernetes,
            dns_endpoints: Vec::new(),
            exported_to: None,
            passthrough: false,
        };
        let mut snapshot = MeshSnapshot::default();
        snapshot.services.insert(fqdn.into(), Arc::new(service));
        let mut subscription = Subscription::default();
        for text in [
            "outbound|8080||a.b.svc.cluster.local",
            "outbound|8080|v1|a.b.svc.cluster.local",
            "outbound|9090||a.b.svc.cluster.local",
            "outbound|8080||other.b.svc.cluster.local",
        ] {
            Arc::make_mut(&mut subscription.names).insert(name(text));
        }
        subscription.reindex();
        let found =
            subscription.names_of_services([&fqdn.to_owned()], &MeshSnapshot::default(), &snapshot);
        let found: Vec<&str> = found.iter().map(|n| &**n).collect();
        // 9090 is not a port of the service in either snapshot: its assignment cannot change.
        assert_eq!(
            found,
            [
                "outbound|8080|v1|a.b.svc.cluster.local",
                "outbound|8080||a.b.svc.cluster.local"
            ]
        );
    }
}
