//! SPIFFE identities of Kubernetes workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! This is the only identity shape the mesh signs, so parsing is strict: anything that is not exactly
//! the five segments trust domain, `ns`, namespace, `sa`, service account is rejected with the reason.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";

/// A workload identity. Construct it with [`SpiffeId::new`] or by parsing; both validate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("'{input}' is not a SPIFFE ID: it must start with 'spiffe://'")]
    MissingScheme { input: String },
    #[error(
        "'{input}' is not a workload SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, found {found} path segment(s)"
    )]
    WrongShape { input: String, found: usize },
    #[error(
        "'{input}' is not a workload SPIFFE ID: segment {position} must be '{expected}', found '{found}'"
    )]
    WrongKeyword {
        input: String,
        position: usize,
        expected: &'static str,
        found: String,
    },
    #[error("invalid trust domain '{trust_domain}': {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: &'static str,
    },
    #[error("invalid {what} '{value}' in a SPIFFE ID: {reason}")]
    InvalidSegment {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl SpiffeId {
    /// Builds the identity of service account `service_account` in `namespace` under `trust_domain`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        validate_trust_domain(&id.trust_domain)?;
        validate_segment("namespace", &id.namespace)?;
        validate_segment("service account", &id.service_account)?;
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::MissingScheme {
                input: input.to_owned(),
            })?;
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() != 5 {
            return Err(SpiffeIdError::WrongShape {
                input: input.to_owned(),
                found: segments.len(),
            });
        }
        for (position, expected) in [(1, "ns"), (3, "sa")] {
            if segments[position] != expected {
                return Err(SpiffeIdError::WrongKeyword {
                    input: input.to_owned(),
                    position: position + 1,
                    expected,
                    found: segments[position].to_owned(),
                });
            }
        }
        SpiffeId::new(segments[0], segments[2], segments[4])
    }
}

/// SPIFFE spec: trust domains are lowercase letters, digits, `.`, `-` and `_`.
fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    let reason = if trust_domain.is_empty() {
        Some("it is empty")
    } else if trust_domain.len() > 255 {
        Some("it is longer than 255 characters")
    } else if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        Some("only lowercase letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpiffeIdError::InvalidTrustDomain {
            trust_domain: trust_domain.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// SPIFFE spec: path segments are letters, digits, `.`, `-` and `_`, and never `.` or `..`.
fn validate_segment(what: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value == "." || value == ".." {
        Some("'.' and '..' are not allowed")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        Some("only letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpiffeIdError::InvalidSegment {
            what,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/sample/sa/helloworld"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "sample");
        assert_eq!(id.service_account(), "helloworld");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/sample/sa/helloworld"
        );
        assert_eq!(
            SpiffeId::new("cluster.local", "sample", "helloworld").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_everything_that_is_not_exactly_five_segments() {
        let cases = [
            (
                "http://cluster.local/ns/a/sa/b",
                "must start with 'spiffe://'",
            ),
            ("spiffe://cluster.local/ns/a/sa", "found 4 path segment(s)"),
            (
                "spiffe://cluster.local/ns/a/sa/b/",
                "found 6 path segment(s)",
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b/c",
                "found 6 path segment(s)",
            ),
            ("spiffe://cluster.local", "found 1 path segment(s)"),
            ("spiffe://cluster.local/ns/a/xx/b", "segment 4 must be 'sa'"),
            ("spiffe://cluster.local/NS/a/sa/b", "segment 2 must be 'ns'"),
            (
                "spiffe:///ns/a/sa/b",
                "invalid trust domain '': it is empty",
            ),
            ("spiffe://Cluster.Local/ns/a/sa/b", "only lowercase letters"),
            ("spiffe://td:8080/ns/a/sa/b", "only lowercase letters"),
            (
                "spiffe://td/ns//sa/b",
                "invalid namespace '' in a SPIFFE ID: it is empty",
            ),
            (
                "spiffe://td/ns/a/sa/",
                "invalid service account '' in a SPIFFE ID: it is empty",
            ),
            ("spiffe://td/ns/../sa/b", "'.' and '..' are not allowed"),
            ("spiffe://td/ns/a b/sa/b", "only letters, digits"),
            ("spiffe://td/ns/a/sa/b?x=y", "only letters, digits"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{input}: error '{err}' should contain '{expected}'"
            );
        }
    }

    #[test]
    fn constructor_validates_like_the_parser() {
        assert!(SpiffeId::new("cluster.local", "a/b", "c").is_err());
        assert!(SpiffeId::new("", "a", "c").is_err());
        assert!(SpiffeId::new("td", "a", "").is_err());
    }
}
