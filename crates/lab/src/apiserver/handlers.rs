//! Each request to its Kubernetes verb: authentication first, then get, list, create, update,
//! patch, delete and deletecollection here, watches in [`super::watch`] and the token endpoints in
//! [`super::token_api`].

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::auth::{authenticate, bearer_token};
use super::http::{Body, Query, error_response, full, json_response, read_body, value_response};
use super::objects::{
    self, apply_defaults, carry_over, check_shape, check_type, stamp_new, validate,
};
use super::paging::ContinueToken;
use super::patch::{self, PatchType};
use super::render::{render, render_value};
use super::resources::{Resource, Storage, id_of};
use super::routing::{Route, Target, route};
use super::selectors::Filter;
use super::state::ApiState;
use super::status::{self, ApiError};
use super::store::{Change, StoredObject};
use super::writes::{
    PROTECTED_NAMESPACES, allocate_cluster_ip, delete_one, invalid, terminate_namespace,
};
use super::{discovery, tables, token_api, watch};

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
        (Method::GET, true) => get(&shared, &target),
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

fn get(shared: &ApiState, target: &Target) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    let stored = shared
        .store
        .get(target.resource, target.namespace(), name)
        .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))?;
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
            let metadata = &stored.object["metadata"];
            let key = (
                metadata["namespace"].as_str().unwrap_or(""),
                metadata["name"].as_str().unwrap_or(""),
            );
            if key <= (start.namespace.as_str(), start.name.as_str()) {
                continue;
            }
        }
        if !filter.matches(&stored.object) {
            continue;
        }
        if limit.is_some_and(|limit| items.len() == limit) {
            let last: &StoredObject = items.last().expect("limit is positive");
            let metadata = &last.object["metadata"];
            let token = ContinueToken {
                revision,
                namespace: metadata["namespace"].as_str().unwrap_or("").to_owned(),
                name: metadata["name"].as_str().unwrap_or("").to_owned(),
            };
            continue_token = Some(token.encode());
            break;
        }
        items.push(stored);
    }
    if tables::wants_table(accept) {
        let objects: Vec<Value> = items
            .iter()
            .map(|stored| render_value(stored, kind, &target.version))
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

/// Puts the object in the URL's namespace (or none for cluster-scoped kinds).
fn place(target: &Target, object: &mut Value) -> Result<(), ApiError> {
    let metadata = object["metadata"]
        .as_object_mut()
        .expect("check_type made it an object");
    if target.kind().namespaced {
        let namespace = target.namespace().to_owned();
        if namespace.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} are namespaced: send them to /namespaces/<namespace>/{}",
                target.kind().plural,
                target.kind().plural
            )));
        }
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(sent) if !sent.is_empty() && sent != namespace => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({sent}) does not match the namespace sent on the request ({namespace})"
                )));
            }
            _ => {
                metadata.insert("namespace".into(), json!(namespace));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    Ok(())
}

fn require_namespace(shared: &ApiState, target: &Target) -> Result<(), ApiError> {
    if target.kind().namespaced
        && shared
            .store
            .get(id_of("", "Namespace"), "", target.namespace())
            .is_none()
    {
        return Err(ApiError::not_found("", "namespaces", target.namespace()));
    }
    Ok(())
}

fn generated_name(prefix: &str) -> String {
    let mut bytes = [0u8; 5];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system has randomness");
    format!("{prefix}{}", objects::name_suffix(&bytes))
}

/// Applies the kind's defaults, then its rules: the last steps before an object is stored.
fn complete(kind: &Resource, object: &mut Value) -> Result<(), ApiError> {
    apply_defaults(kind, object);
    let causes = validate(kind, object);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(kind, object, causes))
    }
}

