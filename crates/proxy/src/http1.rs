//! HTTP/1.x relayed message by message without re-encoding. Each request and response head is
//! parsed (httparse) only to count and log it and to find where its body ends; heads and bodies
//! go on as the bytes that arrived, plus an `x-request-id` header when the request has none.
//! One task per connection, buffers reused across requests: hyper's client connection (a second
//! task, a channel and a header map per request) cost a sidecar about a third of its CPU per
//! request, and a proxy that forwards a request unchanged has no use for it.
//!
//! Both directions are read at once while a request is in flight, so `Expect: 100-continue`,
//! early responses and bodies streamed both ways work. Upgrades (`101`) and `CONNECT` continue
//! as raw bytes.

use crate::http_proxy::{Exchange, FORWARDED_CLIENT_CERT, Finished, Logged, request_id};
use crate::peer_metadata::{self, PeerWorkload};
use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Envoy's defaults: `max_request_headers_kb` 60 and `max_headers_count` 100.
const MAX_HEAD_BYTES: usize = 60 * 1024;
const MAX_HEADERS: usize = 100;
const READ_SIZE: usize = 16 * 1024;
pub const UPSTREAM_SERVICE_TIME: &str = "x-envoy-upstream-service-time";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Downstream => "the client (downstream)",
            Side::Upstream => "the server (upstream)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("I/O with {side}: {source}")]
    Io {
        side: Side,
        #[source]
        source: io::Error,
    },
    #[error("{0} closed the connection in the middle of a message")]
    Truncated(Side),
    #[error("{side} sent a malformed message ({reason}); the connection was closed")]
    Malformed { side: Side, reason: String },
}

fn io_error(side: Side) -> impl FnOnce(io::Error) -> Http1Error {
    move |source| Http1Error::Io { side, source }
}

/// Where a message body ends (RFC 9112 section 6).
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkedScanner),
    /// A response with neither length nor chunking: its body ends when the server closes.
    UntilClose,
}

