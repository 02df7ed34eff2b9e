//! The ADS gRPC service written against HTTP/2 directly, so that responses are sent from the
//! shared, pre-encoded resources.
//!
//! tonic's generated service encodes every response into a per-stream buffer that keeps the
//! capacity of the largest response it ever carried: a thousand state-of-the-world streams, each
//! once sent a 3.6 MB EDS response, held gigabytes. Here a response is a few bytes of head (the
//! gRPC length prefix, version, type and nonce) followed by the resources' own `Bytes`, which
//! HTTP/2 writes out without copying. Requests are still decoded by tonic.

use super::Shared;
use super::stream::{self, Requests};
use super::subscription::Name;
use crate::resources::Resource;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use futures::task::AtomicWaker;
use http_body::{Body, Frame};
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The gRPC message prefix: a compression flag and a 32-bit big-endian length.
pub(crate) const GRPC_PREFIX_BYTES: usize = 5;

/// One response, ready for the wire: the gRPC-framed head, then the resources' shared entries,
/// taken from the resources as the body is written. A handle to a resource is 8 bytes where an
/// entry's `Bytes` is 32: a thousand streams syncing at once each queue three thousand-resource
/// responses, and that difference was a quarter of discovery's peak memory.
pub(crate) struct EncodedResponse {
    head: Bytes,
    resources: Vec<Arc<Resource>>,
    delta: bool,
}

impl EncodedResponse {
    pub(crate) fn sotw(
        version_info: String,
        type_url: &str,
        nonce: String,
        resources: &[&Arc<Resource>],
    ) -> EncodedResponse {
        let head = DiscoveryResponse {
            version_info,
            type_url: type_url.to_owned(),
            nonce,
            ..DiscoveryResponse::default()
        };
        Self::framed(&head, resources, false)
    }

    pub(crate) fn delta(
        system_version_info: String,
        type_url: &str,
        nonce: String,
        resources: &[&Arc<Resource>],
        removed_resources: &[Name],
    ) -> EncodedResponse {
        let head = DeltaDiscoveryResponse {
            system_version_info,
            type_url: type_url.to_owned(),
            nonce,
            removed_resources: removed_resources.iter().map(|n| n.to_string()).collect(),
            ..DeltaDiscoveryResponse::default()
        };
        Self::framed(&head, resources, true)
    }

    /// Protobuf lets repeated fields arrive after the others, so the head (encoded without
    /// resources) followed by the entries is one valid message.
    fn framed(head: &impl Message, resources: &[&Arc<Resource>], delta: bool) -> EncodedResponse {
        let head_length = head.encoded_len();
        let length = head_length
            + resources
                .iter()
                .map(|resource| resource.entry_len(delta))
                .sum::<usize>();
        let mut first = BytesMut::with_capacity(GRPC_PREFIX_BYTES + head_length);
        first.put_u8(0);
        // A gRPC message is at most 4 GiB; an xDS response anywhere near that is not sendable
        // by any means, and saturating makes the client fail it rather than misread it.
        first.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
        head.encode_raw(&mut first);
        EncodedResponse {
            head: first.freeze(),
            resources: resources
                .iter()
                .map(|resource| Arc::clone(resource))
                .collect(),
            delta,
        }
    }

    fn into_pending(self) -> Pending {
        Pending {
            head: Some(self.head),
            resources: self.resources.into_iter(),
            delta: self.delta,
        }
    }

    #[cfg(test)]
    fn to_bytes(&self) -> Vec<u8> {
        let mut pending = EncodedResponse {
            head: self.head.clone(),
            resources: self.resources.clone(),
            delta: self.delta,
        }
        .into_pending();
        let mut bytes = Vec::new();
        while let Some(chunk) = pending.next() {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    }
}

/// What is left of the response being written: its head, then its resources' entries.
struct Pending {
    head: Option<Bytes>,
    resources: std::vec::IntoIter<Arc<Resource>>,
    delta: bool,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            head: None,
            resources: Vec::new().into_iter(),
            delta: false,
        }
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.resources.as_slice().is_empty()
    }

    fn next(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        let resource = self.resources.next()?;
        Some(resource.entry(self.delta))
    }

    fn next_len(&self) -> Option<usize> {
        match &self.head {
            Some(head) => Some(head.len()),
            None => self
                .resources
                .as_slice()
                .first()
                .map(|resource| resource.entry_len(self.delta)),
        }
    }
}

