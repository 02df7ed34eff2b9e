//! Requests of both protocol variants, reduced to what a stream needs.
//!
//! State-of-the-world requests are decoded by hand: an Envoy sidecar repeats every EDS name it
//! wants (a thousand, say) in every ACK, and decoding those into a thousand `String`s per ACK
//! was the largest cost of an endpoint push. Here the names stay in the received bytes, hashed
//! once; they are only read out when the list changed.

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use prost::encoding::{self, DecodeContext, WireType};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder, Streaming};

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

impl SotwNames {
    /// The names, in request order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let mut rest: &[u8] = &self.message;
        std::iter::from_fn(move || {
            while rest.has_remaining() {
                let (tag, wire_type) = encoding::decode_key(&mut rest).ok()?;
                let value = length_delimited(&mut rest, tag, wire_type).ok()?;
                if tag == RESOURCE_NAMES
                    && let Some(value) = value
                {
                    // Checked to be UTF-8 when the request was decoded.
                    return std::str::from_utf8(value).ok();
                }
            }
            None
        })
    }
}

/// The next field's bytes when it is length-delimited; other fields are skipped.
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
    let mut hasher = DefaultHasher::new();
    let mut count = 0;
    let mut has_wildcard = false;
    let mut rest: &[u8] = &message;
    while rest.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut rest).map_err(|e| malformed(&e))?;
        let Some(value) = length_delimited(&mut rest, tag, wire_type).map_err(|e| malformed(&e))?
        else {
            continue;
        };
        match tag {
            NODE => request.node = Some(Node::decode(value).map_err(|e| malformed(&e))?),
            RESOURCE_NAMES => {
                std::str::from_utf8(value).map_err(|_| {
                    Status::invalid_argument(
                        "DiscoveryRequest.resource_names holds a name that is not UTF-8",
                    )
                })?;
                hasher.write_usize(value.len());
                hasher.write(value);
                count += 1;
                has_wildcard |= value == b"*";
            }
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
    request.names = NameChange::Replace(SotwNames {
        message,
        hash: hasher.finish(),
        count,
        has_wildcard,
    });
    Ok(request)
}

/// tonic's decoder for state-of-the-world requests.
pub(crate) struct SotwDecoder;

impl Decoder for SotwDecoder {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        let message = src.copy_to_bytes(src.remaining());
        decode_sotw(message).map(Some)
    }
}

pub(crate) enum Requests {
    Sotw(Streaming<Incoming>),
    Delta(Streaming<DeltaDiscoveryRequest>),
}

impl Requests {
    pub async fn next(&mut self) -> Option<Result<Incoming, Status>> {
        match self {
            Requests::Sotw(stream) => stream.message().await.transpose(),
            Requests::Delta(stream) => stream.message().await.transpose().map(|r| {
                r.map(|request| Incoming {
                    type_url: request.type_url,
                    node: request.node,
                    response_nonce: request.response_nonce,
                    error: request.error_detail.map(|e| e.message),
                    names: NameChange::Update {
                        subscribe: request.resource_names_subscribe,
                        unsubscribe: request.resource_names_unsubscribe,
                        initial_versions: request.initial_resource_versions,
                    },
                })
            }),
        }
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
        let names = names(&decoded(&request(&["outbound|80||a", "outbound|80||b"])))
            .iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert_eq!(names, ["outbound|80||a", "outbound|80||b"]);
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

        // resource_names (field 3) holding invalid UTF-8.
        let error = decode_sotw(Bytes::from_static(&[0x1a, 0x02, 0xff, 0xfe]))
            .err()
            .expect("refused");
        assert!(error.message().contains("not UTF-8"), "{}", error.message());
    }
}
