//! xDS against a two-cluster mesh: what sidecars, routers and both protocol variants are sent,
//! split horizon, endpoint-only pushes, ACK/NACK bookkeeping.

mod common;

use causeway_lab::testing::fixtures;
use causeway_xds::resources::{CLUSTER, ENDPOINT, LISTENER};
use causeway_xds::testing::{DeltaClient, SotwClient, connection, decode, node};
use common::{HELLOWORLD, Mesh, WAIT, get, two_cluster_mesh};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::value::Kind;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, GroupVersionKind, PostParams};
use serde_json::json;
use std::time::Duration;

const OUTBOUND: &str = "outbound|5000||helloworld.sample.svc.cluster.local";

/// `(address, port, weight, network, cluster, tlsMode)` of every endpoint in an assignment.
fn endpoints(
    assignment: &ClusterLoadAssignment,
) -> Vec<(String, u32, u32, String, String, String)> {
    let mut found = Vec::new();
    for locality in &assignment.endpoints {
        assert!(
            locality.load_balancing_weight.is_some_and(|w| w.value > 0),
            "localities carry a weight"
        );
        for endpoint in &locality.lb_endpoints {
            let Some(HostIdentifier::Endpoint(inner)) = &endpoint.host_identifier else {
                panic!("an endpoint")
            };
            let Some(address::Address::SocketAddress(socket)) =
                inner.address.as_ref().and_then(|a| a.address.clone())
            else {
                panic!("a socket address")
            };
            let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
                panic!("a port")
            };
            let metadata = endpoint
                .metadata
                .clone()
                .unwrap_or_default()
                .filter_metadata;
            let field = |filter: &str, key: &str| match metadata
                .get(filter)
                .and_then(|s| s.fields.get(key))
                .and_then(|v| v.kind.clone())
            {
                Some(Kind::StringValue(text)) => text,
                _ => String::new(),
            };
            found.push((
                socket.address,
                port,
                endpoint.load_balancing_weight.map(|w| w.value).unwrap_or(1),
                field("istio", "network"),
                field("istio", "cluster"),
                field("envoy.transport_socket_match", "tlsMode"),
            ));
        }
    }
    found.sort();
    found
}

fn sidecar_node(network: &str) -> envoy_types::pb::envoy::config::core::v3::Node {
    node(
        "sidecar",
        "10.10.0.9",
        "sleep-abc",
        "sample",
        &[("CLUSTER_ID", "cluster01"), ("NETWORK", network)],
        &[("app", "sleep")],
    )
}

