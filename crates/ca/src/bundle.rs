//! The `cacerts` bundle: `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`, as Istio's
//! plugged-in CA reads them from a directory or from the `cacerts` Secret. Loading validates the whole
//! bundle, so a control plane never starts signing with material that cannot produce a verifiable chain.

use std::path::Path;

use time::OffsetDateTime;

use crate::certificate::{Certificate, CertificateError};
use crate::pem::{self, PemError};
use crate::signer::CaSigner;

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error(
        "{origin} holds {count} certificates; it must hold only the signing CA's certificate (put the rest of the chain in {CERT_CHAIN})"
    )]
    SeveralCaCertificates { origin: String, count: usize },
    #[error(
        "{chain_origin} must start with the certificate in {ca_origin}, but starts with '{found}'; rebuild it with: cat ca-cert.pem root-cert.pem > cert-chain.pem"
    )]
    ChainDoesNotStartWithCa {
        chain_origin: String,
        ca_origin: String,
        found: String,
    },
}

/// PEM bytes with a label saying where they came from.
#[derive(Clone, Debug)]
pub struct PemSource {
    pub origin: String,
    pub bytes: Vec<u8>,
}

impl PemSource {
    pub fn read(path: &Path) -> Result<Self, PemError> {
        Ok(PemSource {
            origin: path.display().to_string(),
            bytes: pem::read_file(path)?,
        })
    }
}

/// The four inputs of a bundle. `cert_chain` may be absent when the CA certificate is itself a root
/// or is signed directly by one.
#[derive(Clone, Debug)]
pub struct BundleSources {
    pub ca_cert: PemSource,
    pub ca_key: PemSource,
    pub cert_chain: Option<PemSource>,
    pub root_cert: PemSource,
}

impl BundleSources {
    pub fn read_dir(dir: &Path) -> Result<Self, PemError> {
        let chain_path = dir.join(CERT_CHAIN);
        Ok(BundleSources {
            ca_cert: PemSource::read(&dir.join(CA_CERT))?,
            ca_key: PemSource::read(&dir.join(CA_KEY))?,
            cert_chain: match PemSource::read(&chain_path) {
                Ok(source) => Some(source),
                Err(PemError::NotFound { .. }) => None,
                Err(other) => return Err(other),
            },
            root_cert: PemSource::read(&dir.join(ROOT_CERT))?,
        })
    }
}

/// A validated `cacerts` bundle.
#[derive(Debug)]
pub struct CaBundle {
    signer: CaSigner,
    /// From the signing CA up to, and including, the root that anchors it.
    chain: Vec<Certificate>,
    /// Every certificate of `root-cert.pem`: the trust bundle handed to workloads.
    roots: Vec<Certificate>,
}

impl CaBundle {
    /// Loads and validates the bundle in `dir` at the current time.
    pub fn load_dir(dir: &Path) -> Result<Self, BundleError> {
        Self::from_sources(BundleSources::read_dir(dir)?, OffsetDateTime::now_utc())
    }

    /// Validates a bundle at `now`: the key is the CA certificate's; every CA in the chain is a CA,
    /// allowed to sign, within its validity and path length; each link is signed by the next; and the
    /// chain ends at, or is signed by, a certificate of `root-cert.pem`.
    pub fn from_sources(sources: BundleSources, now: OffsetDateTime) -> Result<Self, BundleError> {
        let ca_ders = pem::decode_certificates(&sources.ca_cert.origin, &sources.ca_cert.bytes)?;
        if ca_ders.len() != 1 {
            return Err(BundleError::SeveralCaCertificates {
                origin: sources.ca_cert.origin,
                count: ca_ders.len(),
            });
        }
        let ca_cert = Certificate::parse_all(&sources.ca_cert.origin, ca_ders)?.remove(0);
        let ca_key = pem::decode_private_key(&sources.ca_key.origin, &sources.ca_key.bytes)?;
        let roots = Certificate::parse_all(
            &sources.root_cert.origin,
            pem::decode_certificates(&sources.root_cert.origin, &sources.root_cert.bytes)?,
        )?;
        let mut chain = match &sources.cert_chain {
            Some(source) => Certificate::parse_all(
                &source.origin,
                pem::decode_certificates(&source.origin, &source.bytes)?,
            )?,
            None => vec![ca_cert.clone()],
        };
        if chain[0].der() != ca_cert.der() {
            return Err(BundleError::ChainDoesNotStartWithCa {
                chain_origin: chain[0].origin().to_owned(),
                ca_origin: ca_cert.origin().to_owned(),
                found: chain[0].subject().to_owned(),
            });
        }
        // Report problems against ca-cert.pem, the file the user is most likely to fix.
        chain[0] = ca_cert.clone();

        let signer = CaSigner::new(ca_cert, ca_key, &sources.ca_key.origin, now)?;
        for root in &roots {
            root.check_usable_ca(now)?;
        }
        // RFC 5280 pathLenConstraint: how many non-self-issued CA certificates may follow a CA on
        // the way to a leaf. `below` counts them as the chain climbs.
        let mut below = 0;
        for link in chain.windows(2) {
            below += usize::from(!link[0].is_self_issued());
            link[1].check_usable_ca(now)?;
            link[0].check_signed_by(&link[1])?;
            link[1].check_path_len(below)?;
        }
        let top = chain.last().expect("chain is never empty");
        if let Some(anchor) = anchor_in_roots(top, &roots)? {
            below += usize::from(!top.is_self_issued());
            anchor.check_path_len(below)?;
            chain.push(anchor.clone());
        }
        Ok(CaBundle {
            signer,
            chain,
            roots,
        })
    }

    pub fn signer(&self) -> &CaSigner {
        &self.signer
    }

    /// The chain handed out after a leaf: signing CA first, anchoring root last.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// `root-cert.pem` as PEM text.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(Certificate::to_pem).collect()
    }
}

/// Finds the root that anchors `top`: `None` when `top` is itself one of the roots, the root that
/// signed it otherwise, and an error naming the roots when none did.
fn anchor_in_roots<'r>(
    top: &Certificate,
    roots: &'r [Certificate],
) -> Result<Option<&'r Certificate>, CertificateError> {
    if roots.iter().any(|root| root.der() == top.der()) {
        return Ok(None);
    }
    let mut first_error = None;
    for root in roots {
        match top.check_signed_by(root) {
            Ok(()) => return Ok(Some(root)),
            Err(error) => {
                // A root with the right name but the wrong key explains more than a name mismatch.
                let names_match = root.subject() == top.issuer();
                if first_error.is_none() || names_match {
                    first_error = Some(error);
                }
            }
        }
    }
    Err(first_error.expect("root-cert.pem holds at least one certificate"))
}
