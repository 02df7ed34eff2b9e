//! Requests of both protocol variants, reduced to what a stream needs.
//!
//! State-of-the-world requests are decoded by hand: an Envoy sidecar repeats every EDS name it
//! wants (a thousand, say) in every ACK, and decoding those into a thousand `String`s per ACK
//! was the largest cost of an endpoint push. Here the names stay in the received bytes, hashed
//! once; they are only read out when the list changed.

use super::wire::GRPC_PREFIX_BYTES;
use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use foldhash::fast::FixedState;
use http_body_util::BodyExt;
use prost::Message;
use prost::encoding::{self, DecodeContext, WireType};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

/// Any fixed seed: the hash only compares one stream's successive name lists.
const NAMES_HASH_SEED: u64 = 0x5eed;
use tonic::Status;

/// A request of either variant.
pub(crate) struct Incoming {
    pub type_url: String,
    pub node: Option<Node>,
    pub response_nonce: String,
    pub error: Option<String>,
    pub names: NameChange,
}

pub(crate) enum NameChange {
    /// State of the world: the complete list.
    Replace(SotwNames),
    /// Delta: additions, removals, and versions the client already holds.
    Update {
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        initial_versions: HashMap<String, String>,
    },
}

/// The `resource_names` of a `DiscoveryRequest`, still in the request's bytes.
pub(crate) struct SotwNames {
    message: Bytes,
    pub hash: u64,
    pub count: usize,
    pub has_wildcard: bool,
}

/// `DiscoveryRequest` field numbers.
const VERSION_INFO: u32 = 1;
const NODE: u32 = 2;
const RESOURCE_NAMES: u32 = 3;
const TYPE_URL: u32 = 4;
const RESPONSE_NONCE: u32 = 5;
const ERROR_DETAIL: u32 = 6;
/// The key byte of a `resource_names` entry: field 3, length-delimited.
const NAME_KEY: u8 = (RESOURCE_NAMES as u8) << 3 | 2;

impl SotwNames {
    /// The names, in request order; a name that is not UTF-8 refuses the request.
    pub fn read(&self) -> Result<Vec<&str>, Status> {
        let mut names = Vec::with_capacity(self.count);
        let mut rest: &[u8] = &self.message;
        while rest.has_remaining() {
            // The message was walked once when it was decoded: these cannot fail.
            let Ok((tag, wire_type)) = encoding::decode_key(&mut rest) else {
                break;
            };
            let Ok(value) = length_delimited(&mut rest, tag, wire_type) else {
                break;
            };
            if tag == RESOURCE_NAMES
                && let Some(value) = value
            {
                names.push(std::str::from_utf8(value).map_err(|_| {
                    Status::invalid_argument(
                        "DiscoveryRequest.resource_names holds a name that is not UTF-8",
                    )
                })?);
            }
        }
        Ok(names)
    }
}

/// The next field's bytes when it is length-delimited; other fields are skipped.
#[inline]
fn length_delimited<'a>(
    buf: &mut &'a [u8],
    tag: u32,
    wire_type: WireType,
) -> Result<Option<&'a [u8]>, String> {
    if wire_type != WireType::LengthDelimited {
        encoding::skip_field(wire_type, tag, buf, DecodeContext::default())
            .map_err(|e| e.to_string())?;
        return Ok(None);
    }
    let length = encoding::decode_varint(buf).map_err(|e| e.to_string())?;
    let length = usize::try_from(length)
        .ok()
        .filter(|length| *length <= buf.len())
        .ok_or_else(|| format!("field {tag} runs past the end of the message"))?;
    let (value, rest) = buf.split_at(length);
    *buf = rest;
    Ok(Some(value))
}

fn text(value: &[u8], field: &str) -> Result<String, Status> {
    String::from_utf8(value.to_vec())
        .map_err(|_| Status::invalid_argument(format!("DiscoveryRequest.{field} is not UTF-8")))
}

/// What `decode_sotw` learns of the names as it passes them.
///
/// The names are hashed in their encoded form (key, length, bytes: self-delimiting), one run of
/// adjacent name fields at a time. Envoy writes them all in one run, so an ACK of a thousand
/// names costs one hash call rather than a thousand.
struct NamesSeen {
    hasher: foldhash::fast::FoldHasher<'static>,
    /// Name fields seen and not yet hashed: `message[run.start..run.end]`.
    run: std::ops::Range<usize>,
    count: usize,
    has_wildcard: bool,
}

