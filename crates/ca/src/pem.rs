//! Reading and writing PEM: certificates and private keys, from files or from bytes (a Secret's data).
//!
//! Every error names where the bytes came from (`origin`: a file path, or a Secret and key), so that
//! a user with four PEM files and one broken one knows which one to fix.

use std::fs;
use std::io;
use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{origin} does not exist")]
    NotFound { origin: String },
    #[error("cannot read {origin}: {source}")]
    Read { origin: String, source: io::Error },
    #[error(
        "{origin} holds no PEM {expected}: expected a '-----BEGIN {label}-----' block; is it the right file?"
    )]
    Missing {
        origin: String,
        expected: &'static str,
        label: &'static str,
    },
    #[error("{origin} is not valid PEM: {reason}")]
    Malformed { origin: String, reason: String },
    #[error(
        "{origin} holds an encrypted private key; decrypt it first (openssl pkey -in <file> -out <file>)"
    )]
    EncryptedKey { origin: String },
    #[error(
        "{origin} holds a private key of a kind Causeway cannot sign with ({reason}); use RSA (2048-8192 bits) or ECDSA P-256/P-384"
    )]
    UnsupportedKey { origin: String, reason: String },
}

/// Reads a file whole, with errors that name it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, PemError> {
    fs::read(path).map_err(|source| {
        let origin = path.display().to_string();
        if source.kind() == io::ErrorKind::NotFound {
            PemError::NotFound { origin }
        } else {
            PemError::Read { origin, source }
        }
    })
}

/// Decodes every `CERTIFICATE` block, in order. At least one must be present.
pub fn decode_certificates(
    origin: &str,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certificates = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| malformed(origin, error))?;
    if certificates.is_empty() {
        return Err(PemError::Missing {
            origin: origin.to_owned(),
            expected: "certificate",
            label: "CERTIFICATE",
        });
    }
    Ok(certificates)
}

/// Decodes the first private key (PKCS#8, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`).
pub fn decode_private_key(origin: &str, pem_bytes: &[u8]) -> Result<KeyPair, PemError> {
    let text = String::from_utf8_lossy(pem_bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(PemError::EncryptedKey {
            origin: origin.to_owned(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => PemError::Missing {
            origin: origin.to_owned(),
            expected: "private key",
            label: "PRIVATE KEY",
        },
        other => malformed(origin, other),
    })?;
    KeyPair::try_from(&der).map_err(|error| PemError::UnsupportedKey {
        origin: origin.to_owned(),
        reason: error.to_string(),
    })
}

/// Reads and decodes a certificate file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    decode_certificates(&path.display().to_string(), &read_file(path)?)
}

/// Reads and decodes a private key file.
pub fn read_private_key(path: &Path) -> Result<KeyPair, PemError> {
    decode_private_key(&path.display().to_string(), &read_file(path)?)
}

/// PEM text of one DER certificate, with a trailing newline so that files can be concatenated.
pub fn encode_certificate(der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new("CERTIFICATE", der),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

fn malformed(origin: &str, error: pem::Error) -> PemError {
    let reason = match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(&end_marker);
            let label = label.trim().trim_matches('-').trim_start_matches("END ");
            format!(
                "a '-----BEGIN {label}-----' block is never closed by '-----END {label}-----' (truncated file?)"
            )
        }
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed BEGIN line '{}'",
            String::from_utf8_lossy(&line).trim()
        ),
        pem::Error::Base64Decode(detail) => format!("bad base64 inside a block ({detail})"),
        other => other.to_string(),
    };
    PemError::Malformed {
        origin: origin.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_pem_name_the_origin() {
        let err = decode_certificates("x.pem", b"hello").unwrap_err();
        assert!(matches!(err, PemError::Missing { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("x.pem holds no PEM certificate")
        );

        let truncated = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let err = decode_certificates("y.pem", truncated).unwrap_err();
        assert!(err.to_string().contains("y.pem is not valid PEM"), "{err}");
        assert!(err.to_string().contains("END CERTIFICATE"), "{err}");

        let bad_base64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = decode_certificates("z.pem", bad_base64).unwrap_err();
        assert!(err.to_string().contains("bad base64"), "{err}");
    }

    #[test]
    fn keys_round_trip_and_refuse_encrypted_ones() {
        let key = KeyPair::generate().unwrap();
        let decoded = decode_private_key("k.pem", key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(decoded.public_key_raw(), key.public_key_raw());

        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = decode_private_key("e.pem", encrypted).unwrap_err();
        assert!(matches!(err, PemError::EncryptedKey { .. }), "{err}");

        let err = decode_private_key("c.pem", b"no key here").unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_reported_as_such() {
        let err = read_certificates(Path::new("/nonexistent/root-cert.pem")).unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/root-cert.pem does not exist");
    }
}
