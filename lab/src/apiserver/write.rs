//! The write verbs with kube-apiserver's semantics on top of the [`ApiState`] store:
//! create (server-owned metadata, `AlreadyExists`, the namespace must exist), update
//! (resourceVersion and uid preconditions → `Conflict`, immutable metadata kept,
//! generation bumped on spec changes, a no-op update writes nothing), patch (computed
//! on the current object, then an update), delete (preconditions; a Namespace takes
//! its contents with it), and the `status` subresource rule (the main endpoint keeps
//! status, `/status` changes only status).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::history::ObjectKey;
use super::patch::{self, PatchType};
use super::resource::Resource;
use super::status::{ApiError, Cause};
use super::store::ApiState;
use super::validate;
use kubewire::cache::Kind;
use kubewire::cache::manifests::{ManifestObject, apply_defaults};

/// `?fieldValidation=`: what to do with fields the schema does not declare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "Ignore" => Ok(Self::Ignore),
            "Warn" | "" => Ok(Self::Warn),
            "Strict" => Ok(Self::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
}

/// The outcome of a successful write.
#[derive(Debug)]
pub struct Written {
    pub object: Arc<Value>,
    /// `true` when the write created the object (201 instead of 200).
    pub created: bool,
    /// `Warning` headers for the client (unknown fields under `Warn`).
    pub warnings: Vec<String>,
}

/// Where a write goes: the resource, and the namespace and name from the URL.
#[derive(Clone, Copy, Debug)]
pub struct Location<'a> {
    pub resource: &'static Resource,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl Location<'_> {
    fn key(&self) -> ObjectKey {
        (
            self.namespace.unwrap_or_default().to_string(),
            self.name.to_string(),
        )
    }

    fn kind(&self) -> Kind {
        self.resource.kind
    }
}

/// Random identifiers (uids, `generateName` suffixes) without a dependency.
#[derive(Debug)]
pub struct IdSource(u64);

impl IdSource {
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version-4 UUID.
    pub fn uid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// Five characters from the alphabet kube-apiserver uses for `generateName`.
    pub fn name_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = self.next();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

impl Default for IdSource {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> Value {
    let time =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(time).unwrap_or(Value::Null)
}

fn metadata_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.get("metadata").is_some_and(Value::is_object) {
        value["metadata"] = json!({});
    }
    match value.get_mut("metadata") {
        Some(Value::Object(metadata)) => metadata,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn meta_str<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get("metadata")?.get(field)?.as_str()
}

/// Checks the body's kind, apiVersion and namespace against the URL and fills them in.
fn conform_body(
    resource: &Resource,
    namespace: Option<&str>,
    body: &mut Value,
) -> Result<(), ApiError> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    };
    let api_version = resource.api_version();
    for (field, want) in [
        ("kind", resource.kind.as_str()),
        ("apiVersion", api_version.as_str()),
    ] {
        match object.get(field) {
            Some(Value::String(given)) if given != want => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({given}) does not match the {field} of the resource ({want})"
                )));
            }
            _ => {
                object.insert(field.into(), Value::String(want.to_string()));
            }
        }
    }
    let metadata = metadata_mut(body);
    if let Some(namespace) = namespace {
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                metadata.insert("namespace".into(), Value::String(namespace.to_string()));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    Ok(())
}

/// Schema and name validation (and, for what clients write through the main endpoint,
/// the required fields), and the unknown-field policy.
fn validate(
    resource: &Resource,
    name: &str,
    value: &Value,
    scope: Scope,
    options: WriteOptions,
) -> Result<Vec<String>, ApiError> {
    let checked = validate::check(resource.kind, value)
        .map_err(|causes| ApiError::invalid(resource, name, causes))?;
    if scope == Scope::Object {
        let causes = validate::check_required(resource.kind, value);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, name, causes));
        }
    }
    let unknown: Vec<String> = checked
        .unknown_fields
        .iter()
        .map(|field| format!("unknown field \"{field}\""))
        .collect();
    match options.field_validation {
        FieldValidation::Strict if !unknown.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            unknown.join(", ")
        ))),
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(Vec::new()),
    }
}

