//! Certificate signing requests: workloads make them (a P-256 key that never leaves the process) and
//! the CA reads them. The CA takes only the public key from a request, after checking that the
//! requester holds the private key (the request's signature); names in the request are ignored.

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_RSA_SHA256, PublicKeyData, SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::spiffe::SpiffeId;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error(
        "the CSR is not PEM: expected a '-----BEGIN CERTIFICATE REQUEST-----' block ({reason})"
    )]
    NotPem { reason: String },
    #[error("the CSR cannot be parsed as PKCS#10: {reason}")]
    Malformed { reason: String },
    #[error(
        "the CSR's signature does not verify with its own public key, so the requester does not prove it holds the private key"
    )]
    BadSignature,
    #[error(
        "the CSR's key is not accepted: {reason}; use ECDSA P-256 (preferred), P-384, or RSA of {MIN_RSA_BITS}-{MAX_RSA_BITS} bits"
    )]
    UnsupportedKey { reason: String },
    #[error("cannot build a CSR: {0}")]
    Build(String),
}

/// The public key of a verified CSR, in the form rcgen embeds into a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedKey {
    algorithm: &'static SignatureAlgorithm,
    raw: Vec<u8>,
}

impl PublicKeyData for RequestedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    // Only the key-type OIDs of this algorithm are written into the SubjectPublicKeyInfo.
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Decodes a PEM CSR (as `CreateCertificate` carries it) and verifies it.
pub fn verify_csr_pem(csr_pem: &[u8]) -> Result<RequestedKey, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem).map_err(|error| {
        CsrError::NotPem {
            reason: error.to_string(),
        }
    })?;
    verify_csr_der(der.as_ref())
}

/// Parses a DER CSR, checks its self-signature and that its key is of an accepted type and size.
pub fn verify_csr_der(csr_der: &[u8]) -> Result<RequestedKey, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|error| CsrError::Malformed {
            reason: error.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed {
            reason: format!("{} trailing byte(s)", rest.len()),
        });
    }
    let spki = &csr.certification_request_info.subject_pki;
    let unsupported = |reason: String| CsrError::UnsupportedKey { reason };
    let algorithm = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok())
            .ok_or_else(|| unsupported("an EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            &PKCS_ECDSA_P256_SHA256
        } else if curve == OID_NIST_EC_P384 {
            &PKCS_ECDSA_P384_SHA384
        } else {
            return Err(unsupported(format!("EC curve {curve}")));
        }
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(unsupported("a malformed RSA key".into())),
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(unsupported(format!("an RSA key of {bits} bits")));
        }
        &PKCS_RSA_SHA256
    } else {
        return Err(unsupported(format!(
            "key algorithm {}",
            spki.algorithm.algorithm
        )));
    };
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    Ok(RequestedKey {
        algorithm,
        raw: spki.subject_public_key.data.to_vec(),
    })
}

/// A workload's private key: ECDSA P-256, generated in-process.
pub struct WorkloadKey {
    key: KeyPair,
}

impl WorkloadKey {
    pub fn generate() -> Result<Self, CsrError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(|key| WorkloadKey { key })
            .map_err(|error| CsrError::Build(error.to_string()))
    }

    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A PEM CSR naming `identity` as its URI SAN, as Istio's agent sends it. The CA does not rely on
    /// the name; it is there so that the request is self-describing in logs.
    pub fn csr_pem(&self, identity: &SpiffeId) -> Result<String, CsrError> {
        let build = |error: rcgen::Error| CsrError::Build(error.to_string());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(build)?,
        )];
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> SpiffeId {
        "spiffe://cluster.local/ns/sample/sa/sleep".parse().unwrap()
    }

    #[test]
    fn a_workload_csr_verifies_and_yields_its_public_key() {
        let key = WorkloadKey::generate().unwrap();
        let requested = verify_csr_pem(key.csr_pem(&identity()).unwrap().as_bytes()).unwrap();
        assert_eq!(requested.der_bytes(), key.key_pair().public_key_raw());
        assert_eq!(requested.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn a_tampered_csr_fails_its_signature_check() {
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(&identity()).unwrap();
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // Flip a bit inside the URI SAN: still well-formed, but no longer what was signed.
        let position = der
            .windows(6)
            .position(|w| w == b"spiffe")
            .expect("the CSR names its SPIFFE ID");
        der[position] ^= 0x20;
        assert_eq!(verify_csr_der(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn garbage_and_non_pem_are_refused_with_reasons() {
        assert!(matches!(
            verify_csr_pem(b"not a csr"),
            Err(CsrError::NotPem { .. })
        ));
        assert!(matches!(
            verify_csr_der(&[0x30, 0x03, 0x01, 0x01, 0x00]),
            Err(CsrError::Malformed { .. })
        ));
    }

    #[test]
    fn other_curves_are_refused() {
        // Small RSA keys are refused in tests/openssl.rs, with a CSR made by openssl.
        let p521 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&p521)
            .unwrap();
        let err = verify_csr_der(csr.der().as_ref()).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey { .. }), "{err}");
        assert!(err.to_string().contains("EC curve"), "{err}");
    }
}
