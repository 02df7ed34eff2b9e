//! The ADS client against a control plane that sends bad resources among good ones (a scripted
//! tonic server on 127.0.0.1:0 playing a buggy or newer istiod): every rejection is named in
//! one NACK, the good resources are used, and the configuration is published once complete.

use causeway_proxy::ads::{self, AdsSettings, Protocol};
use causeway_xds::resources::{CLUSTER, ENDPOINT, LISTENER};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Node, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use futures::Stream;
use prost::{Message, Name};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

const GOOD: &str = "outbound|80||good.sample.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(10);

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Cluster::default()
    }
}

/// Three clusters: one good, one STRICT_DNS without the hosts to resolve, one that does not decode.
fn clusters() -> Vec<(String, Any)> {
    let dns = Cluster {
        name: "bad-dns".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        ..Cluster::default()
    };
    vec![
        (GOOD.into(), any(&eds_cluster(GOOD))),
        ("bad-dns".into(), any(&dns)),
        (
            "bad-bytes".into(),
            Any {
                type_url: Cluster::type_url(),
                value: vec![0xff, 0xff, 0xff],
            },
        ),
    ]
}

fn listener() -> (String, Any) {
    let proxy = TcpProxy {
        stat_prefix: GOOD.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(GOOD.into())),
        ..TcpProxy::default()
    };
    let listener = Listener {
        name: "10.96.0.80_80".into(),
        address: Some(address("10.96.0.80", 80)),
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    };
    (listener.name.clone(), any(&listener))
}

fn endpoints() -> (String, Any) {
    let assignment = ClusterLoadAssignment {
        cluster_name: GOOD.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(address("10.10.0.7", 8080)),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    };
    (GOOD.into(), any(&assignment))
}

/// What the scripted server saw.
#[derive(Debug)]
enum Seen {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

struct Scripted {
    seen: mpsc::UnboundedSender<Seen>,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers each subscription once: clusters (with the bad two), listeners, endpoints.
fn sotw_response(request: &DiscoveryRequest, nonce: usize) -> Option<DiscoveryResponse> {
    if !request.response_nonce.is_empty() {
        return None;
    }
    let resources: Vec<(String, Any)> = match request.type_url.as_str() {
        CLUSTER => clusters(),
        LISTENER => vec![listener()],
        ENDPOINT if request.resource_names.iter().any(|n| n == GOOD) => vec![endpoints()],
        _ => return None,
    };
    Some(DiscoveryResponse {
        type_url: request.type_url.clone(),
        version_info: "v1".into(),
        nonce: nonce.to_string(),
        resources: resources.into_iter().map(|(_, any)| any).collect(),
        ..DiscoveryResponse::default()
    })
}

fn delta_response(request: &DeltaDiscoveryRequest, nonce: usize) -> Option<DeltaDiscoveryResponse> {
    if !request.response_nonce.is_empty() {
        return None;
    }
    let resources: Vec<(String, Any)> = match request.type_url.as_str() {
        CLUSTER => clusters(),
        LISTENER => vec![listener()],
        ENDPOINT if request.resource_names_subscribe.iter().any(|n| n == GOOD) => {
            vec![endpoints()]
        }
        _ => return None,
    };
    Some(DeltaDiscoveryResponse {
        type_url: request.type_url.clone(),
        nonce: nonce.to_string(),
        resources: resources
            .into_iter()
            .map(|(name, any)| DeltaResource {
                name,
                version: "v1".into(),
                resource: Some(any),
                ..DeltaResource::default()
            })
            .collect(),
        ..DeltaDiscoveryResponse::default()
    })
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (send, responses) = mpsc::unbounded_channel();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut nonce = 0;
            while let Some(Ok(request)) = incoming.next().await {
                nonce += 1;
                if let Some(response) = sotw_response(&request, nonce) {
                    let _ = send.send(Ok(response));
                }
                let _ = seen.send(Seen::Sotw(request));
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            responses,
        ))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (send, responses) = mpsc::unbounded_channel();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut nonce = 0;
            while let Some(Ok(request)) = incoming.next().await {
                nonce += 1;
                if let Some(response) = delta_response(&request, nonce) {
                    let _ = send.send(Ok(response));
                }
                let _ = seen.send(Seen::Delta(request));
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            responses,
        ))))
    }
}

