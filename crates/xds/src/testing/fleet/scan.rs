//! Reads ADS responses (either variant) from a gRPC body as its bytes arrive, keeping only what
//! a load client needs: type, version, nonce, how many resources, and which watched names.
//!
//! It holds at most one field of the response at a time (a resource entry: a few KB), never the
//! whole response, and reads fields where they lie in the received chunk unless one straddles
//! two chunks.

use crate::server::GRPC_PREFIX_BYTES;
use bytes::{Buf, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use std::collections::HashMap;

/// One response, as much of it as a load client keeps.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScannedResponse {
    pub type_url: String,
    /// `version_info` (SotW) or `system_version_info` (delta).
    pub version: String,
    pub nonce: String,
    pub resources: usize,
    /// Indexes (into the fleet's watched names) of the resources named in the response.
    pub watched: Vec<u32>,
    /// Delta: names of removed resources.
    pub removed: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScanError {
    #[error("a compressed gRPC message arrived; the load client asks for none")]
    Compressed,
    #[error("field {tag} runs past the end of its message")]
    PastMessage { tag: u32 },
    #[error("field {tag} has wire type {wire_type}, which protobuf does not define")]
    WireType { tag: u32, wire_type: u64 },
    #[error("field {tag} holds text that is not UTF-8")]
    NotUtf8 { tag: u32 },
}

/// Field numbers, the same in `DiscoveryResponse` and `DeltaDiscoveryResponse` except where
/// noted.
const VERSION: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6; // delta only
/// In a SotW entry (`Any`): the resource's bytes; in both `Cluster` and `ClusterLoadAssignment`
/// the name is field 1.
const ANY_VALUE: u32 = 2;
const RESOURCE_NAME_IN_MESSAGE: u32 = 1;
/// In a delta entry (`Resource`): its name.
const DELTA_RESOURCE_NAME: u32 = 3;

/// Bytes copied at least when a field header straddles chunks (a key and a length fit).
const HEADER_TOP_UP: usize = 16;

enum Step {
    Consumed(usize),
    /// The input must hold at least this many bytes for the next step.
    Need(usize),
}

pub(crate) struct ResponseScanner<'a> {
    delta: bool,
    watched: &'a HashMap<Vec<u8>, u32>,
    /// Bytes of a field (or prefix) that straddles chunks.
    pending: BytesMut,
    /// Bytes of the current message still to come; `None` between messages.
    message_left: Option<usize>,
    current: ScannedResponse,
}

impl<'a> ResponseScanner<'a> {
    pub(crate) fn new(delta: bool, watched: &'a HashMap<Vec<u8>, u32>) -> Self {
        ResponseScanner {
            delta,
            watched,
            pending: BytesMut::new(),
            message_left: None,
            current: ScannedResponse::default(),
        }
    }

    /// Reads `chunk`, the next bytes of the body; complete responses go to `out`.
    pub(crate) fn feed(
        &mut self,
        mut chunk: &[u8],
        out: &mut Vec<ScannedResponse>,
    ) -> Result<(), ScanError> {
        loop {
            if self.pending.is_empty() {
                while !chunk.is_empty() {
                    match self.step(chunk, out)? {
                        Step::Consumed(n) => chunk = &chunk[n..],
                        Step::Need(_) => break,
                    }
                }
                self.pending.extend_from_slice(chunk);
                return Ok(());
            }
            let pending = std::mem::take(&mut self.pending);
            let step = self.step(&pending, out);
            self.pending = pending;
            match step? {
                Step::Consumed(n) => self.pending.advance(n),
                Step::Need(total) => {
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    let wanted = total
                        .saturating_sub(self.pending.len())
                        .max(HEADER_TOP_UP)
                        .min(chunk.len());
                    self.pending.extend_from_slice(&chunk[..wanted]);
                    chunk = &chunk[wanted..];
                }
            }
        }
    }

