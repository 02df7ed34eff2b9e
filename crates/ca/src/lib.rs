//! Causeway's certificate authority: the library behind `causeway certs` and the control plane's
//! `CreateCertificate`.
//!
//! - [`issue`]: the root, intermediate and workload certificate profiles of an Istio mesh.
//! - [`certs_dir`]: the file layout of Istio's `Makefile.selfsigned.mk` (`root-ca`, `<name>-cacerts`,
//!   `<namespace>-certs`, `clean`).
//! - [`bundle`]: loading and validating a `cacerts` bundle.
//! - [`authority`]: signing workload CSRs for authenticated identities; the self-signed default root.
//! - [`csr`]: making CSRs (workloads) and verifying them (the CA).
//! - [`spiffe`], identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! - `service` (feature `grpc`): Istio's `IstioCertificateService`, generated from its proto.

pub mod authority;
pub mod bundle;
pub mod certificate;
pub mod certs_dir;
pub mod csr;
pub mod files;
pub mod issue;
pub mod pem;
pub mod signer;
pub mod spiffe;
#[cfg(feature = "grpc")]
pub mod service {
    //! Istio's `istio.v1.auth.IstioCertificateService`, generated from `proto/istio/v1/auth/ca.proto`.
    tonic::include_proto!("istio.v1.auth");
}
#[cfg(feature = "testing")]
pub mod testing;

pub use authority::{CertificateAuthority, SignError, SignedCertificate, SigningPolicy};
pub use bundle::{BundleError, CaBundle};
pub use certificate::{Certificate, CertificateError};
pub use csr::{CsrError, WorkloadKey};
pub use issue::KeyType;
pub use spiffe::{SpiffeId, SpiffeIdError};
