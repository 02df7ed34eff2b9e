//! One allocation per distinct name, and one per distinct set of names, shared by every stream:
//! a thousand streams subscribed to a thousand names is the server's largest state.
//!
//! - Every stream that names `outbound|8080||a.b.svc.cluster.local` shares one allocation.
//! - The sidecars of one mesh name the same thousand EDS clusters, and hold one set between
//!   them (copied on write when one of them changes its list).

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

#[cfg(test)]
mod tests {
    use super::*;

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
