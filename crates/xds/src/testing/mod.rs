//! Test and benchmark helpers: ADS clients of both variants that speak to a server the way Envoy
//! and gRPC do, and decoders for what they receive.

pub mod fleet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub const WAIT: Duration = Duration::from_secs(10);

/// A node as Istio's agent describes a workload: `<kind>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
pub fn node(
    kind: &str,
    ip: &str,
    pod: &str,
    namespace: &str,
    metadata: &[(&str, &str)],
    labels: &[(&str, &str)],
) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut fields: HashMap<String, Value> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), string(v)))
        .collect();
    fields.insert("NAMESPACE".into(), string(namespace));
    fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), string(v)))
                    .collect(),
            })),
        },
    );
    Node {
        id: format!("{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(Struct { fields }),
        ..Node::default()
    }
}

pub fn decode<M: prost::Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).expect("the server sends well-formed resources")
}

/// One HTTP/2 connection to the xDS server, for streams to share (as gRPC clients do).
pub async fn connection(address: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("an xDS address makes a URI")
        .connect()
        .await
        .expect("the xDS server accepts connections")
}

async fn channel(
    address: SocketAddr,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    ads_client(connection(address).await)
}

fn ads_client(
    connection: tonic::transport::Channel,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    AggregatedDiscoveryServiceClient::new(connection).max_decoding_message_size(usize::MAX)
}

/// The stream's next message, `None` after `timeout`; a closed or failed stream fails the test.
async fn next_within<T>(stream: &mut Streaming<T>, timeout: Duration) -> Option<T> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(Some(response))) => Some(response),
        Ok(Ok(None)) => panic!("the server closed the stream"),
        Ok(Err(status)) => panic!("the stream failed: {status}"),
        Err(_) => None,
    }
}

/// A state-of-the-world ADS stream.
pub struct SotwClient {
    pub node: Node,
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    sent_node: bool,
}

impl SotwClient {
    pub async fn connect(address: SocketAddr, node: Node) -> SotwClient {
        let (requests, outgoing) = mpsc::channel(64);
        let responses = channel(address)
            .await
            .stream_aggregated_resources(ReceiverStream::new(outgoing))
            .await
            .expect("the stream opens")
            .into_inner();
        SotwClient {
            node,
            requests,
            responses,
            sent_node: false,
        }
    }

    /// Sends a request; `nack` turns it into a NACK of `nonce`.
    pub async fn request(
        &mut self,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        nack: Option<&str>,
    ) {
        let node = (!self.sent_node).then(|| self.node.clone());
        self.sent_node = true;
        let request = DiscoveryRequest {
            version_info: version.to_owned(),
            node,
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            type_url: type_url.to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: nack.map(|message| RpcStatus {
                code: 3,
                message: message.to_owned(),
                ..RpcStatus::default()
            }),
            ..DiscoveryRequest::default()
        };
        self.requests
            .send(request)
            .await
            .expect("the stream is open");
    }

    pub async fn ack(&mut self, response: &DiscoveryResponse, names: &[&str]) {
        let (type_url, version, nonce) = (
            response.type_url.clone(),
            response.version_info.clone(),
            response.nonce.clone(),
        );
        self.request(&type_url, names, &version, &nonce, None).await;
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        self.recv_within(WAIT).await.expect("a response in time")
    }

    /// The next response, or `None` if none comes within `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<DiscoveryResponse> {
        next_within(&mut self.responses, timeout).await
    }

    /// Reads responses until one of `type_url` arrives (ACKing others), and returns it.
    pub async fn recv_type(&mut self, type_url: &str) -> DiscoveryResponse {
        loop {
            let response = self.recv().await;
            if response.type_url == type_url {
                return response;
            }
        }
    }
}

/// An incremental (delta) ADS stream.
pub struct DeltaClient {
    pub node: Node,
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
    sent_node: bool,
}

impl DeltaClient {
    pub async fn connect(address: SocketAddr, node: Node) -> DeltaClient {
        DeltaClient::on(connection(address).await, node).await
    }

    /// A stream on `connection`, which other streams may share.
    pub async fn on(connection: tonic::transport::Channel, node: Node) -> DeltaClient {
        let (requests, outgoing) = mpsc::channel(64);
        let responses = ads_client(connection)
            .delta_aggregated_resources(ReceiverStream::new(outgoing))
            .await
            .expect("the stream opens")
            .into_inner();
        DeltaClient {
            node,
            requests,
            responses,
            sent_node: false,
        }
    }

    pub async fn request(
        &mut self,
        type_url: &str,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
        nack: Option<&str>,
    ) {
        let node = (!self.sent_node).then(|| self.node.clone());
        self.sent_node = true;
        let request = DeltaDiscoveryRequest {
            node,
            type_url: type_url.to_owned(),
            resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
            response_nonce: nonce.to_owned(),
            error_detail: nack.map(|message| RpcStatus {
                code: 3,
                message: message.to_owned(),
                ..RpcStatus::default()
            }),
            ..DeltaDiscoveryRequest::default()
        };
        self.requests
            .send(request)
            .await
            .expect("the stream is open");
    }

    pub async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        let (type_url, nonce) = (response.type_url.clone(), response.nonce.clone());
        self.request(&type_url, &[], &[], &nonce, None).await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        self.recv_within(WAIT).await.expect("a response in time")
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Option<DeltaDiscoveryResponse> {
        next_within(&mut self.responses, timeout).await
    }

    pub async fn recv_type(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        loop {
            let response = self.recv().await;
            if response.type_url == type_url {
                return response;
            }
        }
    }
}