async fn scripted_server() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (seen, requests) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Scripted { seen }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (address, requests)
}

fn settings(address: String, protocol: Protocol) -> AdsSettings {
    AdsSettings {
        address,
        tls_server_name: None,
        root_cert: "/nonexistent".into(),
        node: Node {
            id: "sidecar~10.10.0.9~sleep.sample~sample.svc.cluster.local".into(),
            ..Node::default()
        },
        protocol,
        mark: 0,
    }
}

/// The NACK's type, code and message, from the first request that carries one.
async fn first_nack(requests: &mut mpsc::UnboundedReceiver<Seen>) -> (String, i32, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            let seen = requests.recv().await.expect("the client keeps talking");
            let (type_url, detail) = match seen {
                Seen::Sotw(r) => (r.type_url, r.error_detail),
                Seen::Delta(r) => (r.type_url, r.error_detail),
            };
            if let Some(detail) = detail {
                return (type_url, detail.code, detail.message);
            }
        }
    })
    .await
    .expect("a NACK in time")
}

async fn rejections_come_in_one_nack_and_the_good_resources_are_used(protocol: Protocol) {
    let (address, mut requests) = scripted_server().await;
    let (mut config, status, task) = ads::start(settings(address, protocol));
    let (type_url, code, message) = first_nack(&mut requests).await;
    assert_eq!(type_url, CLUSTER);
    assert_eq!(code, 3, "INVALID_ARGUMENT");
    // State of the world carries names inside resources: an undecodable one is named by place.
    let undecodable = match protocol {
        Protocol::Delta => "CDS `bad-bytes`: cannot be decoded",
        Protocol::StateOfTheWorld => "CDS `resource 3 of the response`: cannot be decoded",
    };
    assert!(
        message.contains(
            "CDS `bad-dns`: a STRICT_DNS cluster needs a load_assignment naming the hosts"
        ) && message.contains(undecodable),
        "{message}"
    );
    assert!(!message.contains(GOOD), "{message}");

    let published = tokio::time::timeout(
        WAIT,
        config.wait_for(|c| {
            c.cluster(GOOD)
                .is_some_and(|cluster| !cluster.endpoints.is_empty())
        }),
    )
    .await
    .expect("the good cluster is used once its endpoints arrive")
    .unwrap()
    .clone();
    assert_eq!(published.clusters.len(), 1, "only the good cluster");
    let route = published
        .outbound_route("10.96.0.80:80".parse().unwrap())
        .expect("the listener names the good cluster");
    assert_eq!(&*route.cluster, GOOD);
    assert_eq!(status.nacks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(status.warm.load(std::sync::atomic::Ordering::Relaxed));
    task.abort();
}

#[tokio::test]
async fn delta_rejections_come_in_one_nack_and_the_good_resources_are_used() {
    rejections_come_in_one_nack_and_the_good_resources_are_used(Protocol::Delta).await;
}

#[tokio::test]
async fn sotw_rejections_come_in_one_nack_and_the_good_resources_are_used() {
    rejections_come_in_one_nack_and_the_good_resources_are_used(Protocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn an_unreachable_discovery_is_retried_and_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (_config, status, task) = ads::start(settings(address.clone(), Protocol::Delta));
    tokio::time::timeout(WAIT, async {
        loop {
            let error = status.last_error.lock().unwrap().clone();
            if let Some(error) = error
                && error.contains(&address)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the failure is reported with the address");
    assert!(!status.connected.load(std::sync::atomic::Ordering::Relaxed));
    task.abort();
}
