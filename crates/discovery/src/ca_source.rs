//! Where the mesh CA's signing certificate comes from, in Istio's order of preference: a
//! `cacerts` directory given by flag, else `/etc/cacerts` when the `cacerts` Secret is mounted
//! there (istiod's `LocalCertDir`; install mounts it, optional), else the `cacerts` Secret read
//! through the API (the seeds' plugged-in intermediate, for a discovery run outside a pod), else
//! the self-signed root kept in the `istio-ca-secret` Secret, created on first start.

use causeway_ca::authority::self_signed_root_profile;
use causeway_ca::bundle::{BundleSources, CA_CERT, CA_KEY, CERT_CHAIN, PemSource, ROOT_CERT};
use causeway_ca::{CaBundle, CertificateAuthority, SigningPolicy, issue};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

pub const CACERTS_SECRET: &str = "cacerts";
/// Where install mounts the `cacerts` Secret in discovery's pod, as Istio's chart does.
pub const MOUNTED_CACERTS: &str = "/etc/cacerts";

/// The directory to load the CA from: the one given, else `mounted` when it holds a signing
/// certificate and key (an optional Secret volume of a missing Secret is an empty directory,
/// which means "no plugged-in CA", not an error).
pub fn cacerts_directory(given: Option<&Path>, mounted: &Path) -> Option<PathBuf> {
    if let Some(given) = given {
        return Some(given.to_owned());
    }
    let holds =
        |name: &str| std::fs::metadata(mounted.join(name)).is_ok_and(|metadata| metadata.len() > 0);
    (holds(CA_CERT) && holds(CA_KEY)).then(|| mounted.to_owned())
}
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";

#[derive(Debug, thiserror::Error)]
pub enum CaSourceError {
    #[error(
        "cannot read Secret {namespace}/{name}: {source}; check the control plane's credentials for its own cluster"
    )]
    Read {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "cannot create Secret {namespace}/{SELF_SIGNED_SECRET} for the self-signed root: {source}"
    )]
    Create {
        namespace: String,
        source: Box<kube::Error>,
    },
    #[error(
        "Secret {namespace}/{name} lacks key `{key}`; it needs ca-cert.pem, ca-key.pem and root-cert.pem (cert-chain.pem optional)"
    )]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("the CA in {origin} is unusable: {detail}")]
    Invalid { origin: String, detail: String },
}

/// Where the signing certificate was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaOrigin {
    Directory(PathBuf),
    CacertsSecret,
    SelfSigned { created: bool },
}

impl std::fmt::Display for CaOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaOrigin::Directory(path) => write!(f, "cacerts directory {}", path.display()),
            CaOrigin::CacertsSecret => write!(f, "the {CACERTS_SECRET} Secret"),
            CaOrigin::SelfSigned { created: true } => {
                write!(f, "a new self-signed root (kept in {SELF_SIGNED_SECRET})")
            }
            CaOrigin::SelfSigned { created: false } => {
                write!(f, "the self-signed root in {SELF_SIGNED_SECRET}")
            }
        }
    }
}