impl NamesSeen {
    fn new() -> NamesSeen {
        NamesSeen {
            hasher: FixedState::with_seed(NAMES_HASH_SEED).build_hasher(),
            run: 0..0,
            count: 0,
            has_wildcard: false,
        }
    }

    /// A name field that spans `field` of `message` and holds `value`.
    fn add(&mut self, message: &[u8], field: std::ops::Range<usize>, value: &[u8]) {
        if self.run.end != field.start {
            self.hasher.write(&message[self.run.clone()]);
            self.run.start = field.start;
        }
        self.run.end = field.end;
        self.count += 1;
        self.has_wildcard |= value == b"*";
    }

    fn finish(mut self, message: Bytes) -> SotwNames {
        self.hasher.write(&message[self.run.clone()]);
        SotwNames {
            hash: self.hasher.finish(),
            count: self.count,
            has_wildcard: self.has_wildcard,
            message,
        }
    }
}

/// Decodes a `DiscoveryRequest` into an `Incoming` without copying its names out.
fn decode_sotw(message: Bytes) -> Result<Incoming, Status> {
    let malformed = |error: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("malformed DiscoveryRequest: {error}"))
    };
    let mut request = Incoming {
        type_url: String::new(),
        node: None,
        response_nonce: String::new(),
        error: None,
        names: NameChange::Replace(SotwNames {
            message: Bytes::new(),
            hash: 0,
            count: 0,
            has_wildcard: false,
        }),
    };
    let mut names = NamesSeen::new();
    let bytes: &[u8] = &message;
    let mut rest = bytes;
    while let Some(&first) = rest.first() {
        let field_start = bytes.len() - rest.len();
        // The common field, a name shorter than 128 bytes, without the general decoder.
        if first == NAME_KEY
            && let Some(&length) = rest.get(1)
            && length < 0x80
            && usize::from(length) + 2 <= rest.len()
        {
            let field_end = field_start + 2 + usize::from(length);
            names.add(
                bytes,
                field_start..field_end,
                &bytes[field_start + 2..field_end],
            );
            rest = &bytes[field_end..];
            continue;
        }
        let (tag, wire_type) = encoding::decode_key(&mut rest).map_err(|e| malformed(&e))?;
        let Some(value) = length_delimited(&mut rest, tag, wire_type).map_err(|e| malformed(&e))?
        else {
            continue;
        };
        match tag {
            NODE => request.node = Some(Node::decode(value).map_err(|e| malformed(&e))?),
            // Read out (and checked) only when the list changed; see `SotwNames::read`.
            RESOURCE_NAMES => names.add(bytes, field_start..bytes.len() - rest.len(), value),
            TYPE_URL => request.type_url = text(value, "type_url")?,
            RESPONSE_NONCE => request.response_nonce = text(value, "response_nonce")?,
            ERROR_DETAIL => {
                request.error = Some(RpcStatus::decode(value).map_err(|e| malformed(&e))?.message)
            }
            // version_info is informational (the nonce says what is ACKed).
            VERSION_INFO => {}
            // Resource locators and unknown fields are not used.
            _ => {}
        }
    }
    request.names = NameChange::Replace(names.finish(message));
    Ok(request)
}

/// The gRPC messages of a request body, framed here rather than by tonic: tonic's decoder keeps
/// a buffer as large as the largest request it has seen (a thousand-name ACK: 64 KiB) for the
/// life of the stream; here a message owns exactly its bytes and is gone once handled.
pub(crate) struct RequestFrames {
    body: tonic::body::Body,
    /// Received bytes not yet part of a returned message, oldest first.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    finished: bool,
}

impl RequestFrames {
    pub fn new(body: tonic::body::Body) -> RequestFrames {
        RequestFrames {
            body,
            pending: VecDeque::new(),
            pending_bytes: 0,
            finished: false,
        }
    }

