//! What one stream asked for of one type, and what it was sent: kept small, because a thousand
//! streams each subscribed to a thousand names is the server's largest state.
//!
//! - Names are interned: every stream that names `outbound|8080||a.b.svc.cluster.local` shares
//!   one allocation.
//! - So are whole name sets: the sidecars of one mesh name the same thousand EDS clusters, and
//!   hold one set between them (copied on write when one of them changes its list).
//! - Versions sent are a sorted vector (24 bytes a name; a hash map takes about twice that).
//! - There is no per-stream index from service to names: the names a service's change touches
//!   are derived from its ports (see `names_of_services`).

use crate::resources::{outbound_cluster, parse_service_name, sni_cluster};
use causeway_model::MeshSnapshot;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};

pub type Name = Arc<str>;
/// A subscription's names, shared by the streams that ask for the same ones.
pub type NameSet = Arc<BTreeSet<Name>>;

/// Shares one allocation per distinct name across streams. Names no stream holds any more are
/// dropped whenever the set has doubled since the last sweep.
#[derive(Default)]
pub struct Interner {
    inner: Mutex<InternerState>,
}

#[derive(Default)]
struct InternerState {
    names: HashSet<Name>,
    sweep_at: usize,
    /// Name sets by a hash of their names' addresses (interned, so equal names are one
    /// allocation), with the sets' own sweep mark.
    sets: HashMap<u64, Vec<Weak<BTreeSet<Name>>>>,
    sets_sweep_at: usize,
}

/// Interned names compare by address: the set's identity is the sequence of its names'
/// allocations, and hashing those is a few nanoseconds a name instead of hashing the text.
fn set_hash(names: &BTreeSet<Name>) -> u64 {
    let mut hasher = foldhash::fast::FixedState::default().build_hasher();
    hasher.write_usize(names.len());
    for name in names {
        hasher.write_usize(Arc::as_ptr(name).cast::<u8>() as usize);
    }
    hasher.finish()
}

fn same_names(a: &BTreeSet<Name>, b: &BTreeSet<Name>) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Entries below this are never swept.
const SWEEP_FLOOR: usize = 1024;

impl Interner {
    pub fn intern(&self, name: &str) -> Name {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = state.names.get(name) {
            return existing.clone();
        }
        if state.names.len() >= state.sweep_at.max(SWEEP_FLOOR) {
            state.names.retain(|name| Arc::strong_count(name) > 1);
            state.sweep_at = state.names.len() * 2;
        }
        let name: Name = name.into();
        state.names.insert(name.clone());
        name
    }

    /// The shared copy of `names`: an equal set that a stream holds already, else `names` itself,
    /// kept for the next stream that asks for the same. Sets no stream holds are dropped
    /// whenever the table has doubled since the last sweep.
    pub fn share(&self, names: BTreeSet<Name>) -> NameSet {
        if names.is_empty() {
            return NameSet::default();
        }
        let hash = set_hash(&names);
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = state.sets.get(&hash).and_then(|candidates| {
            candidates
                .iter()
                .filter_map(Weak::upgrade)
                .find(|held| same_names(held, &names))
        }) {
            return existing;
        }
        if state.sets.len() >= state.sets_sweep_at.max(SWEEP_FLOOR) {
            state.sets.retain(|_, candidates| {
                candidates.retain(|held| held.strong_count() > 0);
                !candidates.is_empty()
            });
            state.sets_sweep_at = state.sets.len() * 2;
        }
        let shared = Arc::new(names);
        state
            .sets
            .entry(hash)
            .or_default()
            .push(Arc::downgrade(&shared));
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .names
            .len()
    }
}

/// Name to the version last sent, sorted by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SentVersions(Vec<(Name, u64)>);

