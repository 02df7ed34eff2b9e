//! The serving certificate of 15012: `istiod.<namespace>.svc` and the names given by flag,
//! signed by the mesh CA so that proxies trust it with the mesh root.

use causeway_ca::CertificateAuthority;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("`{name}` cannot be a DNS name of the serving certificate: {reason}")]
    BadName { name: String, reason: String },
    #[error("cannot issue the serving certificate: {0}")]
    Issue(String),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The DNS names istiod's certificate carries by default.
pub fn default_dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("istiod.{namespace}.svc"),
        format!("istiod.{namespace}.svc.cluster.local"),
        format!("istiod-remote.{namespace}.svc"),
        "istiod".to_owned(),
    ]
}

pub fn serving_config(
    authority: &CertificateAuthority,
    dns_names: &[String],
) -> Result<ServerConfig, ServingCertError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Istio");
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(name.clone().try_into().map_err(|e: rcgen::Error| {
                        ServingCertError::BadName {
                            name: name.clone(),
                            reason: e.to_string(),
                        }
                    })?)
                }
            };
            Ok(san)
        })
        .collect::<Result<_, ServingCertError>>()?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    let signer = authority.bundle().signer();
    params.not_before = now - Duration::minutes(5);
    params.not_after = (now + Duration::days(365)).min(signer.certificate().not_after());
    let key = KeyPair::generate().map_err(|e| ServingCertError::Issue(e.to_string()))?;
    let leaf = signer
        .sign(&params, &key)
        .map_err(|e| ServingCertError::Issue(e.to_string()))?;
    let mut chain: Vec<CertificateDer<'static>> = vec![leaf];
    chain.extend(authority.bundle().chain().iter().map(|c| c.der().clone()));
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
