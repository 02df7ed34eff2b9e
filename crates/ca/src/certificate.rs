//! A parsed X.509 certificate and the checks a CA certificate must pass before Causeway signs with it
//! or trusts it: CA bit, validity window, key match, signature by its issuer, path length.

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("{origin} is not a valid X.509 certificate: {reason}")]
    Parse { origin: String, reason: String },
    #[error(
        "{origin} ('{subject}') is not a CA certificate: basicConstraints CA:true is missing, so it cannot sign certificates; use the intermediate's ca-cert.pem, not a workload certificate"
    )]
    NotCa { origin: String, subject: String },
    #[error(
        "{origin} ('{subject}') is a CA certificate whose keyUsage lacks keyCertSign, so it cannot sign certificates; reissue it with keyUsage keyCertSign"
    )]
    NoKeyCertSign { origin: String, subject: String },
    #[error("{origin} ('{subject}') expired at {not_after}; issue a new one")]
    Expired {
        origin: String,
        subject: String,
        not_after: String,
    },
    #[error(
        "{origin} ('{subject}') is not valid before {not_before}; check this machine's clock or wait until then"
    )]
    NotYetValid {
        origin: String,
        subject: String,
        not_before: String,
    },
    #[error(
        "the private key in {key_origin} does not belong to the certificate in {origin} ('{subject}'); use the key that was generated with this certificate"
    )]
    KeyMismatch {
        key_origin: String,
        origin: String,
        subject: String,
    },
    #[error(
        "{origin} ('{subject}') is not signed by {issuer_origin} ('{issuer_subject}'): {reason}; regenerate it with that root, or use the root that signed it"
    )]
    NotSignedBy {
        origin: String,
        subject: String,
        issuer_origin: String,
        issuer_subject: String,
        reason: String,
    },
    #[error(
        "{origin} ('{subject}') has pathlen:{path_len} but {below} CA certificate(s) below it in the chain; reissue it with a larger pathlen"
    )]
    PathLenExceeded {
        origin: String,
        subject: String,
        path_len: u32,
        below: usize,
    },
}

/// A certificate with the facts Causeway checks already extracted. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Certificate {
    origin: String,
    der: CertificateDer<'static>,
    subject: String,
    issuer: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    basic_constraints: Option<BasicConstraints>,
    key_cert_sign: bool,
    public_key: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BasicConstraints {
    ca: bool,
    path_len: Option<u32>,
}

impl Certificate {
    /// Parses a DER certificate. `origin` names where it came from in every later error.
    pub fn parse(
        origin: impl Into<String>,
        der: CertificateDer<'static>,
    ) -> Result<Self, CertificateError> {
        let origin = origin.into();
        let parse_error = |reason: String| CertificateError::Parse {
            origin: origin.clone(),
            reason,
        };
        let (rest, x509) =
            X509Certificate::from_der(&der).map_err(|error| parse_error(error.to_string()))?;
        if !rest.is_empty() {
            return Err(parse_error(format!(
                "{} trailing byte(s) after the certificate",
                rest.len()
            )));
        }
        let basic_constraints = x509
            .basic_constraints()
            .map_err(|error| parse_error(format!("bad basicConstraints: {error}")))?
            .map(|ext| BasicConstraints {
                ca: ext.value.ca,
                path_len: ext.value.path_len_constraint,
            });
        let key_cert_sign = x509
            .key_usage()
            .map_err(|error| parse_error(format!("bad keyUsage: {error}")))?
            .is_none_or(|ext| ext.value.key_cert_sign());
        let subject = x509.subject().to_string();
        let issuer = x509.issuer().to_string();
        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();
        let public_key = x509.public_key().subject_public_key.data.to_vec();
        Ok(Certificate {
            origin,
            der,
            subject,
            issuer,
            not_before,
            not_after,
            basic_constraints,
            key_cert_sign,
            public_key,
        })
    }

