//! What a stream was last sent of one type: name to version, sorted by name (24 bytes a name; a
//! hash map takes about twice that), and shared by the streams that were sent the same.

use super::interner::Name;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};

type Table = Vec<(Name, u64)>;

/// Name to the version last sent, sorted by name. Streams that were sent the same hold one
/// table: a push takes every stream subscribed to a cluster from one table to the next, and
/// [`SharedTables`] makes that one copy, not one per stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SentVersions(Arc<Table>);

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

    /// Records `entries` as sent (the newest version of a repeated name wins), taking the table
    /// another stream reached from the same one with the same entries when there is one.
    pub fn insert_all(
        &mut self,
        entries: impl IntoIterator<Item = (Name, u64)>,
        tables: &SharedTables,
    ) {
        let entries: Table = entries.into_iter().collect();
        if entries.is_empty() {
            return;
        }
        let key = transition_key(&self.0, &entries);
        if let Some(reached) = tables.reached(key, &self.0, &entries) {
            self.0 = reached;
            return;
        }
        let mut table = (*self.0).clone();
        insert_into(&mut table, entries.iter().cloned());
        let table = Arc::new(table);
        tables.record(key, &self.0, entries, &table);
        self.0 = table;
    }

    // Tables are never changed in place, even when this stream holds the only reference: a
    // transition recorded from or to a table names it by its allocation, and must keep meaning
    // the same entries.

    pub fn remove(&mut self, name: &str) {
        if let Ok(at) = self.position(name) {
            let mut table = (*self.0).clone();
            table.remove(at);
            self.0 = Arc::new(table);
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        if self.0.iter().all(|(name, _)| keep(name)) {
            return;
        }
        let table: Table = self
            .0
            .iter()
            .filter(|(name, _)| keep(name))
            .cloned()
            .collect();
        self.0 = Arc::new(table);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Name, u64)> {
        self.0.iter().map(|(name, version)| (name, *version))
    }
}

/// Many insertions at once: one sort instead of a shift per name (a few go in one by one).
fn insert_into(table: &mut Table, entries: impl ExactSizeIterator<Item = (Name, u64)>) {
    if entries.len() <= 8 {
        for (name, version) in entries {
            match table.binary_search_by(|(held, _)| held.cmp(&name)) {
                Ok(at) => table[at].1 = version,
                Err(at) => table.insert(at, (name, version)),
            }
        }
        return;
    }
    table.extend(entries);
    // Stable: for a repeated name, the newest entry comes last, and wins below.
    table.sort_by(|a, b| a.0.cmp(&b.0));
    table.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = later.1;
        }
        same
    });
    // A full-state response appends as many entries as are held; do not keep that room.
    if table.capacity() > table.len() + table.len() / 4 + 16 {
        table.shrink_to_fit();
    }
}

/// Identifies a table by its allocation (every empty table is one), and entries by their names'
/// allocations (interned) and versions.
fn transition_key(from: &Arc<Table>, entries: &Table) -> u64 {
    let mut hasher = foldhash::fast::FixedState::default().build_hasher();
    hasher.write_usize(table_id(from));
    for (name, version) in entries {
        hasher.write_usize(Arc::as_ptr(name).cast::<u8>() as usize);
        hasher.write_u64(*version);
    }
    hasher.finish()
}

fn table_id(table: &Arc<Table>) -> usize {
    if table.is_empty() {
        0
    } else {
        Arc::as_ptr(table) as usize
    }
}

fn same_entries(a: &Table, b: &Table) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| Arc::ptr_eq(&x.0, &y.0) && x.1 == y.1)
}

/// Entries below this are never swept.
const SWEEP_FLOOR: usize = 1024;

/// The tables streams went to from a table with some entries, while some stream holds them.
#[derive(Default)]
pub struct SharedTables {
    inner: Mutex<TablesState>,
}

#[derive(Default)]
struct TablesState {
    transitions: HashMap<u64, Vec<Transition>>,
    sweep_at: usize,
}

struct Transition {
    /// `None` for the empty table. A `Weak` keeps its allocation's address from being reused, so
    /// an address match is the same table.
    from: Option<Weak<Table>>,
    entries: Table,
    to: Weak<Table>,
}

impl Transition {
    fn starts_at(&self, table: &Arc<Table>) -> bool {
        match &self.from {
            None => table.is_empty(),
            Some(from) => std::ptr::eq(from.as_ptr(), Arc::as_ptr(table)),
        }
    }

    fn alive(&self) -> bool {
        self.to.strong_count() > 0
            && self
                .from
                .as_ref()
                .is_none_or(|from| from.strong_count() > 0)
    }
}

