//! A `cacerts` bundle made with the seed guide's own `openssl` commands (and one made by Causeway)
//! signs workload certificates that the real `openssl verify` accepts.

use std::fs;
use std::path::Path;

use causeway_ca::authority::SignError;
use causeway_ca::certs_dir;
use causeway_ca::csr::CsrError;
use causeway_ca::issue::{IntermediateCaProfile, KeyType, RootCaProfile};
use causeway_ca::testing::{
    extension_value, openssl_ok, seed_intermediate, seed_root_ca, write_pem, x509_text,
};
use causeway_ca::{
    Certificate, CertificateAuthority, SignedCertificate, SigningPolicy, SpiffeId, WorkloadKey,
};
use time::Duration;

/// Validity of the leaf as written in the certificate.
fn leaf_lifetime(signed: &SignedCertificate) -> Duration {
    let der = causeway_ca::pem::decode_certificates("leaf", signed.cert_chain[0].as_bytes())
        .unwrap()
        .remove(0);
    let leaf = Certificate::parse("leaf", der).unwrap();
    assert_eq!(
        (leaf.not_before(), leaf.not_after()),
        (signed.not_before, signed.not_after)
    );
    leaf.not_after() - leaf.not_before()
}

fn identity(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "sample", sa).unwrap()
}

fn sign_with_new_key(ca: &CertificateAuthority, id: &SpiffeId) -> SignedCertificate {
    let key = WorkloadKey::generate().unwrap();
    ca.sign_csr(key.csr_pem(id).unwrap().as_bytes(), id, None)
        .unwrap()
}

/// `openssl verify` of a signed chain: the root as the trust anchor, the middle as untrusted.
fn openssl_verify(dir: &Path, signed: &SignedCertificate, purpose: &str) -> String {
    let chain = &signed.cert_chain;
    let leaf = write_pem(dir, "leaf.pem", &chain[..1]);
    let root = write_pem(dir, "anchor.pem", &chain[chain.len() - 1..]);
    let mut args = vec!["verify", "-purpose", purpose, "-CAfile", &root];
    let middle;
    if chain.len() > 2 {
        middle = write_pem(dir, "middle.pem", &chain[1..chain.len() - 1]);
        args.extend(["-untrusted", &middle]);
    }
    args.push(&leaf);
    openssl_ok(dir, &args)
}

#[test]
fn a_bundle_made_with_the_seed_openssl_commands_signs_verifiable_workload_certificates() {
    let dir = tempfile::tempdir().unwrap();
    seed_root_ca(dir.path(), 4096);
    seed_intermediate(dir.path(), "east", 4096);

    let ca =
        CertificateAuthority::from_cacerts_dir(&dir.path().join("east"), SigningPolicy::default())
            .unwrap();
    let id = identity("helloworld");
    let signed = sign_with_new_key(&ca, &id);

    // leaf, intermediate, root, as CreateCertificate returns them.
    assert_eq!(signed.cert_chain.len(), 3);
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(signed.cert_chain[1].trim(), read("east/ca-cert.pem").trim());
    assert_eq!(signed.cert_chain[2].trim(), read("root-cert.pem").trim());
    assert_eq!(ca.roots_pem().trim(), read("root-cert.pem").trim());

    for purpose in ["sslserver", "sslclient"] {
        let verdict = openssl_verify(dir.path(), &signed, purpose);
        assert!(verdict.contains("leaf.pem: OK"), "{verdict}");
    }

    let text = x509_text(&dir.path().join("leaf.pem"));
    assert!(
        text.contains("Issuer: O = Istio, CN = Intermediate CA, L = east"),
        "{text}"
    );
    // Empty subject, so the SAN extension is critical (RFC 5280 4.2.1.6), with the SPIFFE ID only.
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    let san_line = extension_value(&text, "Subject Alternative Name");
    assert_eq!(
        san_line,
        "URI:spiffe://cluster.local/ns/sample/sa/helloworld"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("NIST CURVE: P-256"), "{text}");
    assert!(
        text.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{text}"
    );

    // 24 h by default, backdated two minutes for clock skew.
    assert_eq!(
        leaf_lifetime(&signed),
        Duration::hours(24) + Duration::minutes(2)
    );
}