impl SentVersions {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| (**held).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.position(name).ok().map(|at| self.0[at].1)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Many insertions at once: one sort instead of a shift per name (a few go in one by one).
    pub fn insert_all(&mut self, entries: impl IntoIterator<Item = (Name, u64)>) {
        let entries = entries.into_iter();
        if entries.size_hint().1.is_some_and(|most| most <= 8) {
            for (name, version) in entries {
                match self.position(&name) {
                    Ok(at) => self.0[at].1 = version,
                    Err(at) => self.0.insert(at, (name, version)),
                }
            }
            return;
        }
        self.0.extend(entries);
        // Stable: for a repeated name, the newest entry comes last, and wins below.
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        self.0.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        // A full-state response appends as many entries as are held; do not keep that room.
        if self.0.capacity() > self.0.len() + self.0.len() / 4 + 16 {
            self.0.shrink_to_fit();
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(at) = self.position(name) {
            self.0.remove(at);
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(name, _)| keep(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Name, u64)> {
        self.0.iter().map(|(name, version)| (name, *version))
    }
}

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

    fn name(text: &str) -> Name {
        text.into()
    }

    #[test]
    fn sent_versions_stay_sorted_and_the_newest_version_wins() {
        let mut sent = SentVersions::default();
        sent.insert_all([(name("b"), 1)]);
        sent.insert_all([(name("a"), 2)]);
        sent.insert_all([
            (name("c"), 3),
            (name("a"), 4),
            (name("b"), 5),
            (name("b"), 6),
        ]);
        let held: Vec<(&str, u64)> = sent.iter().map(|(n, v)| (&**n, v)).collect();
        assert_eq!(held, [("a", 4), ("b", 6), ("c", 3)]);
        assert_eq!(sent.get("b"), Some(6));
        assert_eq!(sent.get("d"), None);
        sent.remove("b");
        sent.retain(|n| n != "c");
        assert_eq!(sent.iter().count(), 1);
        assert!(sent.contains("a") && !sent.contains("c"));
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

    #[test]
    fn equal_name_sets_are_one_set_and_unheld_sets_are_swept() {
        let interner = Interner::default();
        let set = |names: &[&str]| -> BTreeSet<Name> {
            names.iter().map(|name| interner.intern(name)).collect()
        };
        let first = interner.share(set(&["outbound|80||a", "outbound|80||b"]));
        let second = interner.share(set(&["outbound|80||b", "outbound|80||a"]));
        assert!(Arc::ptr_eq(&first, &second), "the same names, one set");
        let other = interner.share(set(&["outbound|80||a"]));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.len(), 1);
        assert!(
            interner.share(BTreeSet::new()).is_empty(),
            "an empty set is not kept"
        );

        // A copy changed on write is a set of its own until shared again.
        let mut changed = second.clone();
        Arc::make_mut(&mut changed).insert(interner.intern("outbound|80||c"));
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(first.len(), 2, "the shared set is untouched");

        for i in 0..SWEEP_FLOOR * 3 {
            drop(interner.share(set(&[&format!("transient-{i}")])));
        }
        let sets = interner.inner.lock().unwrap().sets.len();
        assert!(sets < SWEEP_FLOOR * 2, "unheld sets are swept: {sets} left");
        assert!(
            Arc::ptr_eq(
                &first,
                &interner.share(set(&["outbound|80||a", "outbound|80||b"]))
            ),
            "held sets survive"
        );
    }

    #[test]
    fn the_interner_shares_names_and_sweeps_unheld_ones() {
        let interner = Interner::default();
        let a = interner.intern("outbound|80||a");
        let again = interner.intern("outbound|80||a");
        assert!(Arc::ptr_eq(&a, &again));
        for i in 0..SWEEP_FLOOR * 3 {
            interner.intern(&format!("transient-{i}"));
        }
        assert!(
            interner.len() < SWEEP_FLOOR * 2,
            "unheld names are swept: {} left",
            interner.len()
        );
        assert!(
            Arc::ptr_eq(&a, &interner.intern("outbound|80||a")),
            "held names survive"
        );
    }
}