impl Framing {
    /// How many leading bytes of `available` belong to the body, how many of those are payload
    /// (chunk framing excluded), and whether they end it.
    fn take(&mut self, available: &[u8]) -> Result<(usize, u64, bool), &'static str> {
        match self {
            Framing::Length(remaining) => {
                let n = (*remaining).min(available.len() as u64);
                *remaining -= n;
                Ok((n as usize, n, *remaining == 0))
            }
            Framing::Chunked(scanner) => {
                let before = scanner.payload;
                let (n, done) = match scanner.scan(available)? {
                    Some(end) => (end, true),
                    None => (available.len(), false),
                };
                Ok((n, scanner.payload - before, done))
            }
            Framing::UntilClose => Ok((available.len(), available.len() as u64, false)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
}

/// Follows chunked transfer coding (sizes, extensions, data, trailers) to find where it ends,
/// without copying or decoding the bytes.
#[derive(Debug, Default)]
struct ChunkedScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
    payload: u64,
}

impl ChunkedScanner {
    /// Advances over `bytes`; `Some(n)` when the body ends after the first `n` of them.
    fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            match self.state {
                Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err("a chunk size does not fit in 64 bits");
                        }
                        let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size << 4 | digit;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err("a chunk size line is not hexadecimal"),
                },
                Extension => match byte {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err("a chunk size line ends without CR"),
                    _ => {}
                },
                SizeLf => {
                    if byte != b'\n' {
                        return Err("a chunk size line ends without LF");
                    }
                    self.state = if self.size == 0 { LineStart } else { Data };
                }
                Data => {
                    let n = self.size.min((bytes.len() - i) as u64);
                    self.size -= n;
                    self.payload += n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if byte == b'\r' => self.state = DataLf,
                DataLf if byte == b'\n' => {
                    self.state = Size;
                    self.digits = 0;
                }
                DataCr | DataLf => return Err("chunk data is not followed by CRLF"),
                LineStart => match byte {
                    b'\r' => self.state = EndLf,
                    b'\n' => return Err("a trailer line ends without CR"),
                    _ => self.state = Trailer,
                },
                Trailer => match byte {
                    b'\r' => self.state = TrailerLf,
                    b'\n' => return Err("a trailer line ends without CR"),
                    _ => {}
                },
                TrailerLf if byte == b'\n' => self.state = LineStart,
                EndLf if byte == b'\n' => return Ok(Some(i + 1)),
                TrailerLf | EndLf => return Err("a trailer line ends without LF"),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// The `,`-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii())
}

fn has_token(value: &[u8], token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// What the headers of either kind of message say about the connection and the body.
#[derive(Default)]
struct HeaderFacts {
    /// Header lines (byte ranges of the head) never passed on: the metadata exchange's, and a
    /// previous hop's `x-envoy-upstream-service-time`, which this proxy sets itself.
    dropped_lines: Vec<Range<usize>>,
    /// `x-forwarded-client-cert` lines: an application may not set them on outbound requests.
    client_cert_lines: Vec<Range<usize>>,
    peer: Option<PeerWorkload>,
    close: bool,
    keep_alive: bool,
    connection_upgrade: bool,
    upgrade: bool,
    chunked: Option<bool>,
    content_length: Option<u64>,
    request_id: bool,
    grpc: bool,
    grpc_status: Option<String>,
}

/// Where a header's line lies in `head` (from its name to its line feed).
fn line_of(head: &[u8], header: &httparse::Header<'_>) -> Range<usize> {
    // httparse's slices point into `head`; addresses give their offsets.
    let start = header.name.as_ptr() as usize - head.as_ptr() as usize;
    let value_end = header.value.as_ptr() as usize - head.as_ptr() as usize + header.value.len();
    let end = head[value_end..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(head.len(), |n| value_end + n + 1);
    start..end
}

/// `want_peer`: decode the peer's metadata (once per connection is enough).
fn header_facts(
    head: &[u8],
    headers: &[httparse::Header<'_>],
    want_peer: bool,
) -> Result<HeaderFacts, &'static str> {
    let mut facts = HeaderFacts::default();
    for header in headers {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case(FORWARDED_CLIENT_CERT) {
            facts.client_cert_lines.push(line_of(head, header));
        } else if name.eq_ignore_ascii_case(UPSTREAM_SERVICE_TIME) {
            facts.dropped_lines.push(line_of(head, header));
        } else if peer_metadata::is_exchange_header(name) {
            facts.dropped_lines.push(line_of(head, header));
            if want_peer && name.eq_ignore_ascii_case(peer_metadata::METADATA_HEADER) {
                facts.peer = peer_metadata::decode(value);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            facts.close |= has_token(value, "close");
            facts.keep_alive |= has_token(value, "keep-alive");
            facts.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; any other last coding leaves the length unknown.
            let last = tokens(value).last().unwrap_or_default();
            facts.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            for token in tokens(value) {
                let length = std::str::from_utf8(token)
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or("content-length is not a number")?;
                if facts.content_length.is_some_and(|seen| seen != length) {
                    return Err("content-length values disagree");
                }
                facts.content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            facts.upgrade = true;
        } else if name.eq_ignore_ascii_case("x-request-id") {
            facts.request_id = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            facts.grpc = value.starts_with(b"application/grpc");
        } else if name.eq_ignore_ascii_case("grpc-status") {
            facts.grpc_status = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    Ok(facts)
}

/// Headers as the access log reads them (only built when there is an access log).
fn header_map(headers: &[httparse::Header<'_>]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for header in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// Why a request head was not accepted: the status the client gets.
#[derive(Debug)]
enum Rejected {
    BadRequest(String),
    TooLarge,
}

struct RequestHead {
    len: usize,
    http10: bool,
    head_method: bool,
    connect: bool,
    /// RFC 9110's idempotent methods: a proxy may send them again after a connection failed.
    idempotent: bool,
    keep_alive: bool,
    upgrade: bool,
    request_id: bool,
    grpc: bool,
    body: Option<Framing>,
    dropped_lines: Vec<Range<usize>>,
    client_cert_lines: Vec<Range<usize>>,
    peer: Option<PeerWorkload>,
    logged: Option<Logged>,
}

/// What a message's parser is to collect besides framing.
#[derive(Clone, Copy, Default)]
struct Wanted {
    /// The fields of the access log.
    log: bool,
    /// The peer's metadata.
    peer: bool,
}

fn parse_request(buffer: &[u8], wanted: Wanted) -> Result<Option<RequestHead>, Rejected> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
            return Err(Rejected::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Rejected::TooLarge),
        Err(error) => return Err(Rejected::BadRequest(error.to_string())),
    };
    if len > MAX_HEAD_BYTES {
        return Err(Rejected::TooLarge);
    }
    let facts = header_facts(buffer, request.headers, wanted.peer)
        .map_err(|e| Rejected::BadRequest(e.into()))?;
    let method = request.method.unwrap_or_default();
    let http10 = request.version == Some(0);
    let body = match (facts.chunked, facts.content_length) {
        (Some(_), Some(_)) => {
            return Err(Rejected::BadRequest(
                "both transfer-encoding and content-length".into(),
            ));
        }
        (Some(true), None) => Some(Framing::Chunked(ChunkedScanner::default())),
        (Some(false), None) => {
            return Err(Rejected::BadRequest(
                "transfer-encoding does not end with chunked".into(),
            ));
        }
        (None, Some(0)) | (None, None) => None,
        (None, Some(length)) => Some(Framing::Length(length)),
    };
    let logged = wanted.log.then(|| Logged {
        start_time: SystemTime::now(),
        method: method.to_owned(),
        path: request.path.unwrap_or_default().to_owned(),
        authority: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap_or_default(),
        request_headers: header_map(request.headers),
        response_headers: HeaderMap::new(),
    });
    Ok(Some(RequestHead {
        len,
        http10,
        head_method: method == "HEAD",
        connect: method == "CONNECT",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        keep_alive: !facts.close && (!http10 || facts.keep_alive),
        upgrade: facts.upgrade && facts.connection_upgrade,
        request_id: facts.request_id,
        grpc: facts.grpc,
        body,
        dropped_lines: facts.dropped_lines,
        client_cert_lines: facts.client_cert_lines,
        peer: facts.peer,
        logged,
    }))
}

struct ResponseHead {
    len: usize,
    status: u16,
    keep_alive: bool,
    body: Option<Framing>,
    grpc_status: Option<String>,
    dropped_lines: Vec<Range<usize>>,
    peer: Option<PeerWorkload>,
    headers: Option<HeaderMap>,
}

fn parse_response(
    buffer: &[u8],
    request: &RequestHead,
    wanted: Wanted,
) -> Result<Option<ResponseHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
            return Err(format!(
                "a response head longer than {MAX_HEAD_BYTES} bytes"
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let facts = header_facts(buffer, response.headers, wanted.peer)?;
    let status = response.code.unwrap_or_default();
    let body = if request.head_method
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (request.connect && (200..300).contains(&status))
    {
        None
    } else {
        match (facts.chunked, facts.content_length) {
            (Some(true), _) => Some(Framing::Chunked(ChunkedScanner::default())),
            (Some(false), _) => Some(Framing::UntilClose),
            (None, Some(0)) => None,
            (None, Some(length)) => Some(Framing::Length(length)),
            (None, None) => Some(Framing::UntilClose),
        }
    };
    let http10 = response.version == Some(0);
    let keep_alive =
        !facts.close && (!http10 || facts.keep_alive) && !matches!(body, Some(Framing::UntilClose));
    Ok(Some(ResponseHead {
        len,
        status,
        keep_alive,
        body,
        grpc_status: facts.grpc_status,
        dropped_lines: facts.dropped_lines,
        peer: facts.peer,
        headers: wanted.log.then(|| header_map(response.headers)),
    }))
}

/// Copies `head` into `out` without its final blank line and without the `dropped` lines, so
/// that header lines can be added before the caller ends the head with `\r\n`.
fn open_head(head: &[u8], dropped: &[Range<usize>], out: &mut Vec<u8>) {
    let content = if head.ends_with(b"\r\n\r\n") {
        head.len() - 2
    } else {
        // httparse also accepts bare LF line ends.
        head.len() - 1
    };
    let mut from = 0;
    for line in dropped {
        out.extend_from_slice(&head[from..line.start]);
        from = line.end;
    }
    out.extend_from_slice(&head[from..content]);
}

async fn send<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    side: Side,
) -> Result<(), Http1Error> {
    to.write_all(bytes).await.map_err(io_error(side))?;
    to.flush().await.map_err(io_error(side))
}

/// A response the proxy makes itself, after which the connection closes.
async fn local_reply<W: AsyncWrite + Unpin>(to: &mut W, status: u16, reason: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = send(to, reply.as_bytes(), Side::Downstream).await;
    let _ = to.shutdown().await;
}

/// Moves the body bytes at the front of `buffer` to `to`; the payload bytes moved and whether
/// the body is complete.
async fn pass_body<W: AsyncWrite + Unpin>(
    buffer: &mut BytesMut,
    framing: &mut Framing,
    to: &mut W,
    from: Side,
    to_side: Side,
) -> Result<(u64, bool), Http1Error> {
    let (n, payload, done) = framing
        .take(buffer)
        .map_err(|reason| Http1Error::Malformed {
            side: from,
            reason: reason.into(),
        })?;
    if n > 0 {
        send(to, &buffer[..n], to_side).await?;
        buffer.advance(n);
    }
    Ok((payload, done))
}

/// Appends to `out` the body bytes at the front of `buffer`, so that they go out with the head;
/// the payload bytes taken. `body` becomes `None` once complete.
fn body_into(
    out: &mut Vec<u8>,
    buffer: &mut BytesMut,
    body: &mut Option<Framing>,
    from: Side,
) -> Result<u64, Http1Error> {
    let Some(framing) = body else {
        return Ok(0);
    };
    let (n, payload, done) = framing
        .take(buffer)
        .map_err(|reason| Http1Error::Malformed {
            side: from,
            reason: reason.into(),
        })?;
    out.extend_from_slice(&buffer[..n]);
    buffer.advance(n);
    if done {
        *body = None;
    }
    Ok(payload)
}

/// Reads into `buffer` (growing it when full); the number of bytes read.
async fn fill<R: AsyncRead + Unpin>(
    from: &mut R,
    buffer: &mut BytesMut,
    side: Side,
) -> Result<usize, Http1Error> {
    buffer.reserve(READ_SIZE);
    from.read_buf(buffer).await.map_err(io_error(side))
}

/// The next request head from the client: `None` when the client closed between requests.
async fn read_request<D: AsyncRead + Unpin>(
    downstream: &mut D,
    buffer: &mut BytesMut,
    wanted: Wanted,
) -> Result<Option<Result<RequestHead, Rejected>>, Http1Error> {
    loop {
        if !buffer.is_empty() {
            match parse_request(buffer, wanted) {
                Ok(Some(head)) => return Ok(Some(Ok(head))),
                Ok(None) => {}
                Err(rejected) => return Ok(Some(Err(rejected))),
            }
        }
        if fill(downstream, buffer, Side::Downstream).await? == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(Http1Error::Truncated(Side::Downstream))
            };
        }
    }
}

/// Why a request found no upstream connection: the proxy answers 503 with Envoy's flag.
#[derive(Debug)]
pub struct NoUpstream {
    /// `UH` (no endpoint) or `UF` (every attempt failed).
    pub response_flags: &'static str,
    pub reason: String,
}

/// Where each request of a connection goes: one fixed upstream (inbound, passthrough), or an
/// endpoint chosen per request with connections kept for the next (outbound to a service).
pub trait Upstreams {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    /// Whose requests these are, for what is counted before an upstream is chosen.
    fn base(&self) -> &Arc<Exchange>;
    /// A connection for the next request, and who it reaches.
    fn checkout(
        &mut self,
    ) -> impl Future<Output = Result<(Self::Stream, Arc<Exchange>), NoUpstream>> + Send;
    /// A connection whose last exchange ended cleanly, ready for another request.
    fn checkin(&mut self, stream: Self::Stream, exchange: Arc<Exchange>);
    /// How many more times one request may be sent, each time to another endpoint, after an
    /// attempt failed (see [`should_retry`]); none where there is no other endpoint.
    fn retries(&self) -> u32 {
        0
    }
    /// The last connection checked out failed its request: the next checkout avoids its
    /// endpoint.
    fn failed(&mut self) {}
}

/// Istio's default route retry policy: two more attempts.
pub const DEFAULT_RETRIES: u32 = 2;

/// How an attempt failed before any of its response reached the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttemptFailure {
    /// The connection closed or broke before a response head: `reset reason` in Envoy's words.
    Reset(&'static str),
    /// The server answered 503.
    Unavailable,
}

/// Whether a request is sent again after `failure`, as Istio's default policy
/// (`connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503)
/// decides, narrowed by RFC 9110: a request whose body is not all at hand cannot be sent
/// again, and after a reset the server may have acted on it, so only idempotent methods go
/// again. Connect failures never reach here: connecting already tries other endpoints.
fn should_retry(
    failure: AttemptFailure,
    idempotent: bool,
    whole_request_kept: bool,
    retries_left: u32,
) -> bool {
    retries_left > 0
        && whole_request_kept
        && match failure {
            AttemptFailure::Reset(_) => idempotent,
            AttemptFailure::Unavailable => true,
        }
}

/// One upstream connection for every request (the application, or a passthrough destination).
pub struct Fixed<U> {
    stream: Option<U>,
    exchange: Arc<Exchange>,
}

impl<U> Fixed<U> {
    pub fn new(stream: U, exchange: Arc<Exchange>) -> Self {
        Fixed {
            stream: Some(stream),
            exchange,
        }
    }
}

impl<U: AsyncRead + AsyncWrite + Unpin + Send> Upstreams for Fixed<U> {
    type Stream = U;

    fn base(&self) -> &Arc<Exchange> {
        &self.exchange
    }

    async fn checkout(&mut self) -> Result<(U, Arc<Exchange>), NoUpstream> {
        match self.stream.take() {
            Some(stream) => Ok((stream, self.exchange.clone())),
            None => Err(NoUpstream {
                response_flags: "UC",
                reason: "the upstream connection is closed".into(),
            }),
        }
    }

    fn checkin(&mut self, stream: U, _exchange: Arc<Exchange>) {
        self.stream = Some(stream);
    }
}

/// Relays HTTP/1.x requests from `downstream` to `upstream` until either side closes.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    exchange: Arc<Exchange>,
) -> Result<(), Http1Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    relay_to(downstream, Fixed::new(upstream, exchange)).await
}

/// Relays HTTP/1.x requests from `downstream`, each to the upstream `upstreams` gives it.
pub async fn relay_to<D, S>(mut downstream: D, mut upstreams: S) -> Result<(), Http1Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    S: Upstreams,
{
    let exchange = upstreams.base().clone();
    let log = exchange.dataplane.access_log.is_some();
    // The server side reads the client's metadata from requests, the client side the server's
    // from responses.
    let outbound = exchange.labels.reporter == "source";
    let mut from_client = BytesMut::with_capacity(READ_SIZE);
    let mut from_server = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(1024);
    loop {
        let wanted = Wanted {
            log,
            peer: exchange.metadata_exchange() && !outbound && exchange.peer.get().is_none(),
        };
        let idle = from_client.is_empty();
        let next = read_request(&mut downstream, &mut from_client, wanted);
        let request = match drained_while_idle(&exchange, !outbound && idle, next).await? {
            None => return Ok(()),
            Some(Ok(request)) => request,
            Some(Err(rejected)) => {
                let (status, reason, body) = match &rejected {
                    Rejected::BadRequest(_) => (400, "Bad Request", "Bad Request"),
                    Rejected::TooLarge => (
                        431,
                        "Request Header Fields Too Large",
                        "Request Header Fields Too Large",
                    ),
                };
                local_reply(&mut downstream, status, reason, body).await;
                let mut finished = begin(&exchange, "HTTP/1.1", false, None);
                finished.status = status;
                finished.response_flags = "DPE";
                finished.response_bytes = body.len() as u64;
                finished.report();
                return Err(Http1Error::Malformed {
                    side: Side::Downstream,
                    reason: match rejected {
                        Rejected::BadRequest(reason) => reason,
                        Rejected::TooLarge => format!(
                            "a request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"
                        ),
                    },
                });
            }
        };
        let outcome = exchange_one(
            &mut downstream,
            &mut upstreams,
            &mut from_client,
            &mut from_server,
            &mut out,
            request,
        )
        .await?;
        match outcome {
            Next::KeepAlive => {}
            Next::Close => {
                let _ = downstream.shutdown().await;
                return Ok(());
            }
            Next::Finished => return Ok(()),
        }
    }
}

/// The next request, or `None` when the proxy drains while this server-side connection is
/// between requests: closing it then makes the client open its next one elsewhere.
async fn drained_while_idle<F>(
    exchange: &Exchange,
    idle_server_side: bool,
    next: F,
) -> Result<Option<Result<RequestHead, Rejected>>, Http1Error>
where
    F: Future<Output = Result<Option<Result<RequestHead, Rejected>>, Http1Error>>,
{
    let drain = &exchange.dataplane.drain;
    if !idle_server_side {
        return next.await;
    }
    if drain.is_draining() {
        return Ok(None);
    }
    // A request that arrived with the drain is served, not dropped.
    tokio::select! {
        biased;
        read = next => read,
        () = drain.started() => Ok(None),
    }
}

/// The 503 a request gets when no upstream connection could be made for it.
async fn no_upstream<D: AsyncWrite + Unpin>(
    downstream: &mut D,
    mut finished: Finished,
    none: NoUpstream,
) {
    let body = format!(
        "upstream connect error or disconnect/reset before headers. reset reason: {}",
        none.reason
    );
    local_reply(downstream, 503, "Service Unavailable", &body).await;
    finished.status = 503;
    finished.response_flags = none.response_flags;
    finished.response_bytes = body.len() as u64;
    finished.upstream_failure = Some(none.reason);
    finished.report();
}

fn begin(
    exchange: &Arc<Exchange>,
    protocol: &'static str,
    grpc: bool,
    logged: Option<Logged>,
) -> Finished {
    Finished::new(exchange.clone(), protocol, grpc, logged)
}

/// What becomes of the connection after an exchange.
enum Next {
    KeepAlive,
    /// Closed once the response is out (either side asked, or a message was left unfinished).
    Close,
    /// Nothing more to do: an upgrade ran to its end, or the proxy already replied and closed.
    Finished,
}

/// One request and its response (and what follows an upgrade), sent again to another endpoint
/// when an attempt fails and [`should_retry`] allows it.
async fn exchange_one<D, S>(
    downstream: &mut D,
    upstreams: &mut S,
    from_client: &mut BytesMut,
    from_server: &mut BytesMut,
    out: &mut Vec<u8>,
    mut request: RequestHead,
) -> Result<Next, Http1Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    S: Upstreams,
{
    let (mut upstream, target) = match upstreams.checkout().await {
        Ok(checked_out) => checked_out,
        Err(none) => {
            let finished = begin(upstreams.base(), "HTTP/1.1", request.grpc, request.logged);
            no_upstream(downstream, finished, none).await;
            return Ok(Next::Finished);
        }
    };
    let mut exchange = &target;
    let outbound = exchange.labels.reporter == "source";
    let wanted = Wanted {
        log: request.logged.is_some(),
        peer: exchange.metadata_exchange() && outbound && exchange.peer.get().is_none(),
    };
    let protocol = if request.http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut finished = begin(exchange, protocol, request.grpc, request.logged.take());

    if let Some(peer) = request.peer.take()
        && exchange.metadata_exchange()
        && !outbound
    {
        let _ = exchange.peer.set(peer);
    }
    let mut dropped = std::mem::take(&mut request.dropped_lines);
    if outbound && !request.client_cert_lines.is_empty() {
        dropped.append(&mut request.client_cert_lines);
        dropped.sort_by_key(|line| line.start);
    }
    let client_cert = exchange
        .forwarded_client_cert
        .as_deref()
        .filter(|_| !outbound);
    out.clear();
    if request.request_id && dropped.is_empty() && !outbound && client_cert.is_none() {
        out.extend_from_slice(&from_client[..request.len]);
    } else {
        open_head(&from_client[..request.len], &dropped, out);
        if let Some(element) = client_cert {
            out.extend_from_slice(FORWARDED_CLIENT_CERT.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(element.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !request.request_id {
            let mut text = uuid::Uuid::encode_buffer();
            let id = request_id().hyphenated().encode_lower(&mut text);
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
            if let Some(logged) = &mut finished.logged
                && let Ok(value) = HeaderValue::from_str(id)
            {
                logged.request_headers.insert("x-request-id", value);
            }
        }
        if outbound && exchange.metadata_exchange() {
            out.extend_from_slice(&exchange.dataplane.own_metadata.head_lines);
        }
        out.extend_from_slice(b"\r\n");
    }
    from_client.advance(request.len);
    let mut request_body = request.body.take();
    finished.request_bytes += body_into(out, from_client, &mut request_body, Side::Downstream)?;
    // With the whole request in `out`, a failed attempt can be sent again as it was.
    let whole_request_kept = request_body.is_none() && !request.upgrade && !request.connect;
    let mut retries_left = upstreams.retries();
    let mut attempt_target;

    // The response head, forwarding the rest of the request body meanwhile.
    let response = loop {
        from_server.clear();
        let failure = if send(&mut upstream, out, Side::Upstream).await.is_err() {
            AttemptFailure::Reset("connection failure")
        } else {
            match response_head(
                downstream,
                &mut upstream,
                from_client,
                from_server,
                &mut request_body,
                &request,
                wanted,
                &mut finished,
            )
            .await?
            {
                HeadRead::ClientGone => return Err(client_gone(finished)),
                HeadRead::Malformed(reason) => {
                    return Err(upstream_protocol_error(downstream, finished, reason).await);
                }
                HeadRead::Head(head) if head.status == 503 => {
                    if !should_retry(
                        AttemptFailure::Unavailable,
                        request.idempotent,
                        whole_request_kept,
                        retries_left,
                    ) {
                        break head;
                    }
                    AttemptFailure::Unavailable
                }
                HeadRead::Head(head) => break head,
                HeadRead::Closed => AttemptFailure::Reset("connection termination"),
            }
        };
        if !should_retry(
            failure,
            request.idempotent,
            whole_request_kept,
            retries_left,
        ) {
            let reason = match failure {
                AttemptFailure::Reset(reason) => reason,
                AttemptFailure::Unavailable => "503",
            };
            return Ok(upstream_reset(downstream, finished, reason).await);
        }
        retries_left -= 1;
        tracing::debug!(?failure, upstream = ?exchange.upstream_host, "request sent again to another endpoint");
        upstreams.failed();
        match upstreams.checkout().await {
            Ok((next, next_target)) => {
                upstream = next;
                attempt_target = next_target;
                exchange = &attempt_target;
                finished.exchange = exchange.clone();
            }
            Err(none) => {
                no_upstream(downstream, finished, none).await;
                return Ok(Next::Finished);
            }
        }
    };

    finished.status = response.status;
    if response.status == 101 && !request.upgrade {
        let reason = "101 Switching Protocols to a request that asked for no upgrade".into();
        return Err(upstream_protocol_error(downstream, finished, reason).await);
    }
    if finished.grpc {
        finished.grpc_status = response.grpc_status.clone().unwrap_or_default();
    }
    if let (Some(logged), Some(headers)) = (&mut finished.logged, response.headers) {
        logged.response_headers = headers;
    }
    let tunnel = (response.status == 101 && request.upgrade)
        || (request.connect && (200..300).contains(&response.status));
    if tunnel {
        // The rest is opaque: what each side already sent goes first, then bytes both ways.
        send(downstream, from_server, Side::Downstream).await?;
        send(&mut upstream, from_client, Side::Upstream).await?;
        from_server.clear();
        from_client.clear();
        let copied = tokio::io::copy_bidirectional(downstream, &mut upstream).await;
        if let Ok((sent_up, sent_down)) = copied {
            finished.request_bytes += sent_up;
            finished.response_bytes += sent_down;
        }
        finished.report();
        return Ok(Next::Finished);
    }

    if let Some(peer) = response.peer
        && exchange.metadata_exchange()
        && outbound
    {
        let _ = exchange.peer.set(peer);
    }
    out.clear();
    open_head(&from_server[..response.len], &response.dropped_lines, out);
    // As Envoy's router does: how long the upstream took to answer, in milliseconds.
    let service_time = finished.start.elapsed().as_millis() as u64;
    let _ = write!(out, "{UPSTREAM_SERVICE_TIME}: {service_time}\r\n");
    if let Some(logged) = &mut finished.logged {
        logged
            .response_headers
            .insert(UPSTREAM_SERVICE_TIME, HeaderValue::from(service_time));
    }
    if !outbound && exchange.metadata_exchange() {
        out.extend_from_slice(&exchange.dataplane.own_metadata.head_lines);
    }
    // A draining server side asks its client to go elsewhere for the next request.
    let closing = !outbound && exchange.dataplane.drain.is_draining();
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    from_server.advance(response.len);
    let mut response_body = response.body;
    finished.response_bytes += body_into(out, from_server, &mut response_body, Side::Upstream)?;
    send(downstream, out, Side::Downstream).await?;

    // The response body, the request body still going the other way if the server answered
    // before it ended.
    while let Some(framing) = &mut response_body {
        tokio::select! {
            biased;
            read = fill(&mut upstream, from_server, Side::Upstream) => {
                match read {
                    Ok(0) if matches!(framing, Framing::UntilClose) => break,
                    Ok(0) | Err(_) => {
                        finished.response_flags = "UC";
                        finished.report();
                        return Err(Http1Error::Truncated(Side::Upstream));
                    }
                    Ok(_) => {
                        let (payload, done) =
                            pass_body(from_server, framing, downstream, Side::Upstream, Side::Downstream).await?;
                        finished.response_bytes += payload;
                        if done {
                            response_body = None;
                        }
                    }
                }
            }
            read = fill(downstream, from_client, Side::Downstream), if request_body.is_some() => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Err(client_gone(finished));
                }
                if let Some(request_framing) = &mut request_body {
                    let (payload, done) = pass_body(
                        from_client, request_framing, &mut upstream, Side::Downstream, Side::Upstream,
                    ).await?;
                    finished.request_bytes += payload;
                    if done {
                        request_body = None;
                    }
                }
            }
        }
    }
    finished.report();
    // A request body the server did not wait for leaves the connection mid-message.
    if !(request.keep_alive && response.keep_alive && request_body.is_none()) || closing {
        return Ok(Next::Close);
    }
    // A server that sent more than its response cannot be trusted with another request.
    if from_server.is_empty() {
        upstreams.checkin(upstream, exchange.clone());
    }
    Ok(Next::KeepAlive)
}

/// How reading an attempt's response head ended.
// Returned once per request and matched at once: boxing the head would cost an allocation per
// request for nothing.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(ResponseHead),
    /// The server closed or broke the connection first.
    Closed,
    /// The server's response cannot be parsed, for this reason.
    Malformed(String),
    /// The client went away while its request body was still coming.
    ClientGone,
}

/// Reads the final response head of one attempt, passing 1xx heads on and the rest of the
/// request body up meanwhile.
#[allow(clippy::too_many_arguments)]
async fn response_head<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    from_client: &mut BytesMut,
    from_server: &mut BytesMut,
    request_body: &mut Option<Framing>,
    request: &RequestHead,
    wanted: Wanted,
    finished: &mut Finished,
) -> Result<HeadRead, Http1Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if !from_server.is_empty() {
            match parse_response(from_server, request, wanted) {
                Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                    // 100 Continue, 103 Early Hints: passed on, the final response follows.
                    send(downstream, &from_server[..head.len], Side::Downstream).await?;
                    from_server.advance(head.len);
                    continue;
                }
                Ok(Some(head)) => return Ok(HeadRead::Head(head)),
                Ok(None) => {}
                Err(reason) => return Ok(HeadRead::Malformed(reason)),
            }
        }
        tokio::select! {
            biased;
            read = fill(upstream, from_server, Side::Upstream) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Ok(HeadRead::Closed);
                }
            }
            read = fill(downstream, from_client, Side::Downstream), if request_body.is_some() => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Ok(HeadRead::ClientGone);
                }
                if let Some(framing) = request_body {
                    let (payload, done) =
                        pass_body(from_client, framing, upstream, Side::Downstream, Side::Upstream).await?;
                    finished.request_bytes += payload;
                    if done {
                        *request_body = None;
                    }
                }
            }
        }
    }
}

