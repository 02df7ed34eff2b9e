//! Each request to its Kubernetes verb: authentication first, then get, list, create, update,
//! patch, delete and deletecollection here, watches in [`super::watch`] and the token endpoints in
//! [`super::token_api`].

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use kube::core::DynamicObject;
use serde_json::json;

use super::auth::{authenticate, bearer_token};
use super::body::parse_body;
use super::http::{Body, Query, error_response, full, json_response, read_body, value_response};
use super::paging::ContinueToken;
use super::patch::{self, PatchType};
use super::render::{render, render_object};
use super::resources::Storage;
use super::routing::{Route, Target, route};
use super::selectors::Filter;
use super::state::ApiState;
use super::status::{self, ApiError};
use super::store::StoredObject;
use super::writes::{self, DeleteOptions, PROTECTED_NAMESPACES};
use super::{discovery, pod_exec, pod_log, pod_proxy, scale, tables, token_api, watch};

pub async fn handle(shared: Arc<ApiState>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match serve(shared, request).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

async fn serve(
    shared: Arc<ApiState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/healthz" | "/readyz" | "/livez" => return Ok(Response::new(full("ok"))),
        "/version" => return Ok(value_response(StatusCode::OK, &discovery::version())),
        _ => {}
    }
    let authenticated =
        bearer_token(&request).is_some_and(|token| authenticate(&shared, token, &[]).is_ok());
    if !authenticated {
        return Err(ApiError::unauthorized());
    }
    if path == "/openapi/v2" {
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, super::openapi_v2::CONTENT_TYPE)
            .body(full(Bytes::from_static(super::openapi_v2::document())))
            .expect("static headers are valid"));
    }
    if path == "/api" {
        return Ok(value_response(
            StatusCode::OK,
            &discovery::core_versions(&shared.address.to_string()),
        ));
    }
    if let Some(target) = pod_proxy::parse(&path) {
        let method = request.method().clone();
        return pod_proxy::serve(shared, target?, &method, request.uri().query()).await;
    }
    let target = match route(&path)? {
        Route::Document(document) => {
            return if request.method() == Method::GET {
                Ok(value_response(StatusCode::OK, &document))
            } else {
                Err(ApiError::method_not_allowed(format!(
                    "{} is read-only",
                    path
                )))
            };
        }
        Route::Objects(target) => target,
    };
    let query = Query::parse(request.uri().query());
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let method = request.method().clone();
    match target.subresource.as_deref() {
        Some("exec") if matches!(method, Method::GET | Method::POST) => {
            return pod_exec::serve(shared, &target, &query, request);
        }
        Some("log") if method == Method::GET => return pod_log::serve(shared, &target, &query),
        Some("attach" | "portforward") => {
            return Err(ApiError::method_not_allowed(format!(
                "pods/{} is not served by the lab's API server (exec and log are)",
                target.subresource.as_deref().unwrap_or("")
            )));
        }
        Some("scale") => {
            let scaled = match method {
                Method::GET => scale::get(&shared, &target)?,
                Method::PUT => {
                    let body = read_body(request, shared.config.max_body_bytes).await?;
                    let new = parse_body(&body, &content_type)?;
                    scale::change(&shared, &target, scale::ScaleUpdate::Replace(new))?
                }
                Method::PATCH => {
                    let patch_type = PatchType::from_content_type(&content_type)?;
                    let body = read_body(request, shared.config.max_body_bytes).await?;
                    scale::change(
                        &shared,
                        &target,
                        scale::ScaleUpdate::Patch(patch_type, &body),
                    )?
                }
                other => {
                    return Err(ApiError::method_not_allowed(format!(
                        "{other} is not supported on the scale subresource"
                    )));
                }
            };
            return Ok(value_response(StatusCode::OK, &scaled));
        }
        Some("exec" | "log") => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on pods/{}",
                target.subresource.as_deref().unwrap_or("")
            )));
        }
        _ => {}
    }
    if target.kind().storage == Storage::Review {
        if method != Method::POST || target.name.is_some() {
            return Err(ApiError::method_not_allowed(
                "tokenreviews only support create",
            ));
        }
        let body = read_body(request, shared.config.max_body_bytes).await?;
        return token_api::token_review(&shared, &body, &content_type);
    }
    match (method, target.name.is_some()) {
        (Method::GET, true) => get(&shared, &target, &accept),
        (Method::GET, false) if query.flag("watch") => {
            watch::serve(shared, target, &query, &accept)
        }
        (Method::GET, false) => list(&shared, &target, &query, &accept),
        (Method::POST, false) => {
            let body = read_body(request, shared.config.max_body_bytes).await?;
            create(&shared, &target, &body, &content_type, query.dry_run())
        }
        (Method::POST, true) if target.subresource.as_deref() == Some("token") => {
            let body = read_body(request, shared.config.max_body_bytes).await?;
            token_api::token_request(&shared, &target, &body, &content_type)
        }
        (Method::PUT, true) => {
            let body = read_body(request, shared.config.max_body_bytes).await?;
            update(&shared, &target, &body, &content_type, query.dry_run())
        }
        (Method::PATCH, true) => {
            let patch_type = PatchType::from_content_type(&content_type)?;
            let body = read_body(request, shared.config.max_body_bytes).await?;
            patch(&shared, &target, patch_type, &body, query.dry_run())
        }
        (Method::DELETE, true) => {
            let body = read_body(request, shared.config.max_body_bytes).await?;
            delete(&shared, &target, &body, query.dry_run())
        }
        (Method::DELETE, false) => {
            let body = read_body(request, shared.config.max_body_bytes).await?;
            delete_collection(&shared, &target, &query, &body)
        }
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}",
            path
        ))),
    }
}

