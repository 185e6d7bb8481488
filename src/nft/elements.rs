//! Copy-on-write collections for table models: [`Objects`] (named objects shared
//! between versions) and [`Elements`] (a set's elements, sharded by address so one
//! change copies and diffs one shard).

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut, Index};
use std::sync::Arc;

/// Objects of one kind by name, shared between rulesets until one of them changes:
/// any mutable access copies the map first (not the objects) if another ruleset
/// holds it too, so two versions that share it are known equal without a look.
#[derive(Debug, PartialEq, Eq)]
pub struct Objects<T>(Arc<BTreeMap<String, Arc<T>>>);

impl<T> Objects<T> {
    /// Whether both are the very same map (so they are equal).
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Clone for Objects<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<'a, T> IntoIterator for &'a Objects<T> {
    type Item = (&'a String, &'a Arc<T>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Arc<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> Deref for Objects<T> {
    type Target = BTreeMap<String, Arc<T>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> DerefMut for Objects<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        Arc::make_mut(&mut self.0)
    }
}

/// The elements of one set or map: key → value (empty for plain sets), in nft syntax.
///
/// A set of more than [`SMALL`] elements is held in [`SHARDS`] shards picked by a hash
/// of the element's address (the key up to ` . `, so every element of one pod
/// address shares a shard), each shared (`Arc`) between the rulesets that have it
/// unchanged. So keeping the previous ruleset, changing one pod's elements and
/// finding what changed between two versions cost one shard each (about 80 elements
/// in a map of 5,000 pods), not the whole set. A smaller set is one shard.
#[derive(Clone, Debug, Default)]
pub struct Elements {
    /// None, one (at most [`SMALL`] elements when built), [`SHARDS`] or (more than
    /// [`LARGE`] elements) [`SHARDS_LARGE`].
    shards: Vec<Arc<BTreeMap<String, String>>>,
    len: usize,
}

pub const SHARDS: usize = 64;
/// The most elements a set holds in one shard.
pub const SMALL: usize = 256;
/// A set of more than this many elements is held in [`SHARDS_LARGE`] shards, so one
/// change still copies and diffs about a hundred elements (a proxy map of 10,000
/// Services × 16 slots has 160,000).
pub const LARGE: usize = 65_536;
pub const SHARDS_LARGE: usize = 1024;

/// What changed between two versions of a set's elements, each part sorted by key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElementChanges<'a> {
    /// Keys whose element is gone or has another value now.
    pub gone: Vec<&'a String>,
    /// Elements that are new or have another value now.
    pub added: Vec<(&'a String, &'a String)>,
}

impl Elements {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shard `key` is in (or goes in).
    fn shard_of(&self, key: &str) -> usize {
        if self.shards.len() > 1 {
            Self::shard(key, self.shards.len())
        } else {
            0
        }
    }

    /// How many shards a set of `len` elements is built with.
    fn shard_count(len: usize) -> usize {
        match len {
            0..=SMALL => 1,
            n if n <= LARGE => SHARDS,
            _ => SHARDS_LARGE,
        }
    }

    /// The shard of `key` among `count`.
    fn shard(key: &str, count: usize) -> usize {
        let address = key.split_once(" . ").map_or(key, |(address, _)| address);
        let mut hash: u32 = 0x811c_9dc5;
        for byte in address.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash as usize % count
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.shards.get(self.shard_of(key))?.get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; a shard another ruleset shares is copied only when
    /// this changes it.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        if self.shards.is_empty() {
            self.shards = vec![Arc::default()];
        }
        let index = self.shard_of(&key);
        let shard = &mut self.shards[index];
        if Arc::get_mut(shard).is_none() && shard.get(&key) == Some(&value) {
            return Some(value);
        }
        let previous = Arc::make_mut(shard).insert(key, value);
        if previous.is_none() {
            self.len += 1;
            if self.shards.len() < Self::shard_count(self.len) {
                *self = std::mem::take(self).into_iter().collect();
            }
        }
        previous
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        if !self.contains_key(key) {
            return None;
        }
        self.len -= 1;
        let shard = self.shard_of(key);
        Arc::make_mut(&mut self.shards[shard]).remove(key)
    }

    /// Whether an element is `address` or a concatenation starting with it.
    pub fn has_address(&self, address: &str) -> bool {
        self.shards
            .get(self.shard_of(address))
            .is_some_and(|shard| of_address(shard, address).next().is_some())
    }

    /// Removes every element of `address`: the address itself and each
    /// concatenation that starts with it. Returns their values.
    pub fn remove_address(&mut self, address: &str) -> Vec<String> {
        let index = self.shard_of(address);
        let Some(shard) = self.shards.get_mut(index) else {
            return Vec::new();
        };
        let keys: Vec<String> = of_address(shard, address).cloned().collect();
        if keys.is_empty() {
            return Vec::new();
        }
        let shard = Arc::make_mut(shard);
        let removed: Vec<String> = keys.iter().filter_map(|key| shard.remove(key)).collect();
        self.len -= removed.len();
        removed
    }

