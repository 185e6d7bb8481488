//! Query parameters of resource requests, parsed and checked once, and the opaque
//! `continue` token of paginated lists (the list's resourceVersion and the last key
//! served, so the next page reads the same snapshot).

use std::time::Duration;

use super::history::ObjectKey;
use super::status::ApiError;
use super::write::FieldValidation;

/// A watch with no `timeoutSeconds` ends after this (kube-apiserver picks 30–60 min).
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub label_selector: String,
    pub field_selector: String,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub send_initial_events: Option<bool>,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub include_object: Option<String>,
}

fn boolean(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "True" => Ok(true),
        "false" | "0" | "False" | "" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "invalid value {other:?} for {name}: expected true or false"
        ))),
    }
}

fn number(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid value {value:?} for {name}: expected a number"
        ))
    })
}

impl Params {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut params = Params::default();
        for (name, value) in pairs {
            let value = value.as_str();
            match name.as_str() {
                "watch" => params.watch = boolean(name, value)?,
                "resourceVersion" => params.resource_version = Some(value.to_string()),
                "resourceVersionMatch" => {
                    if !matches!(value, "" | "Exact" | "NotOlderThan") {
                        return Err(ApiError::bad_request(format!(
                            "resourceVersionMatch: unsupported value {value:?}: supported values: \"Exact\", \"NotOlderThan\""
                        )));
                    }
                    params.resource_version_match =
                        Some(value.to_string()).filter(|v| !v.is_empty());
                }
                "labelSelector" => params.label_selector = value.to_string(),
                "fieldSelector" => params.field_selector = value.to_string(),
                "limit" => {
                    params.limit = Some(number(name, value)? as usize).filter(|limit| *limit > 0)
                }
                "continue" => {
                    params.continue_token = Some(value.to_string()).filter(|v| !v.is_empty())
                }
                "timeoutSeconds" => {
                    params.timeout = Some(Duration::from_secs(number(name, value)?))
                }
                "allowWatchBookmarks" => params.bookmarks = boolean(name, value)?,
                "sendInitialEvents" => params.send_initial_events = Some(boolean(name, value)?),
                "dryRun" => {
                    if value != "All" {
                        return Err(ApiError::bad_request(format!(
                            "dryRun: unsupported value {value:?}: supported values: \"All\""
                        )));
                    }
                    params.dry_run = true;
                }
                "fieldValidation" => params.field_validation = FieldValidation::parse(value)?,
                "includeObject" => params.include_object = Some(value.to_string()),
                // Accepted and without effect here: no field ownership, no graceful
                // deletion, no owner-reference garbage collection.
                _ => {}
            }
        }
        if params.resource_version_match.is_some()
            && params.resource_version.as_deref().is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if params.continue_token.is_some()
            && params
                .resource_version
                .as_deref()
                .is_some_and(|rv| !rv.is_empty())
        {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Ok(params)
    }

    /// `resourceVersion` as a number, if one was given (`""` is none).
    pub fn resource_version_number(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("") => Ok(None),
            Some(rv) => rv
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}"))),
        }
    }
}

/// The state of a paginated list between pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continue {
    pub rv: u64,
    pub last: ObjectKey,
}

impl Continue {
    /// Hex of `rv/namespace/name` (names cannot contain `/`).
    pub fn encode(&self) -> String {
        let text = format!("{}/{}/{}", self.rv, self.last.0, self.last.1);
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            )
        };
        if !token.len().is_multiple_of(2) {
            return Err(invalid());
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(token.get(i..i + 2).ok_or_else(invalid)?, 16)
                    .map_err(|_| invalid())
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '/');
        let (Some(rv), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        Ok(Self {
            rv: rv.parse().map_err(|_| invalid())?,
            last: (namespace.to_string(), name.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::parse(&pairs)
    }

    #[test]
    fn parses_what_kube_rs_and_kubectl_send() {
        let params = parse(&[
            ("watch", "1"),
            ("resourceVersion", "12"),
            ("timeoutSeconds", "290"),
            ("allowWatchBookmarks", "true"),
            ("labelSelector", "app=web"),
            ("limit", "500"),
            ("fieldManager", "kubectl-create"),
            ("fieldValidation", "Strict"),
        ])
        .unwrap();
        assert!(params.watch && params.bookmarks);
        assert_eq!(params.resource_version_number().unwrap(), Some(12));
        assert_eq!(params.timeout, Some(Duration::from_secs(290)));
        assert_eq!(params.limit, Some(500));
        assert_eq!(params.field_validation, FieldValidation::Strict);
        for bad in [
            &[("watch", "maybe")][..],
            &[("limit", "-1")],
            &[("resourceVersionMatch", "Exact")],
            &[("resourceVersion", "1"), ("continue", "ab")],
            &[("dryRun", "Some")],
            &[("fieldValidation", "Loose")],
        ] {
            assert_eq!(parse(bad).unwrap_err().code, 400, "{bad:?}");
        }
        assert!(
            parse(&[("resourceVersion", "x")])
                .unwrap()
                .resource_version_number()
                .is_err()
        );
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = Continue {
            rv: 42,
            last: ("kube-system".into(), "coredns".into()),
        };
        assert_eq!(Continue::decode(&token.encode()).unwrap(), token);
        for bad in ["xyz", "abc", "3432"] {
            assert_eq!(Continue::decode(bad).unwrap_err().code, 400, "{bad}");
        }
    }
}
