//! Access logs in Envoy's format language (`meshConfig.accessLogFormat`): `%REQ(...)%`,
//! `%BYTES_SENT%` and the other operators the seeds use, each filled as Envoy fills it (`-`
//! where Envoy has no value). Without a format, Istio's default text line.
//!
//! With `meshConfig.accessLogEncoding: JSON`, lines are JSON objects as Envoy's `json_format`
//! writes them: the format is an object of operator strings (Istio's default JSON fields when
//! unset), a field that is one numeric operator (`%RESPONSE_CODE%`, `%DURATION%`, ...) is a
//! number, and a field with no value is `null`.
//!
//! One difference from Envoy, on purpose: values are JSON-escaped (`"` and `\`), so that a
//! JSON-shaped format stays JSON whatever a client puts in its `User-Agent`.

use http::HeaderMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Istio's default (`meshConfig.accessLogFormat` unset).
pub const ISTIO_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default fields for `accessLogEncoding: JSON` (`meshConfig.accessLogFormat` unset).
pub const ISTIO_DEFAULT_JSON_FORMAT: &str = r#"{"start_time":"%START_TIME%","route_name":"%ROUTE_NAME%","method":"%REQ(:METHOD)%","path":"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%","protocol":"%PROTOCOL%","response_code":"%RESPONSE_CODE%","response_flags":"%RESPONSE_FLAGS%","response_code_details":"%RESPONSE_CODE_DETAILS%","connection_termination_details":"%CONNECTION_TERMINATION_DETAILS%","bytes_received":"%BYTES_RECEIVED%","bytes_sent":"%BYTES_SENT%","duration":"%DURATION%","upstream_service_time":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%","x_forwarded_for":"%REQ(X-FORWARDED-FOR)%","user_agent":"%REQ(USER-AGENT)%","request_id":"%REQ(X-REQUEST-ID)%","authority":"%REQ(:AUTHORITY)%","upstream_host":"%UPSTREAM_HOST%","upstream_cluster":"%UPSTREAM_CLUSTER%","upstream_local_address":"%UPSTREAM_LOCAL_ADDRESS%","downstream_local_address":"%DOWNSTREAM_LOCAL_ADDRESS%","downstream_remote_address":"%DOWNSTREAM_REMOTE_ADDRESS%","requested_server_name":"%REQUESTED_SERVER_NAME%","upstream_transport_failure_reason":"%UPSTREAM_TRANSPORT_FAILURE_REASON%"}"#;

/// `meshConfig.accessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Text,
    Json,
}