fn create(
    shared: &ApiState,
    target: &Target,
    body: &[u8],
    content_type: &str,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let mut object = objects::parse_body(body, content_type)?;
    check_type(kind, &target.version, &mut object)?;
    place(target, &mut object)?;
    require_namespace(shared, target)?;
    let metadata = object["metadata"].as_object_mut().expect("checked");
    if metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
        && let Some(prefix) = metadata.get("generateName").and_then(Value::as_str)
    {
        let name = generated_name(prefix);
        metadata.insert("name".into(), json!(name));
    }
    if metadata
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    check_shape(kind, &object)?;
    complete(kind, &mut object)?;
    let allocated = allocate_cluster_ip(shared, kind, &mut object)?;
    stamp_new(&mut object, kind);
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let result = shared.store.change(
        target.resource,
        target.namespace(),
        &name,
        dry_run,
        |current| match current {
            Some(_) => Err(ApiError::already_exists(kind.group, kind.plural, &name)),
            None => Ok(Change::Put(object)),
        },
    );
    if (result.is_err() || dry_run)
        && let Some(address) = allocated
    {
        shared.service_ips().release(address);
    }
    let stored = result?.current.expect("a put leaves an object");
    Ok(json_response(
        StatusCode::CREATED,
        render(&stored, kind, &target.version),
    ))
}

fn without_resource_version(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(metadata) = copy["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
    }
    copy
}

/// Checks and completes `new`, the replacement of `current` sent by PUT or made by PATCH.
fn replacement(
    target: &Target,
    current: &StoredObject,
    mut new: Value,
) -> Result<Change, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    if !new.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    check_type(kind, &target.version, &mut new)?;
    place(target, &mut new)?;
    // The shape first: the steps below index into fields they expect to be objects.
    check_shape(kind, &new)?;
    match new["metadata"]["name"].as_str() {
        Some(sent) if sent != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({sent}) does not match the name on the URL ({name})"
            )));
        }
        None => new["metadata"]["name"] = json!(name),
        Some(_) => {}
    }
    let sent_version = new["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    if !sent_version.is_empty() && sent_version != current.revision.to_string() {
        return Err(ApiError::conflict(
            kind.group,
            kind.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if target.subresource.as_deref() == Some("status") {
        let status = new.get("status").cloned();
        new = (*current.object).clone();
        match status {
            Some(status) => new["status"] = status,
            None => {
                new.as_object_mut()
                    .expect("stored objects are objects")
                    .remove("status");
            }
        }
        // The stored object with the sent status is a new object: check its shape too.
        check_shape(kind, &new)?;
    } else {
        carry_over(kind, &current.object, &mut new);
        if kind.kind == "Service" && kind.group.is_empty() {
            // The cluster IP is immutable; an update that leaves it out keeps it.
            for field in ["clusterIP", "clusterIPs"] {
                let old = &current.object["spec"][field];
                let sent = &new["spec"][field];
                if sent.is_null() || sent == "" {
                    new["spec"][field] = old.clone();
                } else if sent != old && !old.is_null() {
                    return Err(ApiError::invalid(
                        kind.kind,
                        kind.group,
                        name,
                        vec![status::Cause::new(
                            format!("spec.{field}"),
                            "Invalid value: field is immutable",
                        )],
                    ));
                }
            }
        }
    }
    complete(kind, &mut new)?;
    new["metadata"]["resourceVersion"] = json!(current.revision.to_string());
    if without_resource_version(&new) == without_resource_version(&current.object) {
        return Ok(Change::Keep);
    }
    Ok(Change::Put(new))
}

fn update(
    shared: &ApiState,
    target: &Target,
    body: &[u8],
    content_type: &str,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let new = objects::parse_body(body, content_type)?;
    replace_existing(shared, target, dry_run, |_| Ok(new))
}

/// Replaces an existing object with what `make` builds from it (PUT, PATCH), answering with the
/// stored result.
fn replace_existing(
    shared: &ApiState,
    target: &Target,
    dry_run: bool,
    make: impl FnOnce(&StoredObject) -> Result<Value, ApiError>,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let name = target.name.clone().unwrap_or_default();
    let outcome = shared.store.change(
        target.resource,
        target.namespace(),
        &name,
        dry_run,
        |current| {
            let current =
                current.ok_or_else(|| ApiError::not_found(kind.group, kind.plural, &name))?;
            replacement(target, current, make(current)?)
        },
    )?;
    let stored = outcome.current.expect("a replacement leaves an object");
    Ok(json_response(
        StatusCode::OK,
        render(&stored, kind, &target.version),
    ))
}

fn is_custom_resource(kind: &Resource) -> bool {
    kind.group.ends_with(".istio.io")
}

fn patch(
    shared: &ApiState,
    target: &Target,
    patch_type: PatchType,
    body: &[u8],
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    if patch_type == PatchType::Strategic && is_custom_resource(kind) {
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json: strategic merge patch is not supported for custom resources; send a JSON merge patch",
        ));
    }
    replace_existing(shared, target, dry_run, |current| {
        patch::apply(patch_type, kind.kind, &current.object, body)
    })
}