pub async fn load(
    client: &kube::Client,
    namespace: &str,
    directory: Option<&Path>,
    trust_domain: &str,
    policy: SigningPolicy,
) -> Result<(CertificateAuthority, CaOrigin), CaSourceError> {
    let invalid = |origin: String, detail: String| CaSourceError::Invalid { origin, detail };
    if let Some(directory) = cacerts_directory(directory, Path::new(MOUNTED_CACERTS)).as_deref() {
        let authority = CertificateAuthority::from_cacerts_dir(directory, policy)
            .map_err(|e| invalid(directory.display().to_string(), e.to_string()))?;
        return Ok((authority, CaOrigin::Directory(directory.to_owned())));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(name)
                .await
                .map_err(|source| CaSourceError::Read {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source: Box::new(source),
                })
        }
    };
    if let Some(secret) = read(CACERTS_SECRET).await? {
        let authority = from_secret(namespace, CACERTS_SECRET, &secret, policy)?;
        return Ok((authority, CaOrigin::CacertsSecret));
    }
    if let Some(secret) = read(SELF_SIGNED_SECRET).await? {
        let authority = from_secret(namespace, SELF_SIGNED_SECRET, &secret, policy)?;
        return Ok((authority, CaOrigin::SelfSigned { created: false }));
    }
    let root = issue::issue_root_ca(
        &self_signed_root_profile(trust_domain),
        OffsetDateTime::now_utc(),
    )
    .map_err(|e| invalid("a new self-signed root".into(), e.to_string()))?;
    let certificate = root.certificate.to_pem();
    let data: BTreeMap<String, ByteString> = [
        (CA_CERT, certificate.clone()),
        (CA_KEY, root.key.serialize_pem()),
        (CERT_CHAIN, String::new()),
        (ROOT_CERT, certificate),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(data),
        ..Default::default()
    };
    let (kept, created) = match secrets.create(&PostParams::default(), &secret).await {
        Ok(kept) => (kept, true),
        // Another control plane (or replica) made one first: use theirs, so that the mesh has
        // one root.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let theirs = read(SELF_SIGNED_SECRET).await?.ok_or_else(|| {
                invalid(
                    SELF_SIGNED_SECRET.into(),
                    "it was created and then deleted during start-up".into(),
                )
            })?;
            (theirs, false)
        }
        Err(source) => {
            return Err(CaSourceError::Create {
                namespace: namespace.to_owned(),
                source: Box::new(source),
            });
        }
    };
    let authority = from_secret(namespace, SELF_SIGNED_SECRET, &kept, policy)?;
    Ok((authority, CaOrigin::SelfSigned { created }))
}

fn from_secret(
    namespace: &str,
    name: &str,
    secret: &Secret,
    policy: SigningPolicy,
) -> Result<CertificateAuthority, CaSourceError> {
    let data = secret.data.clone().unwrap_or_default();
    let source = |key: &'static str| -> Option<PemSource> {
        let bytes = data.get(key)?.0.clone();
        (!bytes.iter().all(u8::is_ascii_whitespace)).then(|| PemSource {
            origin: format!("Secret {namespace}/{name} key {key}"),
            bytes,
        })
    };
    let required = |key: &'static str| {
        source(key).ok_or_else(|| CaSourceError::MissingKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key,
        })
    };
    let ca_cert = required(CA_CERT)?;
    // Istio's istio-ca-secret leaves root-cert.pem empty: the CA certificate is the root.
    let root_cert = source(ROOT_CERT).unwrap_or_else(|| ca_cert.clone());
    let sources = BundleSources {
        ca_key: required(CA_KEY)?,
        cert_chain: source(CERT_CHAIN),
        root_cert,
        ca_cert,
    };
    let origin = format!("Secret {namespace}/{name}");
    let bundle = CaBundle::from_sources(sources, OffsetDateTime::now_utc()).map_err(|e| {
        CaSourceError::Invalid {
            origin: origin.clone(),
            detail: e.to_string(),
        }
    })?;
    CertificateAuthority::new(bundle, policy).map_err(|e| CaSourceError::Invalid {
        origin,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_directory_wins_and_a_mounted_one_counts_only_when_it_holds_a_ca() {
        let mounted = tempfile::tempdir().unwrap();
        let given = Path::new("/opt/plugged");
        let empty = mounted.path();
        // An optional Secret volume without its Secret: empty.
        assert_eq!(cacerts_directory(None, empty), None);
        assert_eq!(
            cacerts_directory(Some(given), empty),
            Some(given.to_owned())
        );
        std::fs::write(empty.join(CA_CERT), "cert").unwrap();
        assert_eq!(
            cacerts_directory(None, empty),
            None,
            "a certificate without its key"
        );
        std::fs::write(empty.join(CA_KEY), "").unwrap();
        assert_eq!(cacerts_directory(None, empty), None, "an empty key");
        std::fs::write(empty.join(CA_KEY), "key").unwrap();
        assert_eq!(cacerts_directory(None, empty), Some(empty.to_owned()));
        assert_eq!(
            cacerts_directory(Some(given), empty),
            Some(given.to_owned())
        );
    }
}
