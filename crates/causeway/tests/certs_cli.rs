//! `causeway certs` as a user runs it, judged by the real `openssl`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use causeway_ca::issue::{self, KeyType, RootCaProfile};
use causeway_ca::testing::{extension_value, openssl, openssl_ok, seed_root_ca, x509_text};
use time::{Duration, OffsetDateTime};

/// Runs `causeway certs <args>` in `dir` with a clean environment for the Makefile variables.
fn certs(dir: &Path, args: &[&str]) -> Output {
    certs_with_env(dir, args, &[])
}

fn certs_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_causeway"));
    command.arg("certs").args(args).current_dir(dir);
    for variable in [
        "ROOTCA_DAYS",
        "ROOTCA_KEYSZ",
        "ROOTCA_ORG",
        "ROOTCA_CN",
        "INTERMEDIATE_DAYS",
        "INTERMEDIATE_KEYSZ",
        "INTERMEDIATE_ORG",
        "INTERMEDIATE_CN",
        "INTERMEDIATE_SAN_DNS",
        "WORKLOAD_DAYS",
        "WORKLOAD_CN",
        "SERVICE_ACCOUNT",
    ] {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    command.output().expect("run causeway")
}

fn succeeds(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "causeway failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn fails(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "causeway should have failed:\n{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Days between notBefore and notAfter, from `openssl x509 -dates` via `-checkend` arithmetic.
fn lifetime_days(dir: &Path, cert: &str) -> i64 {
    let dates = openssl_ok(
        dir,
        &["x509", "-in", cert, "-noout", "-startdate", "-enddate"],
    );
    let parse = |prefix: &str| {
        let text = dates
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {dates}"));
        let format = time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
        );
        time::PrimitiveDateTime::parse(text.trim(), &format)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .assume_utc()
    };
    (parse("notAfter=") - parse("notBefore=")).whole_days()
}

#[test]
fn the_makefile_flow_with_defaults_produces_what_istio_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = succeeds(certs(d, &["root-ca"]));
    assert!(
        out.contains("root-cert.pem") && out.contains("root-key.pem"),
        "{out}"
    );

    let root = x509_text(&d.join("root-cert.pem"));
    assert!(root.contains("Subject: O = Istio, CN = Root CA"), "{root}");
    assert!(root.contains("Issuer: O = Istio, CN = Root CA"), "{root}");
    assert!(root.contains("Public-Key: (4096 bit)"), "{root}");
    assert!(
        root.contains("X509v3 Basic Constraints: critical\n                CA:TRUE\n"),
        "{root}"
    );
    assert!(root.contains("X509v3 Key Usage: critical"), "{root}");
    assert_eq!(
        extension_value(&root, "X509v3 Key Usage"),
        "Digital Signature, Non Repudiation, Key Encipherment, Certificate Sign"
    );
    assert!(root.contains("X509v3 Subject Key Identifier"), "{root}");
    assert_eq!(lifetime_days(d, "root-cert.pem"), 3650);
    let key = fs::read_to_string(d.join("root-key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    openssl_ok(d, &["pkey", "-in", "root-key.pem", "-check", "-noout"]);

    // The Makefile's spelling.
    succeeds(certs(d, &["cluster01-cacerts"]));
    let c1 = d.join("cluster01");
    let intermediate = x509_text(&c1.join("ca-cert.pem"));
    assert!(
        intermediate.contains("Subject: O = Istio, CN = Intermediate CA, L = cluster01"),
        "{intermediate}"
    );
    assert!(
        intermediate.contains("Issuer: O = Istio, CN = Root CA"),
        "{intermediate}"
    );
    assert!(
        intermediate.contains("CA:TRUE, pathlen:0"),
        "{intermediate}"
    );
    assert!(
        intermediate.contains("DNS:istiod.istio-system.svc"),
        "{intermediate}"
    );
    assert!(
        intermediate.contains("Public-Key: (4096 bit)"),
        "{intermediate}"
    );
    assert_eq!(
        extension_value(&intermediate, "X509v3 Key Usage"),
        "Digital Signature, Non Repudiation, Key Encipherment, Certificate Sign"
    );
    assert_eq!(lifetime_days(&c1, "ca-cert.pem"), 730);
    let read = |path: &Path| fs::read_to_string(path).unwrap();
    assert_eq!(
        read(&c1.join("cert-chain.pem")),
        read(&c1.join("ca-cert.pem")) + &read(&d.join("root-cert.pem")),
        "cert-chain.pem is the intermediate then the root"
    );
    assert_eq!(
        read(&c1.join("root-cert.pem")),
        read(&d.join("root-cert.pem"))
    );
    let verdict = openssl_ok(
        d,
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "cluster01/ca-cert.pem",
        ],
    );
    assert!(verdict.contains("OK"), "{verdict}");

    // A VM's certificates for namespace `sample`, Makefile spelling, signed by cluster01's CA.
    succeeds(certs_with_env(
        d,
        &["sample-certs", "--ca-dir", "cluster01"],
        &[("SERVICE_ACCOUNT", "sleep")],
    ));
    let workload = x509_text(&d.join("sample/workload-cert.pem"));
    let san = extension_value(&workload, "Subject Alternative Name");
    assert_eq!(san, "URI:spiffe://cluster.local/ns/sample/sa/sleep");
    assert!(workload.contains("CA:FALSE"), "{workload}");
    assert!(
        workload.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{workload}"
    );
    assert_eq!(lifetime_days(&d.join("sample"), "workload-cert.pem"), 1);
    let verdict = openssl_ok(
        d,
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cluster01/ca-cert.pem",
            "sample/workload-cert.pem",
        ],
    );
    assert!(
        verdict.contains("sample/workload-cert.pem: OK"),
        "{verdict}"
    );
    // workload-cert-chain.pem: leaf, intermediate, root.
    assert_eq!(
        read(&d.join("sample/workload-cert-chain.pem")),
        read(&d.join("sample/workload-cert.pem")) + &read(&c1.join("cert-chain.pem"))
    );
    let key_check = openssl_ok(d, &["pkey", "-in", "sample/key.pem", "-check", "-noout"]);
    assert!(key_check.contains("valid"), "{key_check}");
}

