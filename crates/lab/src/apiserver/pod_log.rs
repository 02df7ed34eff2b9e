//! `pods/<name>/log`: a container's log as `kubectl logs` asks for it (`container`, `previous`,
//! `follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`, `limitBytes`), read from the
//! kubelet's CRI log file and, when following, streamed as it grows until the container ends.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::{mpsc, watch};

use super::http::{Body, Query};
use super::routing::Target;
use super::state::ApiState;
use super::status::ApiError;
use crate::container_log::{self as logs, LogOptions};

/// How often a followed log is looked at for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

fn number<T: std::str::FromStr>(query: &Query, key: &str) -> Result<Option<T>, ApiError> {
    query
        .get(key)
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<T>()
                .map_err(|_| ApiError::bad_request(format!("{key} {value:?} is not a number")))
        })
        .transpose()
}

fn options(query: &Query) -> Result<LogOptions, ApiError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let since_seconds = number::<i64>(query, "sinceSeconds")?.map(|seconds| now - seconds);
    let since_time = query
        .get("sinceTime")
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<k8s_openapi::jiff::Timestamp>()
                .map(|at| at.as_second())
                .map_err(|_| {
                    ApiError::bad_request(format!("sinceTime {value:?} is not an RFC 3339 time"))
                })
        })
        .transpose()?;
    Ok(LogOptions {
        tail_lines: number::<usize>(query, "tailLines")?,
        since: since_seconds.or(since_time),
        timestamps: query.flag("timestamps"),
        limit_bytes: number::<usize>(query, "limitBytes")?,
    })
}

pub fn serve(
    state: Arc<ApiState>,
    target: &Target,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let runtime = state.pod_runtime.get().ok_or_else(|| {
        ApiError::bad_request("no kubelet runs this cluster's pods, so they have no logs")
    })?;
    let options = options(query)?;
    let pod = target.name.as_deref().unwrap_or("");
    let source = runtime.logs(
        target.namespace(),
        pod,
        query.get("container"),
        query.flag("previous"),
    )?;
    let follow = query.flag("follow");
    let (sender, mut receiver) = mpsc::channel::<Bytes>(16);
    let ended = source.ended.filter(|_| follow);
    tokio::spawn(stream(source.path, options, ended, sender));
    let body = futures::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(StreamBody::new(body).boxed())
        .expect("static headers are valid"))
}

/// Sends the log's text, then, while `ended` says the container runs, what is added to it.
async fn stream(
    path: PathBuf,
    mut options: LogOptions,
    mut ended: Option<watch::Receiver<bool>>,
    sender: mpsc::Sender<Bytes>,
) {
    let content = tokio::fs::read(&path).await.unwrap_or_default();
    // Only whole records now; a record being written is read with the next look.
    let mut offset = content
        .iter()
        .rposition(|byte| *byte == b'\n')
        .map_or(0, |end| end + 1);
    let mut budget = options.limit_bytes.take();
    let text = logs::render(&content[..offset], &options);
    if !send(&sender, text, &mut budget).await {
        return;
    }
    options.tail_lines = None;
    let Some(ended) = ended.as_mut() else {
        return;
    };
    loop {
        let finished = *ended.borrow();
        let content = tokio::fs::read(&path).await.unwrap_or_default();
        if content.len() < offset {
            // The log was rotated: read the new file from its start.
            offset = 0;
        }
        let complete = content[offset..]
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(offset, |end| offset + end + 1);
        if complete > offset {
            let text = logs::render(&content[offset..complete], &options);
            offset = complete;
            if !send(&sender, text, &mut budget).await {
                return;
            }
        }
        if finished {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = ended.changed() => {}
            () = sender.closed() => return,
        }
    }
}

/// Sends `text` within what is left of `--limit-bytes`; false when the client is gone or the
/// limit is reached.
async fn send(sender: &mpsc::Sender<Bytes>, mut text: Vec<u8>, budget: &mut Option<usize>) -> bool {
    if let Some(left) = budget {
        text.truncate(*left);
        *left -= text.len();
    }
    if !text.is_empty() && sender.send(Bytes::from(text)).await.is_err() {
        return false;
    }
    budget.is_none_or(|left| left > 0)
}
