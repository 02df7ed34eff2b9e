//! Request bodies as JSON objects: JSON, YAML, or the protobuf recent `kubectl` sends.

use serde_json::Value;

use super::status::ApiError;

/// The body as a JSON object, from JSON or YAML.
pub fn parse_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|error| {
            ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request("the request body is not UTF-8 text".to_owned())
            })?;
            serde_saphyr::from_str(text).map_err(|error| {
                ApiError::bad_request(format!("the request body is not valid YAML: {error}"))
            })?
        }
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a single object (a JSON object), not a list or a scalar",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_bodies_and_their_errors() {
        let value = parse_body(
            b"kind: Namespace\nmetadata:\n  name: a\n",
            "application/yaml",
        )
        .unwrap();
        assert_eq!(value["metadata"]["name"], "a");
        assert_eq!(parse_body(b"{", "application/json").unwrap_err().code, 400);
        assert_eq!(
            parse_body(b"a: [", "application/yaml").unwrap_err().code,
            400
        );
        assert_eq!(
            parse_body(b"[1]", "application/json").unwrap_err().code,
            400
        );
        assert_eq!(parse_body(b"{}", "text/plain").unwrap_err().code, 415);
    }
}
