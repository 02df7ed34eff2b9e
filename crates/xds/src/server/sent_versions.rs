//! What a stream was last sent of one type: name to version, sorted by name (24 bytes a name; a
//! hash map takes about twice that).

use super::interner::Name;

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
}