impl Encoding {
    /// `TEXT` or `JSON` (any case); anything else is refused, naming the value.
    pub fn parse(text: &str) -> Result<Encoding, FormatError> {
        match text.trim().to_ascii_uppercase().as_str() {
            "" | "TEXT" => Ok(Encoding::Text),
            "JSON" => Ok(Encoding::Json),
            _ => Err(FormatError::Encoding {
                value: text.to_owned(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Operator {
    /// `%REQ(A?B):N%`: a request header (or pseudo-header), with a fallback, cut to N.
    Request(Vec<String>, Option<usize>),
    Response(Vec<String>, Option<usize>),
    StartTime,
    Duration,
    BytesReceived,
    BytesSent,
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ConnectionTerminationDetails,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    RequestedServerName,
    RouteName,
    /// Operators without a value here (`%DYNAMIC_METADATA(...)%`, ...): `-`, as Envoy prints
    /// metadata that is not set.
    Absent,
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Value(Operator),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("the access log format has an unterminated operator at byte {at}: `{rest}`")]
    Unterminated { at: usize, rest: String },
    #[error("unknown access log operator `%{name}%`; see Envoy's access log format documentation")]
    Unknown { name: String },
    #[error("accessLogEncoding {value:?} is neither TEXT nor JSON")]
    Encoding { value: String },
    #[error(
        "with accessLogEncoding JSON, accessLogFormat must be a JSON object of strings: {reason}"
    )]
    NotJsonObject { reason: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Format {
    pieces: Vec<Piece>,
}

fn header_operator(argument: &str) -> (Vec<String>, Option<usize>) {
    // `REQ(X?Y):N` arrives here as `X?Y):N`.
    let (names, limit) = match argument.rsplit_once("):") {
        Some((names, limit)) => (names, limit.parse().ok()),
        None => (argument.trim_end_matches(')'), None),
    };
    let names = names
        .split('?')
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    (names, limit)
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, FormatError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(FormatError::Unterminated {
                    at: offset + start,
                    rest: rest[start..].to_owned(),
                });
            };
            let name = &after[..end];
            if name.is_empty() {
                literal.push('%');
            } else {
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Value(operator(name)?));
            }
            let consumed = start + 1 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Format { pieces })
    }
}

fn operator(name: &str) -> Result<Operator, FormatError> {
    if let Some(argument) = name.strip_prefix("REQ(") {
        let (names, limit) = header_operator(argument);
        return Ok(Operator::Request(names, limit));
    }
    if let Some(argument) = name.strip_prefix("RESP(") {
        let (names, limit) = header_operator(argument);
        return Ok(Operator::Response(names, limit));
    }
    Ok(match name {
        "START_TIME" => Operator::StartTime,
        "DURATION" => Operator::Duration,
        "BYTES_RECEIVED" => Operator::BytesReceived,
        "BYTES_SENT" => Operator::BytesSent,
        "PROTOCOL" => Operator::Protocol,
        "RESPONSE_CODE" => Operator::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Operator::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Operator::ResponseFlags,
        "CONNECTION_TERMINATION_DETAILS" => Operator::ConnectionTerminationDetails,
        "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress,
        "DOWNSTREAM_REMOTE_ADDRESS" => Operator::DownstreamRemoteAddress,
        "UPSTREAM_HOST" => Operator::UpstreamHost,
        "UPSTREAM_CLUSTER" => Operator::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Operator::UpstreamLocalAddress,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Operator::UpstreamTransportFailureReason,
        "REQUESTED_SERVER_NAME" => Operator::RequestedServerName,
        "ROUTE_NAME" => Operator::RouteName,
        other
            if other.starts_with("DYNAMIC_METADATA(")
                || other.starts_with("FILTER_STATE(")
                || other.starts_with("UPSTREAM_PEER_")
                || other.starts_with("DOWNSTREAM_PEER_")
                || other.starts_with("CEL(") =>
        {
            Operator::Absent
        }
        other => {
            return Err(FormatError::Unknown {
                name: other.to_owned(),
            });
        }
    })
}

/// An HTTP request's pseudo-headers (which `HeaderMap` cannot hold) and headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
}

/// One connection (TCP) or one request (HTTP), as the log line describes it.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub start_time: Option<SystemTime>,
    pub duration: Duration,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    pub request: Option<RequestView<'a>>,
    pub response_headers: Option<&'a HeaderMap>,
    pub response_code: u16,
    pub response_code_details: Option<&'a str>,
    pub response_flags: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_failure: Option<&'a str>,
    pub requested_server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
}

fn escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

fn request_header<'h>(request: Option<&RequestView<'h>>, names: &[String]) -> Option<&'h str> {
    let request = request?;
    names.iter().find_map(|name| match name.as_str() {
        ":method" => Some(request.method),
        ":path" => Some(request.path),
        ":authority" => Some(request.authority),
        name => request.headers.get(name)?.to_str().ok(),
    })
}

fn response_header<'h>(headers: Option<&'h HeaderMap>, names: &[String]) -> Option<&'h str> {
    let headers = headers?;
    names
        .iter()
        .find_map(|name| headers.get(name.as_str())?.to_str().ok())
}

fn timestamp(time: SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    )
}