    /// The elements in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        let mut all: Vec<(&String, &String)> = self.shards.iter().flat_map(|s| s.iter()).collect();
        all.sort_unstable_by_key(|(key, _)| *key);
        all.into_iter()
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(key, _)| key)
    }

    /// The elements in no particular order (no sorting: cheap for large sets).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&String, &String)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// The values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// What changed from `self` to `new`, looking only at shards they do not share.
    pub fn changes<'a>(&'a self, new: &'a Elements) -> ElementChanges<'a> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        let mut changes = ElementChanges::default();
        let mut compare = |old: &'a BTreeMap<String, String>,
                           new: &'a BTreeMap<String, String>,
                           old_all: &'a Elements,
                           new_all: &'a Elements| {
            changes.gone.extend(
                old.iter()
                    .filter(|(k, v)| new_all.get(k) != Some(*v))
                    .map(|(k, _)| k),
            );
            changes
                .added
                .extend(new.iter().filter(|(k, v)| old_all.get(k) != Some(*v)));
        };
        if self.shards.len() == new.shards.len() {
            // Sharded alike: a key is in the same shard in both, so one merge walk
            // of the two sorted shards (no lookups) finds what changed.
            for (old_shard, new_shard) in self.shards.iter().zip(&new.shards) {
                if !Arc::ptr_eq(old_shard, new_shard) {
                    merge_changes(old_shard, new_shard, &mut changes);
                }
            }
        } else {
            // Sharded differently (one grew past SMALL): element by element.
            for shard in &self.shards {
                compare(shard, &EMPTY, self, new);
            }
            for shard in &new.shards {
                compare(&EMPTY, shard, self, new);
            }
        }
        changes.gone.sort_unstable();
        changes.added.sort_unstable_by_key(|(key, _)| *key);
        changes
    }

    /// The elements by value, in no particular order.
    fn into_iter(self) -> impl Iterator<Item = (String, String)> {
        self.shards
            .into_iter()
            .flat_map(|shard| Arc::try_unwrap(shard).unwrap_or_else(|shared| (*shared).clone()))
    }
}

/// What changed from `old` to `new`, two sorted shards, walked side by side.
fn merge_changes<'a>(
    old: &'a BTreeMap<String, String>,
    new: &'a BTreeMap<String, String>,
    changes: &mut ElementChanges<'a>,
) {
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (Some(&(old_key, old_value)), Some(&(new_key, new_value))) => {
                match old_key.cmp(new_key) {
                    std::cmp::Ordering::Less => {
                        changes.gone.push(old_key);
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changes.added.push((new_key, new_value));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if old_value != new_value {
                            changes.gone.push(old_key);
                            changes.added.push((new_key, new_value));
                        }
                        old.next();
                        new.next();
                    }
                }
            }
            (Some(&(old_key, _)), None) => {
                changes.gone.push(old_key);
                old.next();
            }
            (None, Some(&element)) => {
                changes.added.push(element);
                new.next();
            }
            (None, None) => break,
        }
    }
}

/// The keys of `address` in a shard: the address, then its concatenations (` . `
/// sorts before any character an address continues with), all in one run.
fn of_address<'a>(
    shard: &'a BTreeMap<String, String>,
    address: &'a str,
) -> impl Iterator<Item = &'a String> {
    shard
        .range::<str, _>((
            std::ops::Bound::Included(address),
            std::ops::Bound::Unbounded,
        ))
        .map(|(key, _)| key)
        .take_while(move |key| {
            key.strip_prefix(address)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(" . "))
        })
}

impl PartialEq for Elements {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.changes(other) == ElementChanges::default()
    }
}

impl Eq for Elements {}

impl FromIterator<(String, String)> for Elements {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let all: BTreeMap<String, String> = iter.into_iter().collect();
        let len = all.len();
        if len == 0 {
            return Self::default();
        }
        if len <= SMALL {
            return Self {
                shards: vec![Arc::new(all)],
                len,
            };
        }
        let count = Self::shard_count(len);
        let mut shards: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); count];
        for (key, value) in all {
            shards[Self::shard(&key, count)].insert(key, value);
        }
        Self {
            shards: shards.into_iter().map(Arc::new).collect(),
            len,
        }
    }
}

impl From<BTreeMap<String, String>> for Elements {
    fn from(elements: BTreeMap<String, String>) -> Self {
        match elements.len() {
            0 => Self::default(),
            len @ 1..=SMALL => Self {
                shards: vec![Arc::new(elements)],
                len,
            },
            _ => elements.into_iter().collect(),
        }
    }
}

impl Index<&str> for Elements {
    type Output = String;

