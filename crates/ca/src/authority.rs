//! The running CA: signs workload CSRs for identities the caller has already authenticated, with the
//! plugged-in `cacerts` bundle or with a self-signed root it creates once and keeps (Istio's default).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use crate::bundle::{self, BundleError, CaBundle};
use crate::certificate::{Certificate, CertificateError};
use crate::csr::{self, CsrError};
use crate::files::{self, Visibility, WriteError};
use crate::issue::{self, IssueError, KeyType, RootCaProfile};
use crate::pem;
use crate::spiffe::SpiffeId;

/// Istio backdates workload certificates by two minutes (`ClockSkewGracePeriod`) so that a workload
/// whose clock is slightly behind the CA's can use its certificate at once.
const CLOCK_SKEW_GRACE: Duration = Duration::minutes(2);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot create the self-signed root in {path}: {source}")]
    Persist { path: PathBuf, source: io::Error },
    #[error(
        "{path} exists but holds no self-signed root ({source}); remove the directory to have a new root created, or point at the right one"
    )]
    UnusableSelfSignedDir {
        path: PathBuf,
        source: Box<BundleError>,
    },
    #[error(
        "the signing policy is inconsistent: default TTL {default_ttl} exceeds the maximum {max_ttl}"
    )]
    Policy {
        default_ttl: Duration,
        max_ttl: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("a certificate TTL must be positive; {requested} was requested")]
    InvalidTtl { requested: Duration },
    #[error("the CA cannot sign now: {0}")]
    CaUnusable(Box<CertificateError>),
    #[error("cannot sign a certificate for {identity}: {source}")]
    Issue {
        identity: Box<SpiffeId>,
        source: Box<IssueError>,
    },
}

/// How long workload certificates live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigningPolicy {
    /// When the request does not say (Istio's `DEFAULT_WORKLOAD_CERT_TTL`, 24 h).
    pub default_ttl: Duration,
    /// Requests for longer are capped to this (Istio's `MAX_WORKLOAD_CERT_TTL`, 90 days).
    pub max_ttl: Duration,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        SigningPolicy {
            default_ttl: Duration::hours(24),
            max_ttl: Duration::days(90),
        }
    }
}

impl SigningPolicy {
    fn ttl_for(&self, requested: Option<Duration>) -> Result<Duration, SignError> {
        match requested {
            None => Ok(self.default_ttl),
            Some(zero) if zero.is_zero() => Ok(self.default_ttl),
            Some(requested) if requested.is_negative() => Err(SignError::InvalidTtl { requested }),
            Some(requested) => Ok(requested.min(self.max_ttl)),
        }
    }
}

/// A signed workload certificate as `CreateCertificate` returns it.
#[derive(Clone, Debug)]
pub struct SignedCertificate {
    /// PEM certificates: the leaf, then the intermediates, then the root.
    pub cert_chain: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Whether [`CertificateAuthority::load_or_create_self_signed`] made a new root or found one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootProvenance {
    Created,
    Loaded,
}

#[derive(Debug)]
pub struct CertificateAuthority {
    bundle: CaBundle,
    policy: SigningPolicy,
    /// The PEM of every certificate after the leaf, computed once.
    chain_pem: Vec<String>,
}

impl CertificateAuthority {
    pub fn new(bundle: CaBundle, policy: SigningPolicy) -> Result<Self, AuthorityError> {
        if policy.default_ttl > policy.max_ttl {
            return Err(AuthorityError::Policy {
                default_ttl: policy.default_ttl,
                max_ttl: policy.max_ttl,
            });
        }
        let chain_pem = bundle.chain().iter().map(Certificate::to_pem).collect();
        Ok(CertificateAuthority {
            bundle,
            policy,
            chain_pem,
        })
    }

    /// Loads a `cacerts` directory (the four files) and validates it.
    pub fn from_cacerts_dir(dir: &Path, policy: SigningPolicy) -> Result<Self, AuthorityError> {
        Self::new(CaBundle::load_dir(dir)?, policy)
    }

    /// Uses the self-signed root kept in `dir`, creating it first if `dir` has none. Creation is
    /// atomic: concurrent starters agree on one root, and a crash leaves either no root or a whole one.
    pub fn load_or_create_self_signed(
        dir: &Path,
        profile: &RootCaProfile,
        policy: SigningPolicy,
    ) -> Result<(Self, RootProvenance), AuthorityError> {
        if dir.join(bundle::CA_CERT).exists() {
            return Ok((load_self_signed(dir, policy)?, RootProvenance::Loaded));
        }
        let root = issue::issue_root_ca(profile, OffsetDateTime::now_utc())?;
        let provenance = publish_root(dir, &root)?;
        Ok((load_self_signed(dir, policy)?, provenance))
    }