/// Creates an object. `seed` marks the server's own seed: the API drops the status of a
/// new Pod or Service (only its subresource sets it), refuses a resourceVersion and
/// assigns uid and creation time; a seed keeps status, uid and creation time as
/// written (and ignores a resourceVersion).
pub fn create(
    state: &mut ApiState,
    resource: &'static Resource,
    namespace: Option<&str>,
    mut body: Value,
    options: WriteOptions,
    seed: bool,
) -> Result<Written, ApiError> {
    let kind = resource.kind;
    conform_body(resource, namespace, &mut body)?;
    apply_defaults(kind, &mut body);
    let generated = meta_str(&body, "generateName")
        .filter(|_| meta_str(&body, "name").is_none_or(str::is_empty))
        .map(str::to_string);
    if let Some(prefix) = generated {
        let name = format!("{prefix}{}", state.ids.name_suffix());
        metadata_mut(&mut body).insert("name".into(), Value::String(name));
        apply_defaults(kind, &mut body);
    }
    let Some(name) = meta_str(&body, "name")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        return Err(ApiError::invalid(
            resource,
            "",
            vec![Cause {
                field: "metadata.name".into(),
                message: "Required value: name or generateName is required".into(),
            }],
        ));
    };
    if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) && !seed {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let location = Location {
        resource,
        namespace,
        name: &name,
    };
    if let Some(namespace) = namespace
        && state
            .get(Kind::Namespace, &(String::new(), namespace.to_string()))
            .is_none()
    {
        return Err(ApiError::namespace_not_found(namespace));
    }
    if state.get(kind, &location.key()).is_some() {
        return Err(ApiError::already_exists(resource, &name));
    }
    let uid = state.ids.uid();
    let metadata = metadata_mut(&mut body);
    // A seed keeps the identity its manifest gives, as the offline verbs see it.
    for (field, value) in [("uid", Value::String(uid)), ("creationTimestamp", now())] {
        if !(seed && metadata.get(field).is_some_and(Value::is_string)) {
            metadata.insert(field.into(), value);
        }
    }
    metadata.insert("generation".into(), json!(1));
    metadata.remove("deletionTimestamp");
    metadata.remove("deletionGracePeriodSeconds");
    metadata.remove("resourceVersion");
    if !seed {
        match kind {
            Kind::Pod => body["status"] = json!({"phase": "Pending"}),
            Kind::Service => body["status"] = json!({"loadBalancer": {}}),
            _ => {}
        }
    }
    if kind == Kind::Namespace && body.pointer("/status/phase").is_none() {
        body["status"] = json!({"phase": "Active"});
    }
    let scope = if seed {
        Scope::Everything
    } else {
        Scope::Object
    };
    let warnings = validate(resource, &name, &body, scope, options)?;
    let object = if options.dry_run {
        Arc::new(body)
    } else {
        state
            .commit(kind, location.key(), Some(body))
            .ok_or_else(|| ApiError::internal("create stored nothing"))?
    };
    Ok(Written {
        object,
        created: true,
        warnings,
    })
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main endpoint: everything but the status of a kind with a status subresource.
    Object,
    /// The `/status` subresource: only the status.
    Status,
    /// Everything, status included (the server's own seed and tools beside it).
    Everything,
}

/// Replaces an object (PUT), or the part of it `scope` allows.
pub fn update(
    state: &mut ApiState,
    location: Location<'_>,
    mut body: Value,
    scope: Scope,
    options: WriteOptions,
) -> Result<Written, ApiError> {
    let resource = location.resource;
    let current = state
        .get(location.kind(), &location.key())
        .cloned()
        .ok_or_else(|| ApiError::not_found(resource, location.name))?;
    conform_body(resource, location.namespace, &mut body)?;
    match meta_str(&body, "name") {
        None | Some("") => {
            metadata_mut(&mut body).insert("name".into(), Value::String(location.name.into()));
        }
        Some(given) if given != location.name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({})",
                location.name
            )));
        }
        Some(_) => {}
    }
    check_preconditions(
        &location,
        &current,
        meta_str(&body, "uid"),
        meta_str(&body, "resourceVersion"),
    )?;
    let mut next = if scope == Scope::Status {
        let mut next = Value::clone(&current);
        match body.get("status") {
            Some(status) => next["status"] = status.clone(),
            None => {
                if let Some(object) = next.as_object_mut() {
                    object.remove("status");
                }
            }
        }
        next
    } else {
        if resource.status_subresource && scope == Scope::Object {
            match current.get("status") {
                Some(status) => body["status"] = status.clone(),
                None => {
                    if let Some(object) = body.as_object_mut() {
                        object.remove("status");
                    }
                }
            }
        }
        body
    };
    apply_defaults(location.kind(), &mut next);
    keep_server_metadata(&current, &mut next);
    let warnings = validate(resource, location.name, &next, scope, options)?;
    if unchanged(&current, &next) || options.dry_run {
        return Ok(Written {
            object: if options.dry_run {
                Arc::new(next)
            } else {
                current
            },
            created: false,
            warnings,
        });
    }
    let object = state
        .commit(location.kind(), location.key(), Some(next))
        .ok_or_else(|| ApiError::internal("update stored nothing"))?;
    Ok(Written {
        object,
        created: false,
        warnings,
    })
}