#[test]
fn ecdsa_keys_flags_and_makefile_variables_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(certs_with_env(
        d,
        &["root-ca", "--key-type", "ecdsa-p256", "--dir", "out"],
        &[
            ("ROOTCA_ORG", "Example"),
            ("ROOTCA_CN", "Mesh Root"),
            ("ROOTCA_DAYS", "100"),
        ],
    ));
    let root = x509_text(&d.join("out/root-cert.pem"));
    assert!(
        root.contains("Subject: O = Example, CN = Mesh Root"),
        "{root}"
    );
    assert!(root.contains("NIST CURVE: P-256"), "{root}");
    assert_eq!(lifetime_days(&d.join("out"), "root-cert.pem"), 100);

    succeeds(certs(
        d,
        &[
            "intermediate",
            "west",
            "--dir",
            "out",
            "--key-type",
            "ecdsa-p256",
            "--days",
            "30",
            "--san-dns",
            "istiod.istio-system.svc",
            "--san-dns",
            "istiod.example.com",
        ],
    ));
    let west = x509_text(&d.join("out/west/ca-cert.pem"));
    assert!(west.contains("L = west"), "{west}");
    assert!(
        west.contains("DNS:istiod.istio-system.svc, DNS:istiod.example.com"),
        "{west}"
    );
    assert!(west.contains("ecdsa-with-SHA256"), "{west}");
    assert_eq!(lifetime_days(&d.join("out/west"), "ca-cert.pem"), 30);

    // Without --ca-dir, the Makefile's way: an intermediate for the namespace, then the workload.
    succeeds(certs(
        d,
        &[
            "workload",
            "-n",
            "vm",
            "--service-account",
            "app",
            "--trust-domain",
            "example.org",
            "--dir",
            "out",
            "--intermediate-key-type",
            "ecdsa-p256",
        ],
    ));
    let vm = x509_text(&d.join("out/vm/workload-cert.pem"));
    assert!(vm.contains("URI:spiffe://example.org/ns/vm/sa/app"), "{vm}");
    assert!(
        vm.contains("Issuer: O = Istio, CN = Intermediate CA, L = vm"),
        "{vm}"
    );
    let verdict = openssl_ok(
        &d.join("out"),
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "vm/ca-cert.pem",
            "vm/workload-cert.pem",
        ],
    );
    assert!(verdict.contains(": OK"), "{verdict}");
}

