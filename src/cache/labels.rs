//! Label sets stored once: the pods of one workload carry the same labels, so the
//! cache keeps one shared copy of each distinct set and every pod (and the firewall's
//! view of it) holds an `Arc` to it. At 5,000 pods this is ~150 B-tree maps instead
//! of 5,000 (a B-tree leaf is ~540 bytes even for two labels) and no second copy in
//! the firewall.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// A label set, as the API has it.
pub type Labels = BTreeMap<String, String>;

/// The distinct sets in use. A set no object holds any more is dropped when the table
/// has doubled since the last sweep, so churn cannot grow it without bound.
struct Interner {
    sets: HashSet<Arc<Labels>>,
    sweep_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        sets: HashSet::new(),
        sweep_at: 64,
    })
});

/// The shared copy of `labels`.
pub fn intern(labels: Labels) -> Arc<Labels> {
    if labels.is_empty() {
        return empty();
    }
    // A poisoned table is still a valid set of label sets.
    let mut interner = INTERNER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = interner.sets.get(&labels) {
        return shared.clone();
    }
    if interner.sets.len() >= interner.sweep_at {
        interner.sets.retain(|set| Arc::strong_count(set) > 1);
        interner.sweep_at = (interner.sets.len() * 2).max(64);
    }
    let shared = Arc::new(labels);
    interner.sets.insert(shared.clone());
    shared
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
        let table = INTERNER.lock().unwrap();
        assert!(table.sets.len() < 1_000, "{}", table.sets.len());
        assert!(table.sets.contains(&*a));
    }
}
