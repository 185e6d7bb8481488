//! Failures as kube-apiserver reports them: a `Status` object with the HTTP code, a
//! machine reason (`NotFound`, `Conflict`, `Invalid`, `Expired`, ...) and a message
//! that names the object, so clients (kube-rs, kubectl) classify them as they would
//! against a real server.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resource::Resource;

/// One failed field of an `Invalid` error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn with_object(mut self, resource: &Resource, kind: &str, name: &str) -> Self {
        let mut details = json!({"name": name, "kind": kind});
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        self.details = Some(details);
        self
    }

    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
        )
        .with_object(resource, resource.plural, name)
    }

    /// The namespace a namespaced request names does not exist.
    pub fn namespace_not_found(namespace: &str) -> Self {
        let resource = Resource::of(kubewire::cache::Kind::Namespace);
        Self::not_found(resource, namespace)
    }

    /// A path nothing is served at.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    }

    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified()),
        )
        .with_object(resource, resource.plural, name)
    }

    /// A precondition (resourceVersion or uid) does not hold.
    pub fn conflict(resource: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.qualified()
            ),
        )
        .with_object(resource, resource.plural, name)
    }

    pub fn stale_resource_version(resource: &Resource, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// The object fails validation; `causes` name the fields.
    pub fn invalid(resource: &Resource, name: &str, causes: Vec<Cause>) -> Self {
        let summary = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
            .join(", ");
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", resource.kind),
        )
        .with_object(resource, resource.kind.as_str(), name);
        if let Some(details) = error.details.as_mut() {
            details["causes"] = causes
                .iter()
                .map(|c| json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field}))
                .collect();
        }
        error
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// A resourceVersion (or continue token) older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into())
    }

    pub fn too_old_resource_version(requested: u64, oldest: u64) -> Self {
        Self::expired(format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message.into())
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubewire::cache::Kind;

    #[test]
    fn statuses_name_the_object_like_kube_apiserver() {
        let pods = Resource::of(Kind::Pod);
        let policies = Resource::of(Kind::NetworkPolicy);
        let status = ApiError::not_found(pods, "web").to_status();
        assert_eq!(status["message"], "pods \"web\" not found");
        assert_eq!(status["details"], json!({"name": "web", "kind": "pods"}));
        assert_eq!(status["code"], 404);
        let status = ApiError::already_exists(policies, "deny").to_status();
        assert_eq!(
            status["message"],
            "networkpolicies.networking.k8s.io \"deny\" already exists"
        );
        assert_eq!(status["details"]["group"], "networking.k8s.io");
        let status = ApiError::invalid(
            pods,
            "web",
            vec![Cause {
                field: "spec.containers".into(),
                message: "Required value".into(),
            }],
        )
        .to_status();
        assert_eq!(
            status["message"],
            "Pod \"web\" is invalid: spec.containers: Required value"
        );
        assert_eq!(status["details"]["causes"][0]["field"], "spec.containers");
        assert_eq!(
            ApiError::too_old_resource_version(3, 9).to_status()["reason"],
            "Expired"
        );
    }
}
