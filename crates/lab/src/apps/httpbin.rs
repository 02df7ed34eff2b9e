//! httpbin's basic endpoints, as seed 002 calls them: `/get`, `/headers`, `/ip`, `/user-agent`,
//! `/status/<code>` and `/delay/<seconds>` (at most 10), with httpbin's JSON shapes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{App, text};

pub struct HttpBin;

/// Header names as httpbin shows them (`User-Agent`).
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut characters = part.chars();
            match characters.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + characters.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn headers(map: &HeaderMap) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    for (name, value) in map {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(title_case(name.as_str()))
            .and_modify(|existing: &mut String| {
                existing.push(',');
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    headers
}

/// Who asked: the first `X-Forwarded-For` address, else the connection's peer.
fn origin(map: &HeaderMap, peer: SocketAddr) -> String {
    map.get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| peer.ip().to_string(), |value| value.to_owned())
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("a JSON value always serializes");
    body.push(b'\n');
    text(status, body, "application/json")
}

fn get(request: &Request<Incoming>, peer: SocketAddr) -> Value {
    let arguments: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    json!({
        "args": arguments,
        "headers": headers(request.headers()),
        "origin": origin(request.headers(), peer),
        "url": format!("http://{host}{}", request.uri()),
    })
}

impl App for HttpBin {
    async fn answer(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            [""] => text(
                StatusCode::OK,
                "httpbin (the lab's): /get /headers /ip /user-agent /status/<code> /delay/<seconds>\n",
                "text/plain",
            ),
            ["get"] => json_response(StatusCode::OK, &get(&request, peer)),
            ["headers"] => json_response(
                StatusCode::OK,
                &json!({"headers": headers(request.headers())}),
            ),
            ["ip"] => json_response(
                StatusCode::OK,
                &json!({"origin": origin(request.headers(), peer)}),
            ),
            ["user-agent"] => json_response(
                StatusCode::OK,
                &json!({"user-agent": request.headers().get(http::header::USER_AGENT).and_then(|value| value.to_str().ok())}),
            ),
            ["status", code] => match code
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
            {
                Some(status) => text(status, Bytes::new(), "text/html; charset=utf-8"),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "Invalid status code\n",
                    "text/plain",
                ),
            },
            ["delay", seconds] => {
                let seconds = seconds.parse::<f64>().unwrap_or(0.0).clamp(0.0, 10.0);
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                json_response(StatusCode::OK, &get(&request, peer))
            }
            _ => text(StatusCode::NOT_FOUND, "Not Found\n", "text/plain"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_shown_as_httpbin_shows_them() {
        assert_eq!(title_case("user-agent"), "User-Agent");
        assert_eq!(title_case("x-b3-traceid"), "X-B3-Traceid");
        let mut map = HeaderMap::new();
        map.append("x-forwarded-for", "10.10.0.5".parse().unwrap());
        assert_eq!(origin(&map, "127.0.0.1:1".parse().unwrap()), "10.10.0.5");
        assert_eq!(
            origin(&HeaderMap::new(), "10.20.0.9:1".parse().unwrap()),
            "10.20.0.9"
        );
    }
}
