//! Test helpers: a control plane on `127.0.0.1:0` ports, and a two-cluster mesh on lab API
//! servers around it.

use crate::DiscoveryConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// Loopback ports picked by the system, pushes without a debounce window, a short remote timeout.
pub fn config(cluster_id: &str, network: &str) -> DiscoveryConfig {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    DiscoveryConfig {
        network: network.to_owned(),
        xds_address: any_port,
        secure_xds_address: any_port,
        monitoring_address: any_port,
        webhook_address: any_port,
        debounce: Duration::ZERO,
        remote_cluster_timeout: Duration::from_secs(5),
        ..DiscoveryConfig::new(cluster_id)
    }
}

/// A two-cluster mesh on lab API servers: cluster01 (network1) runs discovery and holds
/// cluster02's (network2) remote secret. helloworld v1 runs in cluster01, v2 in cluster02.
pub mod mesh {
    use crate::{Discovery, testing};
    use causeway_lab::apiserver::RunningApiServer;
    use causeway_lab::testing::fixtures::{self, TestPod};
    use causeway_lab::testing::{self as lab, eventually};
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::PostParams;
    use serde_json::json;
    use std::time::Duration;

    pub const HELLOWORLD: &str = "helloworld.sample.svc.cluster.local";
    pub const WAIT: Duration = Duration::from_secs(20);

    pub struct Mesh {
        pub one: RunningApiServer,
        pub two: RunningApiServer,
        pub client01: kube::Client,
        pub client02: kube::Client,
        pub discovery: Discovery,
        pub dir: tempfile::TempDir,
    }

    pub fn pod<'a>(name: &'a str, app: &'a str, ip: &'a str, version: &str) -> TestPod<'a> {
        TestPod {
            name,
            app,
            service_account: app,
            ip,
            ready: true,
            labels: json!({"version": version}),
        }
    }

    async fn cluster(
        name: &str,
        subnet: &str,
        network: &str,
        dir: &std::path::Path,
    ) -> (RunningApiServer, kube::Client) {
        let (server, client) = fixtures::mesh_cluster(name, subnet, dir, network).await;
        fixtures::namespace(&client, "sample", json!({})).await;
        (server, client)
    }

    /// `gateway`: whether cluster02 has an east-west gateway (at 172.18.255.2).
    pub async fn two_cluster_mesh(gateway: bool) -> Mesh {
        two_cluster_mesh_with(MeshOptions {
            gateway,
            ..MeshOptions::default()
        })
        .await
    }

    pub struct MeshOptions {
        pub gateway: bool,
        pub network2: &'static str,
        pub v1_ip: &'static str,
        pub v2_ip: &'static str,
        /// Where discovery listens (loopback; an address of a network namespace for proxies
        /// running in other namespaces).
        pub discovery_ip: std::net::IpAddr,
        /// The gateway's LoadBalancer address, when `gateway` is set.
        pub gateway_ip: &'static str,
    }

    impl Default for MeshOptions {
        fn default() -> Self {
            MeshOptions {
                gateway: false,
                network2: "network2",
                v1_ip: "10.10.0.5",
                v2_ip: "10.20.0.5",
                discovery_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                gateway_ip: "172.18.255.2",
            }
        }
    }

    pub async fn two_cluster_mesh_with(options: MeshOptions) -> Mesh {
        let gateway = options.gateway;
        let dir = tempfile::tempdir().unwrap();
        let (one, client01) = cluster("cluster01", "10.96.0.0/16", "network1", dir.path()).await;
        let (two, client02) =
            cluster("cluster02", "10.97.0.0/16", options.network2, dir.path()).await;
        for client in [&client01, &client02] {
            fixtures::service(
                client,
                "sample",
                "helloworld",
                "helloworld",
                &[("http", 5000)],
            )
            .await;
        }
        fixtures::pod(
            &client01,
            "sample",
            pod("helloworld-v1", "helloworld", options.v1_ip, "v1"),
        )
        .await;
        fixtures::pod(
            &client02,
            "sample",
            pod("helloworld-v2", "helloworld", options.v2_ip, "v2"),
        )
        .await;
        if gateway {
            fixtures::network_gateway(&client02, options.network2, options.gateway_ip).await;
        }
        let secret = fixtures::remote_secret("cluster02", &lab::access("cluster02", &two));
        Api::<Secret>::namespaced(client01.clone(), "istio-system")
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let mut config = testing::config("cluster01", "network1");
        for address in [
            &mut config.xds_address,
            &mut config.secure_xds_address,
            &mut config.monitoring_address,
        ] {
            address.set_ip(options.discovery_ip);
        }
        let discovery = Discovery::start(config, client01.clone())
            .await
            .expect("discovery starts");
        let mut ready = discovery.registry.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|ready| *ready))
            .await
            .unwrap()
            .unwrap();
        let snapshots = discovery.registry.snapshots.clone();
        eventually("both clusters' endpoints", WAIT, || {
            let count = snapshots.borrow().endpoints_of(HELLOWORLD).len();
            async move { (count == 2).then_some(()) }
        })
        .await;
        Mesh {
            one,
            two,
            client01,
            client02,
            discovery,
            dir,
        }
    }
}