    /// The next message, `None` at the end of the body.
    pub async fn next_message(&mut self, max_bytes: usize) -> Option<Result<Bytes, Status>> {
        loop {
            if self.pending_bytes >= GRPC_PREFIX_BYTES {
                let prefix = self.peek_prefix();
                if prefix[0] != 0 {
                    return Some(Err(Status::unimplemented(
                        "compressed ADS requests are not accepted; send them uncompressed",
                    )));
                }
                let length =
                    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                if length > max_bytes {
                    return Some(Err(Status::resource_exhausted(format!(
                        "an ADS request of {length} bytes is over the limit of {max_bytes}"
                    ))));
                }
                if self.pending_bytes >= GRPC_PREFIX_BYTES + length {
                    self.take(GRPC_PREFIX_BYTES);
                    return Some(Ok(self.take(length)));
                }
            }
            if self.finished {
                return (self.pending_bytes > 0).then(|| {
                    Err(Status::invalid_argument(
                        "the request stream ended in the middle of a message",
                    ))
                });
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.pending_bytes += data.len();
                        self.pending.push_back(data);
                    }
                }
                Some(Err(status)) => return Some(Err(status)),
                None => self.finished = true,
            }
        }
    }

    fn peek_prefix(&self) -> [u8; GRPC_PREFIX_BYTES] {
        let mut prefix = [0; GRPC_PREFIX_BYTES];
        let mut filled = 0;
        for chunk in &self.pending {
            let n = chunk.len().min(GRPC_PREFIX_BYTES - filled);
            prefix[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == GRPC_PREFIX_BYTES {
                break;
            }
        }
        prefix
    }

    /// The first `count` pending bytes: a slice when one chunk holds them, else a copy.
    fn take(&mut self, count: usize) -> Bytes {
        self.pending_bytes -= count;
        if let Some(front) = self.pending.front_mut()
            && front.len() >= count
        {
            let taken = front.split_to(count);
            if front.is_empty() {
                self.pending.pop_front();
            }
            return taken;
        }
        let mut gathered = BytesMut::with_capacity(count);
        while gathered.len() < count {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let n = front.len().min(count - gathered.len());
            gathered.extend_from_slice(&front.split_to(n));
            if front.is_empty() {
                self.pending.pop_front();
            }
        }
        gathered.freeze()
    }
}

/// Most bytes one request may have (a SotW EDS request naming 100,000 clusters is ~7 MB).
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

pub(crate) struct Requests {
    frames: RequestFrames,
    delta: bool,
}

impl Requests {
    pub fn new(body: tonic::body::Body, delta: bool) -> Requests {
        Requests {
            frames: RequestFrames::new(body),
            delta,
        }
    }