    fn index(&self, key: &str) -> &String {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no element {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(keys: &[&str]) -> Elements {
        keys.iter()
            .map(|k| (k.to_string(), String::new()))
            .collect()
    }

    #[test]
    fn elements_behave_like_a_sorted_map() {
        let mut e = elements(&["10.0.0.2", "10.0.0.1"]);
        assert_eq!(e.insert("10.0.0.3".into(), "jump a".into()), None);
        assert_eq!(
            e.insert("10.0.0.3".into(), "jump b".into()),
            Some("jump a".into())
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e["10.0.0.3"], "jump b");
        assert_eq!(
            e.keys().collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(e.remove("10.0.0.2"), Some(String::new()));
        assert_eq!(e.remove("10.0.0.2"), None);
        assert_eq!(
            e,
            elements(&["10.0.0.1", "10.0.0.3"]).with_value("10.0.0.3", "jump b")
        );
        assert_ne!(e, elements(&["10.0.0.1", "10.0.0.3"]));
        assert!(Elements::default() == elements(&[]));
    }

    impl Elements {
        fn with_value(mut self, key: &str, value: &str) -> Self {
            self.insert(key.into(), value.into());
            self
        }
    }

    #[test]
    fn an_address_takes_its_concatenations_along() {
        let mut e = elements(&[
            "10.0.0.1",
            "10.0.0.1 . tcp . 80",
            "10.0.0.1 . udp . 53",
            "10.0.0.10 . tcp . 80",
            "10.0.0.10",
        ]);
        assert!(e.has_address("10.0.0.1"));
        assert_eq!(e.remove_address("10.0.0.1").len(), 3);
        assert!(!e.has_address("10.0.0.1"));
        assert_eq!(e, elements(&["10.0.0.10", "10.0.0.10 . tcp . 80"]));
        assert!(e.remove_address("10.0.0.1").is_empty());
    }

    #[test]
    fn a_change_copies_and_diffs_one_shard() {
        let keys: Vec<String> = (0..5000)
            .map(|i| format!("10.1.{}.{}", i / 250, i % 250))
            .collect();
        let old: Elements = keys.iter().map(|k| (k.clone(), "accept".into())).collect();
        let mut new = old.clone();
        new.insert("10.1.0.0".into(), "drop".into());
        new.insert("10.9.9.9".into(), "accept".into());
        new.remove("10.1.3.3");
        let unshared = old
            .shards
            .iter()
            .zip(&new.shards)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert!(unshared <= 3, "{unshared} shards copied");
        let changes = old.changes(&new);
        assert_eq!(changes.gone, ["10.1.0.0", "10.1.3.3"]);
        let added: Vec<(&str, &str)> = changes
            .added
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(added, [("10.1.0.0", "drop"), ("10.9.9.9", "accept")]);
        assert_eq!(old.changes(&old.clone()), ElementChanges::default());
    }

    #[test]
    fn a_set_growing_past_small_is_sharded_and_still_diffs() {
        let mut grown = Elements::default();
        for i in 0..SMALL {
            grown.insert(format!("10.2.0.{i}"), String::new());
        }
        let small = grown.clone();
        assert_eq!(small.shards.len(), 1);
        grown.insert("10.3.0.1".into(), String::new());
        grown.remove("10.2.0.7");
        assert_eq!(grown.shards.len(), SHARDS);
        assert_eq!(grown.len(), SMALL);
        let changes = small.changes(&grown);
        assert_eq!(changes.gone, ["10.2.0.7"]);
        assert_eq!(changes.added.len(), 1);
        assert_eq!(
            grown,
            grown.keys().map(|k| (k.clone(), String::new())).collect()
        );
    }

    #[test]
    fn a_large_set_has_more_shards_and_a_change_still_copies_one() {
        let mut grown: Elements = (0..LARGE)
            .map(|i| {
                (
                    format!("10.{}.{}.{}", i / 65_536, i / 256 % 256, i % 256),
                    "x".into(),
                )
            })
            .collect();
        assert_eq!(grown.shards.len(), SHARDS);
        let before = grown.clone();
        grown.insert("10.99.0.1".into(), "y".into());
        assert_eq!(grown.shards.len(), SHARDS_LARGE, "grown past LARGE");
        assert_eq!(grown.len(), LARGE + 1);
        let changes = before.changes(&grown);
        assert!(changes.gone.is_empty());
        assert_eq!(changes.added.len(), 1);
        let mut changed = grown.clone();
        changed.insert("10.0.0.5".into(), "z".into());
        let unshared = grown
            .shards
            .iter()
            .zip(&changed.shards)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(unshared, 1);
        let changes = grown.changes(&changed);
        assert_eq!(changes.gone, ["10.0.0.5"]);
        assert_eq!(changed.get("10.0.0.5").map(String::as_str), Some("z"));
    }

    #[test]
    fn objects_are_copied_on_write() {
        let mut a: Objects<u32> = Objects::default();
        a.insert("c".into(), Arc::new(1));
        let mut b = a.clone();
        assert!(a.same(&b));
        b.remove("c");
        assert!(!a.same(&b));
        assert_eq!((a.len(), b.len()), (1, 0));
    }
}