#[test]
fn keys_are_never_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(certs(d, &["root-ca", "--key-type", "ecdsa-p256"]));
    let first = fs::read(d.join("root-key.pem")).unwrap();
    let err = fails(certs(d, &["root-ca", "--key-type", "ecdsa-p256"]));
    assert!(err.contains("root-key.pem already exists"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(d.join("root-key.pem")).unwrap(), first);

    succeeds(certs(
        d,
        &["intermediate", "c1", "--key-type", "ecdsa-p256"],
    ));
    let err = fails(certs(d, &["c1-cacerts", "--key-type", "ecdsa-p256"]));
    assert!(err.contains("c1/ca-key.pem already exists"), "{err}");

    succeeds(certs(
        d,
        &["root-ca", "--key-type", "ecdsa-p256", "--force"],
    ));
    assert_ne!(fs::read(d.join("root-key.pem")).unwrap(), first);
    // The old intermediate is no longer signed by the new root: using it is refused.
    let err = fails(certs(d, &["workload", "-n", "ns1", "--ca-dir", "c1"]));
    let verdict = openssl(d, &["verify", "-CAfile", "root-cert.pem", "c1/ca-cert.pem"]);
    assert!(verdict.is_err(), "{verdict:?}");
    assert!(
        err.contains("c1/root-cert.pem") || err.contains("is not signed by"),
        "{err}"
    );
}