    /// Signs a certificate for `identity` with the public key of `csr_pem`. Nothing else in the CSR
    /// is used: the identity comes from the caller's authentication, never from the request.
    pub fn sign_csr(
        &self,
        csr_pem: &[u8],
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
    ) -> Result<SignedCertificate, SignError> {
        self.sign_csr_at(csr_pem, identity, requested_ttl, OffsetDateTime::now_utc())
    }

    fn sign_csr_at(
        &self,
        csr_pem: &[u8],
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<SignedCertificate, SignError> {
        let key = csr::verify_csr_pem(csr_pem)?;
        let ttl = self.policy.ttl_for(requested_ttl)?;
        let signer = self.bundle.signer();
        let ca_cert = signer.certificate();
        ca_cert
            .check_valid_at(now)
            .map_err(|error| SignError::CaUnusable(Box::new(error)))?;
        // X.509 times have whole seconds; report exactly what the certificate says.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let not_before = now - CLOCK_SKEW_GRACE;
        let not_after = issue::capped_by_issuer(signer, now + ttl);
        let issue_error = |source| SignError::Issue {
            identity: Box::new(identity.clone()),
            source: Box::new(source),
        };
        let params =
            issue::workload_params(identity, not_before, not_after).map_err(issue_error)?;
        let der = signer.sign(&params, &key).map_err(|source| {
            issue_error(IssueError::Signing {
                subject: identity.to_string(),
                source,
            })
        })?;
        let mut cert_chain = Vec::with_capacity(1 + self.chain_pem.len());
        cert_chain.push(pem::encode_certificate(&der));
        cert_chain.extend(self.chain_pem.iter().cloned());
        Ok(SignedCertificate {
            cert_chain,
            not_before,
            not_after,
        })
    }

    pub fn bundle(&self) -> &CaBundle {
        &self.bundle
    }

    pub fn policy(&self) -> SigningPolicy {
        self.policy
    }

    /// The trust bundle for workloads (`root-cert.pem`).
    pub fn roots_pem(&self) -> String {
        self.bundle.roots_pem()
    }
}

/// Istio's self-signed root: organisation = trust domain, ten years. ECDSA P-256 rather than Istio's
/// RSA 2048: every client of the mesh accepts it and signing is an order of magnitude cheaper.
pub fn self_signed_root_profile(trust_domain: &str) -> RootCaProfile {
    RootCaProfile {
        organization: trust_domain.to_owned(),
        common_name: String::new(),
        validity: Duration::days(3650),
        key_type: KeyType::EcdsaP256,
    }
}

fn load_self_signed(
    dir: &Path,
    policy: SigningPolicy,
) -> Result<CertificateAuthority, AuthorityError> {
    let bundle = CaBundle::load_dir(dir).map_err(|source| match source {
        BundleError::Pem(_) => AuthorityError::UnusableSelfSignedDir {
            path: dir.to_owned(),
            source: Box::new(source),
        },
        other => AuthorityError::Bundle(other),
    })?;
    CertificateAuthority::new(bundle, policy)
}

/// Writes the root into a staging directory and renames it to `dir`. If another process got there
/// first (`dir` exists and is not empty), its root wins and ours is discarded.
fn publish_root(dir: &Path, root: &issue::Issued) -> Result<RootProvenance, AuthorityError> {
    let persist = |source| AuthorityError::Persist {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(persist)?;
    }
    let staging = files::staging_path(dir);
    fs::create_dir(&staging).map_err(persist)?;
    let cert_pem = root.certificate.to_pem();
    let written = [
        (bundle::CA_KEY, root.key.serialize_pem(), Visibility::Secret),
        (bundle::CA_CERT, cert_pem.clone(), Visibility::Public),
        (bundle::ROOT_CERT, cert_pem, Visibility::Public),
    ]
    .into_iter()
    .try_for_each(|(name, contents, visibility)| {
        files::write_atomically(&staging.join(name), contents.as_bytes(), visibility)
    });
    if let Err(error) = written {
        let _ = fs::remove_dir_all(&staging);
        return Err(error.into());
    }
    match fs::rename(&staging, dir) {
        Ok(()) => {
            files::sync_parent(dir).map_err(persist)?;
            Ok(RootProvenance::Created)
        }
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists
            ) =>
        {
            let _ = fs::remove_dir_all(&staging);
            Ok(RootProvenance::Loaded)
        }
        Err(error) => {
            let _ = fs::remove_dir_all(&staging);
            Err(persist(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::WorkloadKey;

    fn identity() -> SpiffeId {
        "spiffe://cluster.local/ns/sample/sa/helloworld"
            .parse()
            .unwrap()
    }

    #[test]
    fn ttl_policy_defaults_caps_and_refuses_negative() {
        let policy = SigningPolicy {
            default_ttl: Duration::hours(24),
            max_ttl: Duration::hours(48),
        };
        assert_eq!(policy.ttl_for(None).unwrap(), Duration::hours(24));
        assert_eq!(
            policy.ttl_for(Some(Duration::ZERO)).unwrap(),
            Duration::hours(24)
        );
        assert_eq!(
            policy.ttl_for(Some(Duration::hours(1))).unwrap(),
            Duration::hours(1)
        );
        assert_eq!(
            policy.ttl_for(Some(Duration::days(30))).unwrap(),
            Duration::hours(48)
        );
        assert!(matches!(
            policy.ttl_for(Some(Duration::seconds(-5))),
            Err(SignError::InvalidTtl { .. })
        ));
    }

    #[test]
    fn an_inconsistent_policy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inconsistent = SigningPolicy {
            default_ttl: Duration::days(2),
            max_ttl: Duration::days(1),
        };
        let err = CertificateAuthority::load_or_create_self_signed(
            dir.path(),
            &self_signed_root_profile("cluster.local"),
            inconsistent,
        )
        .unwrap_err();
        assert!(matches!(err, AuthorityError::Policy { .. }), "{err}");
    }

    #[test]
    fn self_signed_root_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("nested/self-signed");
        let profile = self_signed_root_profile("cluster.local");
        let (first, provenance) = CertificateAuthority::load_or_create_self_signed(
            &root_dir,
            &profile,
            SigningPolicy::default(),
        )
        .unwrap();
        assert_eq!(provenance, RootProvenance::Created);
        let (second, provenance) = CertificateAuthority::load_or_create_self_signed(
            &root_dir,
            &profile,
            SigningPolicy::default(),
        )
        .unwrap();
        assert_eq!(provenance, RootProvenance::Loaded);
        assert_eq!(first.roots_pem(), second.roots_pem());
        assert_eq!(first.bundle().roots()[0].subject(), "O=cluster.local");

        // Only the root directory is left behind: no staging directories.
        let entries: Vec<_> = fs::read_dir(root_dir.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn concurrent_starters_agree_on_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("root");
        let roots: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        CertificateAuthority::load_or_create_self_signed(
                            &root_dir,
                            &self_signed_root_profile("cluster.local"),
                            SigningPolicy::default(),
                        )
                        .unwrap()
                        .0
                        .roots_pem()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(roots.windows(2).all(|pair| pair[0] == pair[1]));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_without_a_root_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(bundle::CA_CERT), "garbage").unwrap();
        let err = CertificateAuthority::load_or_create_self_signed(
            dir.path(),
            &self_signed_root_profile("cluster.local"),
            SigningPolicy::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, AuthorityError::UnusableSelfSignedDir { .. }),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(bundle::CA_CERT)).unwrap(),
            "garbage"
        );
    }

    #[test]
    fn signing_backdates_and_caps_by_the_ca_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let profile = RootCaProfile {
            validity: Duration::hours(3),
            ..self_signed_root_profile("cluster.local")
        };
        let (ca, _) = CertificateAuthority::load_or_create_self_signed(
            dir.path(),
            &profile,
            SigningPolicy::default(),
        )
        .unwrap();
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_pem(&identity()).unwrap();
        let now = OffsetDateTime::now_utc();
        let signed = ca
            .sign_csr_at(csr.as_bytes(), &identity(), None, now)
            .unwrap();
        let ca_cert = &ca.bundle().chain()[0];
        assert_eq!(signed.not_after, ca_cert.not_after());
        assert_eq!(
            signed.not_before,
            now.replace_nanosecond(0).unwrap() - CLOCK_SKEW_GRACE
        );
        assert_eq!(signed.cert_chain.len(), 2, "leaf and the self-signed root");

        let later = now + Duration::hours(4);
        let err = ca
            .sign_csr_at(csr.as_bytes(), &identity(), None, later)
            .unwrap_err();
        assert!(
            matches!(&err, SignError::CaUnusable(inner) if matches!(**inner, CertificateError::Expired { .. })),
            "{err}"
        );
    }
}