/// Fails with `Conflict` when the given uid or resourceVersion is not the current one.
fn check_preconditions(
    location: &Location<'_>,
    current: &Value,
    uid: Option<&str>,
    resource_version: Option<&str>,
) -> Result<(), ApiError> {
    let current_uid = meta_str(current, "uid").unwrap_or_default();
    if let Some(uid) = uid.filter(|u| !u.is_empty())
        && uid != current_uid
    {
        return Err(ApiError::conflict(
            location.resource,
            location.name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}"
            ),
        ));
    }
    if let Some(rv) = resource_version.filter(|rv| !rv.is_empty())
        && Some(rv) != meta_str(current, "resourceVersion")
    {
        return Err(ApiError::stale_resource_version(
            location.resource,
            location.name,
        ));
    }
    Ok(())
}

/// Keeps what clients cannot change (uid, creation time, deletion marks) and bumps
/// `generation` when anything but metadata and status changed.
fn keep_server_metadata(current: &Value, next: &mut Value) {
    let generation = current
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let spec_changed = without_metadata_and_status(current) != without_metadata_and_status(next);
    let metadata = metadata_mut(next);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match current.get("metadata").and_then(|m| m.get(field)) {
            Some(value) => {
                metadata.insert(field.into(), value.clone());
            }
            None => {
                metadata.remove(field);
            }
        }
    }
    metadata.insert(
        "generation".into(),
        json!(if spec_changed {
            generation + 1
        } else {
            generation
        }),
    );
    metadata.remove("resourceVersion");
    if let Some(rv) = current.pointer("/metadata/resourceVersion") {
        metadata.insert("resourceVersion".into(), rv.clone());
    }
}

fn without_metadata_and_status(value: &Value) -> Map<String, Value> {
    let mut map = value.as_object().cloned().unwrap_or_default();
    map.remove("metadata");
    map.remove("status");
    map
}

fn unchanged(current: &Value, next: &Value) -> bool {
    current == next
}

/// Applies a PATCH to the current object, then stores it as an update. A server-side
/// apply of an object that does not exist creates it.
pub fn patch(
    state: &mut ApiState,
    location: Location<'_>,
    patch_type: PatchType,
    patch_body: &Value,
    scope: Scope,
    options: WriteOptions,
) -> Result<Written, ApiError> {
    let resource = location.resource;
    let Some(current) = state.get(location.kind(), &location.key()).cloned() else {
        if patch_type == PatchType::Apply && scope != Scope::Status {
            let mut body = patch_body.clone();
            metadata_mut(&mut body)
                .entry("name")
                .or_insert_with(|| Value::String(location.name.into()));
            return create(state, resource, location.namespace, body, options, false);
        }
        return Err(ApiError::not_found(resource, location.name));
    };
    let mut patched = Value::clone(&current);
    let applied = match patch_type {
        PatchType::Merge | PatchType::Apply => {
            patch::merge_patch(&mut patched, patch_body);
            Ok(())
        }
        PatchType::Strategic => patch::strategic_merge_patch(&mut patched, patch_body),
        PatchType::Json => patch::json_patch(&mut patched, patch_body),
    };
    applied.map_err(|message| {
        ApiError::invalid(
            resource,
            location.name,
            vec![Cause {
                field: "patch".into(),
                message,
            }],
        )
    })?;
    update(state, location, patched, scope, options)
}

/// `DeleteOptions.preconditions`.
#[derive(Clone, Debug, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// Deletes an object now (no graceful deletion); a Namespace first deletes every
/// object in it. Returns the object as deleted.
pub fn delete(
    state: &mut ApiState,
    location: Location<'_>,
    preconditions: &Preconditions,
    options: WriteOptions,
) -> Result<Arc<Value>, ApiError> {
    let current = state
        .get(location.kind(), &location.key())
        .cloned()
        .ok_or_else(|| ApiError::not_found(location.resource, location.name))?;
    check_preconditions(
        &location,
        &current,
        preconditions.uid.as_deref(),
        preconditions.resource_version.as_deref(),
    )?;
    if options.dry_run {
        return Ok(current);
    }
    if location.kind() == Kind::Namespace {
        for (kind, key) in state.keys_in_namespace(location.name) {
            state.commit(kind, key, None);
        }
    }
    state
        .commit(location.kind(), location.key(), None)
        .ok_or_else(|| ApiError::not_found(location.resource, location.name))
}

