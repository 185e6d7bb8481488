//! Label sets stored once: the pods of one workload carry the same labels, so the
//! cache keeps one shared copy of each distinct set and every pod (and the firewall's
//! view of it) holds an `Arc` to it. At 5,000 pods this is ~150 B-tree maps instead
//! of 5,000 (a B-tree leaf is ~540 bytes even for two labels) and no second copy in
//! the firewall. Short strings that many objects repeat (port names, protocols) are
//! shared the same way.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// A label set, as the API has it.
pub type Labels = BTreeMap<String, String>;

/// The distinct values in use. One no object holds any more is dropped when the table
/// has doubled since the last sweep, so churn cannot grow it without bound.
struct Interner<T: ?Sized> {
    values: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    fn new() -> Self {
        Interner {
            values: HashSet::new(),
            sweep_at: 64,
        }
    }

    /// The shared copy of `value`, if there is one.
    fn lookup(&self, value: &T) -> Option<Arc<T>> {
        self.values.get(value).cloned()
    }

    /// Keeps `value` as the shared copy.
    fn insert(&mut self, value: Arc<T>) -> Arc<T> {
        if self.values.len() >= self.sweep_at {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.values.len() * 2).max(64);
        }
        self.values.insert(value.clone());
        value
    }
}

static LABELS: LazyLock<Mutex<Interner<Labels>>> = LazyLock::new(|| Mutex::new(Interner::new()));
static STRINGS: LazyLock<Mutex<Interner<str>>> = LazyLock::new(|| Mutex::new(Interner::new()));

/// The shared copy of `labels`.
pub fn intern(labels: Labels) -> Arc<Labels> {
    if labels.is_empty() {
        return empty();
    }
    // A poisoned table is still a valid set of values.
    let mut table = LABELS.lock().unwrap_or_else(PoisonError::into_inner);
    match table.lookup(&labels) {
        Some(shared) => shared,
        None => table.insert(Arc::new(labels)),
    }
}

/// The shared copy of a short string many objects repeat (a port's name, a protocol).
pub fn intern_str(text: &str) -> Arc<str> {
    let mut table = STRINGS.lock().unwrap_or_else(PoisonError::into_inner);
    match table.lookup(text) {
        Some(shared) => shared,
        None => table.insert(Arc::from(text)),
    }
}

/// Deserializes an optional string into its shared copy ([`intern_str`]).
pub fn shared_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Arc<str>>, D::Error> {
    use serde::Deserialize;
    let text: Option<std::borrow::Cow<'de, str>> = Option::deserialize(deserializer)?;
    Ok(text.map(|t| intern_str(&t)))
}

/// Serializes a shared string as the plain string it is.
pub fn text<S: serde::Serializer>(
    value: &Option<Arc<str>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    value.as_deref().serialize(serializer)
}

/// The empty set, shared.
pub fn empty() -> Arc<Labels> {
    static EMPTY: LazyLock<Arc<Labels>> = LazyLock::new(|| Arc::new(Labels::new()));
    EMPTY.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equal_sets_share_one_copy_and_unused_ones_are_swept() {
        let a = intern(set(&[("app", "interned-a"), ("tier", "web")]));
        let b = intern(set(&[("tier", "web"), ("app", "interned-a")]));
        assert!(Arc::ptr_eq(&a, &b));
        let c = intern(set(&[("app", "interned-c")]));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.get("app").map(String::as_str), Some("interned-c"));
        drop(c);
        // Enough distinct sets to force sweeps: the dropped ones leave the table.
        for i in 0..1_000 {
            intern(set(&[("app", &format!("interned-sweep-{i}"))]));
        }
        let table = LABELS.lock().unwrap();
        assert!(table.values.len() < 1_000, "{}", table.values.len());
        assert!(table.values.contains(&*a));
        drop(table);
        assert!(Arc::ptr_eq(&intern_str("http"), &intern_str("http")));
    }
}
