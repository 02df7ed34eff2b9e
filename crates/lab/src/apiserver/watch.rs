//! `?watch=true`: a stream of `{"type": ..., "object": ...}` lines, resumable from a
//! resourceVersion, with bookmarks for clients that ask for them, and `410 Gone` when the
//! requested resourceVersion is older than the history the server keeps.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::http::{Body, Query};
use super::render::{render, render_object};
use super::resources::Resource;
use super::routing::Target;
use super::selectors::Filter;
use super::state::ApiState;
use super::status::ApiError;
use super::store::{Event, EventType, StoredObject};
use super::tables;

/// Longest a watch stays open; clients re-watch from their last resourceVersion.
const MAX_WATCH: Duration = Duration::from_secs(1800);

struct Stream {
    kind: &'static Resource,
    version: String,
    table: bool,
    sender: mpsc::Sender<Bytes>,
}

impl Stream {
    fn object_bytes(&self, object: &StoredObject) -> Bytes {
        if self.table {
            let rendered = render_object(object, self.kind, &self.version);
            let table = tables::table(self.kind, &[rendered], object.revision, None);
            Bytes::from(serde_json::to_vec(&table).expect("a JSON value always serializes"))
        } else {
            render(object, self.kind, &self.version)
        }
    }

    async fn send_raw(&self, event_type: &str, object: &[u8]) -> bool {
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(br#"{"type":""#);
        line.extend_from_slice(event_type.as_bytes());
        line.extend_from_slice(br#"","object":"#);
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        self.sender.send(Bytes::from(line)).await.is_ok()
    }

    async fn send(&self, event_type: EventType, object: &StoredObject) -> bool {
        self.send_raw(event_type.as_str(), &self.object_bytes(object))
            .await
    }

    async fn bookmark(&self, revision: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.kind.kind, "apiVersion": self.kind.api_version(&self.version), "metadata": metadata});
        self.send_raw("BOOKMARK", object.to_string().as_bytes())
            .await
    }

    async fn error(&self, error: &ApiError) {
        let _ = self
            .send_raw("ERROR", error.to_status().to_string().as_bytes())
            .await;
    }
}

/// What a watcher with `filter` sees of `event`: objects entering the selection are ADDED, those
/// leaving it DELETED.
fn visible(event: &Event, target: &Target, filter: &Filter) -> Option<EventType> {
    if event.resource != target.resource {
        return None;
    }
    if let Some(namespace) = &target.namespace
        && &event.namespace != namespace
    {
        return None;
    }
    let was = event
        .previous
        .as_deref()
        .is_some_and(|previous| filter.matches(previous));
    match event.kind {
        EventType::Deleted => was.then_some(EventType::Deleted),
        _ => match (was, filter.matches(&event.object.object)) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

pub fn serve(
    shared: Arc<ApiState>,
    target: Target,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let kind = target.kind();
    let filter = Filter::from_query(query, kind)?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .map_or(MAX_WATCH, |seconds| {
            Duration::from_secs(seconds).min(MAX_WATCH)
        });
    let requested = query.get("resourceVersion").unwrap_or("").to_owned();
    let since = match requested.as_str() {
        "" | "0" => None,
        text => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion {text:?} is not one this server issued (they are numbers)"
            ))
        })?),
    };
    let send_initial = since.is_none() || query.flag("sendInitialEvents");
    let (sender, mut receiver) = mpsc::channel::<Bytes>(64);
    let stream = Stream {
        kind,
        version: target.version.clone(),
        table: tables::wants_table(accept),
        sender,
    };
    let start = match since {
        None => {
            let (items, events, revision) = shared
                .store
                .list_and_watch(target.resource, target.namespace.as_deref());
            let items: Vec<StoredObject> = items
                .into_iter()
                .filter(|item| filter.matches(&item.object))
                .collect();
            Ok((items, Vec::new(), events, revision))
        }
        Some(revision) => shared
            .store
            .watch(target.resource, Some(revision))
            .map(|start| {
                let initial = if send_initial {
                    shared
                        .store
                        .list(target.resource, target.namespace.as_deref())
                        .0
                } else {
                    Vec::new()
                };
                (
                    initial,
                    start.backlog,
                    start.receiver,
                    start.revision.max(revision),
                )
            }),
    };
    let mut shutdown = shared.shutdown.clone();
    let bookmark_interval = shared.config.bookmark_interval;
    tokio::spawn(async move {
        let (initial, backlog, mut events, mut seen) = match start {
            Ok(start) => start,
            Err(compacted) => {
                let error = ApiError::gone(format!(
                    "too old resource version: {requested} ({})",
                    compacted.oldest
                ));
                stream.error(&error).await;
                return;
            }
        };
        for item in &initial {
            if !stream.send(EventType::Added, item).await {
                return;
            }
        }
        if send_initial && bookmarks && !stream.bookmark(seen, true).await {
            return;
        }
        for event in backlog {
            seen = seen.max(event.revision);
            if let Some(event_type) = visible(&event, &target, &filter)
                && !stream.send(event_type, &event.object).await
            {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = stream.sender.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if !stream.bookmark(seen, false).await {
                        return;
                    }
                }
                received = events.recv() => match received {
                    Ok(event) => {
                        if event.revision <= seen {
                            continue;
                        }
                        seen = event.revision;
                        if let Some(event_type) = visible(&event, &target, &filter)
                            && !stream.send(event_type, &event.object).await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        stream.error(&ApiError::gone(format!("the watch fell too far behind at resource version {seen}; list again"))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let body = futures::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|line| line.map(|line| Ok::<_, Infallible>(Frame::data(line))))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(StreamBody::new(body).boxed())
        .expect("static headers are valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::id_of;
    use crate::apiserver::selectors::{FieldSelector, LabelSelector};
    use kube::core::DynamicObject;
    use serde_json::Value;

    fn event(kind: EventType, previous: Option<Value>, object: Value) -> Event {
        let typed = |value: Value| serde_json::from_value::<DynamicObject>(value).unwrap();
        Event {
            revision: 2,
            kind,
            resource: id_of("", "Pod"),
            namespace: "sample".into(),
            name: "p".into(),
            object: StoredObject::new(typed(object), 2),
            previous: previous.map(|previous| Arc::new(typed(previous))),
        }
    }

    #[test]
    fn objects_moving_in_and_out_of_a_selection_are_added_and_deleted() {
        let target = Target {
            resource: id_of("", "Pod"),
            version: "v1".into(),
            namespace: Some("sample".into()),
            name: None,
            subresource: None,
        };
        let filter = Filter {
            labels: LabelSelector::parse("app=a").unwrap(),
            fields: FieldSelector::default(),
        };
        let labelled = |app: &str| json!({"metadata": {"labels": {"app": app}}});
        let check = |kind, previous: Option<Value>, object| {
            visible(&event(kind, previous, object), &target, &filter)
        };
        assert_eq!(
            check(EventType::Modified, Some(labelled("b")), labelled("a")),
            Some(EventType::Added)
        );
        assert_eq!(
            check(EventType::Modified, Some(labelled("a")), labelled("b")),
            Some(EventType::Deleted)
        );
        assert_eq!(
            check(EventType::Modified, Some(labelled("b")), labelled("c")),
            None
        );
        assert_eq!(
            check(EventType::Deleted, Some(labelled("a")), labelled("a")),
            Some(EventType::Deleted)
        );
        assert_eq!(
            check(EventType::Added, None, labelled("a")),
            Some(EventType::Added)
        );
    }
}
