//! The directory layout of Istio's `tools/certs/Makefile.selfsigned.mk`: the root's files in the working
//! directory, and one subdirectory per cluster (`<name>-cacerts`) or namespace (`<namespace>-certs`)
//! holding what `kubectl create secret generic cacerts --from-file=...` or a VM needs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::bundle::{self, BundleError, CaBundle};
use crate::certificate::{Certificate, CertificateError};
use crate::files::{self, Visibility, WriteError};
use crate::issue::{self, IntermediateCaProfile, IssueError, RootCaProfile, WorkloadProfile};
use crate::pem::{self, PemError};
use crate::signer::CaSigner;

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";
pub const WORKLOAD_KEY: &str = "key.pem";
pub const WORKLOAD_CERT: &str = "workload-cert.pem";
pub const WORKLOAD_CHAIN: &str = "workload-cert-chain.pem";

/// Files `clean` removes from the working directory: ours plus the Makefile's leftovers.
const ROOT_FILES: &[&str] = &[
    ROOT_CERT,
    ROOT_KEY,
    "root-cert.srl",
    "root-cert.csr",
    "root-ca.conf",
];
/// Files `clean` removes from a cluster or namespace subdirectory.
const SUBDIR_FILES: &[&str] = &[
    bundle::CA_CERT,
    bundle::CA_KEY,
    bundle::CERT_CHAIN,
    bundle::ROOT_CERT,
    WORKLOAD_KEY,
    WORKLOAD_CERT,
    WORKLOAD_CHAIN,
    "workload-cert.crt",
    "ca-cert.srl",
    "cluster-ca.csr",
    "intermediate.conf",
    "workload.csr",
    "workload.conf",
];

#[derive(Debug, thiserror::Error)]
pub enum CertsDirError {
    #[error(
        "{path} already exists; pass --force to replace it (every certificate signed with the old key stops being trusted)"
    )]
    KeyExists { path: PathBuf },
    #[error(
        "'{name}' cannot name a cluster or namespace directory: {reason}; use letters, digits, '.', '-' and '_'"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "no certificate in {cert_origin} belongs to the key in {key_origin}; regenerate the root (causeway certs root-ca --force) or restore the matching files"
    )]
    NoMatchingRoot {
        cert_origin: String,
        key_origin: String,
    },
    #[error(
        "the CA in {ca_dir} is not signed by the root in {root_path} (was the root regenerated?); regenerate the intermediate (causeway certs intermediate <name> --force) or pass --root-dir with the root that signed it"
    )]
    ForeignRoot { ca_dir: PathBuf, root_path: PathBuf },
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The files an operation wrote, in the order written.
pub type Written = Vec<PathBuf>;

/// `root-ca`: `root-key.pem` and `root-cert.pem` in `dir`.
pub fn create_root(
    dir: &Path,
    profile: &RootCaProfile,
    force: bool,
) -> Result<Written, CertsDirError> {
    let key_path = dir.join(ROOT_KEY);
    refuse_existing_key(&key_path, force)?;
    create_dir(dir)?;
    let root = issue::issue_root_ca(profile, OffsetDateTime::now_utc())?;
    let cert_path = dir.join(ROOT_CERT);
    write(&key_path, &root.key.serialize_pem(), Visibility::Secret)?;
    write(&cert_path, &root.certificate.to_pem(), Visibility::Public)?;
    Ok(vec![key_path, cert_path])
}

/// `<name>-cacerts`: `<dir>/<name>/{ca-key,ca-cert,cert-chain,root-cert}.pem`, signed by the root in
/// `root_dir`.
pub fn create_intermediate(
    dir: &Path,
    root_dir: &Path,
    profile: &IntermediateCaProfile,
    force: bool,
) -> Result<Written, CertsDirError> {
    let target = subdir(dir, &profile.locality)?;
    refuse_existing_key(&target.join(bundle::CA_KEY), force)?;
    let root = load_root(root_dir)?;
    let (written, _) = write_intermediate(&target, &root, profile)?;
    Ok(written)
}