impl SharedTables {
    fn reached(&self, key: u64, from: &Arc<Table>, entries: &Table) -> Option<Arc<Table>> {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.transitions.get(&key)?.iter().find_map(|transition| {
            (transition.starts_at(from) && same_entries(&transition.entries, entries))
                .then(|| transition.to.upgrade())
                .flatten()
        })
    }

    /// Sweeps transitions whose tables no stream holds whenever the map has doubled since the
    /// last sweep.
    fn record(&self, key: u64, from: &Arc<Table>, entries: Table, to: &Arc<Table>) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if state.transitions.len() >= state.sweep_at.max(SWEEP_FLOOR) {
            state.transitions.retain(|_, transitions| {
                transitions.retain(Transition::alive);
                !transitions.is_empty()
            });
            state.sweep_at = state.transitions.len() * 2;
        }
        let from = (!from.is_empty()).then(|| Arc::downgrade(from));
        state.transitions.entry(key).or_default().push(Transition {
            from,
            entries,
            to: Arc::downgrade(to),
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transitions
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        text.into()
    }

    #[test]
    fn sent_versions_stay_sorted_and_the_newest_version_wins() {
        let tables = SharedTables::default();
        let mut sent = SentVersions::default();
        sent.insert_all([(name("b"), 1)], &tables);
        sent.insert_all([(name("a"), 2)], &tables);
        sent.insert_all(
            [
                (name("c"), 3),
                (name("a"), 4),
                (name("b"), 5),
                (name("b"), 6),
            ],
            &tables,
        );
        let many: Vec<(Name, u64)> = (0..20).map(|i| (name(&format!("m{i:02}")), i)).collect();
        sent.insert_all(many.iter().cloned().chain([(name("m00"), 99)]), &tables);
        sent.retain(|n| !n.starts_with('m'));
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
    fn streams_sent_the_same_hold_one_table_until_one_of_them_differs() {
        let tables = SharedTables::default();
        let (a, b, c) = (name("a"), name("b"), name("c"));
        let initial = [(a.clone(), 1), (b.clone(), 1)];
        let mut streams = vec![SentVersions::default(); 3];
        for sent in &mut streams {
            sent.insert_all(initial.iter().cloned(), &tables);
        }
        assert!(Arc::ptr_eq(&streams[0].0, &streams[1].0));
        assert!(Arc::ptr_eq(&streams[0].0, &streams[2].0));

        // A push of a's new version to two of them: they move together, the third stays.
        let before = streams[2].clone();
        for sent in &mut streams[..2] {
            sent.insert_all([(a.clone(), 2)], &tables);
        }
        assert!(Arc::ptr_eq(&streams[0].0, &streams[1].0));
        assert_eq!(streams[0].get("a"), Some(2));
        assert_eq!(streams[2], before, "the third is untouched");
        assert_eq!(streams[2].get("a"), Some(1));

        // The same names with another version, or another name, are other transitions.
        streams[2].insert_all([(a.clone(), 3)], &tables);
        assert_eq!(streams[2].get("a"), Some(3));
        assert!(!Arc::ptr_eq(&streams[0].0, &streams[2].0));
        streams[1].insert_all([(c.clone(), 1)], &tables);
        assert_eq!(streams[0].get("c"), None);
        assert_eq!(streams[1].get("c"), Some(1));

        // A table another stream reached is never changed under it, even by its only holder.
        let mut alone = SentVersions::default();
        alone.insert_all([(b.clone(), 7)], &tables);
        let mut follower = SentVersions::default();
        alone.remove("b");
        follower.insert_all([(b.clone(), 7)], &tables);
        assert_eq!(
            follower.get("b"),
            Some(7),
            "the transition still leads to b=7"
        );

        // Removing copies on write: the others keep their entry.
        let mut removing = streams[0].clone();
        removing.remove("a");
        assert_eq!(streams[0].get("a"), Some(2));
        assert_eq!(removing.get("a"), None);
        let mut kept = streams[0].clone();
        kept.retain(|_| true);
        assert!(
            Arc::ptr_eq(&kept.0, &streams[0].0),
            "retaining all copies nothing"
        );
    }

    #[test]
    fn transitions_no_stream_holds_are_swept() {
        let tables = SharedTables::default();
        let held: Vec<SentVersions> = (0..4)
            .map(|i| {
                let mut sent = SentVersions::default();
                sent.insert_all([(name(&format!("held-{i}")), 1)], &tables);
                sent
            })
            .collect();
        for i in 0..SWEEP_FLOOR * 3 {
            let mut sent = SentVersions::default();
            sent.insert_all([(name(&format!("transient-{i}")), 1)], &tables);
        }
        assert!(
            tables.len() < SWEEP_FLOOR * 2,
            "unheld transitions are swept: {} left",
            tables.len()
        );
        assert!(held.iter().all(|sent| sent.iter().count() == 1));
    }
}