    pub async fn next(&mut self) -> Option<Result<Incoming, Status>> {
        let message = match self.frames.next_message(MAX_REQUEST_BYTES).await? {
            Ok(message) => message,
            Err(status) => return Some(Err(status)),
        };
        if !self.delta {
            return Some(decode_sotw(message));
        }
        Some(
            DeltaDiscoveryRequest::decode(message)
                .map_err(|error| {
                    Status::invalid_argument(format!("malformed DeltaDiscoveryRequest: {error}"))
                })
                .map(|request| Incoming {
                    type_url: request.type_url,
                    node: request.node,
                    response_nonce: request.response_nonce,
                    error: request.error_detail.map(|e| e.message),
                    names: NameChange::Update {
                        subscribe: request.resource_names_subscribe,
                        unsubscribe: request.resource_names_unsubscribe,
                        initial_versions: request.initial_resource_versions,
                    },
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    fn request(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "3".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.b~b.svc.cluster.local".into(),
                ..Node::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: crate::resources::ENDPOINT.into(),
            response_nonce: "7".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "rejected".into(),
                ..RpcStatus::default()
            }),
            ..DiscoveryRequest::default()
        }
    }

    fn decoded(request: &DiscoveryRequest) -> Incoming {
        decode_sotw(Bytes::from(request.encode_to_vec())).unwrap()
    }

    fn names(incoming: &Incoming) -> &SotwNames {
        match &incoming.names {
            NameChange::Replace(names) => names,
            NameChange::Update { .. } => unreachable!("a SotW request"),
        }
    }

    #[test]
    fn every_field_a_stream_uses_is_read() {
        let incoming = decoded(&request(&["outbound|80||a", "outbound|80||b"]));
        assert_eq!(incoming.type_url, crate::resources::ENDPOINT);
        assert_eq!(incoming.response_nonce, "7");
        assert_eq!(incoming.error.as_deref(), Some("rejected"));
        assert_eq!(
            incoming.node.unwrap().id,
            "sidecar~10.0.0.1~a.b~b.svc.cluster.local"
        );
        let decoded = decoded(&request(&["outbound|80||a", "outbound|80||b"]));
        assert_eq!(
            names(&decoded).read().unwrap(),
            ["outbound|80||a", "outbound|80||b"]
        );
    }

    #[test]
    fn equal_lists_hash_equal_and_others_do_not() {
        let hash = |list: &[&str]| names(&decoded(&request(list))).hash;
        assert_eq!(hash(&["a", "b"]), hash(&["a", "b"]));
        assert_ne!(hash(&["a", "b"]), hash(&["ab"]));
        assert_ne!(hash(&["a", "b"]), hash(&["b", "a"]));
        let wildcard = decoded(&request(&["*"]));
        assert!(names(&wildcard).has_wildcard);
        assert_eq!(names(&wildcard).count, 1);
    }

    #[test]
    fn long_and_interleaved_names_are_all_counted_and_read() {
        let long = "x".repeat(300);
        // Names, then another field, then more names: two runs, one of them the long form.
        let mut bytes = request(&["a", long.as_str()]).encode_to_vec();
        bytes.extend(
            DiscoveryRequest {
                resource_names: vec!["b".into()],
                ..DiscoveryRequest::default()
            }
            .encode_to_vec(),
        );
        let incoming = decode_sotw(Bytes::from(bytes)).unwrap();
        let seen = names(&incoming);
        assert_eq!(seen.count, 3);
        assert_eq!(seen.read().unwrap(), ["a", long.as_str(), "b"]);
        let other = decoded(&request(&["a", &"y".repeat(300)]));
        assert_ne!(
            names(&decoded(&request(&["a", long.as_str()]))).hash,
            names(&other).hash
        );
    }

    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for message in messages {
            bytes.push(0);
            bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
            bytes.extend_from_slice(message);
        }
        bytes
    }

    /// A body that hands over `bytes` in chunks of `chunk` bytes.
    fn body(bytes: Vec<u8>, chunk: usize) -> tonic::body::Body {
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = bytes
            .chunks(chunk)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )))
    }

    #[tokio::test]
    async fn messages_are_framed_across_any_chunking() {
        let messages: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; 10 + usize::from(i) * 700])
            .collect();
        for chunk in [1, 3, 5, 64, 1000, 100_000] {
            let mut frames = RequestFrames::new(body(framed(&messages), chunk));
            for message in &messages {
                let got = frames.next_message(1 << 20).await.unwrap().unwrap();
                assert_eq!(&got[..], &message[..], "chunks of {chunk}");
            }
            assert!(frames.next_message(1 << 20).await.is_none());
        }
    }

    #[tokio::test]
    async fn oversized_compressed_and_cut_messages_are_refused() {
        let mut frames = RequestFrames::new(body(framed(&[vec![0; 100]]), 7));
        let error = frames.next_message(50).await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);

        let mut compressed = framed(&[vec![0; 4]]);
        compressed[0] = 1;
        let mut frames = RequestFrames::new(body(compressed, 64));
        let error = frames.next_message(50).await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unimplemented);

        let mut cut = framed(&[vec![0; 40]]);
        cut.truncate(20);
        let mut frames = RequestFrames::new(body(cut, 8));
        let error = frames.next_message(50).await.unwrap().unwrap_err();
        assert!(
            error.message().contains("middle of a message"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let mut bytes = request(&["a"]).encode_to_vec();
        bytes.truncate(bytes.len() - 3);
        let error = decode_sotw(Bytes::from(bytes)).err().expect("refused");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("malformed DiscoveryRequest"),
            "{}",
            error.message()
        );

        // resource_names (field 3) holding invalid UTF-8: refused once read.
        let incoming = decode_sotw(Bytes::from_static(&[0x1a, 0x02, 0xff, 0xfe])).unwrap();
        let error = names(&incoming).read().unwrap_err();
        assert!(error.message().contains("not UTF-8"), "{}", error.message());
    }
}
