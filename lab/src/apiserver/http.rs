//! The HTTP surface: one handler that routes kube-apiserver's URL grammar to
//! discovery, list, get, watch, create, update, patch and delete, and answers every
//! failure with a `Status` object.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::discovery;
use super::history::ObjectKey;
use super::openapi;
use super::params::{Continue, DEFAULT_WATCH_TIMEOUT, Params};
use super::patch::PatchType;
use super::path::{Route, Target, route};
use super::protobuf;
use super::selector::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::status::ApiError;
use super::table;
use super::watch::{self, Selection, Start, WatchRequest};
use super::write::{self, Location, Preconditions, Scope, WriteOptions, Written};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.thawed().await;
    let path = uri.path().trim_end_matches('/');
    let response = match path {
        "/version" => json_response(StatusCode::OK, &discovery::version()),
        "/healthz" | "/livez" | "/readyz" => (StatusCode::OK, "ok").into_response(),
        _ if path == "/openapi/v3" || path.starts_with("/openapi/v3/") => {
            let serves = |kind| shared.read(|state| state.serves(kind));
            let document = match path.strip_prefix("/openapi/v3/") {
                None => Some(openapi::root(serves)),
                Some(rest) => openapi::document(rest, serves),
            };
            match document {
                Some(document) => json_response(StatusCode::OK, &document),
                None => ApiError::no_route().into_response(),
            }
        }
        _ if path == "/api"
            || path.starts_with("/api/")
            || path == "/apis"
            || path.starts_with("/apis/") =>
        {
            api(&shared, &method, &uri, &headers, body).unwrap_or_else(IntoResponse::into_response)
        }
        _ => ApiError::no_route().into_response(),
    };
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn api(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let serves = |kind| shared.read(|state| state.serves(kind));
    let discovery_document = |document: Option<Value>| {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        document
            .map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(ApiError::no_route)
    };
    match route(uri.path()) {
        Route::CoreVersions => discovery_document(Some(discovery::core_versions(shared.addr))),
        Route::Groups => discovery_document(Some(discovery::group_list(serves))),
        Route::Group(name) => discovery_document(discovery::group(&name, serves)),
        Route::Resources { group, version } => {
            discovery_document(discovery::resource_list(&group, &version, serves))
        }
        Route::NotFound => Err(ApiError::no_route()),
        Route::Resource(target) => {
            if !serves(target.resource.kind) {
                return Err(ApiError::no_route());
            }
            let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
                .map_err(|err| ApiError::bad_request(format!("invalid query: {err}")))?
                .0;
            let params = Params::parse(&pairs)?;
            resource(shared, method, target, params, headers, body)
        }
    }
}

fn resource(
    shared: &Arc<Shared>,
    method: &Method,
    target: Target,
    params: Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let scope = match target.subresource.as_deref() {
        None => Scope::Object,
        Some("status") if target.resource.status_subresource => Scope::Status,
        Some(_) => return Err(ApiError::no_route()),
    };
    let options = WriteOptions {
        dry_run: params.dry_run,
        field_validation: params.field_validation,
    };
    let location = target.name.as_deref().map(|name| Location {
        resource: target.resource,
        namespace: target.namespace.as_deref(),
        name,
    });
    let is_watch = params.watch || target.legacy_watch;
    match (method.clone(), location) {
        (Method::GET, _) if is_watch => watch(shared, &target, &params, headers),
        (Method::GET, None) => list(shared, &target, &params, headers),
        (Method::GET, Some(location)) => get(shared, location, &params, headers),
        (Method::POST, None) if scope == Scope::Object => {
            if target.resource.namespaced() && target.namespace.is_none() {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let body = parse_body(&body, headers)?;
            let written = shared.write(|state| {
                write::create(
                    state,
                    target.resource,
                    target.namespace.as_deref(),
                    body,
                    options,
                    false,
                )
            })?;
            Ok(written_response(written))
        }
        (Method::PUT, Some(location)) => {
            let body = parse_body(&body, headers)?;
            let written =
                shared.write(|state| write::update(state, location, body, scope, options))?;
            Ok(written_response(written))
        }
        (Method::PATCH, Some(location)) => {
            let content_type = header_str(headers, header::CONTENT_TYPE);
            let patch_type = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            let patch = if patch_type == PatchType::Apply {
                parse_yaml(&body)?
            } else {
                parse_json(&body)?
            };
            let written = shared
                .write(|state| write::patch(state, location, patch_type, &patch, scope, options))?;
            Ok(written_response(written))
        }
        (Method::DELETE, Some(location)) if scope == Scope::Object => {
            let (preconditions, dry_run) = delete_options(&body)?;
            let options = WriteOptions {
                dry_run: options.dry_run || dry_run,
                ..options
            };
            let deleted =
                shared.write(|state| write::delete(state, location, &preconditions, options))?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        (method, _) => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("the request body is not valid JSON: {err}")))
}

fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    serde_saphyr::from_str(text)
        .map_err(|err| ApiError::bad_request(format!("the request body is not valid YAML: {err}")))
}

