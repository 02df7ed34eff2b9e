//! The API server's TLS: a CA of its own, kept in the data directory (it goes into kubeconfigs and
//! remote secrets as `certificate-authority-data`), and a serving certificate issued at each start
//! for the names and addresses the server answers on.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use causeway_ca::certificate::Certificate;
use causeway_ca::files::{Visibility, write_atomically};
use causeway_ca::issue::{KeyType, RootCaProfile, issue_root_ca};
use causeway_ca::signer::CaSigner;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

const CA_CERT: &str = "apiserver-ca.pem";
const CA_KEY: &str = "apiserver-ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot set up the API server's certificate authority in {directory}: {reason}")]
    Authority { directory: String, reason: String },
    #[error("cannot issue the API server's serving certificate: {0}")]
    Serving(String),
}

pub struct ServingTls {
    pub ca_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

/// Loads (or creates) the cluster's API server CA and issues a serving certificate for `dns_names`
/// and `addresses`.
pub fn load(
    directory: &Path,
    cluster: &str,
    dns_names: &[String],
    addresses: &[IpAddr],
) -> Result<ServingTls, TlsError> {
    let authority_error = |reason: String| TlsError::Authority {
        directory: directory.display().to_string(),
        reason,
    };
    let now = OffsetDateTime::now_utc();
    let cert_path = directory.join(CA_CERT);
    let key_path = directory.join(CA_KEY);
    if !cert_path.exists() || !key_path.exists() {
        let profile = RootCaProfile {
            organization: "causeway-lab".into(),
            common_name: format!("{cluster}-apiserver-ca"),
            validity: Duration::days(3650),
            key_type: KeyType::EcdsaP256,
        };
        let issued =
            issue_root_ca(&profile, now).map_err(|error| authority_error(error.to_string()))?;
        write_atomically(
            &key_path,
            issued.key.serialize_pem().as_bytes(),
            Visibility::Secret,
        )
        .map_err(|error| authority_error(error.to_string()))?;
        write_atomically(
            &cert_path,
            issued.certificate.to_pem().as_bytes(),
            Visibility::Public,
        )
        .map_err(|error| authority_error(error.to_string()))?;
    }
    let certificates = causeway_ca::pem::read_certificates(&cert_path)
        .map_err(|error| authority_error(error.to_string()))?;
    let certificate = Certificate::parse(
        cert_path.display().to_string(),
        certificates.into_iter().next().ok_or_else(|| {
            authority_error(format!("{} holds no certificate", cert_path.display()))
        })?,
    )
    .map_err(|error| authority_error(error.to_string()))?;
    let key = causeway_ca::pem::read_private_key(&key_path)
        .map_err(|error| authority_error(error.to_string()))?;
    let ca_pem = certificate.to_pem();
    let signer = CaSigner::new(certificate, key, &key_path.display().to_string(), now)
        .map_err(|error| authority_error(error.to_string()))?;

    let serving_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|error| TlsError::Serving(error.to_string()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(365);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    for name in dns_names {
        let name = name
            .as_str()
            .try_into()
            .map_err(|_| TlsError::Serving(format!("{name:?} is not a DNS name")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params
        .subject_alt_names
        .extend(addresses.iter().map(|address| SanType::IpAddress(*address)));
    let serving = signer
        .sign(&params, &serving_key)
        .map_err(|error| TlsError::Serving(error.to_string()))?;
    let chain = vec![serving, signer.certificate().der().clone()];
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| TlsError::Serving(error.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)
    .map_err(|error| TlsError::Serving(error.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServingTls {
        ca_pem,
        config: Arc::new(config),
    })
}