async fn assignment_of(client: &mut SotwClient) -> ClusterLoadAssignment {
    let response = client.recv_type(ENDPOINT).await;
    assert_eq!(
        response.resources.len(),
        1,
        "only the changed cluster is sent"
    );
    decode(&response.resources[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_see_other_networks_through_their_gateway_and_get_endpoint_only_pushes() {
    let mesh: Mesh = two_cluster_mesh(true).await;
    let mut sidecar =
        SotwClient::connect(mesh.discovery.xds_address, sidecar_node("network1")).await;

    sidecar.request(CLUSTER, &[], "", "", None).await;
    let clusters = sidecar.recv_type(CLUSTER).await;
    let names: Vec<String> = clusters
        .resources
        .iter()
        .map(|r| decode::<Cluster>(r).name)
        .collect();
    assert!(names.contains(&OUTBOUND.to_owned()), "{names:?}");
    assert!(names.contains(&"PassthroughCluster".to_owned()));
    sidecar.ack(&clusters, &[]).await;

    sidecar.request(ENDPOINT, &[OUTBOUND], "", "", None).await;
    let response = sidecar.recv_type(ENDPOINT).await;
    let assignment: ClusterLoadAssignment = decode(&response.resources[0]);
    assert_eq!(
        endpoints(&assignment),
        [
            (
                "10.10.0.5".into(),
                5000,
                1,
                "network1".into(),
                "cluster01".into(),
                "istio".into()
            ),
            (
                "172.18.255.2".into(),
                15443,
                1,
                "network2".into(),
                "cluster02".into(),
                "istio".into()
            ),
        ],
        "cluster02's endpoint is replaced by its network's gateway"
    );
    sidecar.ack(&response, &[OUTBOUND]).await;

    sidecar.request(LISTENER, &[], "", "", None).await;
    let listeners = sidecar.recv_type(LISTENER).await;
    let listener_names: Vec<String> = listeners
        .resources
        .iter()
        .map(|r| decode::<Listener>(r).name)
        .collect();
    let service: Service = Api::namespaced(mesh.client01.clone(), "sample")
        .get("helloworld")
        .await
        .unwrap();
    let vip = service.spec.unwrap().cluster_ip.unwrap();
    assert!(
        listener_names.contains(&format!("{vip}_5000")),
        "{listener_names:?}"
    );
    assert!(listener_names.contains(&"virtualOutbound".to_owned()));
    sidecar.ack(&listeners, &[]).await;

    // Two more v2 pods behind the gateway: only EDS is pushed, and the gateway's weight follows.
    for (name, ip) in [
        ("helloworld-v2b", "10.20.0.6"),
        ("helloworld-v2c", "10.20.0.7"),
    ] {
        fixtures::pod(
            &mesh.client02,
            "sample",
            common::pod(name, "helloworld", ip, "v2"),
        )
        .await;
    }
    let weight = tokio::time::timeout(WAIT, async {
        loop {
            let response = sidecar.recv().await;
            assert_eq!(
                response.type_url, ENDPOINT,
                "an endpoint change pushes nothing but EDS"
            );
            let assignment: ClusterLoadAssignment = decode(&response.resources[0]);
            sidecar.ack(&response, &[OUTBOUND]).await;
            let via_gateway = endpoints(&assignment)
                .into_iter()
                .find(|e| e.0 == "172.18.255.2")
                .unwrap();
            if via_gateway.2 == 3 {
                return via_gateway.2;
            }
        }
    })
    .await
    .expect("the gateway's weight reaches 3");
    assert_eq!(weight, 3);

    // A pod going unready leaves EDS; proxy-status shows the stream synced.
    fixtures::set_pod(&mesh.client01, "sample", "helloworld-v1", None, false).await;
    let assignment = assignment_of(&mut sidecar).await;
    assert!(
        endpoints(&assignment).iter().all(|e| e.0 != "10.10.0.5"),
        "the unready pod is gone"
    );
    sidecar.request(ENDPOINT, &[OUTBOUND], "", "", None).await; // stale nonce: ignored
    assert!(
        sidecar
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a stale request gets no answer"
    );
    let (status, syncz) = get(mesh.discovery.monitoring_address, "/debug/syncz").await;
    assert_eq!(status, 200);
    let proxy = &syncz.as_array().unwrap()[0];
    assert_eq!(proxy["proxy_type"], "sidecar");
    assert_eq!(proxy["types"]["CDS"]["state"], "SYNCED", "{proxy}");
    assert_eq!(proxy["types"]["LDS"]["state"], "SYNCED", "{proxy}");
    assert_eq!(
        proxy["types"]["EDS"]["state"], "STALE",
        "the last EDS push is not ACKed yet: {proxy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gateway_other_networks_contribute_nothing() {
    let mesh = two_cluster_mesh(false).await;
    let mut sidecar =
        SotwClient::connect(mesh.discovery.xds_address, sidecar_node("network1")).await;
    sidecar.request(ENDPOINT, &[OUTBOUND], "", "", None).await;
    let assignment = assignment_of(&mut sidecar).await;
    assert_eq!(endpoints(&assignment).len(), 1);
    assert_eq!(endpoints(&assignment)[0].0, "10.10.0.5");

    // The gateway appears: every service's endpoints change, cluster02's now through it.
    fixtures::network_gateway(&mesh.client02, "network2", "172.18.255.9").await;
    let assignment = tokio::time::timeout(WAIT, async {
        loop {
            let assignment = assignment_of(&mut sidecar).await;
            if endpoints(&assignment).len() == 2 {
                return assignment;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(endpoints(&assignment)[1].0, "172.18.255.9");

    // A Service only cluster02 has is still a mesh service for cluster01's sidecars: it gets an
    // address from 240.240.0.0/16, whose listener names the host for the DNS proxy.
    fixtures::service(
        &mesh.client02,
        "sample",
        "only-in-two",
        "only",
        &[("http", 8080)],
    )
    .await;
    sidecar.request(LISTENER, &[], "", "", None).await;
    let listener = tokio::time::timeout(WAIT, async {
        loop {
            let response = sidecar.recv_type(LISTENER).await;
            sidecar.ack(&response, &[]).await;
            let found = response
                .resources
                .iter()
                .map(decode::<Listener>)
                .find(|l| l.name.starts_with("240.240.") && l.name.ends_with("_8080"));
            if let Some(found) = found {
                return found;
            }
        }
    })
    .await
    .expect("a listener for the remote-only service");
    let istio = &listener.metadata.unwrap().filter_metadata["istio"];
    let hostname = match istio.fields["hostname"].kind.clone() {
        Some(Kind::StringValue(hostname)) => hostname,
        other => panic!("hostname metadata: {other:?}"),
    };
    assert_eq!(hostname, "only-in-two.sample.svc.cluster.local");
    let snapshot = mesh.discovery.registry.snapshot();
    let vip = snapshot.services["only-in-two.sample.svc.cluster.local"]
        .vip_for("cluster01")
        .unwrap();
    assert_eq!(listener.name, format!("{vip}_8080"));

    // A proxy on network2 sees cluster02's pod directly and cluster01's not at all (no gateway).
    let mut remote =
        SotwClient::connect(mesh.discovery.xds_address, sidecar_node("network2")).await;
    remote.request(ENDPOINT, &[OUTBOUND], "", "", None).await;
    let seen = endpoints(&assignment_of(&mut remote).await);
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].0.as_str(), seen[0].1), ("10.20.0.5", 5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_streams_get_changes_removals_and_nacks_do_not_loop() {
    let mesh = two_cluster_mesh(true).await;
    let mut delta =
        DeltaClient::connect(mesh.discovery.xds_address, sidecar_node("network1")).await;
    delta.request(CLUSTER, &[], &[], "", None).await;
    let clusters = delta.recv_type(CLUSTER).await;
    assert!(clusters.resources.iter().any(|r| r.name == OUTBOUND));
    assert!(clusters.resources.iter().all(|r| !r.version.is_empty()));
    delta.ack(&clusters).await;
    delta.request(ENDPOINT, &[OUTBOUND], &[], "", None).await;
    let first = delta.recv_type(ENDPOINT).await;
    assert_eq!(first.resources.len(), 1);
    // NACK it: recorded, visible, never answered by a resend.
    delta
        .request(
            ENDPOINT,
            &[],
            &[],
            &first.nonce,
            Some("rejected for the test"),
        )
        .await;
    assert!(
        delta
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "a NACK must not cause a resend"
    );
    let (_, syncz) = get(mesh.discovery.monitoring_address, "/debug/syncz").await;
    let eds = &syncz[0]["types"]["EDS"];
    assert_eq!(eds["state"], "STALE");
    assert_eq!(eds["rejected"], "rejected for the test");
    assert_eq!(syncz[0]["delta"], true);
    let (_, metrics) = get(mesh.discovery.monitoring_address, "/metrics").await;
    let metrics = metrics["text"].as_str().unwrap().to_owned();
    assert!(
        metrics.contains("pilot_total_xds_rejects_total{type=\"eds\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pilot_xds 1"), "{metrics}");

    // A new service: CDS sends just the new clusters; deleting it sends their removal.
    fixtures::service(
        &mesh.client01,
        "sample",
        "extra",
        "extra",
        &[("http", 9000)],
    )
    .await;
    let added = delta.recv_type(CLUSTER).await;
    let added_names: Vec<&str> = added.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        added_names,
        ["outbound|9000||extra.sample.svc.cluster.local"]
    );
    delta.ack(&added).await;
    Api::<Service>::namespaced(mesh.client01.clone(), "sample")
        .delete("extra", &DeleteParams::default())
        .await
        .unwrap();
    let removed = delta.recv_type(CLUSTER).await;
    assert!(removed.resources.is_empty());
    assert_eq!(
        removed.removed_resources,
        ["outbound|9000||extra.sample.svc.cluster.local"]
    );
}

/// The value of the counter `name` (its `_total` series) in discovery's `/metrics`.
async fn counter(monitoring: std::net::SocketAddr, name: &str) -> u64 {
    let (_, metrics) = get(monitoring, "/metrics").await;
    let text = metrics["text"].as_str().unwrap().to_owned();
    let prefix = format!("{name}_total ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|count| count.parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no counter {name} in {text}"))
}

/// `causeway_xds_socket_writes_total`, once it has stopped moving (the writes of ACKs and
/// window updates still under way have gone out).
async fn settled_socket_writes(monitoring: std::net::SocketAddr) -> u64 {
    let read = || counter(monitoring, "causeway_xds_socket_writes");
    let mut last = read().await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the xDS server kept writing for 5 s with nothing to send");
}

/// h2 flushes after every DATA frame it hands over, so without batching a push to ten streams
/// that share a connection is ten socket writes; with it, one per connection. On one thread, so
/// that the count does not depend on how two threads happen to split the fan-out.
#[tokio::test]
async fn a_push_to_ten_streams_on_one_connection_goes_out_in_one_write() {
    let mesh = two_cluster_mesh(true).await;
    let shared = connection(mesh.discovery.xds_address).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stream = DeltaClient::on(shared.clone(), sidecar_node("network1")).await;
        stream.request(ENDPOINT, &[OUTBOUND], &[], "", None).await;
        let first = stream.recv_type(ENDPOINT).await;
        stream.ack(&first).await;
        streams.push(stream);
    }
    let before = settled_socket_writes(mesh.discovery.monitoring_address).await;

    fixtures::set_pod(&mesh.client01, "sample", "helloworld-v1", None, false).await;
    for stream in &mut streams {
        let pushed = stream.recv_type(ENDPOINT).await;
        let assignment: ClusterLoadAssignment =
            decode(pushed.resources[0].resource.as_ref().expect("a resource"));
        assert!(
            endpoints(&assignment).iter().all(|e| e.0 != "10.10.0.5"),
            "the unready pod is gone"
        );
    }
    // Read before the ACKs, whose window updates are writes of their own.
    let after = settled_socket_writes(mesh.discovery.monitoring_address).await;
    let writes = after - before;
    assert!(
        (1..=2).contains(&writes),
        "a push to ten streams on one connection took {writes} socket writes"
    );
}

/// A router's first listener, once the Gateway object selecting it has reached discovery (a new
/// stream each try, as a router starting later would open); the stream, for further requests.
async fn first_router_listener(
    address: std::net::SocketAddr,
    router_node: envoy_types::pb::envoy::config::core::v3::Node,
) -> (SotwClient, Listener) {
    let mut router = SotwClient::connect(address, router_node).await;
    tokio::time::timeout(WAIT, async {
        loop {
            router.request(LISTENER, &[], "", "", None).await;
            let response = router.recv_type(LISTENER).await;
            if let Some(resource) = response.resources.first() {
                let listener = decode::<Listener>(resource);
                return (router, listener);
            }
            router = SotwClient::connect(address, router.node.clone()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the Gateway object reaches the router")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_expose_gateway_hosts_with_their_own_networks_endpoints() {
    let mesh = two_cluster_mesh(true).await;
    let gateway = json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
        "metadata": {"name": "cross-network-gateway", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "eastwestgateway"},
                 "servers": [{"port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                              "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.local"]}]}
    });
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1alpha3",
        "Gateway",
    ));
    let gateways: Api<kube::api::DynamicObject> =
        Api::namespaced_with(mesh.client01.clone(), "istio-system", &resource);
    gateways
        .create(
            &PostParams::default(),
            &serde_json::from_value(gateway).unwrap(),
        )
        .await
        .unwrap();
    let router_node = node(
        "router",
        "10.10.0.200",
        "istio-eastwestgateway-1",
        "istio-system",
        &[
            ("CLUSTER_ID", "cluster01"),
            ("NETWORK", "network1"),
            ("ROUTER_MODE", "sni-dnat"),
            ("REQUESTED_NETWORK_VIEW", "network1"),
        ],
        &[("istio", "eastwestgateway")],
    );
    let (mut router, listener) =
        first_router_listener(mesh.discovery.xds_address, router_node).await;
    let sni = "outbound_.5000_._.helloworld.sample.svc.cluster.local";
    assert_eq!(listener.name, "0.0.0.0_15443");
    let chain = listener
        .filter_chains
        .iter()
        .find(|chain| {
            chain
                .filter_chain_match
                .as_ref()
                .is_some_and(|m| m.server_names == [sni])
        })
        .expect("a filter chain for helloworld's SNI");
    assert_eq!(chain.name, sni);
    router.request(ENDPOINT, &[sni], "", "", None).await;
    let response = router.recv_type(ENDPOINT).await;
    let seen = endpoints(&decode(&response.resources[0]));
    assert_eq!(
        seen.len(),
        1,
        "only network1's endpoint, never a gateway: {seen:?}"
    );
    assert_eq!((seen[0].0.as_str(), seen[0].1), ("10.10.0.5", 5000));

    // expose-istiod.yaml, applied as the seeds do: 15012 and 15017 pass through to istiod.
    fixtures::service(
        &mesh.client01,
        "istio-system",
        "istiod",
        "istiod",
        &[("grpc-xds", 15012), ("https-webhook", 443)],
    )
    .await;
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/samples/expose-istiod.yaml");
    let documents = std::fs::read_to_string(samples).unwrap();
    let virtual_service = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1alpha3",
        "VirtualService",
    ));
    for document in documents.split("\n---") {
        let object: kube::api::DynamicObject = serde_saphyr::from_str(document).unwrap();
        let kind = object.types.as_ref().unwrap().kind.clone();
        let resource = if kind == "Gateway" {
            &resource
        } else {
            &virtual_service
        };
        Api::<kube::api::DynamicObject>::namespaced_with(
            mesh.client01.clone(),
            "istio-system",
            resource,
        )
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    }
    let listeners = tokio::time::timeout(WAIT, async {
        loop {
            let response = router.recv_type(LISTENER).await;
            router.ack(&response, &[]).await;
            let listeners: Vec<Listener> = response.resources.iter().map(decode).collect();
            if listeners.iter().any(|l| l.name == "0.0.0.0_15017") {
                return listeners;
            }
        }
    })
    .await
    .expect("the router gets the istiod passthrough listeners");
    let istiod = |port: &str| {
        let listener = listeners
            .iter()
            .find(|l| l.name == format!("0.0.0.0_{port}"))
            .unwrap();
        assert_eq!(listener.filter_chains.len(), 1);
        let chain = &listener.filter_chains[0];
        assert!(
            chain
                .filter_chain_match
                .as_ref()
                .unwrap()
                .server_names
                .is_empty(),
            "sniHosts `*` matches any name"
        );
        chain.name.clone()
    };
    assert_eq!(
        istiod("15012"),
        "outbound|15012||istiod.istio-system.svc.cluster.local"
    );
    assert_eq!(
        istiod("15017"),
        "outbound|443||istiod.istio-system.svc.cluster.local"
    );
    assert!(
        listeners.iter().any(|l| l.name == "0.0.0.0_15443"),
        "the cross-network listener stays"
    );
    let _ = HELLOWORLD;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_node_is_refused_with_a_reason() {
    let mesh = two_cluster_mesh(false).await;
    let mut client =
        SotwClient::connect(mesh.discovery.xds_address, sidecar_node("network1")).await;
    client.request(CLUSTER, &[], "", "", None).await;
    assert!(client.recv_within(WAIT).await.is_some());
    // A second stream that never sends its node.
    let mut anonymous = SotwClient::connect(mesh.discovery.xds_address, Default::default()).await;
    anonymous.node.id.clear();
    anonymous.request(CLUSTER, &[], "", "", None).await;
    // The node is present but empty: accepted as a sidecar of the control plane's cluster.
    assert!(anonymous.recv_within(WAIT).await.is_some());
}

/// Like istiod, discovery serves no proxy from a half-listed mesh: while a remote cluster is
/// still being waited for (within PILOT_REMOTE_CLUSTER_TIMEOUT), streams are refused with
/// UNAVAILABLE and a reason, and they are served once the wait is over.
#[tokio::test]
async fn streams_are_refused_until_the_registry_is_ready() {
    use causeway_lab::testing::{self as lab};
    use k8s_openapi::api::core::v1::Secret;
    let dir = tempfile::tempdir().unwrap();
    let (one, client01) = fixtures::mesh_cluster("cluster01", "10.96.0.0/16", dir.path(), "").await;
    // A remote cluster whose API server is gone: nothing listens on its address any more.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut access = lab::access("cluster02", &one);
    access.server = format!("https://{unreachable}");
    Api::<Secret>::namespaced(client01.clone(), "istio-system")
        .create(
            &PostParams::default(),
            &fixtures::remote_secret("cluster02", &access),
        )
        .await
        .unwrap();
    let mut config = causeway_discovery::testing::config("cluster01", "network1");
    config.remote_cluster_timeout = Duration::from_secs(3);
    let discovery = causeway_discovery::Discovery::start(config, client01.clone())
        .await
        .unwrap();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", discovery.xds_address))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel);
    let refused = client
        .stream_aggregated_resources(futures::stream::empty())
        .await
        .expect_err("not ready: refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("/ready"),
        "{}",
        refused.message()
    );

    // After the remote cluster's timeout, discovery is ready and serves.
    let mut ready = discovery.registry.ready.clone();
    tokio::time::timeout(WAIT, ready.wait_for(|ready| *ready))
        .await
        .unwrap()
        .unwrap();
    let mut sotw = SotwClient::connect(discovery.xds_address, sidecar_node("network1")).await;
    sotw.request(CLUSTER, &[], "", "", None).await;
    assert!(sotw.recv_within(WAIT).await.is_some(), "served once ready");
    discovery.shutdown().await;
}

/// Reads from xDS connections wait while a push is fanned out, until every stream has received
/// it. A proxy that stops reading leaves its stream stuck before a push, so the wait must end on
/// its own (counted in `/metrics`) and the other proxies' requests still be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_stops_reading_does_not_hold_back_other_proxies_requests() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let mesh = two_cluster_mesh(true).await;
    let address = mesh.discovery.xds_address;

    // The stuck proxy: a 1 KiB HTTP/2 stream window that it never reopens, because it never
    // reads. Its responses pile up until its stream's task waits to queue one.
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let (stuck_requests, outgoing) = tokio::sync::mpsc::channel(4);
    stuck_requests
        .send(DiscoveryRequest {
            node: Some(sidecar_node("network1")),
            type_url: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _unread = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap();

    let mut healthy = SotwClient::connect(address, sidecar_node("network1")).await;
    healthy.request(CLUSTER, &[], "", "", None).await;
    let clusters = healthy.recv_type(CLUSTER).await;
    healthy.ack(&clusters, &[]).await;

    let overrides = || {
        counter(
            mesh.discovery.monitoring_address,
            "causeway_xds_read_gate_overrides",
        )
    };
    assert_eq!(overrides().await, 0);
    // Each new Service pushes every cluster to both proxies, until the stuck one stops taking
    // pushes and the wait for it is cut short.
    let mut services = 0;
    while overrides().await == 0 {
        assert!(
            services < 100,
            "no push was ever held up by the stuck proxy"
        );
        let name = format!("filler-{services}");
        fixtures::service(&mesh.client01, "sample", &name, &name, &[("http", 8080)]).await;
        let wanted = format!("outbound|8080||{name}.sample.svc.cluster.local");
        tokio::time::timeout(WAIT, async {
            loop {
                let response = healthy.recv_type(CLUSTER).await;
                healthy.ack(&response, &[]).await;
                if response
                    .resources
                    .iter()
                    .any(|r| decode::<Cluster>(r).name == wanted)
                {
                    return;
                }
            }
        })
        .await
        .expect("the healthy proxy gets every new cluster");
        services += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // The healthy proxy's new request is read and answered, with the stuck one still stuck.
    healthy.request(ENDPOINT, &[OUTBOUND], "", "", None).await;
    let response = tokio::time::timeout(WAIT, healthy.recv_type(ENDPOINT))
        .await
        .expect("a request is answered while another proxy is stuck");
    assert_eq!(
        decode::<ClusterLoadAssignment>(&response.resources[0]).cluster_name,
        OUTBOUND
    );
    drop(stuck_requests);
}

/// Seed 002: Istio 1.6's multicluster ingress gateway (`*.global`, AUTO_PASSTHROUGH on 15443)
/// takes the other mesh's SNI for `helloworld.sample.global` to this mesh's helloworld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_gateway_takes_the_other_meshs_sni_to_the_local_service() {
    let mesh = two_cluster_mesh(true).await;
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/samples/replicated/multicluster-gateway.yaml");
    let object: kube::api::DynamicObject =
        serde_saphyr::from_str(&std::fs::read_to_string(samples).unwrap()).unwrap();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1alpha3",
        "Gateway",
    ));
    Api::<kube::api::DynamicObject>::namespaced_with(
        mesh.client01.clone(),
        "istio-system",
        &resource,
    )
    .create(&PostParams::default(), &object)
    .await
    .unwrap();
    let router_node = node(
        "router",
        "10.10.0.201",
        "istio-ingressgateway-1",
        "istio-system",
        &[
            ("CLUSTER_ID", "cluster01"),
            ("NETWORK", "network1"),
            ("ROUTER_MODE", "sni-dnat"),
        ],
        &[("istio", "ingressgateway")],
    );
    let (_router, listener) = first_router_listener(mesh.discovery.xds_address, router_node).await;
    let chains: Vec<(Vec<String>, String)> = listener
        .filter_chains
        .iter()
        .map(|chain| {
            (
                chain
                    .filter_chain_match
                    .clone()
                    .unwrap_or_default()
                    .server_names,
                chain.name.clone(),
            )
        })
        .collect();
    assert!(
        chains.contains(&(
            vec!["outbound_.5000_._.helloworld.sample.global".to_owned()],
            "outbound_.5000_._.helloworld.sample.svc.cluster.local".to_owned()
        )),
        "{chains:?}"
    );
    // `*.global` exposes only the `.global` names, not the `.local` ones.
    assert!(
        chains
            .iter()
            .all(|(names, _)| names.iter().all(|name| name.ends_with(".global"))),
        "{chains:?}"
    );
}
