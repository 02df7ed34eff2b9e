//! Which install settings Causeway reads, and of what type. A setting the table does not know is
//! reported as ignored (istioctl would refuse it; we name it and go on); a known one of the wrong
//! type is refused with its path. Mixer-era settings are known as obsolete and say so.

use crate::path::{Segment, TreePath};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text; numbers are taken as their text.
    Text,
    /// `true`/`false`, or the same as text.
    Flag,
    /// A non-negative integer, or the same as text.
    Count,
    /// Any scalar (environment values, proxy metadata).
    Scalar,
    /// Taken as a whole (resources, selectors, annotations).
    Free,
    /// Known to Istio, not used by Causeway: read, reported with this reason, never refused.
    Unused(&'static str),
}

const MIXER: &str = "a Mixer-era setting; Istio removed Mixer in 1.8 and Causeway has none";
const NOT_USED: &str = "not used by Causeway";
const TRACING: &str = "Causeway's proxies send no trace spans (zipkin) yet";

/// `*` is any key, `[]` any list item.
const KNOWN: &[(&str, Kind)] = &[
    ("profile", Kind::Text),
    ("hub", Kind::Text),
    ("tag", Kind::Scalar),
    ("revision", Kind::Text),
    ("namespace", Kind::Text),
    ("meshConfig.accessLogFile", Kind::Text),
    ("meshConfig.accessLogEncoding", Kind::Text),
    ("meshConfig.accessLogFormat", Kind::Text),
    ("meshConfig.trustDomain", Kind::Text),
    ("meshConfig.trustDomainAliases", Kind::Free),
    ("meshConfig.enableAutoMtls", Kind::Flag),
    ("meshConfig.enableTracing", Kind::Unused(NOT_USED)),
    ("meshConfig.outboundTrafficPolicy.mode", Kind::Text),
    ("meshConfig.defaultConfig.proxyMetadata.*", Kind::Scalar),
    ("meshConfig.defaultConfig.discoveryAddress", Kind::Text),
    (
        "meshConfig.defaultConfig.holdApplicationUntilProxyStarts",
        Kind::Flag,
    ),
    (
        "meshConfig.defaultConfig.terminationDrainDuration",
        Kind::Text,
    ),
    ("meshConfig.defaultConfig.concurrency", Kind::Count),
    ("meshConfig.defaultConfig.tracing", Kind::Unused(NOT_USED)),
    ("values.global.meshID", Kind::Text),
    ("values.global.multiCluster.clusterName", Kind::Text),
    ("values.global.multiCluster.enabled", Kind::Flag),
    ("values.global.network", Kind::Text),
    ("values.global.meshNetworks", Kind::Free),
    ("values.global.remotePilotAddress", Kind::Text),
    ("values.global.remotePilotCreateSvcEndpoint", Kind::Flag),
    ("values.global.createRemoteSvcEndpoints", Kind::Flag),
    ("values.global.configCluster", Kind::Flag),
    ("values.global.externalIstiod", Kind::Flag),
    ("values.global.istioNamespace", Kind::Text),
    ("values.global.logAsJson", Kind::Flag),
    ("values.global.logging.level", Kind::Text),
    ("values.global.hub", Kind::Text),
    ("values.global.tag", Kind::Scalar),
    ("values.global.imagePullPolicy", Kind::Text),
    ("values.global.controlPlaneSecurityEnabled", Kind::Flag),
    ("values.global.mtls.enabled", Kind::Flag),
    ("values.global.mtls.auto", Kind::Flag),
    ("values.global.caAddress", Kind::Text),
    ("values.global.jwtPolicy", Kind::Text),
    ("values.global.pilotCertProvider", Kind::Text),
    ("values.global.proxy.image", Kind::Text),
    ("values.global.proxy.logLevel", Kind::Text),
    ("values.global.proxy.componentLogLevel", Kind::Text),
    ("values.global.proxy.clusterDomain", Kind::Text),
    ("values.global.proxy.privileged", Kind::Flag),
    (
        "values.global.proxy.holdApplicationUntilProxyStarts",
        Kind::Flag,
    ),
    ("values.global.proxy.includeIPRanges", Kind::Text),
    ("values.global.proxy.excludeIPRanges", Kind::Text),
    ("values.global.proxy.includeInboundPorts", Kind::Text),
    ("values.global.proxy.excludeInboundPorts", Kind::Text),
    ("values.global.proxy.includeOutboundPorts", Kind::Text),
    ("values.global.proxy.excludeOutboundPorts", Kind::Text),
    (
        "values.global.proxy.readinessInitialDelaySeconds",
        Kind::Count,
    ),
    ("values.global.proxy.readinessPeriodSeconds", Kind::Count),
    ("values.global.proxy.readinessFailureThreshold", Kind::Count),
    ("values.global.proxy.statusPort", Kind::Count),
    ("values.global.proxy.resources", Kind::Free),
    ("values.global.proxy.lifecycle", Kind::Free),
    ("values.global.proxy.tracer", Kind::Unused(NOT_USED)),
    ("values.global.proxy.envoyStatsd", Kind::Unused(MIXER)),
    ("values.global.proxy_init.image", Kind::Text),
    ("values.global.proxy_init.resources", Kind::Free),
    ("values.global.remotePolicyAddress", Kind::Unused(MIXER)),
    ("values.global.remoteTelemetryAddress", Kind::Unused(MIXER)),
    ("values.global.remoteZipkinAddress", Kind::Unused(TRACING)),
    ("values.global.tracer", Kind::Unused(TRACING)),
    ("values.global.enableTracing", Kind::Unused(NOT_USED)),
    ("values.global.useMCP", Kind::Unused(MIXER)),
    ("values.global.policyCheckFailOpen", Kind::Unused(MIXER)),
    ("values.global.disablePolicyChecks", Kind::Unused(MIXER)),
    ("values.global.omitSidecarInjectorConfigMap", Kind::Flag),
    ("values.global.operatorManageWebhooks", Kind::Flag),
    (
        "values.global.defaultPodDisruptionBudget.enabled",
        Kind::Flag,
    ),
    ("values.global.defaultResources", Kind::Free),
    ("values.security.selfSigned", Kind::Flag),
    ("values.pilot.enabled", Kind::Flag),
    ("values.pilot.env.*", Kind::Scalar),
    ("values.pilot.replicaCount", Kind::Count),
    ("values.pilot.autoscaleEnabled", Kind::Flag),
    ("values.pilot.autoscaleMin", Kind::Count),
    ("values.pilot.autoscaleMax", Kind::Count),
    ("values.pilot.image", Kind::Text),
    ("values.pilot.resources", Kind::Free),
    ("values.pilot.traceSampling", Kind::Unused(NOT_USED)),
    ("values.pilot.configMap", Kind::Flag),
    ("values.pilot.podAnnotations", Kind::Free),
    ("values.istiodRemote.enabled", Kind::Flag),
    ("values.istiodRemote.injectionPath", Kind::Text),
    ("values.istiodRemote.injectionURL", Kind::Text),
    (
        "values.sidecarInjectorWebhook.enableNamespacesByDefault",
        Kind::Flag,
    ),
    (
        "values.sidecarInjectorWebhook.rewriteAppHTTPProbe",
        Kind::Flag,
    ),
    (
        "values.sidecarInjectorWebhook.reinvocationPolicy",
        Kind::Text,
    ),
    (
        "values.sidecarInjectorWebhook.injectedAnnotations",
        Kind::Free,
    ),
    (
        "values.sidecarInjectorWebhook.neverInjectSelector",
        Kind::Free,
    ),
    (
        "values.sidecarInjectorWebhook.alwaysInjectSelector",
        Kind::Free,
    ),
    ("values.sidecarInjectorWebhook.defaultTemplates", Kind::Free),
    (
        "values.sidecarInjectorWebhook.templates",
        Kind::Unused("Causeway's injector has its templates built in"),
    ),
    (
        "values.sidecarInjectorWebhook.objectSelector.enabled",
        Kind::Flag,
    ),
    (
        "values.sidecarInjectorWebhook.objectSelector.autoInject",
        Kind::Flag,
    ),
    (
        "values.base.enableCRDTemplates",
        Kind::Unused("the lab serves Istio's kinds without CRDs"),
    ),
    (
        "values.base.enableIstioConfigCRDs",
        Kind::Unused("the lab serves Istio's kinds without CRDs"),
    ),
    (
        "values.gateways.enabled",
        Kind::Unused("gateways come from components.ingressGateways"),
    ),
    (
        "values.gateways.istio-ingressgateway.*",
        Kind::Unused(NOT_USED),
    ),
    (
        "values.autoInjection.enabled",
        Kind::Unused("injection follows the namespace label istio-injection=enabled"),
    ),
    (
        "values.sidecarInjectorWebhook.enabled",
        Kind::Unused("the injection webhook is always installed with discovery"),
    ),
    (
        "values.gateways.istio-egressgateway.*",
        Kind::Unused(NOT_USED),
    ),
    ("values.telemetry.enabled", Kind::Unused(NOT_USED)),
    ("values.telemetry.v2.enabled", Kind::Unused(NOT_USED)),
    ("values.cni.enabled", Kind::Flag),
    ("values.istio_cni.enabled", Kind::Flag),
    ("values.pilot.cni.enabled", Kind::Flag),
    ("components.base.enabled", Kind::Flag),
    ("components.pilot.enabled", Kind::Flag),
    ("components.pilot.k8s.env", Kind::Free),
    ("components.pilot.k8s.replicaCount", Kind::Count),
    ("components.pilot.k8s.resources", Kind::Free),
    ("components.cni.enabled", Kind::Flag),
    ("components.istiodRemote.enabled", Kind::Flag),
    ("components.ingressGateways[].name", Kind::Text),
    ("components.ingressGateways[].namespace", Kind::Text),
    ("components.ingressGateways[].enabled", Kind::Flag),
    ("components.ingressGateways[].label", Kind::Free),
    ("components.ingressGateways[].k8s.env", Kind::Free),
    ("components.ingressGateways[].k8s.service.ports", Kind::Free),
    ("components.ingressGateways[].k8s.service.type", Kind::Text),
    ("components.ingressGateways[].k8s.replicaCount", Kind::Count),
    ("components.ingressGateways[].k8s.resources", Kind::Free),
    ("components.ingressGateways[].k8s.hpaSpec", Kind::Free),
    (
        "components.ingressGateways[].k8s.podAnnotations",
        Kind::Free,
    ),
    (
        "components.egressGateways",
        Kind::Unused("Causeway has no egress gateway yet"),
    ),
];