/// What a stream task hands to its response body: a response, or the status that ends it.
pub(crate) type Outgoing = Result<EncodedResponse, Status>;

/// The HTTP/2 response body of one ADS stream: every chunk of every response in turn, then the
/// gRPC status as trailers.
struct ResponseBody {
    responses: mpsc::Receiver<Outgoing>,
    pending: Pending,
    finished: bool,
    in_flight: Arc<InFlight>,
}

/// Bytes handed to HTTP/2 and not yet written out. h2 takes whatever the client's window allows
/// (Envoy's default stream window is 256 MiB), so without a bound of its own a thousand streams
/// syncing at once would each hold a whole response of copied frames.
#[derive(Default)]
struct InFlight {
    bytes: AtomicUsize,
    waker: AtomicWaker,
}

/// Most bytes one stream keeps in flight.
const MAX_IN_FLIGHT: usize = 32 * 1024;

/// A frame's payload that gives its bytes back to the stream's budget when h2 drops it (once
/// written, or when the stream is reset).
struct Counted {
    data: Bytes,
    in_flight: Arc<InFlight>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.in_flight
            .bytes
            .fetch_sub(self.data.len(), Ordering::AcqRel);
        self.in_flight.waker.wake();
    }
}

impl ResponseBody {
    fn new(responses: mpsc::Receiver<Outgoing>) -> ResponseBody {
        ResponseBody {
            responses,
            pending: Pending::default(),
            finished: false,
            in_flight: Arc::default(),
        }
    }

    fn over_budget(&self, cx: &mut Context<'_>) -> bool {
        if self.in_flight.bytes.load(Ordering::Acquire) < MAX_IN_FLIGHT {
            return false;
        }
        self.in_flight.waker.register(cx.waker());
        // Released between the check and the registration: go on.
        self.in_flight.bytes.load(Ordering::Acquire) >= MAX_IN_FLIGHT
    }

    fn counted(&self, data: Bytes) -> Bytes {
        self.in_flight.bytes.fetch_add(data.len(), Ordering::AcqRel);
        Bytes::from_owner(Counted {
            data,
            in_flight: self.in_flight.clone(),
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.pending.is_empty() || !self.over_budget(cx) {
                if let Some(frame) = self.next_data() {
                    let frame = self.counted(frame);
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
            } else {
                return Poll::Pending;
            }
            if self.finished {
                return Poll::Ready(None);
            }
            let status = match ready!(self.responses.poll_recv(cx)) {
                Some(Ok(response)) => {
                    self.pending = response.into_pending();
                    continue;
                }
                Some(Err(status)) => status,
                // The stream task ended without an error: the stream is done.
                None => Status::ok(""),
            };
            self.finished = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
        }
    }
}

impl ResponseBody {
    /// The next DATA payload: a large entry as it is (shared, not copied), or a run of small ones
    /// copied together. HTTP/2 queues every payload it is handed as one frame in a per-connection
    /// slab that never shrinks; a thousand 3 KB entries per response made that slab the largest
    /// thing a connection held.
    fn next_data(&mut self) -> Option<Bytes> {
        let data = self.gather();
        if self.pending.is_empty() {
            // An exhausted iterator still owns its vector (a thousand entries: 8 KB a stream).
            self.pending = Pending::default();
        }
        data
    }

    fn gather(&mut self) -> Option<Bytes> {
        let first = self.pending.next()?;
        if first.len() >= COALESCE_BELOW {
            return Some(first);
        }
        let mut gathered = BytesMut::with_capacity(FRAME_TARGET);
        gathered.extend_from_slice(&first);
        while let Some(next) = self.pending.next_len() {
            if next >= COALESCE_BELOW || gathered.len() + next > FRAME_TARGET {
                break;
            }
            if let Some(entry) = self.pending.next() {
                gathered.extend_from_slice(&entry);
            }
        }
        Some(gathered.freeze())
    }
}

/// Entries this small are copied into shared frames rather than sent one frame each.
const COALESCE_BELOW: usize = 8 * 1024;
/// The size coalesced frames aim for: HTTP/2's default maximum frame size, so that one payload
/// is one frame.
const FRAME_TARGET: usize = 16 * 1024;

fn trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Err(unrepresentable) = status.add_header(&mut headers) {
        tracing::warn!(status = %unrepresentable, "an ADS stream's final status could not be written as trailers");
        let _ = Status::internal("the stream ended with an error").add_header(&mut headers);
    }
    headers
}

/// The ADS service, added to a tonic server like a generated one.
#[derive(Clone)]
pub struct AdsService {
    pub(crate) shared: Arc<Shared>,
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

type Response = http::Response<tonic::body::Body>;

impl Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(self.open(request)))
    }
}

