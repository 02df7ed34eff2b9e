//! Istio's built-in profiles, as the base each input is merged onto. Only the settings that
//! differ between them are written here; the rest default in `settings`.

use serde_json::{Value, json};

pub const PROFILES: &[&str] = &["default", "demo", "minimal", "remote", "empty"];

/// The profile's tree, or `None` for a name Istio does not have.
pub fn profile(name: &str) -> Option<Value> {
    let tree = match name {
        "default" => json!({
            "components": {
                "base": {"enabled": true},
                "pilot": {"enabled": true},
                "ingressGateways": [{"name": "istio-ingressgateway", "enabled": true}],
            },
        }),
        "demo" => json!({
            "meshConfig": {"accessLogFile": "/dev/stdout"},
            "components": {
                "base": {"enabled": true},
                "pilot": {"enabled": true},
                "ingressGateways": [{"name": "istio-ingressgateway", "enabled": true}],
            },
        }),
        "minimal" => json!({
            "components": {"base": {"enabled": true}, "pilot": {"enabled": true}},
        }),
        "remote" => json!({
            "components": {
                "base": {"enabled": true},
                "pilot": {"enabled": false},
                "istiodRemote": {"enabled": true},
            },
            "values": {"istiodRemote": {"enabled": true}},
        }),
        "empty" => json!({
            "components": {"base": {"enabled": false}, "pilot": {"enabled": false}},
        }),
        _ => return None,
    };
    Some(tree)
}