#[test]
fn unusable_roots_are_refused_naming_the_file() {
    // A root key that does not belong to the root certificate.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(certs(d, &["root-ca", "--key-type", "ecdsa-p256"]));
    fs::create_dir(d.join("other")).unwrap();
    succeeds(certs(
        d,
        &["root-ca", "--key-type", "ecdsa-p256", "--dir", "other"],
    ));
    fs::copy(d.join("other/root-key.pem"), d.join("root-key.pem")).unwrap();
    let err = fails(certs(d, &["intermediate", "c1"]));
    assert!(err.contains("./root-key.pem does not belong to"), "{err}");
    assert!(err.contains("./root-cert.pem"), "{err}");
    assert!(!d.join("c1").exists());

    // A "root" without the CA bit: a workload certificate passed off as root.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(certs(d, &["root-ca", "--key-type", "ecdsa-p256"]));
    succeeds(certs(
        d,
        &[
            "workload",
            "-n",
            "vm",
            "--intermediate-key-type",
            "ecdsa-p256",
        ],
    ));
    fs::copy(d.join("vm/workload-cert.pem"), d.join("root-cert.pem")).unwrap();
    fs::copy(d.join("vm/key.pem"), d.join("root-key.pem")).unwrap();
    let err = fails(certs(d, &["intermediate", "c1"]));
    assert!(err.contains("./root-cert.pem"), "{err}");
    assert!(err.contains("is not a CA certificate"), "{err}");

    // An expired root, and one not valid yet.
    for (issued_at, expected) in [
        (OffsetDateTime::now_utc() - Duration::days(20), "expired at"),
        (
            OffsetDateTime::now_utc() + Duration::days(20),
            "is not valid before",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let root = issue::issue_root_ca(
            &RootCaProfile {
                validity: Duration::days(10),
                key_type: KeyType::EcdsaP256,
                ..RootCaProfile::default()
            },
            issued_at,
        )
        .unwrap();
        fs::write(d.join("root-cert.pem"), root.certificate.to_pem()).unwrap();
        fs::write(d.join("root-key.pem"), root.key.serialize_pem()).unwrap();
        let err = fails(certs(d, &["intermediate", "c1"]));
        assert!(err.contains("./root-cert.pem"), "{err}");
        assert!(err.contains(expected), "{err}");
    }

    // Unreadable PEM, and no root at all.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = fails(certs(d, &["intermediate", "c1"]));
    assert!(err.contains("./root-cert.pem does not exist"), "{err}");
    fs::write(
        d.join("root-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    )
    .unwrap();
    let err = fails(certs(d, &["intermediate", "c1"]));
    assert!(err.contains("./root-cert.pem is not valid PEM"), "{err}");
}

#[test]
fn an_openssl_made_root_signs_causeway_intermediates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seed_root_ca(d, 2048);
    succeeds(certs(
        d,
        &["intermediate", "cluster02", "--key-size", "2048"],
    ));
    let verdict = openssl_ok(
        d,
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "cluster02/ca-cert.pem",
        ],
    );
    assert!(verdict.contains("OK"), "{verdict}");
}

#[test]
fn clean_removes_only_generated_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(certs(d, &["root-ca", "--key-type", "ecdsa-p256"]));
    succeeds(certs(
        d,
        &["intermediate", "c1", "--key-type", "ecdsa-p256"],
    ));
    succeeds(certs(
        d,
        &["intermediate", "c2", "--key-type", "ecdsa-p256"],
    ));
    fs::write(d.join("c2/notes.txt"), "mine").unwrap();
    fs::create_dir(d.join("unrelated")).unwrap();
    fs::write(d.join("unrelated/key.pem"), "not ours").unwrap();
    fs::write(d.join("README"), "mine").unwrap();

    let out = succeeds(certs(d, &["clean"]));
    assert!(out.contains("removed ./root-key.pem"), "{out}");
    assert!(!d.join("root-key.pem").exists() && !d.join("root-cert.pem").exists());
    assert!(!d.join("c1").exists(), "c1 held only generated files");
    assert!(d.join("c2/notes.txt").exists() && !d.join("c2/ca-key.pem").exists());
    assert!(d.join("unrelated/key.pem").exists());
    assert!(d.join("README").exists());

    let out = succeeds(certs(d, &["clean"]));
    assert!(out.contains("nothing to clean"), "{out}");
}

#[test]
fn bad_command_lines_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = fails(certs(d, &["frobnicate"]));
    assert!(err.contains("unknown certs command 'frobnicate'"), "{err}");
    let err = fails(certs(d, &["x-cacert"]));
    assert!(err.contains("unknown certs command 'x-cacert'"), "{err}");
    let err = fails(certs(d, &["root-ca", "--key-size", "1024"]));
    assert!(err.contains("1024 bits are not supported"), "{err}");
    let err = fails(certs(d, &["root-ca", "--days", "0"]));
    assert!(err.contains("out of range"), "{err}");
    let err = fails(certs(d, &["intermediate", "../escape"]));
    assert!(
        err.contains("cannot name a cluster or namespace directory"),
        "{err}"
    );
    let err = fails(certs(d, &["workload", "-n", "Bad/NS"]));
    assert!(err.contains("not a valid SPIFFE ID"), "{err}");
    let err = fails(certs(d, &["cluster01-cacerts", "--no-such-flag"]));
    assert!(err.contains("--no-such-flag"), "{err}");
    assert!(
        fs::read_dir(d).unwrap().next().is_none(),
        "nothing was written"
    );
}
