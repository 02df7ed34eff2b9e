//! A CA certificate paired with its private key, checked once, ready to sign.

use rcgen::{CertificateParams, Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::certificate::{Certificate, CertificateError};

pub struct CaSigner {
    certificate: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("subject", &self.certificate.subject())
            .field("origin", &self.certificate.origin())
            .finish_non_exhaustive()
    }
}

impl CaSigner {
    /// Pairs a CA certificate with its key after checking that the key is the certificate's, that the
    /// certificate is a CA allowed to sign, and that it is valid at `now`.
    pub fn new(
        certificate: Certificate,
        key: KeyPair,
        key_origin: &str,
        now: OffsetDateTime,
    ) -> Result<Self, CertificateError> {
        certificate.check_key_matches(&key, key_origin)?;
        certificate.check_usable_ca(now)?;
        let issuer = Issuer::from_ca_cert_der(certificate.der(), key).map_err(|error| {
            CertificateError::Parse {
                origin: certificate.origin().to_owned(),
                reason: format!("its subject cannot be used as an issuer name ({error})"),
            }
        })?;
        Ok(CaSigner {
            certificate,
            issuer,
        })
    }

    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    pub fn key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Signs `params` for `public_key` with this CA as issuer (names, AKI and signature).
    pub fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, rcgen::Error> {
        Ok(params.signed_by(public_key, &self.issuer)?.into())
    }
}
