//! Label selectors exactly as `metav1.LabelSelector` defines them: `matchLabels` and
//! `matchExpressions` are ANDed; an empty selector matches everything. Parsing checks
//! what the API server validates (known operator; values present for `In`/`NotIn`,
//! absent for `Exists`/`DoesNotExist`), so a selector that parses never misbehaves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A parsed, validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Requirement {
    Equals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// What is wrong with a selector, relative to the selector's own field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn parse(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(key.clone(), value.clone()));
        }
        for (index, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let error = |field: &str, message: String| SelectorError {
                field: format!("matchExpressions[{index}]{field}"),
                message,
            };
            if expression.key.is_empty() {
                return Err(error(".key", "must not be empty".into()));
            }
            let key = expression.key.clone();
            let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
            let requirement = match expression.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(error(
                        ".values",
                        format!("must be non-empty for operator {}", expression.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(error(
                        ".values",
                        format!("must be empty for operator {}", expression.operator),
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(error(
                        ".operator",
                        format!("unknown operator `{other}` (In, NotIn, Exists, DoesNotExist)"),
                    ));
                }
            };
            requirements.push(requirement);
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The first requirement `labels` fails, for explanations.
    pub fn first_mismatch(&self, labels: &Labels) -> Option<String> {
        self.requirements
            .iter()
            .find(|r| !r.matches(labels))
            .map(|r| r.to_string())
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |values: &BTreeSet<String>| values.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Equals(key, value) => write!(f, "{key}={value}"),
            Requirement::In(key, values) => write!(f, "{key} in ({})", list(values)),
            Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", list(values)),
            Requirement::Exists(key) => write!(f, "{key}"),
            Requirement::DoesNotExist(key) => write!(f, "!{key}"),
        }
    }
}

/// The canonical text form, as `kubectl get -l` takes it; `{}` for "everything".
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> Result<Selector, SelectorError> {
        Selector::parse(&serde_json::from_value(json).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_like_the_api() {
        use serde_json::json;
        let cases = [
            (json!({}), vec![], true),
            (
                json!({"matchLabels": {"pod": "a"}}),
                vec![("pod", "a")],
                true,
            ),
            (
                json!({"matchLabels": {"pod": "a"}}),
                vec![("pod", "b")],
                false,
            ),
            (json!({"matchLabels": {"pod": "a"}}), vec![], false),
            (
                json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}),
                vec![("pod", "b")],
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]}),
                vec![],
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}),
                vec![],
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}),
                vec![("pod", "a")],
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "pod", "operator": "Exists"}]}),
                vec![("pod", "")],
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}),
                vec![("pod", "")],
                false,
            ),
            (
                json!({"matchLabels": {"pod": "a"},
                       "matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}),
                vec![("pod", "a"), ("env", "prod")],
                false,
            ),
        ];
        for (json, pod_labels, expected) in cases {
            let parsed = selector(json.clone()).unwrap();
            assert_eq!(
                parsed.matches(&labels(&pod_labels)),
                expected,
                "{json} vs {pod_labels:?}"
            );
        }
    }

    #[test]
    fn rejects_what_the_api_rejects() {
        use serde_json::json;
        let cases = [
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
                "matchExpressions[0].operator",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                "matchExpressions[0].values",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Exists"},
                                            {"key": "b", "operator": "Exists", "values": ["x"]}]}),
                "matchExpressions[1].values",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(selector(json.clone()).unwrap_err().field, field, "{json}");
        }
    }

    #[test]
    fn canonical_text_ignores_order() {
        use serde_json::json;
        let a = selector(json!({"matchLabels": {"b": "2", "a": "1"}})).unwrap();
        let b = selector(json!({"matchLabels": {"a": "1", "b": "2"}})).unwrap();
        assert_eq!(a.to_string(), "a=1,b=2");
        assert_eq!(a, b);
        assert_eq!(Selector::everything().to_string(), "{}");
    }
}