impl Operator {
    /// The operator's value for this entry; `None` where Envoy prints `-`.
    fn value(&self, entry: &Entry<'_>) -> Option<String> {
        let some = |value: Option<String>| value.filter(|v| !v.is_empty());
        let address = |value: Option<SocketAddr>| value.map(|a| a.to_string());
        match self {
            Operator::Request(names, limit) | Operator::Response(names, limit) => {
                let found = if matches!(self, Operator::Request(..)) {
                    request_header(entry.request.as_ref(), names)
                } else {
                    response_header(entry.response_headers, names)
                };
                some(found.map(|v| match limit {
                    Some(limit) => v.chars().take(*limit).collect(),
                    None => v.to_owned(),
                }))
            }
            Operator::StartTime => entry.start_time.map(timestamp),
            Operator::Duration => Some(entry.duration.as_millis().to_string()),
            Operator::BytesReceived => Some(entry.bytes_received.to_string()),
            Operator::BytesSent => Some(entry.bytes_sent.to_string()),
            Operator::Protocol => some(entry.protocol.map(str::to_owned)),
            Operator::ResponseCode => Some(entry.response_code.to_string()),
            Operator::ResponseCodeDetails => some(entry.response_code_details.map(str::to_owned)),
            Operator::ResponseFlags => some(Some(entry.response_flags.to_owned())),
            Operator::ConnectionTerminationDetails | Operator::Absent => None,
            Operator::DownstreamLocalAddress => address(entry.downstream_local),
            Operator::DownstreamRemoteAddress => address(entry.downstream_remote),
            Operator::UpstreamHost => address(entry.upstream_host),
            Operator::UpstreamLocalAddress => address(entry.upstream_local),
            Operator::UpstreamCluster => some(entry.upstream_cluster.map(str::to_owned)),
            Operator::UpstreamTransportFailureReason => {
                some(entry.upstream_failure.map(str::to_owned))
            }
            Operator::RequestedServerName => some(entry.requested_server_name.map(str::to_owned)),
            Operator::RouteName => some(entry.route_name.map(str::to_owned)),
        }
    }

    /// Envoy's `json_format` writes these as numbers.
    fn numeric(&self) -> bool {
        matches!(
            self,
            Operator::Duration
                | Operator::BytesReceived
                | Operator::BytesSent
                | Operator::ResponseCode
        )
    }
}

impl Format {
    pub fn render(&self, entry: &Entry<'_>) -> String {
        let mut out = String::with_capacity(512);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(operator) => {
                    escaped(&mut out, operator.value(entry).as_deref().unwrap_or("-"))
                }
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }

    /// One field of a `json_format`: a lone operator keeps its type (a number, or `null` with no
    /// value); anything else is the text with `-` for missing values, as Envoy writes it.
    fn json_value(&self, entry: &Entry<'_>) -> serde_json::Value {
        if let [Piece::Value(operator)] = self.pieces.as_slice() {
            return match operator.value(entry) {
                None => serde_json::Value::Null,
                Some(value) if operator.numeric() => value
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .unwrap_or(serde_json::Value::String(value)),
                Some(value) => serde_json::Value::String(value),
            };
        }
        let mut text = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(literal) => text.push_str(literal),
                Piece::Value(operator) => {
                    text.push_str(operator.value(entry).as_deref().unwrap_or("-"))
                }
            }
        }
        serde_json::Value::String(text)
    }
}

/// A whole line's format: Envoy's text format, or its `json_format`.
#[derive(Clone, Debug, PartialEq)]
pub enum LineFormat {
    Text(Format),
    /// The fields in the order the format names them.
    Json(Vec<(String, Format)>),
}

impl LineFormat {
    /// `meshConfig.accessLogFormat` (Istio's default when unset) in `encoding`.
    pub fn parse(format: Option<&str>, encoding: Encoding) -> Result<LineFormat, FormatError> {
        let format = format.filter(|f| !f.trim().is_empty());
        match encoding {
            Encoding::Text => {
                Format::parse(format.unwrap_or(ISTIO_DEFAULT_FORMAT)).map(LineFormat::Text)
            }
            Encoding::Json => {
                let text = format.unwrap_or(ISTIO_DEFAULT_JSON_FORMAT);
                let not_object = |reason: String| FormatError::NotJsonObject { reason };
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(text).map_err(|error| not_object(error.to_string()))?;
                let mut fields = Vec::with_capacity(object.len());
                for (name, value) in object {
                    let serde_json::Value::String(template) = value else {
                        return Err(not_object(format!("field {name:?} is not a string")));
                    };
                    fields.push((name, Format::parse(&template)?));
                }
                Ok(LineFormat::Json(fields))
            }
        }
    }

    pub fn render(&self, entry: &Entry<'_>) -> String {
        match self {
            LineFormat::Text(format) => format.render(entry),
            LineFormat::Json(fields) => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(name, format)| (name.clone(), format.json_value(entry)))
                    .collect();
                let mut line = serde_json::Value::Object(object).to_string();
                line.push('\n');
                line
            }
        }
    }
}