impl ApiState {
    /// A store holding the `default` Namespace (kube-apiserver always has it) and
    /// `seed`, in order (a later duplicate replaces an earlier one, as `kubectl apply`
    /// would); each object keeps its status.
    pub fn seeded(seed: Vec<ManifestObject>, history: usize) -> anyhow::Result<ApiState> {
        let mut state = ApiState::new(history);
        let default = json!({"metadata": {"name": "default"}});
        state
            .put(Kind::Namespace, default)
            .map_err(|err| anyhow::anyhow!("creating the default namespace: {}", err.message))?;
        for ManifestObject { kind, value } in seed {
            let name = object_name(&value);
            state
                .put(kind, value)
                .map_err(|err| anyhow::anyhow!("seeding {kind} {name}: {}", err.message))?;
        }
        Ok(state)
    }

    /// Creates or replaces an object whole, status included, creating its namespace
    /// if missing — as the seed does. For tools beside the server, and for changing the
    /// store while the server is down.
    pub fn put(&mut self, kind: Kind, mut value: Value) -> Result<Arc<Value>, ApiError> {
        let resource = Resource::of(kind);
        apply_defaults(kind, &mut value);
        let namespace = kind.namespaced().then(|| {
            meta_str(&value, "namespace")
                .unwrap_or("default")
                .to_string()
        });
        let name = meta_str(&value, "name").unwrap_or_default().to_string();
        if let Some(namespace) = &namespace
            && self
                .get(Kind::Namespace, &(String::new(), namespace.clone()))
                .is_none()
        {
            let namespace = json!({"metadata": {"name": namespace}});
            create(
                self,
                Resource::of(Kind::Namespace),
                None,
                namespace,
                WriteOptions::default(),
                true,
            )?;
        }
        let location = Location {
            resource,
            namespace: namespace.as_deref(),
            name: &name,
        };
        let options = WriteOptions::default();
        let written = if self.get(kind, &location.key()).is_some() {
            if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                metadata.remove("resourceVersion");
                metadata.remove("uid");
            }
            update(self, location, value, Scope::Everything, options)?
        } else {
            create(self, resource, namespace.as_deref(), value, options, true)?
        };
        Ok(written.object)
    }

    /// Deletes an object (a Namespace with its contents).
    pub fn remove(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let location = Location {
            resource: Resource::of(kind),
            namespace,
            name,
        };
        delete(
            self,
            location,
            &Preconditions::default(),
            WriteOptions::default(),
        )
    }
}