    /// Bytes of a pending field held now (for tests of the bound).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.pending.len()
    }

    fn step(&mut self, input: &[u8], out: &mut Vec<ScannedResponse>) -> Result<Step, ScanError> {
        let Some(left) = self.message_left else {
            if input.len() < GRPC_PREFIX_BYTES {
                return Ok(Step::Need(GRPC_PREFIX_BYTES));
            }
            if input[0] != 0 {
                return Err(ScanError::Compressed);
            }
            let length = u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize;
            self.message_left = Some(length);
            if length == 0 {
                self.finish(out);
            }
            return Ok(Step::Consumed(GRPC_PREFIX_BYTES));
        };
        let incomplete = Step::Need(input.len() + 1);
        let Some((key, key_length)) = varint(input) else {
            return Ok(incomplete);
        };
        let tag = (key >> 3) as u32;
        let wire_type = key & 7;
        let consumed = match wire_type {
            0 => match varint(&input[key_length..]) {
                Some((_, length)) => key_length + length,
                None => return Ok(incomplete),
            },
            1 => key_length + 8,
            5 => key_length + 4,
            2 => {
                let Some((length, length_length)) = varint(&input[key_length..]) else {
                    return Ok(incomplete);
                };
                let start = key_length + length_length;
                let end = start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
                if end > left {
                    return Err(ScanError::PastMessage { tag });
                }
                if input.len() < end {
                    return Ok(Step::Need(end));
                }
                self.field(tag, &input[start..end])?;
                end
            }
            other => {
                return Err(ScanError::WireType {
                    tag,
                    wire_type: other,
                });
            }
        };
        if consumed > left {
            return Err(ScanError::PastMessage { tag });
        }
        if input.len() < consumed {
            return Ok(Step::Need(consumed));
        }
        let left = left - consumed;
        self.message_left = Some(left);
        if left == 0 {
            self.finish(out);
        }
        Ok(Step::Consumed(consumed))
    }

    fn finish(&mut self, out: &mut Vec<ScannedResponse>) {
        self.message_left = None;
        out.push(std::mem::take(&mut self.current));
    }

    fn field(&mut self, tag: u32, value: &[u8]) -> Result<(), ScanError> {
        let text = |value: &[u8]| {
            std::str::from_utf8(value)
                .map(str::to_owned)
                .map_err(|_| ScanError::NotUtf8 { tag })
        };
        match tag {
            VERSION => self.current.version = text(value)?,
            TYPE_URL => self.current.type_url = text(value)?,
            NONCE => self.current.nonce = text(value)?,
            RESOURCES => {
                self.current.resources += 1;
                let name = if self.delta {
                    first_bytes_field(value, DELTA_RESOURCE_NAME)
                } else {
                    first_bytes_field(value, ANY_VALUE)
                        .and_then(|message| first_bytes_field(message, RESOURCE_NAME_IN_MESSAGE))
                };
                if let Some(index) = name.and_then(|name| self.watched.get(name)) {
                    self.current.watched.push(*index);
                }
            }
            REMOVED_RESOURCES if self.delta => self.current.removed += 1,
            _ => {}
        }
        Ok(())
    }
}

/// A varint at the start of `input` and its length; `None` when it is not all there yet.
fn varint(input: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, byte) in input.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

