//! A workload's credentials: its key (made here, never sent anywhere), the chain the CA signed
//! for it, and the mesh roots. Everything the CA returns is checked before it is used.

use super::IdentityError;
use causeway_ca::{SpiffeId, WorkloadKey};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub struct Credentials {
    pub identity: SpiffeId,
    /// Leaf first, then intermediates; the root is not sent.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Half way through the life left when the certificate arrived (Istio's grace ratio): the
    /// CA back-dates `not_before` for clock skew, which must not count as life lived.
    pub renew_at: SystemTime,
    pub serial: String,
    pub certified_key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn bad(reason: impl Into<String>) -> IdentityError {
    IdentityError::BadResponse {
        reason: reason.into(),
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The `x-forwarded-client-cert` element Istio's inbound sidecar adds for a client certificate:
/// `By=<own SPIFFE ID>;Hash=<SHA-256 of the client certificate>;Subject="<its subject>";URI=<its
/// SPIFFE ID>` (Envoy's `set_current_client_cert_details` with subject, URI and DNS).
pub fn forwarded_client_cert(own_identity: &str, client: &CertificateDer<'_>) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, client);
    let hash: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut element = format!("By={own_identity};Hash={hash}");
    let Ok((_, parsed)) = X509Certificate::from_der(client) else {
        return element;
    };
    // Mesh workload certificates have an empty subject; Envoy writes `Subject=""` then.
    element.push_str(&format!(
        ";Subject=\"{}\"",
        parsed.subject().to_string().replace('"', "\\\"")
    ));
    if let Ok(Some(names)) = parsed.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                GeneralName::URI(uri) => element.push_str(&format!(";URI={uri}")),
                GeneralName::DNSName(dns) => element.push_str(&format!(";DNS={dns}")),
                _ => {}
            }
        }
    }
    element
}

/// The SPIFFE IDs among a certificate's URI SANs that parse as workload identities.
pub fn spiffe_ids(certificate: &CertificateDer<'_>) -> Vec<SpiffeId> {
    let Ok((_, parsed)) = X509Certificate::from_der(certificate) else {
        return Vec::new();
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.parse().ok(),
            _ => None,
        })
        .collect()
}

fn system_time(time: x509_parser::time::ASN1Time) -> SystemTime {
    let seconds = time.timestamp();
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    }
}

fn decode_chain(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut chain = Vec::new();
    for (index, text) in pems.iter().enumerate() {
        let origin = format!("the CA's response, certificate {}", index + 1);
        let certificates = causeway_ca::pem::decode_certificates(&origin, text.as_bytes())
            .map_err(|error| bad(error.to_string()))?;
        chain.extend(certificates);
    }
    if chain.is_empty() {
        return Err(bad("the CA returned no certificate"));
    }
    Ok(chain)
}

impl Credentials {
    /// Checks what the CA signed for `key` and `identity` and pairs it with the key.
    /// `trusted_roots` are the roots from the root-certificate file; a self-signed certificate
    /// at the end of the CA's chain joins them (it arrived over a connection they verified).
    pub fn from_signed(
        identity: &SpiffeId,
        key: &WorkloadKey,
        cert_chain: &[String],
        trusted_roots: &[CertificateDer<'static>],
    ) -> Result<Credentials, IdentityError> {
        let mut chain = decode_chain(cert_chain)?;
        let leaf_der = chain[0].clone();
        let (_, leaf) = X509Certificate::from_der(&leaf_der)
            .map_err(|error| bad(format!("the leaf certificate cannot be parsed: {error}")))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.key_pair().public_key_raw() {
            return Err(bad(
                "the leaf certificate is not for this proxy's key; the CA answered another request",
            ));
        }
        let ids = spiffe_ids(&leaf_der);
        if !ids.contains(identity) {
            let found: Vec<String> = ids.iter().map(ToString::to_string).collect();
            return Err(bad(format!(
                "the leaf certificate names {found:?}, not {identity}; check the service account the token belongs to"
            )));
        }
        let not_before = system_time(leaf.validity().not_before);
        let not_after = system_time(leaf.validity().not_after);
        let serial = leaf.raw_serial_as_string();

        let mut roots = trusted_roots.to_vec();
        if chain.len() > 1 {
            let last = chain.last().expect("more than one");
            let self_signed = X509Certificate::from_der(last)
                .map(|(_, c)| c.subject() == c.issuer())
                .unwrap_or(false);
            if self_signed {
                let root = chain.pop().expect("more than one");
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
        if roots.is_empty() {
            return Err(bad(
                "no mesh root: the root-certificate file is empty and the CA sent none",
            ));
        }
        let store = root_store(&roots)?;
        let parsed = rustls::server::ParsedCertificate::try_from(&leaf_der)
            .map_err(|error| bad(format!("the leaf certificate is unusable: {error}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &store,
            &chain[1..],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|error| {
            bad(format!(
                "the signed chain does not lead to a mesh root: {error}; the CA and the root-certificate file disagree"
            ))
        })?;

        let private_key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair().serialize_der()));
        let signing_key = provider()
            .key_provider
            .load_private_key(private_key)
            .map_err(|error| bad(format!("the workload key cannot sign: {error}")))?;
        let certified_key = Arc::new(CertifiedKey::new(chain.clone(), signing_key));
        let received = SystemTime::now();
        let left = not_after.duration_since(received).unwrap_or_default();
        Ok(Credentials {
            identity: identity.clone(),
            chain,
            roots,
            not_before,
            not_after,
            renew_at: received + left / 2,
            serial,
            certified_key,
        })
    }

    pub fn root_store(&self) -> Result<RootCertStore, IdentityError> {
        root_store(&self.roots)
    }
}

pub(crate) fn root_store(
    roots: &[CertificateDer<'static>],
) -> Result<RootCertStore, IdentityError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|error| bad(format!("a mesh root is unusable: {error}")))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    #[test]
    fn the_forwarded_client_cert_element_is_istios() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/sample/sa/sleep"
                .try_into()
                .unwrap(),
        )];
        let certificate = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(certificate.der().to_vec());
        let element = forwarded_client_cert("spiffe://cluster.local/ns/sample/sa/helloworld", &der);
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        let hash: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            element,
            format!(
                "By=spiffe://cluster.local/ns/sample/sa/helloworld;Hash={hash};Subject=\"\";URI=spiffe://cluster.local/ns/sample/sa/sleep"
            )
        );
    }
}
