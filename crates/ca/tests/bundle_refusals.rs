//! Every `cacerts` bundle that cannot work is refused, with an error naming the file and the problem.

use std::fs;
use std::path::Path;

use causeway_ca::SpiffeId;
use causeway_ca::bundle::{BundleError, BundleSources, CaBundle, PemSource};
use causeway_ca::certificate::{Certificate, CertificateError};
use causeway_ca::issue::{
    self, IntermediateCaProfile, Issued, KeyType, RootCaProfile, WorkloadProfile,
};
use causeway_ca::pem::PemError;
use causeway_ca::signer::CaSigner;
use causeway_ca::testing::openssl;
use time::{Duration, OffsetDateTime};

fn root_at(issued_at: OffsetDateTime, validity: Duration) -> Issued {
    issue::issue_root_ca(
        &RootCaProfile {
            validity,
            key_type: KeyType::EcdsaP256,
            ..RootCaProfile::default()
        },
        issued_at,
    )
    .unwrap()
}

fn signer(root: &Issued, at: OffsetDateTime) -> CaSigner {
    let key = rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap();
    CaSigner::new(root.certificate.clone(), key, "root-key.pem", at).unwrap()
}

fn intermediate_at(signer: &CaSigner, issued_at: OffsetDateTime, validity: Duration) -> Issued {
    named_intermediate_at("cluster01", signer, issued_at, validity)
}

fn named_intermediate_at(
    cluster: &str,
    signer: &CaSigner,
    issued_at: OffsetDateTime,
    validity: Duration,
) -> Issued {
    let mut profile = IntermediateCaProfile::for_cluster(cluster);
    profile.key_type = KeyType::EcdsaP256;
    profile.validity = validity;
    issue::issue_intermediate_ca(&profile, signer, issued_at).unwrap()
}

fn write_bundle(dir: &Path, ca: &Issued, chain: &[&Certificate], roots: &[&Certificate]) {
    let pems = |certs: &[&Certificate]| certs.iter().map(|c| c.to_pem()).collect::<String>();
    fs::write(dir.join("ca-cert.pem"), ca.certificate.to_pem()).unwrap();
    fs::write(dir.join("ca-key.pem"), ca.key.serialize_pem()).unwrap();
    fs::write(dir.join("cert-chain.pem"), pems(chain)).unwrap();
    fs::write(dir.join("root-cert.pem"), pems(roots)).unwrap();
}

/// A valid bundle in a fresh directory: root, intermediate for cluster01.
fn good_bundle() -> (tempfile::TempDir, Issued, Issued) {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let root = root_at(now, Duration::days(3650));
    let ca = intermediate_at(&signer(&root, now), now, Duration::days(730));
    write_bundle(
        dir.path(),
        &ca,
        &[&ca.certificate, &root.certificate],
        &[&root.certificate],
    );
    CaBundle::load_dir(dir.path()).expect("the unmodified bundle is valid");
    (dir, root, ca)
}