#[test]
fn nothing_in_the_csr_but_its_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    certs_dir::create_root(
        dir.path(),
        &RootCaProfile {
            key_type: KeyType::EcdsaP256,
            ..RootCaProfile::default()
        },
        false,
    )
    .unwrap();
    let mut profile = IntermediateCaProfile::for_cluster("cluster01");
    profile.key_type = KeyType::EcdsaP256;
    certs_dir::create_intermediate(dir.path(), dir.path(), &profile, false).unwrap();
    let ca = CertificateAuthority::from_cacerts_dir(
        &dir.path().join("cluster01"),
        SigningPolicy::default(),
    )
    .unwrap();

    // A CSR, made by openssl, that asks for someone else's identity and a DNS name.
    for (name, newkey) in [("ec", "ec:prime256v1"), ("rsa", "rsa:2048")] {
        let newkey_arg = match newkey.split_once(':') {
            Some(("ec", curve)) => {
                openssl_ok(
                    dir.path(),
                    &["ecparam", "-name", curve, "-out", "params.pem"],
                );
                "ec:params.pem".to_owned()
            }
            _ => newkey.to_owned(),
        };
        openssl_ok(
            dir.path(),
            &[
                "req",
                "-new",
                "-newkey",
                &newkey_arg,
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/O=evil/CN=admin",
                "-addext",
                "subjectAltName=URI:spiffe://cluster.local/ns/kube-system/sa/admin,DNS:evil.example.com",
            ],
        );
        let csr = fs::read(dir.path().join(format!("{name}.csr"))).unwrap();
        let id = identity("sleep");
        let signed = ca.sign_csr(&csr, &id, None).unwrap();
        let leaf = write_pem(dir.path(), "forged-leaf.pem", &signed.cert_chain[..1]);
        let text = x509_text(Path::new(&leaf));
        assert!(
            text.contains("URI:spiffe://cluster.local/ns/sample/sa/sleep"),
            "{text}"
        );
        for forged in ["admin", "evil", "kube-system"] {
            assert!(
                !text.contains(forged),
                "'{forged}' leaked from the CSR:\n{text}"
            );
        }
        // The certificate carries the CSR's key: openssl's private key matches it.
        let cert_key = openssl_ok(dir.path(), &["x509", "-in", &leaf, "-noout", "-pubkey"]);
        let csr_key = openssl_ok(
            dir.path(),
            &["pkey", "-in", &format!("{name}.key"), "-pubout"],
        );
        assert_eq!(cert_key, csr_key);
        let verdict = openssl_verify(dir.path(), &signed, "sslclient");
        assert!(verdict.contains(": OK"), "{verdict}");
    }
}

#[test]
fn weak_or_forged_csrs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::load_or_create_self_signed(
        &dir.path().join("self-signed"),
        &causeway_ca::authority::self_signed_root_profile("cluster.local"),
        SigningPolicy::default(),
    )
    .unwrap();
    openssl_ok(
        dir.path(),
        &[
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout", "weak.key", "-out",
            "weak.csr", "-subj", "/CN=weak",
        ],
    );
    let weak = fs::read(dir.path().join("weak.csr")).unwrap();
    let err = ca.sign_csr(&weak, &identity("sleep"), None).unwrap_err();
    assert!(
        matches!(err, SignError::Csr(CsrError::UnsupportedKey { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("1024 bits"), "{err}");

    let err = ca
        .sign_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &identity("sleep"),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(err, SignError::Csr(CsrError::Malformed { .. })),
        "{err}"
    );
}

#[test]
fn ttl_is_the_requested_one_capped_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = SigningPolicy {
        default_ttl: Duration::hours(24),
        max_ttl: Duration::hours(48),
    };
    let (ca, _) = CertificateAuthority::load_or_create_self_signed(
        dir.path(),
        &causeway_ca::authority::self_signed_root_profile("cluster.local"),
        policy,
    )
    .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let id = identity("sleep");
    let csr = key.csr_pem(&id).unwrap();
    let grace = Duration::minutes(2);
    let one_hour = ca
        .sign_csr(csr.as_bytes(), &id, Some(Duration::hours(1)))
        .unwrap();
    assert_eq!(leaf_lifetime(&one_hour), Duration::hours(1) + grace);
    let capped = ca
        .sign_csr(csr.as_bytes(), &id, Some(Duration::days(365)))
        .unwrap();
    assert_eq!(leaf_lifetime(&capped), Duration::hours(48) + grace);

    // The self-signed root signs directly: leaf, root.
    assert_eq!(capped.cert_chain.len(), 2);
    let verdict = openssl_verify(dir.path(), &capped, "sslserver");
    assert!(verdict.contains(": OK"), "{verdict}");
}

#[test]
fn a_pkcs1_ca_key_like_istios_sample_certs_loads() {
    let dir = tempfile::tempdir().unwrap();
    seed_root_ca(dir.path(), 2048);
    seed_intermediate(dir.path(), "west", 2048);
    openssl_ok(
        dir.path(),
        &[
            "rsa",
            "-in",
            "west/ca-key.pem",
            "-traditional",
            "-out",
            "west/ca-key.pem",
        ],
    );
    let key = fs::read_to_string(dir.path().join("west/ca-key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{key}");
    let ca =
        CertificateAuthority::from_cacerts_dir(&dir.path().join("west"), SigningPolicy::default())
            .unwrap();
    let signed = sign_with_new_key(&ca, &identity("helloworld"));
    let verdict = openssl_verify(dir.path(), &signed, "sslserver");
    assert!(verdict.contains(": OK"), "{verdict}");
}
