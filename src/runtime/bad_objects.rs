use std::collections::BTreeSet;

/// Bad objects already reported by one controller, so each is logged once when it
/// first appears (and again only if it goes away and comes back).
#[derive(Debug, Default)]
pub struct BadObjects {
    reported: BTreeSet<String>,
}

impl BadObjects {
    /// Records the current list and returns the entries not reported before.
    pub fn update(&mut self, current: &[String]) -> Vec<String> {
        let current: BTreeSet<String> = current.iter().cloned().collect();
        let new = current.difference(&self.reported).cloned().collect();
        self.reported = current;
        new
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

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_bad_object_is_new_once() {
        let mut bad = BadObjects::default();
        assert_eq!(bad.update(&list(&["a", "b"])), list(&["a", "b"]));
        assert_eq!(bad.update(&list(&["b", "a"])), list(&[]));
        assert_eq!(bad.update(&list(&["b", "c"])), list(&["c"]));
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad.update(&list(&["a"])),
            list(&["a"]),
            "gone and back is new"
        );
        assert!(bad.update(&[]).is_empty() && bad.is_empty());
    }
}