fn load_error(dir: &Path) -> BundleError {
    CaBundle::load_dir(dir).expect_err("the bundle must be refused")
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn a_key_that_does_not_match_its_certificate() {
    let (dir, _, _) = good_bundle();
    let other = KeyType::EcdsaP256.generate().unwrap();
    fs::write(dir.path().join("ca-key.pem"), other.serialize_pem()).unwrap();
    let err = load_error(dir.path());
    assert!(
        matches!(
            err,
            BundleError::Certificate(CertificateError::KeyMismatch { .. })
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&file(dir.path(), "ca-key.pem")),
        "{message}"
    );
    assert!(
        message.contains(&file(dir.path(), "ca-cert.pem")),
        "{message}"
    );
}

#[test]
fn a_ca_certificate_without_the_ca_bit() {
    let (dir, root, ca) = good_bundle();
    let id = SpiffeId::new("cluster.local", "default", "default").unwrap();
    let leaf = issue::issue_workload(
        &WorkloadProfile::new(id),
        &signer(&ca, OffsetDateTime::now_utc()),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    write_bundle(
        dir.path(),
        &leaf,
        &[&leaf.certificate, &ca.certificate, &root.certificate],
        &[&root.certificate],
    );
    let err = load_error(dir.path());
    assert!(
        matches!(
            err,
            BundleError::Certificate(CertificateError::NotCa { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is not a CA certificate"), "{err}");
    assert!(
        err.to_string().contains(&file(dir.path(), "ca-cert.pem")),
        "{err}"
    );
}

#[test]
fn an_expired_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let root = root_at(now - Duration::days(100), Duration::days(3650));
    let past = now - Duration::days(50);
    let ca = intermediate_at(&signer(&root, past), past, Duration::days(10));
    write_bundle(
        dir.path(),
        &ca,
        &[&ca.certificate, &root.certificate],
        &[&root.certificate],
    );
    let err = load_error(dir.path());
    assert!(
        matches!(
            err,
            BundleError::Certificate(CertificateError::Expired { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&file(dir.path(), "ca-cert.pem")),
        "{err}"
    );
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[test]
fn an_expired_root() {
    let (dir, root, ca) = good_bundle();
    // The same root name and key, re-issued with dates in the past: the intermediate's signature
    // still verifies, only the root's validity is wrong.
    let now = OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Istio");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Root CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = now - Duration::days(30);
    params.not_after = now - Duration::days(20);
    let expired = params.self_signed(&root.key).unwrap();
    let expired = Certificate::parse("expired root", expired.into()).unwrap();
    write_bundle(dir.path(), &ca, &[&ca.certificate], &[&expired]);
    let err = load_error(dir.path());
    match &err {
        BundleError::Certificate(CertificateError::Expired { origin, .. }) => {
            assert_eq!(origin, &file(dir.path(), "root-cert.pem"), "{err}");
        }
        other => panic!("expected Expired, got {other}"),
    }
}

#[test]
fn a_ca_that_is_not_yet_valid() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let root = root_at(now, Duration::days(3650));
    let future = now + Duration::days(2);
    let ca = intermediate_at(&signer(&root, future), future, Duration::days(30));
    write_bundle(
        dir.path(),
        &ca,
        &[&ca.certificate, &root.certificate],
        &[&root.certificate],
    );
    let err = load_error(dir.path());
    assert!(
        matches!(
            err,
            BundleError::Certificate(CertificateError::NotYetValid { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is not valid before"), "{err}");
}

#[test]
fn a_root_that_did_not_sign_the_intermediate() {
    let (dir, _, ca) = good_bundle();
    let stranger = root_at(OffsetDateTime::now_utc(), Duration::days(3650));
    // Same name ("O=Istio, CN=Root CA"), different key: only the signature tells them apart.
    write_bundle(
        dir.path(),
        &ca,
        &[&ca.certificate],
        &[&stranger.certificate],
    );
    let err = load_error(dir.path());
    match &err {
        BundleError::Certificate(CertificateError::NotSignedBy {
            origin,
            issuer_origin,
            reason,
            ..
        }) => {
            assert_eq!(origin, &file(dir.path(), "ca-cert.pem"), "{err}");
            assert_eq!(issuer_origin, &file(dir.path(), "root-cert.pem"), "{err}");
            assert!(reason.contains("does not verify"), "{err}");
        }
        other => panic!("expected NotSignedBy, got {other}"),
    }
    // openssl agrees.
    let verdict = openssl(
        dir.path(),
        &["verify", "-CAfile", "root-cert.pem", "ca-cert.pem"],
    );
    assert!(verdict.is_err(), "openssl accepted it: {verdict:?}");
}

#[test]
fn a_chain_whose_root_is_not_the_trusted_one() {
    let (dir, root, ca) = good_bundle();
    let stranger = root_at(OffsetDateTime::now_utc(), Duration::days(3650));
    write_bundle(
        dir.path(),
        &ca,
        &[&ca.certificate, &root.certificate],
        &[&stranger.certificate],
    );
    let err = load_error(dir.path());
    assert!(
        matches!(
            err,
            BundleError::Certificate(CertificateError::NotSignedBy { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("(certificate 2)"), "{err}");
}

#[test]
fn unreadable_pem_is_reported_per_file() {
    let cases: [(&str, &[u8], &str); 5] = [
        ("ca-cert.pem", b"not pem at all", "holds no PEM certificate"),
        (
            "root-cert.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n",
            "is never closed",
        ),
        ("ca-key.pem", b"", "holds no PEM private key"),
        (
            "cert-chain.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "is not a valid X.509 certificate",
        ),
        (
            "ca-key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "cannot sign with",
        ),
    ];
    for (name, contents, expected) in cases {
        let (dir, _, _) = good_bundle();
        fs::write(dir.path().join(name), contents).unwrap();
        let message = load_error(dir.path()).to_string();
        assert!(
            message.contains(&file(dir.path(), name)),
            "{name}: {message}"
        );
        assert!(message.contains(expected), "{name}: {message}");
    }

    let (dir, _, _) = good_bundle();
    fs::remove_file(dir.path().join("root-cert.pem")).unwrap();
    let err = load_error(dir.path());
    assert!(
        matches!(err, BundleError::Pem(PemError::NotFound { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("{} does not exist", file(dir.path(), "root-cert.pem"))
    );
}

#[test]
fn a_chain_that_does_not_start_with_the_ca_certificate() {
    let (dir, root, ca) = good_bundle();
    write_bundle(dir.path(), &ca, &[&root.certificate], &[&root.certificate]);
    let err = load_error(dir.path());
    assert!(
        matches!(err, BundleError::ChainDoesNotStartWithCa { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("cat ca-cert.pem root-cert.pem"),
        "{err}"
    );
}

#[test]
fn several_certificates_in_ca_cert_pem() {
    let (dir, root, ca) = good_bundle();
    let both = ca.certificate.to_pem() + &root.certificate.to_pem();
    fs::write(dir.path().join("ca-cert.pem"), both).unwrap();
    let err = load_error(dir.path());
    assert!(
        matches!(err, BundleError::SeveralCaCertificates { count: 2, .. }),
        "{err}"
    );
}

#[test]
fn an_intermediate_below_a_pathlen_0_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let root = root_at(now, Duration::days(3650));
    let upper = intermediate_at(&signer(&root, now), now, Duration::days(700));
    // A different name: a self-issued CA would not count towards the path length (RFC 5280 6.1.4).
    let lower = named_intermediate_at("lower", &signer(&upper, now), now, Duration::days(600));
    write_bundle(
        dir.path(),
        &lower,
        &[&lower.certificate, &upper.certificate, &root.certificate],
        &[&root.certificate],
    );
    let err = load_error(dir.path());
    assert!(
        matches!(
            err,
            BundleError::Certificate(CertificateError::PathLenExceeded {
                path_len: 0,
                below: 1,
                ..
            })
        ),
        "{err}"
    );
    // openssl refuses a workload certificate under this chain for the same reason.
    let id = SpiffeId::new("cluster.local", "default", "default").unwrap();
    let leaf = issue::issue_workload(&WorkloadProfile::new(id), &signer(&lower, now), now).unwrap();
    fs::write(dir.path().join("leaf.pem"), leaf.certificate.to_pem()).unwrap();
    let verdict = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cert-chain.pem",
            "leaf.pem",
        ],
    )
    .unwrap_err();
    assert!(
        verdict.contains("path length constraint exceeded"),
        "{verdict}"
    );
}

#[test]
fn a_self_signed_ca_without_a_chain_file_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_at(OffsetDateTime::now_utc(), Duration::days(3650));
    fs::write(dir.path().join("ca-cert.pem"), root.certificate.to_pem()).unwrap();
    fs::write(dir.path().join("ca-key.pem"), root.key.serialize_pem()).unwrap();
    fs::write(dir.path().join("root-cert.pem"), root.certificate.to_pem()).unwrap();
    let bundle = CaBundle::load_dir(dir.path()).unwrap();
    assert_eq!(bundle.chain().len(), 1);
}

#[test]
fn a_bundle_from_a_secrets_data_names_the_secret_keys_in_errors() {
    let (dir, _, _) = good_bundle();
    let source = |key: &str| PemSource {
        origin: format!("secret istio-system/cacerts key {key}"),
        bytes: fs::read(dir.path().join(key)).unwrap(),
    };
    let sources = BundleSources {
        ca_cert: source("ca-cert.pem"),
        ca_key: source("ca-key.pem"),
        cert_chain: Some(source("cert-chain.pem")),
        root_cert: source("root-cert.pem"),
    };
    CaBundle::from_sources(sources.clone(), OffsetDateTime::now_utc()).unwrap();

    let broken = BundleSources {
        ca_key: PemSource {
            bytes: KeyType::EcdsaP256
                .generate()
                .unwrap()
                .serialize_pem()
                .into_bytes(),
            ..sources.ca_key.clone()
        },
        ..sources
    };
    let err = CaBundle::from_sources(broken, OffsetDateTime::now_utc()).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "the private key in secret istio-system/cacerts key ca-key.pem does not belong to the certificate in secret istio-system/cacerts key ca-cert.pem"
        ),
        "{err}"
    );
}