fn parse_body(body: &[u8], headers: &HeaderMap) -> Result<Value, ApiError> {
    let content_type = header_str(headers, header::CONTENT_TYPE);
    if content_type.starts_with(protobuf::CONTENT_TYPE) {
        protobuf::decode(body)
    } else if content_type.contains("yaml") {
        parse_yaml(body)
    } else if content_type.is_empty() || content_type.contains("json") {
        parse_json(body)
    } else {
        Err(ApiError::unsupported_media_type(content_type))
    }
}

/// `DeleteOptions` from a DELETE body: the preconditions and `dryRun`.
fn delete_options(body: &[u8]) -> Result<(Preconditions, bool), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Preconditions::default(), false));
    }
    let options = parse_json(body)?;
    let precondition = |field: &str| {
        options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let dry_run = options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|modes| modes.iter().any(|m| m == "All"));
    Ok((
        Preconditions {
            uid: precondition("uid"),
            resource_version: precondition("resourceVersion"),
        },
        dry_run,
    ))
}

fn written_response(written: Written) -> Response {
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json_response(status, &written.object);
    for warning in written.warnings {
        let text = format!("299 - {}", serde_json::Value::String(warning));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn selection(target: &Target, params: &Params) -> Result<Selection, ApiError> {
    let kind = target.resource.kind;
    let mut fields = params.field_selector.clone();
    if let Some(name) = &target.name {
        // A watch of one object is a watch of its collection by name.
        fields = if fields.is_empty() {
            format!("metadata.name={name}")
        } else {
            format!("{fields},metadata.name={name}")
        };
    }
    Ok(Selection {
        resource: target.resource,
        namespace: target.namespace.clone(),
        labels: LabelSelector::parse(&params.label_selector)?,
        fields: FieldSelector::parse(kind, &fields)?,
    })
}

fn get(
    shared: &Arc<Shared>,
    location: Location<'_>,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key: ObjectKey = (
        location.namespace.unwrap_or_default().to_string(),
        location.name.to_string(),
    );
    let object = shared
        .read(|state| state.get(location.resource.kind, &key).cloned())
        .ok_or_else(|| ApiError::not_found(location.resource, location.name))?;
    if let Some(version) = table::requested_version(header_str(headers, header::ACCEPT)) {
        let rv = object["metadata"]["resourceVersion"].clone();
        let document = table::table(
            version,
            location.resource.kind,
            &[object],
            json!({"resourceVersion": rv}),
            params.include_object.as_deref(),
        );
        return Ok(json_response(StatusCode::OK, &document));
    }
    Ok(json_response(StatusCode::OK, &object))
}

/// Which snapshot a list reads: `(resourceVersion, start after this key)`.
fn list_position(params: &Params, current: u64) -> Result<(u64, Option<ObjectKey>), ApiError> {
    if let Some(token) = &params.continue_token {
        let token = Continue::decode(token)?;
        return Ok((token.rv, Some(token.last)));
    }
    let requested = params.resource_version_number()?;
    match (requested, params.resource_version_match.as_deref()) {
        (Some(rv), Some("Exact")) => Ok((rv, None)),
        (Some(rv), _) if rv > current => Err(too_large_resource_version(rv, current)),
        _ => Ok((current, None)),
    }
}

fn too_large_resource_version(requested: u64, current: u64) -> ApiError {
    let mut error = ApiError::internal(format!(
        "Too large resource version: {requested}, current: {current}"
    ));
    error.code = 504;
    error.reason = "Timeout";
    error
}

fn list(
    shared: &Arc<Shared>,
    target: &Target,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let selection = selection(target, params)?;
    let kind = target.resource.kind;
    let (rv, candidates) = shared.read(|state| {
        let (rv, start) = list_position(params, state.resource_version())?;
        let items = state
            .list_at(kind, target.namespace.as_deref(), start.as_ref(), rv)
            .map_err(|expired| {
                if params.continue_token.is_some() {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                } else {
                    expired
                }
            })?;
        Ok::<_, ApiError>((rv, items))
    })?;
    let mut selected = candidates
        .into_iter()
        .filter(|(_, object)| selection.selects(object));
    let mut items = Vec::new();
    let mut last_key = None;
    for (key, object) in selected.by_ref() {
        items.push(object);
        if params.limit.is_some_and(|limit| items.len() >= limit) {
            last_key = Some(key);
            break;
        }
    }
    let remaining = selected.count();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let (Some(last), true) = (last_key, remaining > 0) {
        metadata["continue"] = json!(Continue { rv, last }.encode());
        metadata["remainingItemCount"] = json!(remaining);
    }
    if let Some(version) = table::requested_version(header_str(headers, header::ACCEPT)) {
        let document = table::table(
            version,
            kind,
            &items,
            metadata,
            params.include_object.as_deref(),
        );
        return Ok(json_response(StatusCode::OK, &document));
    }
    Ok(list_response(target, &metadata, &items))
}

/// Writes the list straight from the stored objects, without building one big `Value`.
fn list_response(target: &Target, metadata: &Value, items: &[Arc<Value>]) -> Response {
    let resource = target.resource;
    let mut body = Vec::with_capacity(64 + items.len() * 1024);
    body.extend_from_slice(b"{\"kind\":");
    let head = json!(resource.list_kind()).to_string();
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(b",\"apiVersion\":");
    body.extend_from_slice(json!(resource.api_version()).to_string().as_bytes());
    body.extend_from_slice(b",\"metadata\":");
    body.extend_from_slice(metadata.to_string().as_bytes());
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        // Serializing a `Value` cannot fail.
        let _ = serde_json::to_writer(&mut body, item.as_ref());
    }
    body.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let selection = selection(target, params)?;
    let requested = params.resource_version_number()?;
    let start = match (requested, params.send_initial_events) {
        (_, Some(true)) => {
            if !params.bookmarks {
                return Err(ApiError::bad_request(
                    "sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true",
                ));
            }
            Start::CurrentState { end_bookmark: true }
        }
        (None | Some(0), Some(false)) => Start::After(shared.read(|s| s.resource_version())),
        (None | Some(0), None) => Start::CurrentState {
            end_bookmark: false,
        },
        (Some(rv), _) => Start::After(rv),
    };
    let table = table::requested_version(header_str(headers, header::ACCEPT))
        .map(|version| (version, params.include_object.clone()));
    let request = WatchRequest {
        selection,
        table,
        start,
        bookmarks: params.bookmarks,
        timeout: params.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
    };
    let body = Body::from_stream(watch::stream(shared.clone(), request));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response())
}
