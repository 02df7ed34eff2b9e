//! The sidecar's identity against a real discovery CA: the certificate it gets, the mutual TLS
//! it makes with it, and what is refused (another root, an expired certificate, a wrong
//! identity, a bad token).

use causeway_ca::{SpiffeId, WorkloadKey};
use causeway_discovery::testing::mesh::{Mesh, two_cluster_mesh};
use causeway_lab::testing::fixtures;
use causeway_proxy::identity::{CaSettings, Credentials, IdentityError, MeshTls, peer_identity};
use rustls_pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SNI: &str = "outbound_.5000_._.helloworld.sample.svc.cluster.local";

async fn settings(mesh: &Mesh, dir: &Path, account: &str, ttl: Duration) -> CaSettings {
    let root_cert = dir.join("root-cert.pem");
    std::fs::write(&root_cert, mesh.discovery.roots_pem()).unwrap();
    let token =
        fixtures::service_account_token(&mesh.client01, "sample", account, &["istio-ca"]).await;
    let token_path = dir.join(format!("{account}-token"));
    std::fs::write(&token_path, token).unwrap();
    CaSettings {
        address: mesh.discovery.secure_xds_address.to_string(),
        server_name: "istiod.istio-system.svc".into(),
        root_cert,
        token_path,
        cluster_id: "cluster01".into(),
        ttl,
        // Not in a captured pod: no socket mark.
        mark: 0,
    }
}

fn identity(account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "sample", account).unwrap()
}

/// Serves one mTLS connection with `server`, echoing a line; returns the client's identity.
async fn serve_once(
    server: Arc<MeshTls>,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<String, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let mut tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates())
            .map(|id| id.to_string())
            .ok_or("no client identity")?;
        let mut buffer = [0u8; 5];
        tls.read_exact(&mut buffer)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(&buffer).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(peer)
    });
    (address, task)
}

async fn connect(
    client: &MeshTls,
    address: std::net::SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let stream = TcpStream::connect(address).await?;
    let connector = tokio_rustls::TlsConnector::from(client.client.clone());
    connector
        .connect(ServerName::try_from(SNI).unwrap(), stream)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_gets_its_own_identity_and_talks_mutual_tls_with_it() {
    let mesh = two_cluster_mesh(false).await;
    let dir = tempfile::tempdir().unwrap();
    let sleep = settings(&mesh, dir.path(), "sleep", Duration::from_secs(3600)).await;
    let helloworld = settings(&mesh, dir.path(), "helloworld", Duration::from_secs(3600)).await;

    let credentials = sleep
        .obtain(&identity("sleep"))
        .await
        .expect("a certificate");
    assert_eq!(credentials.identity, identity("sleep"));
    assert_eq!(credentials.chain.len(), 1, "the leaf; the root is not sent");
    let life = credentials
        .not_after
        .duration_since(credentials.not_before)
        .unwrap();
    assert!(
        life >= Duration::from_secs(3600) && life <= Duration::from_secs(3600 + 300),
        "{life:?}"
    );
    let half = credentials
        .renew_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        half > Duration::from_secs(1700) && half <= Duration::from_secs(1800),
        "{half:?}"
    );

    // openssl, not our code, judges the chain.
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(
        &leaf,
        causeway_ca::pem::encode_certificate(&credentials.chain[0]),
    )
    .unwrap();
    let verified = causeway_ca::testing::openssl_ok(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-purpose",
            "sslclient",
            "leaf.pem",
        ],
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");

    let client = MeshTls::new(Arc::new(credentials)).unwrap();
    let server = Arc::new(
        MeshTls::new(Arc::new(
            helloworld.obtain(&identity("helloworld")).await.unwrap(),
        ))
        .unwrap(),
    );
    let (address, served) = serve_once(server).await;
    let mut tls = connect(&client, address).await.expect("mutual TLS");
    let peer = tls.get_ref().1.peer_certificates();
    let expected = ["spiffe://cluster.local/ns/sample/sa/helloworld".to_owned()];
    assert_eq!(
        MeshTls::check_server(peer, &expected).unwrap().to_string(),
        expected[0]
    );
    assert!(
        MeshTls::check_server(peer, &[]).is_ok(),
        "any identity of the trust domain"
    );
    let wrong = ["spiffe://cluster.local/ns/sample/sa/other".to_owned()];
    let refusal = MeshTls::check_server(peer, &wrong).unwrap_err();
    assert!(
        refusal.contains("is not among the service's identities"),
        "{refusal}"
    );
    tls.write_all(b"hello").await.unwrap();
    let mut echoed = Vec::new();
    tls.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"hello");
    assert_eq!(
        served.await.unwrap().unwrap(),
        "spiffe://cluster.local/ns/sample/sa/sleep",
        "the server sees the client's identity"
    );
}