/// Where lines go: stdout (`/dev/stdout`, Istio's usual `accessLogFile`) or a file.
pub struct AccessLog {
    pub format: LineFormat,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl AccessLog {
    pub fn open(path: &str, format: Option<&str>, encoding: Encoding) -> Result<AccessLog, String> {
        let format = LineFormat::parse(format, encoding).map_err(|error| error.to_string())?;
        let sink: Box<dyn Write + Send> = if path == "/dev/stdout" || path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|error| format!("cannot open the access log {path}: {error}"))?,
            )
        };
        Ok(AccessLog {
            format,
            sink: Mutex::new(sink),
        })
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let line = self.format.render(entry);
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk or a closed stdout must not stop traffic.
        let _ = sink.write_all(line.as_bytes());
        let _ = sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_FORMAT: &str = r#"{"authority":"%REQ(:AUTHORITY)%","bytes_received":"%BYTES_RECEIVED%","bytes_sent":"%BYTES_SENT%","downstream_local_address":"%DOWNSTREAM_LOCAL_ADDRESS%","downstream_remote_address":"%DOWNSTREAM_REMOTE_ADDRESS%","duration":"%DURATION%","istio_policy_status":"%DYNAMIC_METADATA(istio.mixer:status)%","method":"%REQ(:METHOD)%","path":"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%","protocol":"%PROTOCOL%","request_id":"%REQ(X-REQUEST-ID)%","requested_server_name":"%REQUESTED_SERVER_NAME%","response_code":"%RESPONSE_CODE%","response_flags":"%RESPONSE_FLAGS%","route_name":"%ROUTE_NAME%","start_time":"%START_TIME%","trace_id":"%REQ(X-B3-TRACEID)%","upstream_cluster":"%UPSTREAM_CLUSTER%","upstream_host":"%UPSTREAM_HOST%","upstream_local_address":"%UPSTREAM_LOCAL_ADDRESS%","upstream_service_time":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%","upstream_transport_failure_reason":"%UPSTREAM_TRANSPORT_FAILURE_REASON%","user_agent":"%REQ(USER-AGENT)%","x_forwarded_for":"%REQ(X-FORWARDED-FOR)%"}"#;

    #[test]
    fn the_seeds_format_gives_json_with_envoys_values_for_an_http_request() {
        let format = Format::parse(SEED_FORMAT).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8.5.0 \"quoted\"".parse().unwrap());
        headers.insert(
            "x-request-id",
            "2f0e6c2d-0d0a-4f43-9a57-5b1c8a0f2f31".parse().unwrap(),
        );
        let request = RequestView {
            method: "GET",
            path: "/hello",
            authority: "helloworld.sample:5000",
            headers: &headers,
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = format.render(&Entry {
            start_time: Some(start),
            duration: Duration::from_millis(12),
            protocol: Some("HTTP/1.1"),
            request: Some(request),
            response_code: 200,
            response_flags: "-",
            bytes_received: 0,
            bytes_sent: 58,
            downstream_local: Some("10.96.0.20:5000".parse().unwrap()),
            downstream_remote: Some("10.10.0.9:40000".parse().unwrap()),
            upstream_host: Some("10.10.0.5:5000".parse().unwrap()),
            upstream_cluster: Some("outbound|5000||helloworld.sample.svc.cluster.local"),
            route_name: Some("default"),
            ..Entry::default()
        });
        let json: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(json["authority"], "helloworld.sample:5000");
        assert_eq!(json["path"], "/hello");
        assert_eq!(json["method"], "GET");
        assert_eq!(json["response_code"], "200");
        assert_eq!(json["bytes_sent"], "58");
        assert_eq!(json["duration"], "12");
        assert_eq!(json["istio_policy_status"], "-");
        assert_eq!(json["trace_id"], "-");
        assert_eq!(json["upstream_local_address"], "-");
        assert_eq!(json["start_time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["user_agent"], "curl/8.5.0 \"quoted\"");
        assert_eq!(json["route_name"], "default");
        assert!(line.ends_with("}\n"));
    }

    #[test]
    fn a_tcp_connection_leaves_the_http_fields_empty_as_envoy_does() {
        let format = Format::parse(SEED_FORMAT).unwrap();
        let line = format.render(&Entry {
            bytes_received: 10,
            bytes_sent: 20,
            requested_server_name: Some("outbound_.5000_._.helloworld.sample.svc.cluster.local"),
            response_flags: "-",
            ..Entry::default()
        });
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in [
            "authority",
            "method",
            "path",
            "protocol",
            "request_id",
            "route_name",
        ] {
            assert_eq!(json[field], "-", "{field}");
        }
        assert_eq!(json["response_code"], "0");
        assert_eq!(
            json["requested_server_name"],
            "outbound_.5000_._.helloworld.sample.svc.cluster.local"
        );
    }

    #[test]
    fn json_encoding_writes_typed_fields_as_envoys_json_format_does() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "abc".parse().unwrap());
        let request = RequestView {
            method: "GET",
            path: "/hello",
            authority: "helloworld.sample:5000",
            headers: &headers,
        };
        let entry = Entry {
            duration: Duration::from_millis(3),
            protocol: Some("HTTP/1.1"),
            request: Some(request),
            response_code: 200,
            response_flags: "-",
            bytes_sent: 60,
            upstream_cluster: Some("outbound|5000||helloworld.sample.svc.cluster.local"),
            ..Entry::default()
        };
        // Istio's default JSON fields, and the seeds' own format with JSON encoding.
        for format in [None, Some(SEED_FORMAT)] {
            let format = LineFormat::parse(format, Encoding::Json).unwrap();
            let line = format.render(&entry);
            assert!(line.ends_with("}\n"), "{line}");
            let json: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(json["response_code"], 200, "{line}");
            assert_eq!(json["bytes_sent"], 60, "{line}");
            assert_eq!(json["duration"], 3, "{line}");
            assert_eq!(json["request_id"], "abc", "{line}");
            assert_eq!(json["method"], "GET", "{line}");
            assert_eq!(json["upstream_host"], serde_json::Value::Null, "{line}");
            assert_eq!(json["response_flags"], "-", "{line}");
        }
        // A field mixing text and operators stays text, `-` where a value is missing.
        let mixed = LineFormat::parse(
            Some(r#"{"route":"%REQ(:METHOD)% %UPSTREAM_HOST%","fixed":"mesh"}"#),
            Encoding::Json,
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&mixed.render(&entry)).unwrap();
        assert_eq!(json, serde_json::json!({"route": "GET -", "fixed": "mesh"}));
        // Text encoding with no format: Istio's default text line.
        let text = LineFormat::parse(None, Encoding::Text)
            .unwrap()
            .render(&entry);
        assert!(
            text.starts_with("[-] \"GET /hello HTTP/1.1\" 200"),
            "{text}"
        );
    }

    #[test]
    fn json_encoding_refuses_formats_that_are_not_objects_of_strings() {
        let cases = [
            (
                "[%START_TIME%] %REQ(:METHOD)%",
                "must be a JSON object of strings",
            ),
            (r#"{"code": 200}"#, "field \"code\" is not a string"),
            (
                r#"{"code": "%NO_SUCH%"}"#,
                "unknown access log operator `%NO_SUCH%`",
            ),
        ];
        for (format, message) in cases {
            let error = LineFormat::parse(Some(format), Encoding::Json).unwrap_err();
            assert!(error.to_string().contains(message), "{format}: {error}");
        }
        assert_eq!(Encoding::parse("json").unwrap(), Encoding::Json);
        assert_eq!(Encoding::parse("TEXT").unwrap(), Encoding::Text);
        let error = Encoding::parse("XML").unwrap_err().to_string();
        assert!(
            error.contains("\"XML\" is neither TEXT nor JSON"),
            "{error}"
        );
    }

    #[test]
    fn header_fallbacks_limits_and_bad_formats() {
        let format =
            Format::parse("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):3% 100%% %RESP(server)%").unwrap();
        let headers = HeaderMap::new();
        let request = RequestView {
            method: "GET",
            path: "/hello",
            authority: "a",
            headers: &headers,
        };
        assert_eq!(
            format.render(&Entry {
                request: Some(request),
                ..Entry::default()
            }),
            "/he 100% -\n"
        );
        assert_eq!(
            Format::parse("%START_TIME").unwrap_err(),
            FormatError::Unterminated {
                at: 0,
                rest: "%START_TIME".into()
            }
        );
        assert!(
            Format::parse("%NOPE%")
                .unwrap_err()
                .to_string()
                .contains("`%NOPE%`")
        );
        Format::parse(ISTIO_DEFAULT_FORMAT).unwrap();
    }
}
