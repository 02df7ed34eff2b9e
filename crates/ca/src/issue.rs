//! The three certificate profiles of an Istio mesh (root CA, per-cluster intermediate CA, workload) and
//! the key types they use. The extensions match Istio's `tools/certs` configuration and its CA.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::certificate::{Certificate, CertificateError};
use crate::signer::CaSigner;
use crate::spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("RSA keys of {bits} bits are not supported; use 2048, 3072 or 4096")]
    UnsupportedRsaSize { bits: u32 },
    #[error("unknown key type '{0}'; use 'rsa' or 'ecdsa-p256'")]
    UnknownKeyType(String),
    #[error("cannot generate a {key_type} key: {source}")]
    KeyGeneration {
        key_type: KeyType,
        source: rcgen::Error,
    },
    #[error("a certificate must be valid for a positive duration, not {0}")]
    NonPositiveValidity(Duration),
    #[error("'{value}' cannot be used as {what}: {source}")]
    InvalidName {
        what: &'static str,
        value: String,
        source: rcgen::Error,
    },
    #[error("cannot sign the certificate for '{subject}': {source}")]
    Signing {
        subject: String,
        source: rcgen::Error,
    },
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rsa { bits: u32 },
    EcdsaP256,
}

impl KeyType {
    /// The RSA sizes aws-lc-rs generates; anything else is refused rather than rounded.
    pub fn rsa(bits: u32) -> Result<Self, IssueError> {
        match bits {
            2048 | 3072 | 4096 => Ok(KeyType::Rsa { bits }),
            _ => Err(IssueError::UnsupportedRsaSize { bits }),
        }
    }

    pub fn generate(self) -> Result<KeyPair, IssueError> {
        let generated = match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            KeyType::Rsa { bits } => {
                let size = match bits {
                    2048 => RsaKeySize::_2048,
                    3072 => RsaKeySize::_3072,
                    4096 => RsaKeySize::_4096,
                    _ => return Err(IssueError::UnsupportedRsaSize { bits }),
                };
                KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size)
            }
        };
        generated.map_err(|source| IssueError::KeyGeneration {
            key_type: self,
            source,
        })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyType::EcdsaP256 => f.write_str("ECDSA P-256"),
        }
    }
}

impl FromStr for KeyType {
    type Err = IssueError;

    /// `rsa` (4096 bits), `rsa-2048`, `rsa-3072`, `rsa-4096`, `ecdsa-p256`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "rsa" => KeyType::rsa(4096),
            "ecdsa-p256" | "ecdsa" | "p256" | "p-256" => Ok(KeyType::EcdsaP256),
            other => match other.strip_prefix("rsa-").map(str::parse::<u32>) {
                Some(Ok(bits)) => KeyType::rsa(bits),
                _ => Err(IssueError::UnknownKeyType(text.to_owned())),
            },
        }
    }
}

/// A freshly issued certificate and its private key.
pub struct Issued {
    pub certificate: Certificate,
    pub key: KeyPair,
}

/// `root-ca` of Istio's `Makefile.selfsigned.mk`.
#[derive(Clone, Debug)]
pub struct RootCaProfile {
    pub organization: String,
    pub common_name: String,
    pub validity: Duration,
    pub key_type: KeyType,
}

impl Default for RootCaProfile {
    fn default() -> Self {
        RootCaProfile {
            organization: "Istio".into(),
            common_name: "Root CA".into(),
            validity: Duration::days(3650),
            key_type: KeyType::Rsa { bits: 4096 },
        }
    }
}

/// `<name>-cacerts`: the intermediate CA one cluster's control plane signs workloads with.
#[derive(Clone, Debug)]
pub struct IntermediateCaProfile {
    pub organization: String,
    pub common_name: String,
    /// The cluster name; Istio puts it in `L` to tell the clusters' intermediates apart.
    pub locality: String,
    pub san_dns: Vec<String>,
    pub validity: Duration,
    pub key_type: KeyType,
}

impl IntermediateCaProfile {
    pub fn for_cluster(cluster: impl Into<String>) -> Self {
        IntermediateCaProfile {
            organization: "Istio".into(),
            common_name: "Intermediate CA".into(),
            locality: cluster.into(),
            san_dns: vec!["istiod.istio-system.svc".into()],
            validity: Duration::days(730),
            key_type: KeyType::Rsa { bits: 4096 },
        }
    }
}

/// `<namespace>-certs`: a workload (VM) certificate made offline. Certificates signed from a CSR by the
/// running CA use [`workload_params`] directly, with an empty subject as Istio's CA does.
#[derive(Clone, Debug)]
pub struct WorkloadProfile {
    pub identity: SpiffeId,
    pub organization: String,
    pub common_name: String,
    pub validity: Duration,
    pub key_type: KeyType,
}

impl WorkloadProfile {
    pub fn new(identity: SpiffeId) -> Self {
        WorkloadProfile {
            identity,
            organization: "Istio".into(),
            common_name: "Workload".into(),
            validity: Duration::days(1),
            key_type: KeyType::EcdsaP256,
        }
    }
}

pub fn issue_root_ca(profile: &RootCaProfile, now: OffsetDateTime) -> Result<Issued, IssueError> {
    let key = profile.key_type.generate()?;
    let mut params = ca_params(
        &profile.organization,
        &profile.common_name,
        None,
        BasicConstraints::Unconstrained,
        now,
        now + positive(profile.validity)?,
    );
    params.use_authority_key_identifier_extension = false;
    let certificate = params
        .self_signed(&key)
        .map_err(|source| IssueError::Signing {
            subject: profile.common_name.clone(),
            source,
        })?;
    Ok(Issued {
        certificate: Certificate::parse("the new root certificate", certificate.into())?,
        key,
    })
}

