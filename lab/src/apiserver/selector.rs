//! `labelSelector` and `fieldSelector` query parameters: parsed once per request, then
//! matched against stored objects with kube-apiserver's semantics (`!=` and `notin`
//! match objects without the label; field selectors accept only the fields the real
//! server indexes for the kind).

use std::collections::BTreeSet;

use serde_json::Value;

use super::status::ApiError;
use kubewire::cache::Kind;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    GreaterThan(i64),
    LessThan(i64),
}

/// A conjunction of label requirements; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part).map_err(|why| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: {why} (labelSelector {text:?})"
                ))
            })?);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|(key, op)| {
            let value = label(key);
            match op {
                LabelOp::Exists => value.is_some(),
                LabelOp::NotExists => value.is_none(),
                LabelOp::Equals(want) => value == Some(want.as_str()),
                LabelOp::NotEquals(want) => value != Some(want.as_str()),
                LabelOp::In(set) => value.is_some_and(|v| set.contains(v)),
                LabelOp::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
                LabelOp::GreaterThan(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                LabelOp::LessThan(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b` is two requirements).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<(String, LabelOp), String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok((label_key(key.trim())?, LabelOp::NotExists));
    }
    if let Some(open) = part.find('(') {
        let close = part
            .rfind(')')
            .filter(|close| *close == part.len() - 1)
            .ok_or_else(|| format!("{part:?}: expected a closing ')'"))?;
        let mut head = part[..open].split_whitespace();
        let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
            return Err(format!(
                "{part:?}: expected `key in (...)` or `key notin (...)`"
            ));
        };
        let values = part[open + 1..close]
            .split(',')
            .map(|v| label_value(v.trim()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let op = match op {
            "in" => LabelOp::In(values),
            "notin" => LabelOp::NotIn(values),
            other => return Err(format!("{part:?}: unknown operator {other:?}")),
        };
        return Ok((label_key(key)?, op));
    }
    for (token, make) in [
        ("!=", (|v| LabelOp::NotEquals(v)) as fn(String) -> LabelOp),
        ("==", LabelOp::Equals),
        ("=", LabelOp::Equals),
    ] {
        if let Some((key, value)) = part.split_once(token) {
            return Ok((label_key(key.trim())?, make(label_value(value.trim())?)));
        }
    }
    for (token, greater) in [('>', true), ('<', false)] {
        if let Some((key, value)) = part.split_once(token) {
            let n = value
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{part:?}: {:?} is not an integer", value.trim()))?;
            let op = if greater {
                LabelOp::GreaterThan(n)
            } else {
                LabelOp::LessThan(n)
            };
            return Ok((label_key(key.trim())?, op));
        }
    }
    Ok((label_key(part)?, LabelOp::Exists))
}

fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let valid_prefix = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    if valid_name && valid_prefix {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

/// A conjunction of `field=value` / `field!=value` terms; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equals: bool,
    value: String,
}

impl FieldSelector {
    pub fn parse(kind: Kind, text: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equals, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(kind).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push(FieldTerm {
                field: field.to_string(),
                equals,
                value: value.trim().to_string(),
            });
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|term| (field_value(object, &term.field) == term.value) == term.equals)
    }
}

/// The fields kube-apiserver lets each kind be selected by.
fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Node => &["metadata.name", "spec.unschedulable"],
        Kind::Namespace => &["metadata.name", "status.phase"],
        Kind::Service => &[
            "metadata.name",
            "metadata.namespace",
            "spec.clusterIP",
            "spec.type",
        ],
        Kind::ServiceCIDR => &["metadata.name"],
        Kind::EndpointSlice | Kind::NetworkPolicy => &["metadata.name", "metadata.namespace"],
    }
}

/// The selectable value of `field`; an absent field reads as the empty string, and
/// booleans as `true`/`false` (absent is `false`), as the real server indexes them.
fn field_value(object: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if matches!(field, "spec.hostNetwork" | "spec.unschedulable") => "false".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "x", "labels": labels},
               "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selector_operators() {
        let web = pod(json!({"app": "web", "tier": "3"}));
        let bare = pod(json!({}));
        let cases = [
            ("", true, true),
            ("app", true, false),
            ("!app", false, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app!=db", true, true),
            ("app in (web, db)", true, false),
            ("app notin (web,db)", false, true),
            ("app in (db),tier", false, false),
            ("app=web,tier>2", true, false),
            ("tier<3", false, false),
            ("example.com/role", false, false),
        ];
        for (text, on_web, on_bare) in cases {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.matches(&web), on_web, "{text} on web");
            assert_eq!(selector.matches(&bare), on_bare, "{text} on bare");
        }
    }

    #[test]
    fn bad_label_selectors_are_bad_requests() {
        for text in [
            "app in (web",
            "a b in (c)",
            "app=we b",
            "tier>x",
            "Bad/key=x",
        ] {
            let err = LabelSelector::parse(text).unwrap_err();
            assert_eq!(err.code, 400, "{text}");
            assert!(
                err.message.contains("unable to parse requirement"),
                "{text}"
            );
        }
    }

    #[test]
    fn field_selector_terms() {
        let object = pod(json!({}));
        let cases = [
            ("metadata.name=a", true),
            ("metadata.name==a,metadata.namespace=x", true),
            ("metadata.namespace!=x", false),
            ("spec.nodeName=n1", true),
            ("spec.nodeName!=n2", true),
            ("spec.hostNetwork=false", true),
            ("status.podIP=", true),
        ];
        for (text, want) in cases {
            let selector = FieldSelector::parse(Kind::Pod, text).unwrap();
            assert_eq!(selector.matches(&object), want, "{text}");
        }
        let err = FieldSelector::parse(Kind::Service, "spec.nodeName=n1").unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.nodeName");
        assert!(FieldSelector::parse(Kind::Pod, "metadata.name").is_err());
    }
}