/// The first length-delimited field `wanted` of a complete message.
fn first_bytes_field(mut message: &[u8], wanted: u32) -> Option<&[u8]> {
    while message.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut message).ok()?;
        if wire_type != WireType::LengthDelimited {
            encoding::skip_field(wire_type, tag, &mut message, DecodeContext::default()).ok()?;
            continue;
        }
        let length = usize::try_from(encoding::decode_varint(&mut message).ok()?).ok()?;
        if length > message.len() {
            return None;
        }
        let (value, rest) = message.split_at(length);
        if tag == wanted {
            return Some(value);
        }
        message = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CLUSTER, ENDPOINT};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    /// An assignment with some bulk, so that entries straddle small chunks.
    fn assignment(name: &str) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![
                LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint::default(); 40],
                    ..Default::default()
                };
                3
            ],
            ..Default::default()
        }
    }

    fn grpc(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    fn watched() -> HashMap<Vec<u8>, u32> {
        ["outbound|80||a", "outbound|80||b"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_bytes().to_vec(), i as u32))
            .collect()
    }

    fn sotw_body() -> (Vec<u8>, Vec<ScannedResponse>) {
        let any = |name: &str| Any {
            type_url: ClusterLoadAssignment::type_url(),
            value: assignment(name).encode_to_vec(),
        };
        let first = DiscoveryResponse {
            version_info: "7".into(),
            resources: vec![any("outbound|80||b"), any("other"), any("outbound|80||a")],
            type_url: ENDPOINT.into(),
            nonce: "3".into(),
            ..Default::default()
        };
        let second = DiscoveryResponse {
            version_info: "8".into(),
            type_url: CLUSTER.into(),
            nonce: "4".into(),
            ..Default::default()
        };
        let mut body = grpc(&first);
        body.extend(grpc(&second));
        let expected = vec![
            ScannedResponse {
                type_url: ENDPOINT.into(),
                version: "7".into(),
                nonce: "3".into(),
                resources: 3,
                watched: vec![1, 0],
                removed: 0,
            },
            ScannedResponse {
                type_url: CLUSTER.into(),
                version: "8".into(),
                nonce: "4".into(),
                ..Default::default()
            },
        ];
        (body, expected)
    }

    /// Feeds `body` in chunks of `size`, and returns what was read and the most bytes held.
    fn scan_in_chunks(delta: bool, body: &[u8], size: usize) -> (Vec<ScannedResponse>, usize) {
        let watched = watched();
        let mut scanner = ResponseScanner::new(delta, &watched);
        let mut out = Vec::new();
        let mut most_held = 0;
        for chunk in body.chunks(size) {
            scanner.feed(chunk, &mut out).unwrap();
            most_held = most_held.max(scanner.held());
        }
        assert_eq!(scanner.held(), 0, "nothing left over at the end");
        (out, most_held)
    }

    #[test]
    fn sotw_responses_read_alike_in_any_chunking() {
        let (body, expected) = sotw_body();
        let entry = assignment("outbound|80||b").encoded_len() + 64;
        for size in [1, 2, 5, 7, 100, 1000, 16 * 1024, body.len()] {
            let (out, most_held) = scan_in_chunks(false, &body, size);
            assert_eq!(out, expected, "chunks of {size}");
            assert!(
                most_held <= entry + HEADER_TOP_UP + size.min(HEADER_TOP_UP),
                "chunks of {size}: held {most_held} bytes, more than one entry ({entry})"
            );
        }
    }

    #[test]
    fn delta_responses_give_names_and_removals() {
        let resource = |name: &str| Resource {
            name: name.into(),
            version: "v".into(),
            resource: Some(Any {
                type_url: ClusterLoadAssignment::type_url(),
                value: assignment(name).encode_to_vec(),
            }),
            ..Default::default()
        };
        let response = DeltaDiscoveryResponse {
            system_version_info: "9".into(),
            resources: vec![resource("outbound|80||a"), resource("x")],
            type_url: ENDPOINT.into(),
            removed_resources: vec!["gone".into(), "also".into()],
            nonce: "12".into(),
            ..Default::default()
        };
        for size in [1, 3, 64, 4096] {
            let (out, _) = scan_in_chunks(true, &grpc(&response), size);
            assert_eq!(
                out,
                [ScannedResponse {
                    type_url: ENDPOINT.into(),
                    version: "9".into(),
                    nonce: "12".into(),
                    resources: 2,
                    watched: vec![0],
                    removed: 2,
                }]
            );
        }
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        let watched = watched();
        let refuse = |body: &[u8]| {
            let mut scanner = ResponseScanner::new(false, &watched);
            scanner.feed(body, &mut Vec::new()).unwrap_err()
        };
        assert_eq!(refuse(&[1, 0, 0, 0, 0]), ScanError::Compressed);
        // A 2-byte message whose one field claims 10 bytes.
        assert_eq!(
            refuse(&[0, 0, 0, 0, 2, 0x22, 10]),
            ScanError::PastMessage { tag: 4 }
        );
        assert_eq!(
            refuse(&[0, 0, 0, 0, 2, 0x23, 0]),
            ScanError::WireType {
                tag: 4,
                wire_type: 3
            }
        );
        assert_eq!(
            refuse(&[0, 0, 0, 0, 3, 0x2a, 1, 0xff]),
            ScanError::NotUtf8 { tag: 5 }
        );
    }
}