pub fn issue_intermediate_ca(
    profile: &IntermediateCaProfile,
    signer: &CaSigner,
    now: OffsetDateTime,
) -> Result<Issued, IssueError> {
    let key = profile.key_type.generate()?;
    let not_after = capped_by_issuer(signer, now + positive(profile.validity)?);
    let mut params = ca_params(
        &profile.organization,
        &profile.common_name,
        Some(&profile.locality),
        BasicConstraints::Constrained(0),
        now,
        not_after,
    );
    for dns in &profile.san_dns {
        let name = dns
            .as_str()
            .try_into()
            .map_err(|source| IssueError::InvalidName {
                what: "a DNS subject alternative name",
                value: dns.clone(),
                source,
            })?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    let der = signer
        .sign(&params, &key)
        .map_err(|source| IssueError::Signing {
            subject: profile.common_name.clone(),
            source,
        })?;
    Ok(Issued {
        certificate: Certificate::parse("the new intermediate certificate", der)?,
        key,
    })
}

pub fn issue_workload(
    profile: &WorkloadProfile,
    signer: &CaSigner,
    now: OffsetDateTime,
) -> Result<Issued, IssueError> {
    let key = profile.key_type.generate()?;
    let not_after = capped_by_issuer(signer, now + positive(profile.validity)?);
    let mut params = workload_params(&profile.identity, now, not_after)?;
    params.distinguished_name = distinguished_name(
        &profile.organization,
        &profile.common_name,
        Some(profile.identity.namespace()),
    );
    let der = signer
        .sign(&params, &key)
        .map_err(|source| IssueError::Signing {
            subject: profile.identity.to_string(),
            source,
        })?;
    Ok(Issued {
        certificate: Certificate::parse("the new workload certificate", der)?,
        key,
    })
}

/// The workload profile: the SPIFFE ID as the only SAN, `CA:false`, digitalSignature and
/// keyEncipherment, EKU serverAuth and clientAuth, empty subject (so the SAN is critical).
pub fn workload_params(
    identity: &SpiffeId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, IssueError> {
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|source| IssueError::InvalidName {
            what: "a URI subject alternative name",
            value: identity.to_string(),
            source,
        })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// A certificate never outlives the CA that signs it.
pub(crate) fn capped_by_issuer(signer: &CaSigner, not_after: OffsetDateTime) -> OffsetDateTime {
    not_after.min(signer.certificate().not_after())
}

fn ca_params(
    organization: &str,
    common_name: &str,
    locality: Option<&str>,
    constraints: BasicConstraints,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(organization, common_name, locality);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// Same attribute order as the Makefile's `[ req_dn ]`: O, CN, then L.
fn distinguished_name(
    organization: &str,
    common_name: &str,
    locality: Option<&str>,
) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if !organization.is_empty() {
        name.push(DnType::OrganizationName, organization);
    }
    if !common_name.is_empty() {
        name.push(DnType::CommonName, common_name);
    }
    if let Some(locality) = locality.filter(|l| !l.is_empty()) {
        name.push(DnType::LocalityName, locality);
    }
    name
}

fn positive(validity: Duration) -> Result<Duration, IssueError> {
    if validity.is_positive() {
        Ok(validity)
    } else {
        Err(IssueError::NonPositiveValidity(validity))
    }
}

/// 128 random bits, positive and non-zero as RFC 5280 requires.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG failing is not something a CA can carry on from.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_parse_from_cli_spellings() {
        assert_eq!(
            "rsa".parse::<KeyType>().unwrap(),
            KeyType::Rsa { bits: 4096 }
        );
        assert_eq!(
            "RSA-2048".parse::<KeyType>().unwrap(),
            KeyType::Rsa { bits: 2048 }
        );
        assert_eq!("ecdsa-p256".parse::<KeyType>().unwrap(), KeyType::EcdsaP256);
        let err = "rsa-1024".parse::<KeyType>().unwrap_err().to_string();
        assert!(err.contains("1024 bits are not supported"), "{err}");
        let err = "dsa".parse::<KeyType>().unwrap_err().to_string();
        assert!(err.contains("unknown key type 'dsa'"), "{err}");
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }

    #[test]
    fn certificates_do_not_outlive_their_issuer() {
        let now = OffsetDateTime::now_utc();
        let root = issue_root_ca(
            &RootCaProfile {
                validity: Duration::days(10),
                key_type: KeyType::EcdsaP256,
                ..RootCaProfile::default()
            },
            now,
        )
        .unwrap();
        let signer = CaSigner::new(root.certificate, root.key, "root-key.pem", now).unwrap();
        let mut profile = IntermediateCaProfile::for_cluster("cluster01");
        profile.key_type = KeyType::EcdsaP256;
        let intermediate = issue_intermediate_ca(&profile, &signer, now).unwrap();
        assert_eq!(
            intermediate.certificate.not_after(),
            signer.certificate().not_after()
        );
    }

    #[test]
    fn zero_validity_is_refused() {
        let profile = RootCaProfile {
            validity: Duration::ZERO,
            key_type: KeyType::EcdsaP256,
            ..RootCaProfile::default()
        };
        let err = issue_root_ca(&profile, OffsetDateTime::now_utc())
            .err()
            .unwrap();
        assert!(matches!(err, IssueError::NonPositiveValidity(_)));
    }
}