/// A setting that is read but not used, or not known at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub path: String,
    pub why: String,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is ignored: {}", self.path, self.why)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct WrongSetting {
    pub path: String,
    pub reason: String,
}

enum Known {
    Leaf(Kind),
    Branch,
    Unknown,
}

fn pattern_matches(pattern: &str, path: &[Segment]) -> Option<usize> {
    let pattern_segments: Vec<&str> = pattern
        .split('.')
        .flat_map(|part| match part.strip_suffix("[]") {
            Some(name) => vec![name, "[]"],
            None => vec![part],
        })
        .collect();
    if pattern_segments.len() < path.len() {
        return None;
    }
    for (want, have) in pattern_segments.iter().zip(path) {
        let ok = match (*want, have) {
            ("[]", Segment::Index(_) | Segment::Select { .. }) => true,
            ("*", Segment::Key(_)) => true,
            (want, Segment::Key(key)) => want == key,
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    Some(pattern_segments.len())
}

fn lookup(path: &[Segment]) -> Known {
    let mut branch = false;
    for (pattern, kind) in KNOWN {
        match pattern_matches(pattern, path) {
            Some(length) if length == path.len() => return Known::Leaf(*kind),
            Some(_) => branch = true,
            None => {}
        }
    }
    if branch {
        Known::Branch
    } else {
        Known::Unknown
    }
}

/// Checks a whole `spec`: every wrong setting (all of them, not the first) or the ignored ones.
pub fn check(spec: &Value) -> Result<Vec<Ignored>, Vec<WrongSetting>> {
    let mut ignored = Vec::new();
    let mut wrong = Vec::new();
    walk(&TreePath::default(), spec, &mut ignored, &mut wrong);
    if wrong.is_empty() {
        Ok(ignored)
    } else {
        Err(wrong)
    }
}

/// Whether a `--set` path names a setting Causeway knows (or a part of one).
pub fn is_known(path: &TreePath) -> bool {
    let concrete: Vec<Segment> = path.0.clone();
    // A setting inside a free-form one (`values.pilot.resources.requests.cpu`) is known too.
    (1..=concrete.len()).any(|length| match lookup(&concrete[..length]) {
        Known::Leaf(_) => true,
        Known::Branch => length == concrete.len(),
        Known::Unknown => false,
    })
}

fn walk(path: &TreePath, value: &Value, ignored: &mut Vec<Ignored>, wrong: &mut Vec<WrongSetting>) {
    let known = if path.0.is_empty() {
        Known::Branch
    } else {
        lookup(&path.0)
    };
    match known {
        Known::Leaf(kind) => {
            if let Err(reason) = check_kind(kind, value) {
                wrong.push(WrongSetting {
                    path: path.to_string(),
                    reason,
                });
            } else if let Kind::Unused(why) = kind {
                ignored.push(Ignored {
                    path: path.to_string(),
                    why: why.to_owned(),
                });
            }
        }
        Known::Unknown => ignored.push(Ignored {
            path: path.to_string(),
            why: "not a setting Causeway knows".into(),
        }),
        Known::Branch => match value {
            Value::Object(map) => {
                for (key, child) in map {
                    walk(&path.key(key), child, ignored, wrong);
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    walk(&path.child(Segment::Index(index)), child, ignored, wrong);
                }
            }
            Value::Null => {}
            other => wrong.push(WrongSetting {
                path: path.to_string(),
                reason: format!("expected a map of settings, got {}", describe(other)),
            }),
        },
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the text {text:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

fn check_kind(kind: Kind, value: &Value) -> Result<(), String> {
    let ok = match kind {
        Kind::Free | Kind::Unused(_) => true,
        _ if value.is_null() => true,
        Kind::Text => value.is_string() || value.is_number(),
        Kind::Scalar => value.is_string() || value.is_number() || value.is_boolean(),
        Kind::Flag => value.is_boolean() || matches!(value.as_str(), Some("true" | "false")),
        Kind::Count => {
            value.as_u64().is_some()
                || value
                    .as_str()
                    .is_some_and(|text| text.parse::<u64>().is_ok())
        }
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        Kind::Text => "text",
        Kind::Scalar => "a text, number or boolean",
        Kind::Flag => "true or false",
        Kind::Count => "a whole number of zero or more",
        Kind::Free | Kind::Unused(_) => "anything",
    };
    Err(format!("expected {expected}, got {}", describe(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_wrong_setting_is_reported_with_its_path() {
        let spec = json!({
            "values": {
                "global": {"meshID": ["a"], "configCluster": "yes", "multiCluster": "x"},
                "pilot": {"replicaCount": -1},
            },
            "components": {"ingressGateways": [{"name": "a", "enabled": 3}]},
        });
        let wrong = check(&spec).unwrap_err();
        let mut text: Vec<String> = wrong.iter().map(ToString::to_string).collect();
        text.sort();
        let mut expected = vec![
            "values.global.meshID: expected text, got a list",
            "values.global.configCluster: expected true or false, got the text \"yes\"",
            "values.global.multiCluster: expected a map of settings, got the text \"x\"",
            "values.pilot.replicaCount: expected a whole number of zero or more, got the number -1",
            "components.ingressGateways[0].enabled: expected true or false, got the number 3",
        ];
        expected.sort();
        assert_eq!(text, expected);
    }

    #[test]
    fn unknown_and_obsolete_settings_are_named_as_ignored() {
        let spec = json!({
            "values": {
                "global": {"meshId": "typo", "remotePolicyAddress": "1.2.3.4", "meshID": 7},
                "pilot": {"env": {"EXTERNAL_ISTIOD": true}, "resources": {"requests": {"cpu": "10m"}}},
            },
            "addonComponents": {"grafana": {"enabled": true}},
        });
        let ignored = check(&spec).unwrap();
        let mut text: Vec<String> = ignored.iter().map(ToString::to_string).collect();
        text.sort();
        let mut expected = vec![
            "values.global.meshId is ignored: not a setting Causeway knows".to_owned(),
            format!("values.global.remotePolicyAddress is ignored: {MIXER}"),
            "addonComponents is ignored: not a setting Causeway knows".to_owned(),
        ];
        expected.sort();
        assert_eq!(text, expected);
    }

    #[test]
    fn set_paths_are_known_or_not() {
        for (path, known) in [
            ("values.global.meshID", true),
            ("values.global", true),
            ("values.pilot.env.ANYTHING", true),
            ("values.pilot.resources.requests.cpu", true),
            ("components.ingressGateways[0].k8s.env", true),
            ("components.ingressGateways.[name:x].enabled", true),
            ("values.global.meshId", false),
            ("values.pilot.nope", false),
            ("spec.values", false),
        ] {
            assert_eq!(is_known(&TreePath::parse(path).unwrap()), known, "{path}");
        }
    }
}
