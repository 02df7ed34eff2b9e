//! HTTP plumbing of the API server: response bodies, JSON and `Status` answers, query parameters,
//! and request bodies read with a size limit and a deadline.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::Value;

use super::status::ApiError;

/// How long a client may take to send its request headers, or its body.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json_response(code: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(bytes))
        .expect("static headers are valid")
}

pub fn value_response(code: StatusCode, value: &Value) -> Response<Body> {
    json_response(
        code,
        serde_json::to_vec(value).expect("a JSON value always serializes"),
    )
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    value_response(error.code, &error.to_status())
}

/// The request's query parameters, decoded, in order.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of `key`, in order (`command=curl&command=-s`).
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let collect = Limited::new(request.into_body(), limit).collect();
    let collected = tokio::time::timeout(REQUEST_READ_TIMEOUT, collect)
        .await
        .map_err(|_| {
            let mut error = ApiError::bad_request(format!(
                "the request body did not arrive within {}s",
                REQUEST_READ_TIMEOUT.as_secs()
            ));
            error.code = StatusCode::REQUEST_TIMEOUT;
            error.reason = "Timeout";
            error
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(limit))
        }
        Err(error) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {error}"
        ))),
    }
}