fn delete(
    shared: &ApiState,
    target: &Target,
    body: &[u8],
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let name = target.name.clone().unwrap_or_default();
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|error| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {error}"))
        })?
    };
    let dry_run = dry_run
        || options["dryRun"]
            .as_array()
            .is_some_and(|modes| modes.iter().any(|mode| mode == "All"));
    let preconditions = &options["preconditions"];
    if kind.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&name.as_str()) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    let stored = shared
        .store
        .get(target.resource, target.namespace(), &name)
        .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, &name))?;
    let uid = stored.object["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let check = |current: &StoredObject| {
        if let Some(uid) = preconditions["uid"].as_str()
            && current.object["metadata"]["uid"] != uid
        {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current.object["metadata"]["uid"]
                ),
            ));
        }
        if let Some(version) = preconditions["resourceVersion"].as_str()
            && current.revision.to_string() != version
        {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Ok(())
    };
    // Preconditions first: a refused namespace delete must not have emptied the namespace.
    check(&stored)?;
    if kind.kind == "Namespace" && !dry_run {
        terminate_namespace(shared, &name)?;
    }
    let outcome = delete_one(
        shared,
        target.resource,
        target.namespace(),
        &name,
        dry_run,
        check,
    )?;
    if outcome.is_none() {
        return Err(ApiError::not_found(kind.group, kind.plural, &name));
    }
    Ok(value_response(
        StatusCode::OK,
        &status::deleted(kind.group, kind.plural, &name, &uid),
    ))
}

fn delete_collection(
    shared: &ApiState,
    target: &Target,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    if !body.is_empty() {
        serde_json::from_slice::<Value>(body).map_err(|error| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {error}"))
        })?;
    }
    let filter = Filter::from_query(query, kind)?;
    let (items, _) = shared
        .store
        .list(target.resource, target.namespace.as_deref());
    let mut deleted = Vec::new();
    for stored in items
        .into_iter()
        .filter(|stored| filter.matches(&stored.object))
    {
        let metadata = &stored.object["metadata"];
        let namespace = metadata["namespace"].as_str().unwrap_or("");
        let name = metadata["name"].as_str().unwrap_or("");
        if kind.kind == "Namespace" {
            if PROTECTED_NAMESPACES.contains(&name) {
                continue;
            }
            if !query.dry_run() {
                terminate_namespace(shared, name)?;
            }
        }
        if let Some(object) = delete_one(
            shared,
            target.resource,
            namespace,
            name,
            query.dry_run(),
            |_| Ok(()),
        )? {
            deleted.push(render_value(&object, kind, &target.version));
        }
    }
    Ok(value_response(
        StatusCode::OK,
        &json!({"apiVersion": kind.api_version(&target.version), "kind": format!("{}List", kind.kind), "metadata": {"resourceVersion": shared.store.revision().to_string()}, "items": deleted}),
    ))
}
