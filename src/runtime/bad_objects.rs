use std::collections::BTreeSet;
use std::fmt;

/// One object (or one field of it) a controller could not use. `kind` and `reason` are
/// the labels of `kubewire_bad_objects` (few values each); `message` names the object
/// and the field and is what gets logged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BadObject {
    pub kind: String,
    pub reason: String,
    pub message: String,
}

impl BadObject {
    pub fn new(kind: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Every problem message starts with the object's kind (`Service ns/name: spec...`), so
/// a plain message is counted under that kind with the generic reason `invalid`.
impl From<String> for BadObject {
    fn from(message: String) -> Self {
        let kind = message
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .filter(|word| word.starts_with(|c: char| c.is_ascii_uppercase()))
            .unwrap_or("unknown")
            .to_string();
        Self {
            kind,
            reason: "invalid".to_string(),
            message,
        }
    }
}

impl From<&str> for BadObject {
    fn from(message: &str) -> Self {
        Self::from(message.to_string())
    }
}

impl fmt::Display for BadObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What changed in one controller's bad objects since its previous sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BadObjectChanges {
    /// Not reported before: log each once and count it.
    pub new: Vec<BadObject>,
    /// Reported before and fixed (or deleted) since: uncount it.
    pub gone: Vec<BadObject>,
}

/// Bad objects already reported by one controller, so each is logged once when it
/// first appears (and again only if it goes away and comes back).
#[derive(Debug, Default)]
pub struct BadObjects {
    reported: BTreeSet<BadObject>,
}

impl BadObjects {
    /// Records the current list and returns what appeared and what went away.
    pub fn update(&mut self, current: &[BadObject]) -> BadObjectChanges {
        let current: BTreeSet<BadObject> = current.iter().cloned().collect();
        let changes = BadObjectChanges {
            new: current.difference(&self.reported).cloned().collect(),
            gone: self.reported.difference(&current).cloned().collect(),
        };
        self.reported = current;
        changes
    }

    pub fn len(&self) -> usize {
        self.reported.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<BadObject> {
        items.iter().map(|s| BadObject::from(*s)).collect()
    }

    #[test]
    fn each_bad_object_is_new_once() {
        let mut bad = BadObjects::default();
        assert_eq!(bad.update(&list(&["a", "b"])).new, list(&["a", "b"]));
        assert_eq!(bad.update(&list(&["b", "a"])), BadObjectChanges::default());
        let changes = bad.update(&list(&["b", "c"]));
        assert_eq!((changes.new, changes.gone), (list(&["c"]), list(&["a"])));
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad.update(&list(&["a"])).new,
            list(&["a"]),
            "gone and back is new"
        );
        assert_eq!(bad.update(&[]).gone, list(&["a"]));
        assert!(bad.is_empty());
    }

    #[test]
    fn a_plain_message_is_counted_under_its_leading_kind() {
        let bad = BadObject::from("Service default/web: spec.ports[0].port 0 is out of range");
        assert_eq!(
            (bad.kind.as_str(), bad.reason.as_str()),
            ("Service", "invalid")
        );
        let bad = BadObject::from("EndpointSlice a/b (of Service a/c): ports");
        assert_eq!(bad.kind, "EndpointSlice");
        assert_eq!(BadObject::from("`x` is bad").kind, "unknown");
    }
}