    /// Parses every certificate of a PEM file or Secret value; the n-th is labelled `origin (certificate n)`
    /// when there are several.
    pub fn parse_all(
        origin: &str,
        ders: Vec<CertificateDer<'static>>,
    ) -> Result<Vec<Self>, CertificateError> {
        let several = ders.len() > 1;
        ders.into_iter()
            .enumerate()
            .map(|(index, der)| {
                let label = if several {
                    format!("{origin} (certificate {})", index + 1)
                } else {
                    origin.to_owned()
                };
                Certificate::parse(label, der)
            })
            .collect()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub fn is_ca(&self) -> bool {
        self.basic_constraints.is_some_and(|bc| bc.ca)
    }

    /// The public key bits (the SubjectPublicKeyInfo's BIT STRING contents).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Issuer name equals subject name. Whether the signature is its own is [`Certificate::check_signed_by`]'s job.
    pub fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }

    pub fn to_pem(&self) -> String {
        crate::pem::encode_certificate(&self.der)
    }

    /// Everything a certificate must be to sign others: CA bit, keyCertSign, valid at `now`.
    pub fn check_usable_ca(&self, now: OffsetDateTime) -> Result<(), CertificateError> {
        if !self.is_ca() {
            return Err(CertificateError::NotCa {
                origin: self.origin.clone(),
                subject: self.subject.clone(),
            });
        }
        if !self.key_cert_sign {
            return Err(CertificateError::NoKeyCertSign {
                origin: self.origin.clone(),
                subject: self.subject.clone(),
            });
        }
        self.check_valid_at(now)
    }

    pub fn check_valid_at(&self, now: OffsetDateTime) -> Result<(), CertificateError> {
        if now < self.not_before {
            return Err(CertificateError::NotYetValid {
                origin: self.origin.clone(),
                subject: self.subject.clone(),
                not_before: format_time(self.not_before),
            });
        }
        if now > self.not_after {
            return Err(CertificateError::Expired {
                origin: self.origin.clone(),
                subject: self.subject.clone(),
                not_after: format_time(self.not_after),
            });
        }
        Ok(())
    }

    pub fn check_key_matches(
        &self,
        key: &KeyPair,
        key_origin: &str,
    ) -> Result<(), CertificateError> {
        if key.public_key_raw() == self.public_key.as_slice() {
            Ok(())
        } else {
            Err(CertificateError::KeyMismatch {
                key_origin: key_origin.to_owned(),
                origin: self.origin.clone(),
                subject: self.subject.clone(),
            })
        }
    }

    /// Verifies that `issuer`'s key made this certificate's signature and that the names chain.
    pub fn check_signed_by(&self, issuer: &Certificate) -> Result<(), CertificateError> {
        let not_signed = |reason: &str| CertificateError::NotSignedBy {
            origin: self.origin.clone(),
            subject: self.subject.clone(),
            issuer_origin: issuer.origin.clone(),
            issuer_subject: issuer.subject.clone(),
            reason: reason.to_owned(),
        };
        if self.issuer != issuer.subject {
            return Err(not_signed(&format!(
                "its issuer is '{}', not '{}'",
                self.issuer, issuer.subject
            )));
        }
        // Both parsed successfully in `parse`, so parsing again cannot fail.
        let (_, this) = X509Certificate::from_der(&self.der)
            .map_err(|error| not_signed(&format!("cannot re-parse: {error}")))?;
        let (_, signer) = X509Certificate::from_der(&issuer.der)
            .map_err(|error| not_signed(&format!("cannot re-parse the issuer: {error}")))?;
        this.verify_signature(Some(signer.public_key()))
            .map_err(|error| match error {
                x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                    not_signed("its signature algorithm is not supported")
                }
                _ => not_signed("the signature does not verify with the issuer's key"),
            })
    }

    /// Checks `pathlen` of this CA given how many non-self-issued CA certificates sit between it and
    /// the leaf.
    pub fn check_path_len(&self, cas_below: usize) -> Result<(), CertificateError> {
        match self.basic_constraints.and_then(|bc| bc.path_len) {
            Some(path_len) if (path_len as usize) < cas_below => {
                Err(CertificateError::PathLenExceeded {
                    origin: self.origin.clone(),
                    subject: self.subject.clone(),
                    path_len,
                    below: cas_below,
                })
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_der_is_a_parse_error_naming_the_origin() {
        let err = Certificate::parse(
            "ca-cert.pem",
            CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]),
        )
        .unwrap_err();
        assert!(matches!(err, CertificateError::Parse { .. }));
        assert!(
            err.to_string()
                .starts_with("ca-cert.pem is not a valid X.509 certificate")
        );
    }
}
