//! The CA service on 15012: signs only the caller's own identity, proven by TokenReview in the
//! caller's cluster, and refuses every forged case with a reason. Checked with `openssl verify`.

mod common;

use causeway_ca::{SpiffeId, WorkloadKey};
use causeway_discovery::ca_service::proto::IstioCertificateRequest;
use causeway_discovery::ca_service::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use causeway_lab::apiserver::tokens::{Binding, Claims, ObjectRef};
use causeway_lab::testing::fixtures;
use causeway_xds::resources::CLUSTER;
use common::{Mesh, two_cluster_mesh};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use std::process::Command;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

async fn secure_channel(mesh: &Mesh) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(mesh.discovery.roots_pem()))
        .domain_name("istiod.istio-system.svc");
    Channel::from_shared(format!("https://{}", mesh.discovery.secure_xds_address))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection trusted through the mesh root")
}

fn csr_claiming(namespace: &str, account: &str) -> (WorkloadKey, String) {
    let key = WorkloadKey::generate().unwrap();
    let csr = key
        .csr_pem(&SpiffeId::new("cluster.local", namespace, account).unwrap())
        .unwrap();
    (key, csr)
}

async fn create(
    channel: &Channel,
    token: Option<&str>,
    cluster: Option<&str>,
    csr: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: 3600,
        metadata: None,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(cluster) = cluster {
        request
            .metadata_mut()
            .insert("clusterid", cluster.parse().unwrap());
    }
    IstioCertificateServiceClient::new(channel.clone())
        .create_certificate(request)
        .await
        .map(|response| response.into_inner().cert_chain)
}

fn uri_sans(pem_text: &str) -> Vec<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    let certificate = pem.parse_x509().unwrap();
    let sans = certificate
        .subject_alternative_name()
        .unwrap()
        .expect("a SAN extension");
    sans.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

fn refused(result: Result<Vec<String>, tonic::Status>, code: Code, words: &str) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(words),
        "`{}` should say `{words}`",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_the_callers_identity_and_refuses_forgeries() {
    let mesh = two_cluster_mesh(false).await;
    let channel = secure_channel(&mesh).await;
    let token =
        fixtures::service_account_token(&mesh.client01, "sample", "sleep", &["istio-ca"]).await;
    let (_key, csr) = csr_claiming("istio-system", "admin");

    let chain = create(&channel, Some(&token), None, &csr)
        .await
        .expect("a certificate");
    assert_eq!(
        uri_sans(&chain[0]),
        ["spiffe://cluster.local/ns/sample/sa/sleep"],
        "the CSR's claim is ignored"
    );
    assert_eq!(
        chain.last().unwrap().trim(),
        mesh.discovery.roots_pem().trim(),
        "the chain ends at the mesh root"
    );
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let leaf = write("leaf.pem", &chain[0]);
    let root = write("root.pem", chain.last().unwrap());
    let middle = write("chain.pem", &chain[1..chain.len() - 1].concat());
    let mut verify = Command::new("openssl");
    verify.args(["verify", "-CAfile"]).arg(&root);
    if chain.len() > 2 {
        verify.arg("-untrusted").arg(&middle);
    }
    let output = verify
        .arg(&leaf)
        .output()
        .expect("openssl is installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    refused(
        create(&channel, None, None, &csr).await,
        Code::Unauthenticated,
        "authorization",
    );
    refused(
        create(&channel, Some("forged.token.value"), None, &csr).await,
        Code::Unauthenticated,
        "did not authenticate",
    );
    let wrong_audience =
        fixtures::service_account_token(&mesh.client01, "sample", "sleep", &[]).await;
    refused(
        create(&channel, Some(&wrong_audience), None, &csr).await,
        Code::Unauthenticated,
        "did not authenticate",
    );

    // A correctly signed token that expired an hour ago.
    let account: ServiceAccount = Api::namespaced(mesh.client01.clone(), "sample")
        .get("sleep")
        .await
        .unwrap();
    let binding = Binding {
        namespace: "sample".into(),
        serviceaccount: ObjectRef {
            name: "sleep".into(),
            uid: account.metadata.uid.unwrap(),
        },
        pod: None,
        secret: None,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = mesh.one.shared().tokens.sign(&Claims::new(
        binding,
        vec!["istio-ca".into()],
        now - 7200,
        600,
    ));
    refused(
        create(&channel, Some(&expired), None, &csr).await,
        Code::Unauthenticated,
        "expired",
    );

    // cluster02's token is no good for cluster01, good for cluster02, and unknown clusters are refused.
    let remote_token =
        fixtures::service_account_token(&mesh.client02, "sample", "helloworld", &["istio-ca"])
            .await;
    refused(
        create(&channel, Some(&remote_token), None, &csr).await,
        Code::Unauthenticated,
        "cluster01",
    );
    refused(
        create(&channel, Some(&remote_token), Some("cluster01"), &csr).await,
        Code::Unauthenticated,
        "did not authenticate",
    );
    let remote_chain = create(&channel, Some(&remote_token), Some("cluster02"), &csr)
        .await
        .expect("cluster02 vouches for it");
    assert_eq!(
        uri_sans(&remote_chain[0]),
        ["spiffe://cluster.local/ns/sample/sa/helloworld"]
    );
    refused(
        create(&channel, Some(&token), Some("cluster09"), &csr).await,
        Code::Unauthenticated,
        "unknown cluster `cluster09`",
    );

    refused(
        create(&channel, Some(&token), None, "not a CSR").await,
        Code::InvalidArgument,
        "cannot sign the CSR",
    );

    // xDS is served on the same TLS port.
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    requests
        .send(DiscoveryRequest {
            node: Some(causeway_xds::testing::node(
                "sidecar",
                "10.10.0.9",
                "sleep-1",
                "sample",
                &[],
                &[],
            )),
            type_url: CLUSTER.into(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(!response.resources.is_empty());
}
