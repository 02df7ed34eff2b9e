//! Test helpers (feature `testing`): the real `openssl` command as an independent judge of what
//! Causeway makes, and the `openssl` recipe of the seed guide (`003_*`) for making `cacerts` bundles
//! the way users do by hand.

use std::fs;
use std::path::Path;
use std::process::Command;

/// Root CA configuration from the seed guide (and Istio's `common.mk`), verbatim.
pub const SEED_ROOT_CA_CONF: &str = "\
[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = 4096
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
[ req_dn ]
O = Istio
CN = Root CA
";

/// Intermediate CA configuration from the seed guide, with `L` set to the cluster name.
pub fn seed_intermediate_conf(cluster: &str) -> String {
    format!(
        "\
[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = 4096
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
subjectAltName=@san
[ san ]
DNS.1 = istiod.istio-system.svc
[ req_dn ]
O = Istio
CN = Intermediate CA
L = {cluster}
"
    )
}

/// Runs `openssl` in `dir`; `Ok` with stdout on success, `Err` with everything it printed otherwise.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|error| format!("cannot run openssl (is it installed?): {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "openssl {} failed ({}):\n{stdout}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Like [`openssl`], panicking with openssl's own output on failure.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    openssl(dir, args).unwrap_or_else(|message| panic!("{message}"))
}

/// `openssl x509 -text` of a certificate file.
pub fn x509_text(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("."));
    openssl_ok(
        dir,
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            &path.display().to_string(),
        ],
    )
}

/// The value line of an extension in `openssl x509 -text` output, e.g. `extension_value(text,
/// "X509v3 Key Usage")`; panics with the text when the extension is absent.
pub fn extension_value<'t>(text: &'t str, extension: &str) -> &'t str {
    text.lines()
        .skip_while(|line| !line.contains(extension))
        .nth(1)
        .unwrap_or_else(|| panic!("no {extension} in:\n{text}"))
        .trim()
}

/// The seed's root CA commands, run in `dir`: `root-key.pem`, `root-ca.conf`, `root-cert.csr`,
/// `root-cert.pem`.
pub fn seed_root_ca(dir: &Path, key_bits: u32) {
    fs::write(dir.join("root-ca.conf"), SEED_ROOT_CA_CONF).expect("write root-ca.conf");
    openssl_ok(
        dir,
        &["genrsa", "-out", "root-key.pem", &key_bits.to_string()],
    );
    openssl_ok(
        dir,
        &[
            "req",
            "-sha256",
            "-new",
            "-key",
            "root-key.pem",
            "-config",
            "root-ca.conf",
            "-out",
            "root-cert.csr",
        ],
    );
    openssl_ok(
        dir,
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "3650",
            "-signkey",
            "root-key.pem",
            "-extensions",
            "req_ext",
            "-extfile",
            "root-ca.conf",
            "-in",
            "root-cert.csr",
            "-out",
            "root-cert.pem",
        ],
    );
}

/// The seed's intermediate CA commands for `cluster`, run in `dir` where the root is: the four
/// `cacerts` files in `dir/cluster/`.
pub fn seed_intermediate(dir: &Path, cluster: &str, key_bits: u32) {
    let sub = dir.join(cluster);
    fs::create_dir_all(&sub).expect("mkdir cluster directory");
    fs::write(
        sub.join("intermediate.conf"),
        seed_intermediate_conf(cluster),
    )
    .expect("write intermediate.conf");
    let file = |name: &str| format!("{cluster}/{name}");
    openssl_ok(
        dir,
        &["genrsa", "-out", &file("ca-key.pem"), &key_bits.to_string()],
    );
    openssl_ok(
        dir,
        &[
            "req",
            "-new",
            "-config",
            &file("intermediate.conf"),
            "-key",
            &file("ca-key.pem"),
            "-out",
            &file("cluster-ca.csr"),
        ],
    );
    openssl_ok(
        dir,
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "3650",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-extensions",
            "req_ext",
            "-extfile",
            &file("intermediate.conf"),
            "-in",
            &file("cluster-ca.csr"),
            "-out",
            &file("ca-cert.pem"),
        ],
    );
    // cat east/ca-cert.pem root-cert.pem > east/cert-chain.pem && cp root-cert.pem east
    let root = fs::read(dir.join("root-cert.pem")).expect("read root-cert.pem");
    let mut chain = fs::read(sub.join("ca-cert.pem")).expect("read ca-cert.pem");
    chain.extend_from_slice(&root);
    fs::write(sub.join("cert-chain.pem"), chain).expect("write cert-chain.pem");
    fs::write(sub.join("root-cert.pem"), root).expect("copy root-cert.pem");
}

/// Writes `certificates` (PEM strings) to `dir/name` and returns the path, for handing to openssl.
pub fn write_pem(dir: &Path, name: &str, certificates: &[impl AsRef<str>]) -> String {
    let text: String = certificates.iter().map(AsRef::as_ref).collect();
    let path = dir.join(name);
    fs::write(&path, text).expect("write PEM file");
    path.display().to_string()
}