impl AdsService {
    fn open(&self, request: http::Request<tonic::body::Body>) -> Response {
        let delta = match request.uri().path() {
            SOTW_PATH => false,
            DELTA_PATH => true,
            other => {
                return Status::unimplemented(format!(
                    "{other} is not a method of {SERVICE}; use StreamAggregatedResources or DeltaAggregatedResources"
                ))
                .into_http();
            }
        };
        if !self.shared.serving() {
            // Istio's answer too: Envoy and gRPC clients retry with backoff.
            return Status::unavailable(
                "discovery has not finished listing its clusters yet (its /ready on the monitoring port says when); retry shortly",
            )
            .into_http();
        }
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding.as_bytes() != b"identity"
        {
            return Status::unimplemented(format!(
                "compressed ADS requests ({}) are not accepted; send them uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            ))
            .into_http();
        }
        let requests = Requests::new(request.into_body(), delta);
        let (sender, receiver) = mpsc::channel(super::STREAM_BUFFER);
        tokio::spawn(stream::serve(
            self.shared.clone(),
            requests,
            stream::Responses::new(sender, delta),
        ));
        let body = ResponseBody::new(receiver);
        let mut response = http::Response::new(tonic::body::Body::new(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str) -> Arc<Resource> {
        Resource::new(
            name,
            &Cluster {
                name: name.to_owned(),
                ..Cluster::default()
            },
        )
    }

    fn message(response: &EncodedResponse) -> Vec<u8> {
        let bytes = response.to_bytes();
        assert_eq!(bytes[0], 0, "uncompressed");
        let length = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            length,
            bytes.len() - GRPC_PREFIX_BYTES,
            "the prefix counts the message"
        );
        bytes[GRPC_PREFIX_BYTES..].to_vec()
    }

    #[test]
    fn sotw_responses_decode_with_every_resource_in_order() {
        let resources = [cluster("a"), cluster("b"), cluster("c")];
        let borrowed: Vec<&Arc<Resource>> = resources.iter().collect();
        let response =
            EncodedResponse::sotw("7".into(), crate::resources::CLUSTER, "3".into(), &borrowed);
        let decoded = DiscoveryResponse::decode(message(&response).as_slice()).unwrap();
        assert_eq!(decoded.version_info, "7");
        assert_eq!(decoded.type_url, crate::resources::CLUSTER);
        assert_eq!(decoded.nonce, "3");
        let names: Vec<String> = decoded
            .resources
            .iter()
            .map(|any| Cluster::decode(any.value.as_slice()).unwrap().name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn delta_responses_carry_names_versions_and_removals() {
        let resources = [cluster("a"), cluster("b")];
        let borrowed: Vec<&Arc<Resource>> = resources.iter().collect();
        let response = EncodedResponse::delta(
            "9".into(),
            crate::resources::CLUSTER,
            "4".into(),
            &borrowed,
            &["gone".into()],
        );
        let decoded = DeltaDiscoveryResponse::decode(message(&response).as_slice()).unwrap();
        assert_eq!(decoded.system_version_info, "9");
        assert_eq!(decoded.nonce, "4");
        assert_eq!(decoded.removed_resources, ["gone"]);
        assert_eq!(decoded.resources.len(), 2);
        for (sent, resource) in decoded.resources.iter().zip(&resources) {
            assert_eq!(sent.name, &*resource.name);
            assert_eq!(sent.version, resource.version_text());
            assert_eq!(sent.resource, Some(resource.any()));
        }
    }

    #[test]
    fn small_entries_leave_in_few_frames_and_large_ones_unsplit() {
        let small: Vec<Arc<Resource>> = (0..500).map(|i| cluster(&format!("c{i}"))).collect();
        let large = Resource::new(
            "large",
            &Cluster {
                name: "x".repeat(40_000),
                ..Cluster::default()
            },
        );
        let mut borrowed: Vec<&Arc<Resource>> = small.iter().collect();
        borrowed.push(&large);
        let response =
            EncodedResponse::sotw("1".into(), crate::resources::CLUSTER, "1".into(), &borrowed);
        let expected = response.to_bytes();
        let (sender, receiver) = mpsc::channel(1);
        sender.try_send(Ok(response)).unwrap();
        drop(sender);
        let mut body = ResponseBody::new(receiver);
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut frames = Vec::new();
        let mut trailers = None;
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut context) {
            match frame.unwrap().into_data() {
                Ok(data) => frames.push(data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert_eq!(
            frames.concat(),
            expected,
            "the bytes are unchanged, in order"
        );
        assert!(frames.len() <= 4, "{} frames for 501 entries", frames.len());
        assert!(
            frames
                .iter()
                .all(|f| f.len() <= FRAME_TARGET || f.len() == large.sotw_entry().len())
        );
        let trailers = trailers.expect("the body ends with trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    }

    #[test]
    fn a_stream_keeps_a_bounded_number_of_bytes_in_flight() {
        let resources: Vec<Arc<Resource>> = (0..40)
            .map(|i| {
                Resource::new(
                    format!("c{i}"),
                    &Cluster {
                        name: format!("{i}-{}", "x".repeat(20_000)),
                        ..Cluster::default()
                    },
                )
            })
            .collect();
        let borrowed: Vec<&Arc<Resource>> = resources.iter().collect();
        let response =
            EncodedResponse::sotw("1".into(), crate::resources::CLUSTER, "1".into(), &borrowed);
        let expected = response.to_bytes();
        assert!(expected.len() > 4 * MAX_IN_FLIGHT);
        let (sender, receiver) = mpsc::channel(1);
        sender.try_send(Ok(response)).unwrap();
        drop(sender);
        let mut body = ResponseBody::new(receiver);
        let mut context = Context::from_waker(std::task::Waker::noop());
        let mut written = Vec::new();
        let mut held = Vec::new();
        let mut stalls = 0;
        for _ in 0..10_000 {
            match Pin::new(&mut body).poll_frame(&mut context) {
                Poll::Ready(Some(frame)) => match frame.unwrap().into_data() {
                    Ok(data) => held.push(data),
                    Err(_) => break,
                },
                Poll::Ready(None) => break,
                Poll::Pending => {
                    stalls += 1;
                    let held_bytes: usize = held.iter().map(Bytes::len).sum();
                    assert!(
                        held_bytes >= MAX_IN_FLIGHT,
                        "stalled with only {held_bytes} bytes out"
                    );
                    assert!(
                        held_bytes < MAX_IN_FLIGHT + FRAME_TARGET,
                        "{held_bytes} bytes out"
                    );
                    // h2 writes them out and drops them: the budget frees up.
                    for data in held.drain(..) {
                        written.extend_from_slice(&data);
                    }
                }
            }
        }
        for data in held.drain(..) {
            written.extend_from_slice(&data);
        }
        assert!(
            stalls >= 3,
            "the budget held the body back ({stalls} times)"
        );
        assert_eq!(written, expected);
    }

    #[test]
    fn an_empty_response_is_just_its_head() {
        let response =
            EncodedResponse::sotw("1".into(), crate::resources::ENDPOINT, "1".into(), &[]);
        let decoded = DiscoveryResponse::decode(message(&response).as_slice()).unwrap();
        assert!(decoded.resources.is_empty());
        assert_eq!(decoded.type_url, crate::resources::ENDPOINT);
    }
}
