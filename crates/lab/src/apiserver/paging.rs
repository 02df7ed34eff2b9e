//! `limit`/`continue` paging: a continue token names the revision of the first page and the last
//! object served, so that later pages continue after it at the same revision.

use serde_json::{Value, json};

use super::status::ApiError;

/// Where a paged list goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    pub revision: u64,
    pub namespace: String,
    pub name: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(
            json!({"rv": self.revision, "ns": self.namespace, "name": self.name}).to_string(),
        )
    }

    pub fn decode(token: &str) -> Result<Self, ApiError> {
        use base64::Engine;
        let bad = || {
            ApiError::bad_request(format!(
                "continue token {token:?} is not one this server issued; list again without it"
            ))
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| bad())?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(Self {
            revision: value["rv"].as_u64().ok_or_else(bad)?,
            namespace: value["ns"].as_str().ok_or_else(bad)?.to_owned(),
            name: value["name"].as_str().ok_or_else(bad)?.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let token = ContinueToken {
            revision: 7,
            namespace: "sample".into(),
            name: "helloworld".into(),
        };
        assert_eq!(ContinueToken::decode(&token.encode()).unwrap(), token);
        for foreign in ["", "not base64!", "e30=" /* {} */] {
            let error = ContinueToken::decode(foreign).unwrap_err();
            assert_eq!(error.code, 400, "{foreign:?}");
            assert!(error.message.contains("list again"), "{}", error.message);
        }
    }
}
