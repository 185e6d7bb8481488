//! The object store: every object of every served kind as JSON, one global
//! resourceVersion counter, and the retained [`History`]. Each committed change gets
//! the next resourceVersion and exactly one history event, so "the state at version
//! N" is the current state with the later events undone — which is how paginated
//! lists stay consistent while writes go on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::history::{Event, EventType, History, ObjectKey};
use super::status::ApiError;
use kubewire::cache::Kind;

/// Everything the API server knows. Survives a server restart
/// ([`super::ApiServer::into_state`]), like etcd behind kube-apiserver.
#[derive(Debug)]
pub struct ApiState {
    objects: BTreeMap<Kind, BTreeMap<ObjectKey, Arc<Value>>>,
    rv: u64,
    history: History,
    disabled: BTreeSet<Kind>,
    pub(super) ids: super::write::IdSource,
}

impl ApiState {
    /// An empty store keeping `history` resourceVersions of watch history.
    pub fn new(history: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 0,
            history: History::new(history),
            disabled: BTreeSet::new(),
            ids: super::write::IdSource::new(),
        }
    }

    /// The server answers `404` for `kinds`, as a cluster that does not serve them
    /// (for tests of clients that must notice a kind never syncing).
    pub fn disable_kinds(&mut self, kinds: &[Kind]) {
        self.disabled.extend(kinds.iter().copied());
    }

    pub fn serves(&self, kind: Kind) -> bool {
        !self.disabled.contains(&kind)
    }

    pub fn set_history_limit(&mut self, history: usize) {
        self.history.set_limit(history);
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, kind: Kind, key: &ObjectKey) -> Option<&Arc<Value>> {
        self.objects.get(&kind)?.get(key)
    }

    pub fn len(&self, kind: Kind) -> usize {
        self.objects.get(&kind).map_or(0, BTreeMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.objects.values().all(BTreeMap::is_empty)
    }

    /// The objects of `kind` (in `namespace`, if given) after `start` (exclusive) as
    /// they were at resourceVersion `rv`, sorted by key.
    pub fn list_at(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        start: Option<&ObjectKey>,
        rv: u64,
    ) -> Result<Vec<(ObjectKey, Arc<Value>)>, ApiError> {
        let in_range = |key: &ObjectKey| {
            namespace.is_none_or(|ns| key.0 == ns) && start.is_none_or(|start| key > start)
        };
        // The state at `rv` of every key changed since: the `prev` of its first later event.
        let mut undone: BTreeMap<&ObjectKey, Option<&Arc<Value>>> = BTreeMap::new();
        if rv < self.rv {
            for event in self.history.since(rv)? {
                if event.kind == kind && in_range(&event.key) {
                    undone.entry(&event.key).or_insert(event.prev.as_ref());
                }
            }
        }
        let current = self.objects.get(&kind);
        let range: Box<dyn Iterator<Item = (&ObjectKey, &Arc<Value>)>> = match (current, namespace)
        {
            (None, _) => Box::new(std::iter::empty()),
            (Some(objects), Some(ns)) => Box::new(
                objects
                    .range((ns.to_string(), String::new())..)
                    .take_while(move |(key, _)| key.0 == ns),
            ),
            (Some(objects), None) => Box::new(objects.iter()),
        };
        let mut items: Vec<(ObjectKey, Arc<Value>)> = range
            .filter(|(key, _)| in_range(key) && !undone.contains_key(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if !undone.is_empty() {
            items.extend(
                undone
                    .into_iter()
                    .filter_map(|(key, value)| Some((key.clone(), value?.clone()))),
            );
            items.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(items)
    }

    /// The changes after `rv`, oldest first; `Expired` when some are forgotten.
    pub fn events_since(&self, rv: u64) -> Result<impl Iterator<Item = &Arc<Event>>, ApiError> {
        self.history.since(rv)
    }

    /// Fails with `Expired` when resourceVersion `rv` is older than the history.
    pub fn check_readable(&self, rv: u64) -> Result<(), ApiError> {
        self.history.since(rv).map(drop)
    }

    /// Stores `object` under `key` (or deletes the key when `None`), stamping the next
    /// resourceVersion and recording the event. Returns the stored (or deleted) object.
    pub(super) fn commit(
        &mut self,
        kind: Kind,
        key: ObjectKey,
        object: Option<Value>,
    ) -> Option<Arc<Value>> {
        let rv = self.rv + 1;
        let objects = self.objects.entry(kind).or_default();
        let prev = objects.get(&key).cloned();
        let (event_type, stored) = match object {
            Some(mut value) => {
                set_resource_version(&mut value, rv);
                let value = Arc::new(value);
                objects.insert(key.clone(), value.clone());
                let event_type = if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (event_type, value)
            }
            None => {
                let removed = objects.remove(&key)?;
                let mut last = Value::clone(&removed);
                set_resource_version(&mut last, rv);
                (EventType::Deleted, Arc::new(last))
            }
        };
        self.rv = rv;
        self.history.push(Event {
            rv,
            kind,
            key,
            event_type,
            object: stored.clone(),
            prev,
        });
        Some(stored)
    }

    /// Keys of every namespaced object in `namespace`, by kind.
    pub(super) fn keys_in_namespace(&self, namespace: &str) -> Vec<(Kind, ObjectKey)> {
        self.objects
            .iter()
            .filter(|(kind, _)| kind.namespaced())
            .flat_map(|(kind, objects)| {
                objects
                    .range((namespace.to_string(), String::new())..)
                    .take_while(|(key, _)| key.0 == namespace)
                    .map(|(key, _)| (*kind, key.clone()))
            })
            .collect()
    }
}

fn set_resource_version(value: &mut Value, rv: u64) {
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource_version_of(value: &Value) -> Option<u64> {
        value
            .pointer("/metadata/resourceVersion")?
            .as_str()?
            .parse()
            .ok()
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        (ns.into(), name.into())
    }

    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "a"}, "status": {"phase": phase}})
    }

    fn names(items: &[(ObjectKey, Arc<Value>)]) -> Vec<String> {
        items
            .iter()
            .map(|(key, value)| format!("{}:{}", key.1, value["status"]["phase"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn commit_stamps_versions_and_records_one_event_each() {
        let mut state = ApiState::new(10);
        state.commit(Kind::Pod, key("a", "p"), Some(pod("p", "Pending")));
        let stored = state
            .commit(Kind::Pod, key("a", "p"), Some(pod("p", "Running")))
            .unwrap();
        assert_eq!(resource_version_of(&stored), Some(2));
        let deleted = state.commit(Kind::Pod, key("a", "p"), None).unwrap();
        assert_eq!(resource_version_of(&deleted), Some(3));
        assert_eq!(deleted["status"]["phase"], "Running");
        assert!(state.commit(Kind::Pod, key("a", "p"), None).is_none());
        let events: Vec<_> = state
            .events_since(0)
            .unwrap()
            .map(|e| (e.rv, e.event_type))
            .collect();
        assert_eq!(
            events,
            [
                (1, EventType::Added),
                (2, EventType::Modified),
                (3, EventType::Deleted)
            ]
        );
    }

    #[test]
    fn list_at_an_older_version_undoes_later_changes() {
        let mut state = ApiState::new(10);
        for name in ["p1", "p2", "p3"] {
            state.commit(Kind::Pod, key("a", name), Some(pod(name, "Pending")));
        }
        state.commit(Kind::Pod, key("b", "q"), Some(pod("q", "Pending")));
        let at = state.resource_version();
        state.commit(Kind::Pod, key("a", "p1"), None);
        state.commit(Kind::Pod, key("a", "p2"), Some(pod("p2", "Running")));
        state.commit(Kind::Pod, key("a", "p0"), Some(pod("p0", "Pending")));
        let then = state.list_at(Kind::Pod, Some("a"), None, at).unwrap();
        assert_eq!(names(&then), ["p1:Pending", "p2:Pending", "p3:Pending"]);
        let now = state
            .list_at(Kind::Pod, Some("a"), None, state.resource_version())
            .unwrap();
        assert_eq!(names(&now), ["p0:Pending", "p2:Running", "p3:Pending"]);
        let after_p1 = state
            .list_at(Kind::Pod, None, Some(&key("a", "p1")), at)
            .unwrap();
        assert_eq!(names(&after_p1), ["p2:Pending", "p3:Pending", "q:Pending"]);
        state.set_history_limit(2);
        assert_eq!(
            state.list_at(Kind::Pod, None, None, at).unwrap_err().code,
            410
        );
    }
}
