//! The retained watch history: the last N changes, one per resourceVersion, each with
//! the object before and after. Watches replay it from the version they ask for;
//! lists read past versions from it; anything older than what it holds is "Expired".

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;

use super::status::ApiError;
use kubewire::cache::Kind;

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds. Ordered like
/// etcd keys, so lists come out sorted by namespace, then name.
pub type ObjectKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `object` is the state after it (for a deletion: the last state,
/// stamped with the deletion's resourceVersion); `prev` the state before.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub key: ObjectKey,
    pub event_type: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

#[derive(Debug)]
pub struct History {
    events: VecDeque<Arc<Event>>,
    limit: usize,
    /// Every change at or below this resourceVersion is forgotten.
    compacted: u64,
}

impl History {
    pub fn new(limit: usize) -> Self {
        Self {
            events: VecDeque::new(),
            limit,
            compacted: 0,
        }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        self.trim();
    }

    pub fn push(&mut self, event: Event) {
        self.events.push_back(Arc::new(event));
        self.trim();
    }

    fn trim(&mut self) {
        while self.events.len() > self.limit {
            if let Some(old) = self.events.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Every change after `rv`, oldest first; `Expired` when some of them are forgotten.
    pub fn since(&self, rv: u64) -> Result<impl Iterator<Item = &Arc<Event>>, ApiError> {
        if rv < self.compacted {
            return Err(ApiError::too_old_resource_version(rv, self.compacted + 1));
        }
        let start = self.events.partition_point(|e| e.rv <= rv);
        Ok(self.events.range(start..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rv: u64) -> Event {
        Event {
            rv,
            kind: Kind::Pod,
            key: ("default".into(), format!("p{rv}")),
            event_type: EventType::Added,
            object: Arc::new(Value::Null),
            prev: None,
        }
    }

    #[test]
    fn keeps_the_last_n_changes_and_expires_older_versions() {
        let mut history = History::new(3);
        for rv in 1..=5 {
            history.push(event(rv));
        }
        fn rvs(history: &History, from: u64) -> Result<Vec<u64>, ApiError> {
            history
                .since(from)
                .map(|events| events.map(|e| e.rv).collect())
        }
        assert_eq!(rvs(&history, 2).unwrap(), [3, 4, 5]);
        assert_eq!(rvs(&history, 4).unwrap(), [5]);
        assert_eq!(rvs(&history, 5).unwrap(), Vec::<u64>::new());
        assert_eq!(rvs(&history, 9).unwrap(), Vec::<u64>::new());
        let err = rvs(&history, 1).unwrap_err();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        assert_eq!(err.message, "too old resource version: 1 (3)");
        history.set_limit(1);
        assert!(rvs(&history, 3).is_err());
        assert_eq!(rvs(&history, 4).unwrap(), [5]);
    }
}