/// `<namespace>-certs`: a workload key and certificate in `<dir>/<namespace>/`. Signed by the CA in
/// `ca_dir` when given (a cluster's `cacerts` directory), otherwise, as the Makefile does, by an
/// intermediate for the namespace in the same directory, created from the root when missing.
pub fn create_workload(
    dir: &Path,
    root_dir: &Path,
    ca_dir: Option<&Path>,
    intermediate: &IntermediateCaProfile,
    profile: &WorkloadProfile,
    force: bool,
) -> Result<Written, CertsDirError> {
    let target = subdir(dir, profile.identity.namespace())?;
    let key_path = target.join(WORKLOAD_KEY);
    refuse_existing_key(&key_path, force)?;
    let mut written = Vec::new();
    let (ca_dir, ca) = match ca_dir {
        Some(ca_dir) => (ca_dir.to_owned(), CaBundle::load_dir(ca_dir)?),
        None if !target.join(bundle::CA_KEY).exists() => {
            let root = load_root(root_dir)?;
            let profile = IntermediateCaProfile {
                locality: profile.identity.namespace().to_owned(),
                ..intermediate.clone()
            };
            let (files, ca) = write_intermediate(&target, &root, &profile)?;
            written = files;
            (target.clone(), ca)
        }
        None => (target.clone(), CaBundle::load_dir(&target)?),
    };
    check_same_root(&ca, &ca_dir, root_dir)?;
    create_dir(&target)?;
    let workload = issue::issue_workload(profile, ca.signer(), OffsetDateTime::now_utc())?;
    let leaf_pem = workload.certificate.to_pem();
    let chain_pem: String = std::iter::once(leaf_pem.clone())
        .chain(ca.chain().iter().map(Certificate::to_pem))
        .collect();
    for (name, contents, visibility) in [
        (
            WORKLOAD_KEY,
            workload.key.serialize_pem(),
            Visibility::Secret,
        ),
        (WORKLOAD_CERT, leaf_pem, Visibility::Public),
        (WORKLOAD_CHAIN, chain_pem, Visibility::Public),
        (bundle::ROOT_CERT, ca.roots_pem(), Visibility::Public),
    ] {
        let path = target.join(name);
        write(&path, &contents, visibility)?;
        if !written.contains(&path) {
            written.push(path);
        }
    }
    Ok(written)
}