fn get(shared: &ApiState, target: &Target, accept: &str) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    let stored = shared
        .store
        .get(target.resource, target.namespace(), name)
        .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))?;
    if tables::wants_table(accept) {
        let object = render_object(&stored, kind, &target.version);
        return Ok(value_response(
            StatusCode::OK,
            &tables::table(kind, &[object], stored.revision, None),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        render(&stored, kind, &target.version),
    ))
}

fn list(
    shared: &ApiState,
    target: &Target,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let filter = Filter::from_query(query, kind)?;
    let limit = query
        .get("limit")
        .map(|limit| {
            limit
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit {limit:?} is not a number")))
        })
        .transpose()?
        .filter(|limit| *limit > 0);
    let start = query
        .get("continue")
        .filter(|token| !token.is_empty())
        .map(ContinueToken::decode)
        .transpose()?;
    let (all, current_revision) = shared
        .store
        .list(target.resource, target.namespace.as_deref());
    // A continued list keeps the first page's revision, so a watch started from it misses nothing.
    let revision = start
        .as_ref()
        .map_or(current_revision, |start| start.revision);
    let mut items = Vec::new();
    let mut continue_token = None;
    for stored in all {
        if let Some(start) = &start {
            let key = (stored.namespace(), stored.name());
            if key <= (start.namespace.as_str(), start.name.as_str()) {
                continue;
            }
        }
        if !filter.matches(&stored.object) {
            continue;
        }
        if limit.is_some_and(|limit| items.len() == limit) {
            let last: &StoredObject = items.last().expect("limit is positive");
            let token = ContinueToken {
                revision,
                namespace: last.namespace().to_owned(),
                name: last.name().to_owned(),
            };
            continue_token = Some(token.encode());
            break;
        }
        items.push(stored);
    }
    if tables::wants_table(accept) {
        let objects: Vec<DynamicObject> = items
            .iter()
            .map(|stored| render_object(stored, kind, &target.version))
            .collect();
        return Ok(value_response(
            StatusCode::OK,
            &tables::table(kind, &objects, revision, continue_token.as_deref()),
        ));
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = &continue_token {
        metadata["continue"] = json!(token);
    }
    let head = format!(
        r#"{{"apiVersion":{},"kind":"{}List","metadata":{},"items":["#,
        json!(kind.api_version(&target.version)),
        kind.kind,
        metadata
    );
    let mut body = Vec::with_capacity(
        head.len() + items.iter().map(|item| item.json.len() + 1).sum::<usize>() + 2,
    );
    body.extend_from_slice(head.as_bytes());
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&render(item, kind, &target.version));
    }
    body.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, body))
}

fn create(
    state: &ApiState,
    target: &Target,
    body: &[u8],
    content_type: &str,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let object = parse_body(body, content_type)?;
    let stored = writes::create(state, target, object, dry_run)?;
    Ok(json_response(
        StatusCode::CREATED,
        render(&stored, target.kind(), &target.version),
    ))
}

fn update(
    state: &ApiState,
    target: &Target,
    body: &[u8],
    content_type: &str,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let new = parse_body(body, content_type)?;
    let stored = writes::replace(state, target, dry_run, |_| Ok(new))?;
    Ok(json_response(
        StatusCode::OK,
        render(&stored, target.kind(), &target.version),
    ))
}

fn patch(
    state: &ApiState,
    target: &Target,
    patch_type: PatchType,
    body: &[u8],
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    if patch_type == PatchType::Strategic && kind.is_custom() {
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json: strategic merge patch is not supported for custom resources; send a JSON merge patch",
        ));
    }
    let stored = writes::replace(state, target, dry_run, |current| {
        let current = serde_json::to_value(&*current.object)
            .map_err(|error| ApiError::internal(format!("cannot encode the object: {error}")))?;
        patch::apply(patch_type, kind.kind, &current, body)
    })?;
    Ok(json_response(
        StatusCode::OK,
        render(&stored, kind, &target.version),
    ))
}

fn delete(
    state: &ApiState,
    target: &Target,
    body: &[u8],
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    let options = DeleteOptions::from_request(body, dry_run)?;
    let deleted = writes::delete(state, target, &options)?
        .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))?;
    Ok(value_response(
        StatusCode::OK,
        &status::deleted(kind.group, kind.plural, name, deleted.uid()),
    ))
}

fn delete_collection(
    state: &ApiState,
    target: &Target,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let options = DeleteOptions::from_request(body, query.dry_run())?;
    let filter = Filter::from_query(query, kind)?;
    let (items, _) = state
        .store
        .list(target.resource, target.namespace.as_deref());
    let mut deleted = Vec::new();
    for stored in items
        .into_iter()
        .filter(|stored| filter.matches(&stored.object))
    {
        if kind.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&stored.name()) {
            continue;
        }
        let one = Target::object(target.resource, stored.namespace(), stored.name());
        if let Some(object) = writes::delete(state, &one, &options)? {
            deleted.push(render_object(&object, kind, &target.version));
        }
    }
    Ok(value_response(
        StatusCode::OK,
        &json!({"apiVersion": kind.api_version(&target.version), "kind": format!("{}List", kind.kind), "metadata": {"resourceVersion": state.store.revision().to_string()}, "items": deleted}),
    ))
}
