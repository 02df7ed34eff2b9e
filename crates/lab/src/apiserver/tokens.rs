//! Service-account tokens: JWTs this cluster signs with its own key for
//! `system:serviceaccount:<namespace>:<name>`, bound to the service account (and a pod or secret)
//! by uid, as Kubernetes' bound tokens are.

use std::path::Path;

use causeway_ca::files::{Visibility, write_atomically};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

const SIGNING_KEY: &str = "service-account-key.pem";
/// The issuer and default audience of this cluster's tokens, as in kind clusters.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("cannot load or create the service-account signing key {path}: {reason}")]
    Key { path: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Binding,
}

impl Claims {
    pub fn new(binding: Binding, audiences: Vec<String>, now: i64, lifetime_seconds: i64) -> Self {
        Self {
            iss: ISSUER.to_owned(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                binding.namespace, binding.serviceaccount.name
            ),
            aud: audiences,
            exp: now + lifetime_seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: binding,
        }
    }
}

/// Why a token was not accepted (TokenReview's `status.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the token is not a JWT this cluster signed: {0}")]
    Signature(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audiences {token:?} do not include any of {wanted:?}")]
    Audience {
        token: Vec<String>,
        wanted: Vec<String>,
    },
    #[error("the token was issued by {0:?}, not by this cluster")]
    Issuer(String),
    #[error("{0}")]
    Binding(String),
}

pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
}

impl TokenSigner {
    /// Loads the cluster's signing key from `directory`, creating it on first use.
    pub fn load_or_create(directory: &Path) -> Result<Self, TokenKeyError> {
        let path = directory.join(SIGNING_KEY);
        let key_error = |reason: String| TokenKeyError::Key {
            path: path.display().to_string(),
            reason,
        };
        let key = if path.exists() {
            causeway_ca::pem::read_private_key(&path)
                .map_err(|error| key_error(error.to_string()))?
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|error| key_error(error.to_string()))?;
            write_atomically(&path, key.serialize_pem().as_bytes(), Visibility::Secret)
                .map_err(|error| key_error(error.to_string()))?;
            key
        };
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .map_err(|error| key_error(error.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .map_err(|error| key_error(error.to_string()))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_raw());
        let key_id = digest.as_ref()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Self {
            encoding,
            decoding,
            key_id,
        })
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("signing with a loaded P-256 key does not fail")
    }

    /// Checks signature, issuer, time and audience (any of `audiences`); the caller checks that the
    /// bound objects still exist.
    pub fn verify(&self, token: &str, audiences: &[String], now: i64) -> Result<Claims, Rejection> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|error| Rejection::Signature(error.to_string()))?
            .claims;
        if claims.iss != ISSUER {
            return Err(Rejection::Issuer(claims.iss));
        }
        // A minute of leeway for clocks, as Kubernetes allows.
        if claims.exp + 60 < now {
            return Err(Rejection::Expired);
        }
        if claims.nbf - 60 > now {
            return Err(Rejection::NotYetValid);
        }
        if !claims
            .aud
            .iter()
            .any(|audience| audiences.contains(audience))
        {
            return Err(Rejection::Audience {
                token: claims.aud,
                wanted: audiences.to_vec(),
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            namespace: "sample".into(),
            serviceaccount: ObjectRef {
                name: "sleep".into(),
                uid: "u1".into(),
            },
            pod: None,
            secret: None,
        }
    }

    #[test]
    fn tokens_verify_with_the_same_key_after_reload_and_not_with_another() {
        let directory = tempfile::tempdir().unwrap();
        let signer = TokenSigner::load_or_create(directory.path()).unwrap();
        let token = signer.sign(&Claims::new(binding(), vec!["istio-ca".into()], 1000, 3600));
        let reloaded = TokenSigner::load_or_create(directory.path()).unwrap();
        let claims = reloaded.verify(&token, &["istio-ca".into()], 1000).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:sample:sleep");

        let other = tempfile::tempdir().unwrap();
        let stranger = TokenSigner::load_or_create(other.path()).unwrap();
        assert!(matches!(
            stranger.verify(&token, &["istio-ca".into()], 1000),
            Err(Rejection::Signature(_))
        ));
    }

    #[test]
    fn expiry_and_audience_are_enforced() {
        let directory = tempfile::tempdir().unwrap();
        let signer = TokenSigner::load_or_create(directory.path()).unwrap();
        let token = signer.sign(&Claims::new(binding(), vec!["istio-ca".into()], 1000, 600));
        assert_eq!(
            signer
                .verify(&token, &["istio-ca".into()], 1000 + 600 + 61)
                .unwrap_err(),
            Rejection::Expired
        );
        assert!(matches!(
            signer.verify(&token, &[ISSUER.into()], 1000),
            Err(Rejection::Audience { .. })
        ));
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 5.., "AAAAA");
        assert!(matches!(
            signer.verify(&forged, &["istio-ca".into()], 1000),
            Err(Rejection::Signature(_))
        ));
    }
}
