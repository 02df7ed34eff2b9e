//! Mesh mutual TLS: the server side requires a client certificate that chains to a mesh root;
//! the client side accepts a server certificate that chains to a mesh root and carries a SPIFFE
//! ID of the mesh's trust domain. Which service accounts may serve a given service is checked
//! after the handshake ([`MeshTls::check_server`]), since it differs per connection.

use super::IdentityError;
use super::credentials::{Credentials, provider, spiffe_ids};
use causeway_ca::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// ALPN the client offers: Istio's marker for mesh mTLS. Opaque TCP also offers
/// `istio-peer-exchange` first, which promises the metadata exchange's preface on the stream.
const MESH_ALPN: &[u8] = b"istio";

/// One generation of credentials, ready for connections. Rotation makes a new one; connections
/// keep the generation they started with.
pub struct MeshTls {
    pub credentials: Arc<Credentials>,
    /// For clients that did not offer `istio-peer-exchange`: no ALPN is negotiated, so no client
    /// is refused for the protocols it offers.
    pub server: Arc<ServerConfig>,
    /// For clients that offered `istio-peer-exchange`: it is negotiated.
    pub server_peer_exchange: Arc<ServerConfig>,
    /// HTTP to an endpoint.
    pub client: Arc<ClientConfig>,
    /// Opaque TCP to an endpoint: offers `istio-peer-exchange`, then `istio`.
    pub client_peer_exchange: Arc<ClientConfig>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

fn config_error(side: &str, error: impl std::fmt::Display) -> IdentityError {
    IdentityError::BadResponse {
        reason: format!("cannot build the TLS {side} configuration: {error}"),
    }
}

impl MeshTls {
    pub fn new(credentials: Arc<Credentials>) -> Result<MeshTls, IdentityError> {
        let provider = provider();
        let roots = Arc::new(credentials.root_store()?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| config_error("server", e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("server", e))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(OwnCertificate(credentials.certified_key.clone())));
        let server_verifier = Arc::new(MeshServerVerifier {
            roots,
            trust_domain: credentials.identity.trust_domain().to_owned(),
            provider: provider.clone(),
        });
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("client", e))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_cert_resolver(Arc::new(OwnCertificate(credentials.certified_key.clone())));
        client.alpn_protocols = vec![MESH_ALPN.to_vec()];
        let mut client_peer_exchange = client.clone();
        client_peer_exchange.alpn_protocols =
            vec![crate::tcp_peer_exchange::ALPN.to_vec(), MESH_ALPN.to_vec()];
        let mut server_peer_exchange = server.clone();
        server_peer_exchange.alpn_protocols = vec![crate::tcp_peer_exchange::ALPN.to_vec()];
        Ok(MeshTls {
            credentials,
            server: Arc::new(server),
            server_peer_exchange: Arc::new(server_peer_exchange),
            client: Arc::new(client),
            client_peer_exchange: Arc::new(client_peer_exchange),
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.credentials.identity
    }

    /// After a client handshake: does the server's identity match what the cluster expects?
    /// `expected` empty means any identity of the trust domain (already checked in the
    /// handshake).
    pub fn check_server(
        peer_certificates: Option<&[CertificateDer<'static>]>,
        expected: &[String],
    ) -> Result<SpiffeId, String> {
        let identity = peer_identity(peer_certificates)
            .ok_or_else(|| "the server presented no SPIFFE identity".to_owned())?;
        if !expected.is_empty() && !expected.iter().any(|e| *e == identity.to_string()) {
            return Err(format!(
                "the server is {identity}, which is not among the service's identities {expected:?}"
            ));
        }
        Ok(identity)
    }
}

/// The first SPIFFE ID of a peer's leaf certificate.
pub fn peer_identity(peer_certificates: Option<&[CertificateDer<'static>]>) -> Option<SpiffeId> {
    spiffe_ids(peer_certificates?.first()?).into_iter().next()
}

/// The workload certificate, whatever the peer asks for: both sides present the same one.
#[derive(Debug)]
struct OwnCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OwnCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chains to a mesh root, and names a workload of the trust domain. Host names play no part:
/// mesh peers are named by SPIFFE ID.
#[derive(Debug)]
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

fn refuse(reason: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        std::io::Error::other(reason),
    ))))
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let ids = spiffe_ids(end_entity);
        if ids.is_empty() {
            return Err(refuse(
                "the server certificate carries no SPIFFE ID; it is not a mesh workload".into(),
            ));
        }
        if !ids.iter().any(|id| id.trust_domain() == self.trust_domain) {
            let found: Vec<String> = ids.iter().map(ToString::to_string).collect();
            return Err(refuse(format!(
                "the server certificate names {found:?}, outside trust domain `{}`",
                self.trust_domain
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
