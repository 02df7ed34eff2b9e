//! One `CreateCertificate` call: a new key, its CSR, the pod's token, over TLS verified with
//! the mesh roots.

use super::{Credentials, IdentityError};
use causeway_ca::service::IstioCertificateRequest;
use causeway_ca::service::istio_certificate_service_client::IstioCertificateServiceClient;
use causeway_ca::{SpiffeId, WorkloadKey};
use rustls_pki_types::CertificateDer;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct CaSettings {
    /// `host:port` of the CA (discovery's 15012).
    pub address: String,
    /// The name the CA's certificate must carry (the host part of `address` by default).
    pub server_name: String,
    pub root_cert: PathBuf,
    pub token_path: PathBuf,
    /// Sent as `clusterid`, so the CA reviews the token with this cluster's API server.
    pub cluster_id: String,
    /// Requested certificate lifetime.
    pub ttl: Duration,
    /// The socket mark of the proxy's own connections.
    pub mark: u32,
}

impl CaSettings {
    pub fn read_roots(&self) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), IdentityError> {
        let pem = causeway_ca::pem::read_file(&self.root_cert)
            .map_err(|source| IdentityError::Roots { source })?;
        let origin = self.root_cert.display().to_string();
        let roots = causeway_ca::pem::decode_certificates(&origin, &pem)
            .map_err(|source| IdentityError::Roots { source })?;
        Ok((pem, roots))
    }

    fn read_token(&self) -> Result<String, IdentityError> {
        let token =
            std::fs::read_to_string(&self.token_path).map_err(|source| IdentityError::Token {
                path: self.token_path.clone(),
                source,
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(IdentityError::EmptyToken {
                path: self.token_path.clone(),
            });
        }
        Ok(token.to_owned())
    }

    fn connect_error(&self, reason: impl std::fmt::Display) -> IdentityError {
        IdentityError::Connect {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    /// A fresh key and a certificate for it. The roots and token are read anew each time, as
    /// both are files Kubernetes rotates.
    pub async fn obtain(&self, identity: &SpiffeId) -> Result<Credentials, IdentityError> {
        let (roots_pem, roots) = self.read_roots()?;
        let token = self.read_token()?;
        let key = WorkloadKey::generate()?;
        let csr = key.csr_pem(identity)?;

        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots_pem))
            .domain_name(self.server_name.clone());
        let channel = Endpoint::from_shared(format!("https://{}", self.address))
            .map_err(|e| self.connect_error(e))?
            .tls_config(tls)
            .map_err(|e| self.connect_error(e))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = crate::control_channel::marked_channel(&channel, self.mark)
            .await
            .map_err(|e| self.connect_error(describe(&e)))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        });
        let metadata = request.metadata_mut();
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| IdentityError::BadResponse {
                reason: "the token has characters a header cannot carry".into(),
            })?;
        metadata.insert("authorization", bearer);
        if let Ok(cluster) = self.cluster_id.parse() {
            metadata.insert("clusterid", cluster);
        }
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(|status| IdentityError::Refused {
                address: self.address.clone(),
                code: status.code(),
                message: status.message().to_owned(),
            })?;
        Credentials::from_signed(identity, &key, &response.into_inner().cert_chain, &roots)
    }
}

/// An error with its causes: tonic's transport errors say little at the top.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