/// `clean`: removes the root's files from `dir` and the generated files from each subdirectory that
/// holds a CA or workload certificate, then the subdirectory if nothing else is left. Never touches
/// files it did not generate.
pub fn clean(dir: &Path) -> Result<Vec<PathBuf>, CertsDirError> {
    let mut removed = Vec::new();
    for name in ROOT_FILES {
        remove_if_present(&dir.join(name), &mut removed)?;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(source) => {
            return Err(CertsDirError::Remove {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let sub = entry.path();
        let generated = [bundle::CA_CERT, WORKLOAD_CERT]
            .iter()
            .any(|name| sub.join(name).is_file());
        if !sub.is_dir() || !generated {
            continue;
        }
        for name in SUBDIR_FILES {
            remove_if_present(&sub.join(name), &mut removed)?;
        }
        // Only succeeds when the user kept nothing of their own in it.
        if fs::remove_dir(&sub).is_ok() {
            removed.push(sub);
        }
    }
    Ok(removed)
}

fn write_intermediate(
    target: &Path,
    root: &RootFiles,
    profile: &IntermediateCaProfile,
) -> Result<(Written, CaBundle), CertsDirError> {
    create_dir(target)?;
    let intermediate =
        issue::issue_intermediate_ca(profile, &root.signer, OffsetDateTime::now_utc())?;
    let ca_pem = intermediate.certificate.to_pem();
    let files = [
        (
            bundle::CA_KEY,
            intermediate.key.serialize_pem(),
            Visibility::Secret,
        ),
        (bundle::CA_CERT, ca_pem.clone(), Visibility::Public),
        (
            bundle::CERT_CHAIN,
            ca_pem + &root.signer.certificate().to_pem(),
            Visibility::Public,
        ),
        (bundle::ROOT_CERT, root.file_pem.clone(), Visibility::Public),
    ];
    let mut written = Vec::new();
    for (name, contents, visibility) in files {
        let path = target.join(name);
        write(&path, &contents, visibility)?;
        written.push(path);
    }
    // What we wrote must load as a bundle; this catches any mismatch before a cluster does.
    let bundle = CaBundle::load_dir(target)?;
    Ok((written, bundle))
}

/// A workload signed by an existing CA (another cluster's, or a namespace intermediate made earlier)
/// must still chain to the root of this directory, when there is one: otherwise the root was
/// regenerated since and the VM would trust a stale root.
fn check_same_root(ca: &CaBundle, ca_dir: &Path, root_dir: &Path) -> Result<(), CertsDirError> {
    let root_path = root_dir.join(ROOT_CERT);
    if !root_path.exists() {
        return Ok(());
    }
    let roots = pem::read_certificates(&root_path)?;
    let anchor = ca.chain().last().expect("a bundle's chain is never empty");
    if roots.iter().any(|root| root == anchor.der()) {
        Ok(())
    } else {
        Err(CertsDirError::ForeignRoot {
            ca_dir: ca_dir.to_owned(),
            root_path,
        })
    }
}

struct RootFiles {
    signer: CaSigner,
    /// `root-cert.pem` as found, possibly several roots, copied into each bundle.
    file_pem: String,
}

/// Loads the root from `root_dir`: the certificate of `root-cert.pem` that `root-key.pem` belongs to,
/// checked to be a usable CA.
fn load_root(root_dir: &Path) -> Result<RootFiles, CertsDirError> {
    let cert_path = root_dir.join(ROOT_CERT);
    let key_path = root_dir.join(ROOT_KEY);
    let cert_origin = cert_path.display().to_string();
    let key_origin = key_path.display().to_string();
    let cert_bytes = pem::read_file(&cert_path)?;
    let mut certificates = Certificate::parse_all(
        &cert_origin,
        pem::decode_certificates(&cert_origin, &cert_bytes)?,
    )?;
    let key = pem::read_private_key(&key_path)?;
    let matching = certificates
        .iter()
        .position(|cert| cert.public_key() == key.public_key_raw());
    let certificate = match matching {
        Some(index) => certificates.swap_remove(index),
        // With a single certificate, CaSigner::new reports the mismatch against that file plainly.
        None if certificates.len() == 1 => certificates.swap_remove(0),
        None => {
            return Err(CertsDirError::NoMatchingRoot {
                cert_origin,
                key_origin,
            });
        }
    };
    Ok(RootFiles {
        signer: CaSigner::new(certificate, key, &key_origin, OffsetDateTime::now_utc())?,
        file_pem: String::from_utf8_lossy(&cert_bytes).into_owned(),
    })
}

fn subdir(dir: &Path, name: &str) -> Result<PathBuf, CertsDirError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        Some("it contains other characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CertsDirError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(dir.join(name)),
    }
}

fn refuse_existing_key(path: &Path, force: bool) -> Result<(), CertsDirError> {
    if !force && path.exists() {
        return Err(CertsDirError::KeyExists {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), CertsDirError> {
    fs::create_dir_all(path).map_err(|source| CertsDirError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, visibility: Visibility) -> Result<(), CertsDirError> {
    Ok(files::write_atomically(
        path,
        contents.as_bytes(),
        visibility,
    )?)
}

fn remove_if_present(path: &Path, removed: &mut Vec<PathBuf>) -> Result<(), CertsDirError> {
    match fs::remove_file(path) {
        Ok(()) => {
            removed.push(path.to_owned());
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertsDirError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}