/// Why `server` refused `client`: the client's message must not come back, and the server must
/// fail with a reason.
async fn server_refusal(server: Arc<MeshTls>, client: &MeshTls) -> String {
    let (address, served) = serve_once(server).await;
    let outcome = match connect(client, address).await {
        // TLS 1.3: the client finishes before the server has judged its certificate.
        Ok(mut tls) => {
            let _ = tls.write_all(b"hello").await;
            let mut buffer = Vec::new();
            tls.read_to_end(&mut buffer).await.map(|_| buffer)
        }
        Err(error) => Err(error),
    };
    assert!(
        !matches!(outcome, Ok(ref echoed) if echoed == b"hello"),
        "{outcome:?}"
    );
    served
        .await
        .unwrap()
        .expect_err("the server refuses the client")
}

/// A certificate of the right shape from a root the mesh does not trust.
fn foreign_credentials(dir: &Path) -> Credentials {
    let profile = causeway_ca::authority::self_signed_root_profile("cluster.local");
    let (authority, _) = causeway_ca::CertificateAuthority::load_or_create_self_signed(
        dir,
        &profile,
        causeway_ca::SigningPolicy::default(),
    )
    .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let signed = authority
        .sign_csr(
            key.csr_pem(&identity("sleep")).unwrap().as_bytes(),
            &identity("sleep"),
            None,
        )
        .unwrap();
    Credentials::from_signed(&identity("sleep"), &key, &signed.cert_chain, &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_root_and_an_expired_certificate_are_refused_both_ways() {
    let mesh = two_cluster_mesh(false).await;
    let dir = tempfile::tempdir().unwrap();
    let helloworld = settings(&mesh, dir.path(), "helloworld", Duration::from_secs(3600)).await;
    let server = Arc::new(
        MeshTls::new(Arc::new(
            helloworld.obtain(&identity("helloworld")).await.unwrap(),
        ))
        .unwrap(),
    );

    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = MeshTls::new(Arc::new(foreign_credentials(foreign_dir.path()))).unwrap();
    let (address, served) = serve_once(server.clone()).await;
    let error = connect(&foreign, address)
        .await
        .expect_err("the foreign client distrusts the server");
    // Same subject as the mesh root (both are "cluster.local" roots), other key: BadSignature.
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
    let _ = served.await;

    // The foreign client's view aside, the mesh server must refuse a foreign client too: give the
    // foreign client the mesh root so that only the server's check stands in the way.
    let mut trusting = foreign_credentials(foreign_dir.path());
    trusting.roots.push(rustls_pki_types::CertificateDer::from(
        causeway_ca::pem::decode_certificates("root", mesh.discovery.roots_pem().as_bytes())
            .unwrap()[0]
            .to_vec(),
    ));
    let trusting = MeshTls::new(Arc::new(trusting)).unwrap();
    let refusal = server_refusal(server.clone(), &trusting).await;
    assert!(refusal.contains("invalid peer certificate"), "{refusal}");

    let short = settings(&mesh, dir.path(), "sleep", Duration::from_secs(1)).await;
    let expiring = MeshTls::new(Arc::new(short.obtain(&identity("sleep")).await.unwrap())).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refusal = server_refusal(server, &expiring).await;
    assert!(refusal.contains("certificate expired"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_missing_files_are_reported_with_what_to_do() {
    let mesh = two_cluster_mesh(false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut ca = settings(&mesh, dir.path(), "sleep", Duration::from_secs(3600)).await;

    // A token of `sleep` does not get `helloworld`'s identity.
    let error = ca.obtain(&identity("helloworld")).await.unwrap_err();
    assert!(
        matches!(&error, IdentityError::BadResponse { reason } if reason.contains("not spiffe://cluster.local/ns/sample/sa/helloworld")),
        "{error}"
    );

    std::fs::write(&ca.token_path, "forged.token.value").unwrap();
    let error = ca.obtain(&identity("sleep")).await.unwrap_err();
    assert!(
        matches!(
            error,
            IdentityError::Refused {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("did not authenticate the token"),
        "{error}"
    );

    ca.token_path = dir.path().join("absent");
    let error = ca.obtain(&identity("sleep")).await.unwrap_err().to_string();
    assert!(
        error.contains("absent") && error.contains("--token-path"),
        "{error}"
    );

    ca.root_cert = dir.path().join("no-root.pem");
    let error = ca.obtain(&identity("sleep")).await.unwrap_err().to_string();
    assert!(
        error.contains("no-root.pem") && error.contains("--root-cert"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_renewed_at_half_life_and_published() {
    let mesh = two_cluster_mesh(false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = settings(&mesh, dir.path(), "sleep", Duration::from_secs(4)).await;
    let (mut watch, task) = causeway_proxy::identity::start(ca, identity("sleep"));
    let first = tokio::time::timeout(Duration::from_secs(10), watch.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    let started = std::time::Instant::now();
    watch.mark_unchanged();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .unwrap()
        .unwrap();
    let second = watch.borrow().clone().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_ne!(first.credentials.serial, second.credentials.serial);
    assert_ne!(
        first.credentials.certified_key.cert[0], second.credentials.certified_key.cert[0],
        "a new certificate (and key)"
    );
    task.abort();
}