/// The server closed or reset before its response head: Envoy's 503 with `UC`.
async fn upstream_reset<D: AsyncWrite + Unpin>(
    downstream: &mut D,
    mut finished: Finished,
    reason: &str,
) -> Next {
    let body = format!(
        "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
    );
    local_reply(downstream, 503, "Service Unavailable", &body).await;
    finished.status = 503;
    finished.response_flags = "UC";
    finished.response_bytes = body.len() as u64;
    finished.report();
    Next::Finished
}

/// The server's response cannot be parsed: Envoy's 502 with `UPE`.
async fn upstream_protocol_error<D: AsyncWrite + Unpin>(
    downstream: &mut D,
    mut finished: Finished,
    reason: String,
) -> Http1Error {
    let body = "upstream protocol error";
    local_reply(downstream, 502, "Bad Gateway", body).await;
    finished.status = 502;
    finished.response_flags = "UPE";
    finished.response_bytes = body.len() as u64;
    finished.report();
    Http1Error::Malformed {
        side: Side::Upstream,
        reason,
    }
}

/// The client went away before its request was complete: logged with `DC`, as Envoy does.
fn client_gone(mut finished: Finished) -> Http1Error {
    finished.response_flags = "DC";
    finished.report();
    Http1Error::Truncated(Side::Downstream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::{AccessLog, Encoding};
    use crate::http_proxy::test_support::{exchange, requests_counted};
    use crate::peer_metadata::OwnMetadata;
    use std::time::Duration;
    use tokio::io::DuplexStream;

    const WAIT: Duration = Duration::from_secs(5);

    /// A client and a server with the relay between them.
    struct Relayed {
        client: DuplexStream,
        server: DuplexStream,
        relay: tokio::task::JoinHandle<Result<(), Http1Error>>,
        exchange: Arc<Exchange>,
    }

    fn relayed(access_log: Option<AccessLog>) -> Relayed {
        relayed_as(access_log, "source", false)
    }

    fn relayed_as(
        access_log: Option<AccessLog>,
        reporter: &'static str,
        metadata_exchange: bool,
    ) -> Relayed {
        relayed_with(exchange(access_log, reporter, metadata_exchange))
    }

    fn relayed_with(exchange: Arc<Exchange>) -> Relayed {
        let (client, downstream) = tokio::io::duplex(64 * 1024);
        let (upstream, server) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(relay(downstream, upstream, exchange.clone()));
        Relayed {
            client,
            server,
            relay,
            exchange,
        }
    }

    /// Reads until `done` says the bytes so far are a whole message (or the stream ends).
    async fn read_until(stream: &mut DuplexStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, async {
            let mut chunk = [0u8; 4096];
            while !done(&got) {
                let n = stream.read(&mut chunk).await.expect("the stream reads");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; got {:?}", String::from_utf8_lossy(&got)));
        got
    }

    /// Writes `bytes` on one end and reads the other until `done` says it has it all.
    async fn pass(
        from: &mut DuplexStream,
        bytes: &[u8],
        to: &mut DuplexStream,
        done: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        from.write_all(bytes)
            .await
            .expect("the stream takes the bytes");
        read_until(to, done).await
    }

    /// A response as the relay passes it on, less the one header it adds (`x-envoy-upstream-
    /// service-time`, in whole milliseconds), which must be there.
    fn timed(response: Vec<u8>) -> Vec<u8> {
        let text = String::from_utf8(response).unwrap();
        let line = text
            .split_inclusive("\r\n")
            .find(|line| line.starts_with("x-envoy-upstream-service-time: "))
            .unwrap_or_else(|| panic!("no upstream service time in {text:?}"))
            .to_owned();
        let value = line.trim_end().rsplit(' ').next().unwrap();
        assert!(value.parse::<u64>().is_ok(), "{line:?}");
        assert_eq!(text.matches("x-envoy-upstream-service-time").count(), 1);
        text.replacen(&line, "", 1).into_bytes()
    }

    fn ends_head(bytes: &[u8]) -> bool {
        bytes.windows(4).any(|w| w == b"\r\n\r\n")
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end_at_any_split() {
        let body =
            b"5;name=value\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut scanner = ChunkedScanner::default();
            let first = scanner.scan(&body[..split]).unwrap();
            let found = match first {
                Some(n) => n,
                None => split + scanner.scan(&body[split..]).unwrap().expect("the end"),
            };
            assert_eq!(found, end, "split at {split}");
            assert_eq!(scanner.payload, 21, "split at {split}");
        }
        let mut empty = ChunkedScanner::default();
        assert_eq!(empty.scan(b"0\r\n\r\n").unwrap(), Some(5));
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            b"0\r\nbad\ntrailer",
        ] {
            let mut scanner = ChunkedScanner::default();
            assert!(scanner.scan(bad).is_err(), "{:?}", text(bad));
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let framing =
            |head: &str| parse_request(head.as_bytes(), Wanted::default()).map(|h| h.unwrap().body);
        assert!(matches!(
            framing("GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Ok(None)
        ));
        assert!(matches!(
            framing("POST / HTTP/1.1\r\ncontent-length: 7\r\n\r\n"),
            Ok(Some(Framing::Length(7)))
        ));
        assert!(matches!(
            framing("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Ok(Some(Framing::Chunked(_)))
        ));
        for bad in [
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(
                matches!(framing(bad), Err(Rejected::BadRequest(_))),
                "{bad:?} is refused"
            );
        }
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(framing(&many), Err(Rejected::TooLarge)));
    }

    #[tokio::test]
    async fn keep_alive_requests_get_a_request_id_unless_they_have_one() {
        let Relayed {
            mut client,
            mut server,
            exchange,
            ..
        } = relayed(None);
        let first = pass(
            &mut client,
            b"GET /hello HTTP/1.1\r\nhost: helloworld.sample:5000\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        let first = text(&first);
        assert!(first.starts_with("GET /hello HTTP/1.1\r\nhost: helloworld.sample:5000\r\n"));
        let id = header(first, "x-request-id").expect("a request ID was added");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        let response = pass(
            &mut server,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            &mut client,
            |b| b.ends_with(b"hello"),
        )
        .await;
        assert_eq!(
            timed(response),
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        );

        let second = pass(
            &mut client,
            b"GET /again HTTP/1.1\r\nX-Request-Id: mine\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        assert_eq!(second, b"GET /again HTTP/1.1\r\nX-Request-Id: mine\r\n\r\n");
        let response = pass(
            &mut server,
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            &mut client,
            ends_head,
        )
        .await;
        assert!(text(&response).starts_with("HTTP/1.1 404"));
        assert_eq!(requests_counted(&exchange, 200, "-"), 1);
        assert_eq!(requests_counted(&exchange, 404, "-"), 1);
    }

    #[tokio::test]
    async fn chunked_bodies_pass_unchanged_byte_by_byte_and_pipelined_requests_wait_their_turn() {
        let Relayed {
            mut client,
            mut server,
            exchange,
            ..
        } = relayed(None);
        let upload = b"POST /up HTTP/1.1\r\nx-request-id: a\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nx-sum: 9\r\n\r\n";
        let next = b"GET /next HTTP/1.1\r\nx-request-id: b\r\n\r\n";
        for byte in upload.iter().chain(next.iter()) {
            client.write_all(&[*byte]).await.unwrap();
        }
        let seen = read_until(&mut server, |b| b.ends_with(b"x-sum: 9\r\n\r\n")).await;
        assert_eq!(seen, upload, "the upload arrives as sent");
        // The pipelined request is held until the first response is complete.
        let early = tokio::time::timeout(Duration::from_millis(100), async {
            let mut byte = [0u8; 1];
            server.read(&mut byte).await
        })
        .await;
        assert!(early.is_err(), "the second request waited");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for piece in chunked.chunks(3) {
            server.write_all(piece).await.unwrap();
        }
        let response = read_until(&mut client, |b| b.ends_with(b"0\r\n\r\n")).await;
        assert_eq!(timed(response), chunked);
        let seen = read_until(&mut server, ends_head).await;
        assert_eq!(seen, next);
        pass(
            &mut server,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            &mut client,
            ends_head,
        )
        .await;
        assert_eq!(requests_counted(&exchange, 200, "-"), 1);
        assert_eq!(requests_counted(&exchange, 204, "-"), 1);
    }

    #[tokio::test]
    async fn expect_continue_waits_for_the_servers_go_ahead() {
        let Relayed {
            mut client,
            mut server,
            ..
        } = relayed(None);
        pass(&mut client, b"PUT /file HTTP/1.1\r\nx-request-id: c\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n", &mut server, ends_head).await;
        let go_ahead = pass(
            &mut server,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &mut client,
            ends_head,
        )
        .await;
        assert_eq!(go_ahead, b"HTTP/1.1 100 Continue\r\n\r\n");
        let body = pass(&mut client, b"data", &mut server, |b| b.ends_with(b"data")).await;
        assert_eq!(body, b"data");
        let done = pass(
            &mut server,
            b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            &mut client,
            ends_head,
        )
        .await;
        assert!(text(&done).starts_with("HTTP/1.1 201"));
    }

    #[tokio::test]
    async fn an_upgrade_becomes_a_byte_stream_both_ways() {
        let Relayed {
            mut client,
            mut server,
            relay,
            ..
        } = relayed(None);
        pass(&mut client, b"GET /ws HTTP/1.1\r\nx-request-id: d\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n", &mut server, ends_head).await;
        let got = pass(&mut server, b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nfrom-server", &mut client, |b| b.ends_with(b"from-server")).await;
        assert!(text(&got).starts_with("HTTP/1.1 101"));
        let got = pass(&mut client, b"not HTTP at all", &mut server, |b| {
            b.ends_with(b"at all")
        })
        .await;
        assert_eq!(got, b"not HTTP at all");
        drop(client);
        drop(server);
        tokio::time::timeout(WAIT, relay)
            .await
            .expect("the tunnel ends with its streams")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_response_without_length_ends_with_the_connection() {
        let Relayed {
            mut client,
            mut server,
            relay,
            ..
        } = relayed(None);
        pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: e\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nstreamed until close")
            .await
            .unwrap();
        drop(server);
        let got = read_until(&mut client, |_| false).await;
        assert_eq!(timed(got), b"HTTP/1.1 200 OK\r\n\r\nstreamed until close");
        tokio::time::timeout(WAIT, relay)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn head_responses_have_no_body_whatever_their_length_says() {
        let Relayed {
            mut client,
            mut server,
            ..
        } = relayed(None);
        pass(
            &mut client,
            b"HEAD / HTTP/1.1\r\nx-request-id: f\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        pass(
            &mut server,
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            &mut client,
            ends_head,
        )
        .await;
        let next = pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: g\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        assert!(
            text(&next).starts_with("GET / HTTP/1.1"),
            "the connection is still usable"
        );
    }

    #[tokio::test]
    async fn malformed_requests_get_400_and_oversized_heads_431() {
        let Relayed {
            mut client,
            exchange,
            relay,
            ..
        } = relayed(None);
        client
            .write_all(b"GET / HTTP/1.1\r\nno colon\r\n\r\n")
            .await
            .unwrap();
        let reply = read_until(&mut client, |_| false).await;
        assert!(
            text(&reply).starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{}",
            text(&reply)
        );
        let error = tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
        assert!(matches!(
            error,
            Err(Http1Error::Malformed {
                side: Side::Downstream,
                ..
            })
        ));
        assert_eq!(requests_counted(&exchange, 400, "DPE"), 1);

        let Relayed {
            mut client,
            exchange,
            ..
        } = relayed(None);
        let huge = format!(
            "GET / HTTP/1.1\r\nx-big: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        // The relay answers before the head ends; the rest of the write may be refused.
        let _ = client.write_all(huge.as_bytes()).await;
        let reply = read_until(&mut client, |_| false).await;
        assert!(
            text(&reply).starts_with("HTTP/1.1 431 "),
            "{}",
            text(&reply)
        );
        assert_eq!(requests_counted(&exchange, 431, "DPE"), 1);
    }

    #[tokio::test]
    async fn a_server_that_closes_before_answering_gets_the_client_a_503() {
        let Relayed {
            mut client,
            mut server,
            exchange,
            ..
        } = relayed(None);
        pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: h\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        drop(server);
        let reply = read_until(&mut client, |_| false).await;
        let reply = text(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with(
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        ));
        assert_eq!(requests_counted(&exchange, 503, "UC"), 1);
    }

    #[tokio::test]
    async fn a_malformed_response_is_a_502() {
        let Relayed {
            mut client,
            mut server,
            exchange,
            ..
        } = relayed(None);
        pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: i\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        let reply = pass(&mut server, b"SSH-2.0-OpenSSH\r\n\r\n", &mut client, |_| {
            false
        })
        .await;
        assert!(text(&reply).starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert_eq!(requests_counted(&exchange, 502, "UPE"), 1);
    }

    #[tokio::test]
    async fn the_access_log_has_the_request_the_generated_id_and_the_body_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let format = r#"{"method":"%REQ(:METHOD)%","path":"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%","authority":"%REQ(:AUTHORITY)%","request_id":"%REQ(X-REQUEST-ID)%","code":"%RESPONSE_CODE%","received":"%BYTES_RECEIVED%","sent":"%BYTES_SENT%","protocol":"%PROTOCOL%","server":"%RESP(SERVER)%","service_time":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"}"#;
        let log = AccessLog::open(path.to_str().unwrap(), Some(format), Encoding::Text).unwrap();
        let Relayed {
            mut client,
            mut server,
            ..
        } = relayed(Some(log));
        let seen = pass(
            &mut client,
            b"POST /hello?x=1 HTTP/1.1\r\nhost: helloworld:5000\r\ncontent-length: 3\r\n\r\nabc",
            &mut server,
            |b| b.ends_with(b"abc"),
        )
        .await;
        let id = header(text(&seen), "x-request-id").unwrap().to_owned();
        pass(&mut server, b"HTTP/1.1 200 OK\r\nserver: demo\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", &mut client, |b| b.ends_with(b"0\r\n\r\n")).await;
        // The line is written once the response has gone out, so it may trail the client a bit.
        let line = tokio::time::timeout(WAIT, async {
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.ends_with('\n') {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a log line");
        let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/hello?x=1");
        assert_eq!(json["authority"], "helloworld:5000");
        assert_eq!(json["request_id"], id.as_str());
        assert_eq!(json["code"], "200");
        assert_eq!(json["received"], "3");
        assert_eq!(json["sent"], "2");
        assert_eq!(json["protocol"], "HTTP/1.1");
        assert_eq!(json["server"], "demo");
        let service_time = json["service_time"].as_str().unwrap();
        assert!(service_time.parse::<u64>().is_ok(), "{service_time}");
    }

    /// Another sidecar's metadata headers, as it would send them.
    fn peer_lines() -> String {
        let mut workload = exchange(None, "source", false)
            .dataplane
            .workload
            .as_ref()
            .clone();
        workload.pod_name = "productpage-v1-5d8f9c7b6-x2k4p".into();
        workload.workload_name = String::new();
        workload.cluster_id = "cluster02".into();
        String::from_utf8(OwnMetadata::of(&workload).head_lines).unwrap()
    }

    #[tokio::test]
    async fn the_server_side_learns_the_client_workload_and_the_application_never_sees_it() {
        let Relayed {
            mut client,
            mut server,
            exchange,
            ..
        } = relayed_as(None, "destination", true);
        let request = format!(
            "GET / HTTP/1.1\r\nhost: a\r\n{}x-request-id: j\r\n\r\n",
            peer_lines()
        );
        let seen = pass(&mut client, request.as_bytes(), &mut server, ends_head).await;
        assert_eq!(
            seen,
            b"GET / HTTP/1.1\r\nhost: a\r\nx-request-id: j\r\n\r\n"
        );
        let response = pass(
            &mut server,
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            &mut client,
            ends_head,
        )
        .await;
        let response = text(&response);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"));
        let metadata = header(response, "x-envoy-peer-metadata").expect("the server side's own");
        let me = peer_metadata::decode(metadata.as_bytes()).unwrap();
        assert_eq!(me.workload, "sleep");
        let metrics = exchange.dataplane.telemetry.encode();
        let series = metrics
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(
            series.contains("source_workload=\"productpage-v1\""),
            "{series}"
        );
        assert!(series.contains("source_cluster=\"cluster02\""), "{series}");
    }

    #[tokio::test]
    async fn the_client_side_sends_its_metadata_and_strips_the_servers() {
        let Relayed {
            mut client,
            mut server,
            ..
        } = relayed_as(None, "source", true);
        client
            .write_all(
                b"GET / HTTP/1.1\r\nx-request-id: k\r\nx-envoy-peer-metadata-id: forged\r\nx-forwarded-client-cert: By=forged\r\n\r\n",
            )
            .await
            .unwrap();
        let seen = read_until(&mut server, ends_head).await;
        let seen = text(&seen);
        assert!(
            !seen.contains("x-forwarded-client-cert"),
            "an application may not claim a client certificate: {seen}"
        );
        let id = header(seen, "x-envoy-peer-metadata-id").unwrap();
        assert!(
            id.starts_with("sidecar~10.10.0.9~sleep-5d8f9c7b6-x2k4p.sample"),
            "{id}"
        );
        assert_eq!(
            seen.matches("x-envoy-peer-metadata-id").count(),
            1,
            "{seen}"
        );
        let reply = format!(
            "HTTP/1.1 200 OK\r\n{}x-envoy-upstream-service-time: 99999\r\ncontent-length: 2\r\n\r\nok",
            peer_lines()
        );
        let response = pass(&mut server, reply.as_bytes(), &mut client, |b| {
            b.ends_with(b"ok")
        })
        .await;
        assert_eq!(
            timed(response),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        );
    }

    #[tokio::test]
    async fn the_application_learns_the_clients_certificate_from_x_forwarded_client_cert() {
        let mut inbound = Arc::into_inner(exchange(None, "destination", true)).unwrap();
        inbound.forwarded_client_cert =
            Some("By=spiffe://a;Hash=00;Subject=\"\";URI=spiffe://b".into());
        let Relayed {
            mut client,
            mut server,
            ..
        } = relayed_with(Arc::new(inbound));
        let seen = pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: l\r\nx-forwarded-client-cert: By=earlier\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        // Istio's APPEND_FORWARD: what came is kept, this hop's element follows.
        assert_eq!(
            text(&seen),
            "GET / HTTP/1.1\r\nx-request-id: l\r\nx-forwarded-client-cert: By=earlier\r\nx-forwarded-client-cert: By=spiffe://a;Hash=00;Subject=\"\";URI=spiffe://b\r\n\r\n"
        );
    }

    /// A service without endpoints.
    struct NoEndpoints(Arc<Exchange>);

    impl Upstreams for NoEndpoints {
        type Stream = DuplexStream;

        fn base(&self) -> &Arc<Exchange> {
            &self.0
        }

        async fn checkout(&mut self) -> Result<(DuplexStream, Arc<Exchange>), NoUpstream> {
            Err(NoUpstream {
                response_flags: "UH",
                reason:
                    "cluster `outbound|5000||helloworld.sample.svc.cluster.local` has no endpoints"
                        .into(),
            })
        }

        fn checkin(&mut self, _stream: DuplexStream, _exchange: Arc<Exchange>) {}
    }

    #[tokio::test]
    async fn a_request_without_an_upstream_gets_503_with_the_reason_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let format = r#"{"code":"%RESPONSE_CODE%","flags":"%RESPONSE_FLAGS%","reason":"%UPSTREAM_TRANSPORT_FAILURE_REASON%"}"#;
        let log = AccessLog::open(path.to_str().unwrap(), Some(format), Encoding::Text).unwrap();
        let (mut client, downstream) = tokio::io::duplex(64 * 1024);
        let exchange = exchange(Some(log), "source", false);
        let relay = tokio::spawn(relay_to(downstream, NoEndpoints(exchange.clone())));
        client
            .write_all(b"GET / HTTP/1.1\r\nx-request-id: m\r\n\r\n")
            .await
            .unwrap();
        let reply = read_until(&mut client, |_| false).await;
        let reply = text(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with("has no endpoints"), "{reply}");
        tokio::time::timeout(WAIT, relay)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(requests_counted(&exchange, 503, "UH"), 1);
        let line = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(json["code"], "503");
        assert_eq!(json["flags"], "UH");
        assert!(
            json["reason"]
                .as_str()
                .unwrap()
                .ends_with("has no endpoints")
        );
    }

    #[test]
    fn retries_follow_istios_default_policy_within_rfc_9110() {
        let reset = AttemptFailure::Reset("connection termination");
        let unavailable = AttemptFailure::Unavailable;
        let table = [
            // failure, idempotent, whole request kept, retries left, sent again
            (reset, true, true, 2, true),
            (reset, false, true, 2, false),
            (reset, true, false, 2, false),
            (reset, true, true, 0, false),
            (unavailable, false, true, 1, true),
            (unavailable, true, false, 1, false),
            (unavailable, true, true, 0, false),
        ];
        for (failure, idempotent, kept, left, again) in table {
            assert_eq!(
                should_retry(failure, idempotent, kept, left),
                again,
                "{failure:?} idempotent={idempotent} kept={kept} left={left}"
            );
        }
    }

    /// Endpoints, each one server end; a failed one is never handed out again.
    struct Endpoints {
        exchange: Arc<Exchange>,
        streams: std::collections::VecDeque<DuplexStream>,
        failures: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Upstreams for Endpoints {
        type Stream = DuplexStream;

        fn base(&self) -> &Arc<Exchange> {
            &self.exchange
        }

        async fn checkout(&mut self) -> Result<(DuplexStream, Arc<Exchange>), NoUpstream> {
            self.streams
                .pop_front()
                .map(|stream| (stream, self.exchange.clone()))
                .ok_or_else(|| NoUpstream {
                    response_flags: "UH",
                    reason: "no endpoint left".into(),
                })
        }

        fn checkin(&mut self, stream: DuplexStream, _exchange: Arc<Exchange>) {
            self.streams.push_front(stream);
        }

        fn retries(&self) -> u32 {
            DEFAULT_RETRIES
        }

        fn failed(&mut self) {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A client relayed to three endpoints whose servers `serve` plays, one task each.
    async fn with_three_endpoints<F, Fut>(
        request: &[u8],
        serve: F,
    ) -> (String, Arc<Exchange>, usize)
    where
        F: Fn(usize, DuplexStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let exchange = exchange(None, "source", false);
        let mut streams = std::collections::VecDeque::new();
        for index in 0..3 {
            let (upstream, server) = tokio::io::duplex(64 * 1024);
            streams.push_back(upstream);
            tokio::spawn(serve(index, server));
        }
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let endpoints = Endpoints {
            exchange: exchange.clone(),
            streams,
            failures: failures.clone(),
        };
        let (mut client, downstream) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(relay_to(downstream, endpoints));
        client.write_all(request).await.unwrap();
        client.shutdown().await.unwrap();
        let reply = read_until(&mut client, |_| false).await;
        let _ = tokio::time::timeout(WAIT, relay)
            .await
            .expect("the relay ends");
        let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
        (String::from_utf8(reply).unwrap(), exchange, failed)
    }

    /// Reads one request head and answers it with `response`, or closes at once with `None`.
    async fn answer(mut server: DuplexStream, response: Option<&'static [u8]>) {
        let _ = read_until(&mut server, ends_head).await;
        if let Some(response) = response {
            let _ = server.write_all(response).await;
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ngone";

    #[tokio::test]
    async fn a_get_whose_endpoint_closes_or_answers_503_goes_to_the_next_one() {
        let (reply, exchange, failed) = with_three_endpoints(
            b"GET / HTTP/1.1\r\nx-request-id: r\r\n\r\n",
            |index, server| answer(server, [None, Some(UNAVAILABLE), Some(OK)][index]),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("ok"), "{reply}");
        assert_eq!(failed, 2);
        assert_eq!(requests_counted(&exchange, 200, "-"), 1);
        assert_eq!(requests_counted(&exchange, 503, "UC"), 0);
    }

    #[tokio::test]
    async fn retries_stop_after_two_and_the_last_503_is_passed_on() {
        let (reply, exchange, failed) =
            with_three_endpoints(b"GET / HTTP/1.1\r\nx-request-id: r\r\n\r\n", |_, server| {
                answer(server, Some(UNAVAILABLE))
            })
            .await;
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with("gone"), "{reply}");
        assert_eq!(failed, 2);
        assert_eq!(requests_counted(&exchange, 503, "-"), 1);
    }

    #[tokio::test]
    async fn a_post_is_not_sent_again_after_a_reset_but_is_after_a_503() {
        let post = b"POST /orders HTTP/1.1\r\nx-request-id: r\r\ncontent-length: 3\r\n\r\nabc";
        let (reply, exchange, failed) =
            with_three_endpoints(post, |_, server| answer(server, None)).await;
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply}"
        );
        assert!(
            reply.contains("reset reason: connection termination"),
            "{reply}"
        );
        assert_eq!(failed, 0);
        assert_eq!(requests_counted(&exchange, 503, "UC"), 1);

        let (reply, _, failed) = with_three_endpoints(post, |index, server| {
            answer(server, [Some(UNAVAILABLE), Some(OK), None][index])
        })
        .await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert_eq!(failed, 1);
    }

    #[tokio::test]
    async fn a_draining_server_side_closes_idle_connections_and_asks_busy_ones_to_close() {
        let Relayed {
            mut client,
            mut server,
            relay,
            exchange,
        } = relayed_as(None, "destination", false);
        // Busy: the response in flight when the drain starts says `connection: close`.
        let _ = pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: d\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        exchange.dataplane.drain.start();
        let reply = pass(&mut server, OK, &mut client, |_| false).await;
        let reply = text(&reply);
        assert_eq!(header(reply, "connection"), Some("close"), "{reply}");
        assert!(reply.ends_with("ok"), "{reply}");
        tokio::time::timeout(WAIT, relay)
            .await
            .unwrap()
            .unwrap()
            .unwrap();

        // Idle: a keep-alive connection waiting for its next request is closed.
        let Relayed {
            mut client,
            mut server,
            relay,
            exchange,
        } = relayed_as(None, "destination", false);
        let reply = pass(
            &mut client,
            b"GET / HTTP/1.1\r\nx-request-id: e\r\n\r\n",
            &mut server,
            ends_head,
        )
        .await;
        assert!(!reply.is_empty());
        let reply = pass(&mut server, OK, &mut client, |got| got.ends_with(b"ok")).await;
        assert_eq!(header(text(&reply), "connection"), None);
        exchange.dataplane.drain.start();
        tokio::time::timeout(WAIT, relay)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(read_until(&mut client, |_| false).await.is_empty());
    }

    #[tokio::test]
    async fn the_client_side_keeps_its_connections_while_the_proxy_drains() {
        let Relayed {
            mut client,
            mut server,
            relay,
            exchange,
        } = relayed_as(None, "source", false);
        exchange.dataplane.drain.start();
        for id in ["f", "g"] {
            let request = format!("GET / HTTP/1.1\r\nx-request-id: {id}\r\n\r\n");
            let _ = pass(&mut client, request.as_bytes(), &mut server, ends_head).await;
            let reply = pass(&mut server, OK, &mut client, |got| got.ends_with(b"ok")).await;
            assert_eq!(header(text(&reply), "connection"), None);
        }
        assert!(!relay.is_finished());
    }
}