fn object_name(value: &Value) -> String {
    match (meta_str(value, "namespace"), meta_str(value, "name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_string(),
        _ => "(no name)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(kind: Kind) -> &'static Resource {
        Resource::of(kind)
    }

    fn state_with_namespace(name: &str) -> ApiState {
        let mut state = ApiState::new(100);
        create(
            &mut state,
            resource(Kind::Namespace),
            None,
            json!({"metadata": {"name": name}}),
            WriteOptions::default(),
            false,
        )
        .unwrap();
        state
    }

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "c", "image": "x"}]},
               "status": {"podIP": "10.0.0.1"}})
    }

    /// Creates a Pod in namespace "a" through the main endpoint.
    fn create_pod(
        state: &mut ApiState,
        body: Value,
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        create(state, resource(Kind::Pod), Some("a"), body, options, false)
    }

    fn at<'a>(kind: Kind, namespace: Option<&'a str>, name: &'a str) -> Location<'a> {
        Location {
            resource: resource(kind),
            namespace,
            name,
        }
    }

    #[test]
    fn create_fills_server_metadata_and_guards_namespace_and_name() {
        let mut state = state_with_namespace("a");
        let ns = state
            .get(Kind::Namespace, &(String::new(), "a".into()))
            .unwrap();
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "a");
        assert_eq!(ns["status"]["phase"], "Active");
        let pods = resource(Kind::Pod);
        let opts = WriteOptions::default();
        let written = create(&mut state, pods, Some("a"), pod("p"), opts, false).unwrap();
        let object = &written.object;
        assert_eq!(object["metadata"]["namespace"], "a");
        assert_eq!(object["metadata"]["resourceVersion"], "2");
        assert_eq!(object["metadata"]["generation"], 1);
        assert_eq!(object["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert_eq!(object["status"], json!({"phase": "Pending"}));
        let err = create(&mut state, pods, Some("a"), pod("p"), opts, false).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let err = create(&mut state, pods, Some("b"), pod("p"), opts, false).unwrap_err();
        assert_eq!(err.message, "namespaces \"b\" not found");
        let generated = json!({"metadata": {"generateName": "web-"},
                               "spec": {"containers": [{"name": "c"}]}});
        let written = create(&mut state, pods, Some("a"), generated, opts, false).unwrap();
        let name = written.object["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        let wrong_kind = json!({"kind": "Service", "metadata": {"name": "x"}});
        assert_eq!(
            create(&mut state, pods, Some("a"), wrong_kind, opts, false)
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn update_checks_resource_version_and_keeps_status_off_the_main_endpoint() {
        let mut state = state_with_namespace("a");
        let opts = WriteOptions::default();
        create_pod(&mut state, pod("p"), opts).unwrap();
        let p = at(Kind::Pod, Some("a"), "p");
        let mut body = pod("p");
        body["metadata"]["resourceVersion"] = json!("2");
        body["metadata"]["labels"] = json!({"x": "y"});
        body["spec"]["containers"][0]["image"] = json!("z");
        let updated = update(&mut state, p, body.clone(), Scope::Object, opts)
            .unwrap()
            .object;
        assert_eq!(updated["metadata"]["labels"]["x"], "y");
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(
            updated["status"],
            json!({"phase": "Pending"}),
            "status kept"
        );
        let err = update(&mut state, p, body.clone(), Scope::Object, opts).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert!(
            err.message.contains("the object has been modified"),
            "{}",
            err.message
        );
        let status = json!({"metadata": {"name": "p"}, "spec": {"containers": []},
                            "status": {"podIP": "10.0.0.9"}});
        let updated = update(&mut state, p, status, Scope::Status, opts)
            .unwrap()
            .object;
        assert_eq!(updated["status"], json!({"podIP": "10.0.0.9"}));
        assert_eq!(updated["spec"]["containers"][0]["image"], "z", "spec kept");
        assert_eq!(updated["metadata"]["generation"], 2);
        let rv = state.resource_version();
        let same = Value::clone(&updated);
        update(&mut state, p, same, Scope::Object, opts).unwrap();
        assert_eq!(
            state.resource_version(),
            rv,
            "a no-op update writes nothing"
        );
    }

    #[test]
    fn invalid_objects_name_the_field() {
        let mut state = state_with_namespace("a");
        let mut bad = pod("p");
        bad["spec"]["containers"][0]["ports"] = json!([{"containerPort": "http"}]);
        let err = create_pod(&mut state, bad, WriteOptions::default()).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(
            err.message
                .starts_with("Pod \"p\" is invalid: spec.containers[0].ports[0].containerPort"),
            "{}",
            err.message
        );
        let mut unknown = pod("q");
        unknown["spec"]["bogus"] = json!(1);
        let strict = WriteOptions {
            field_validation: FieldValidation::Strict,
            ..Default::default()
        };
        let err = create_pod(&mut state, unknown.clone(), strict).unwrap_err();
        assert_eq!(
            err.message,
            "strict decoding error: unknown field \"spec.bogus\""
        );
        let warned = create_pod(&mut state, unknown, WriteOptions::default()).unwrap();
        assert_eq!(warned.warnings, ["unknown field \"spec.bogus\""]);
    }

    #[test]
    fn patch_and_delete() {
        let mut state = state_with_namespace("a");
        let opts = WriteOptions::default();
        create_pod(&mut state, pod("p"), opts).unwrap();
        let p = at(Kind::Pod, Some("a"), "p");
        let merge = json!({"metadata": {"labels": {"app": "web"}}, "status": {"podIP": "1.2.3.4"}});
        let patched = patch(&mut state, p, PatchType::Merge, &merge, Scope::Object, opts)
            .unwrap()
            .object;
        assert_eq!(patched["metadata"]["labels"]["app"], "web");
        assert_eq!(
            patched["status"]["phase"], "Pending",
            "main endpoint ignores status"
        );
        let patched = patch(&mut state, p, PatchType::Merge, &merge, Scope::Status, opts)
            .unwrap()
            .object;
        assert_eq!(patched["status"]["podIP"], "1.2.3.4");
        let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"app": "db"}}});
        let err = patch(&mut state, p, PatchType::Merge, &stale, Scope::Object, opts).unwrap_err();
        assert_eq!(err.code, 409);
        let wrong_uid = Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        };
        assert_eq!(
            delete(&mut state, p, &wrong_uid, opts).unwrap_err().code,
            409
        );
        let ns = at(Kind::Namespace, None, "a");
        let deleted = delete(&mut state, ns, &Preconditions::default(), opts).unwrap();
        assert_eq!(deleted["metadata"]["name"], "a");
        assert!(state.is_empty(), "the namespace took its pod with it");
        assert_eq!(
            delete(&mut state, p, &Preconditions::default(), opts)
                .unwrap_err()
                .message,
            "pods \"p\" not found"
        );
    }
}
