//! Istio's install inputs read as istioctl reads them: IstioOperator files merged in the order
//! given (later files win; maps merge, lists of named items merge by `name`, other lists are
//! replaced), then `--set path=value` flags applied in order. Helm's value names (`global.*`,
//! `pilot.*`, `istiodRemote.*`, ... as `helm install --set` takes them) land under `values`.

use crate::path::{BadPath, Segment, TreePath};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{origin}: not valid YAML: {reason}")]
    Yaml { origin: String, reason: String },
    #[error(
        "{origin}: document {document} is a {found}, not an IstioOperator; give files with `apiVersion: install.istio.io/v1alpha1` and `kind: IstioOperator`"
    )]
    NotAnOperator {
        origin: String,
        document: usize,
        found: String,
    },
    #[error("{origin}: document {document}: `spec` must be a map of settings")]
    SpecNotAMap { origin: String, document: usize },
    #[error("{origin}: holds no IstioOperator")]
    Empty { origin: String },
    #[error("--set {assignment}: {reason}")]
    Set { assignment: String, reason: String },
    #[error("--set {assignment}: {source}")]
    SetPath {
        assignment: String,
        #[source]
        source: BadPath,
    },
}

/// The merged `spec` of every input, and the name the installed objects are labelled with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperatorInput {
    /// `metadata.name` of the last file that names one (`install.operator.istio.io/owning-resource`).
    pub name: Option<String>,
    pub spec: Map<String, Value>,
}

/// Top-level keys of an IstioOperator's `spec`; any other first segment of a `--set` path is a
/// Helm value name.
const SPEC_KEYS: &[&str] = &[
    "profile",
    "hub",
    "tag",
    "revision",
    "namespace",
    "meshConfig",
    "values",
    "components",
    "unvalidatedValues",
    "installPackagePath",
    "addonComponents",
];

impl OperatorInput {
    /// Adds one file's IstioOperator documents (`origin` names the file in errors).
    pub fn add_file(&mut self, origin: &str, text: &str) -> Result<(), InputError> {
        let documents: Vec<Value> =
            serde_saphyr::from_str_multiple(text).map_err(|error| InputError::Yaml {
                origin: origin.to_owned(),
                reason: error.to_string(),
            })?;
        let mut found = 0;
        for (index, document) in documents.into_iter().enumerate() {
            let document_number = index + 1;
            let Value::Object(mut document) = document else {
                if document.is_null() {
                    continue;
                }
                return Err(InputError::NotAnOperator {
                    origin: origin.to_owned(),
                    document: document_number,
                    found: "plain value".into(),
                });
            };
            let kind = document.get("kind").and_then(Value::as_str).unwrap_or("");
            let api_version = document
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if kind != "IstioOperator" || !api_version.starts_with("install.istio.io/") {
                return Err(InputError::NotAnOperator {
                    origin: origin.to_owned(),
                    document: document_number,
                    found: if kind.is_empty() {
                        "document without `kind`".into()
                    } else {
                        format!("{api_version} {kind}")
                    },
                });
            }
            if let Some(name) = document
                .get("metadata")
                .and_then(|metadata| metadata.get("name"))
                .and_then(Value::as_str)
            {
                self.name = Some(name.to_owned());
            }
            match document.remove("spec") {
                Some(Value::Object(spec)) => merge_maps(&mut self.spec, spec),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(InputError::SpecNotAMap {
                        origin: origin.to_owned(),
                        document: document_number,
                    });
                }
            }
            found += 1;
        }
        if found == 0 {
            return Err(InputError::Empty {
                origin: origin.to_owned(),
            });
        }
        Ok(())
    }

    /// Applies `path=value` (`--set`); the path is returned so that the caller can check it
    /// against the settings it knows.
    pub fn set(&mut self, assignment: &str) -> Result<TreePath, InputError> {
        let (path_text, value_text) =
            assignment.split_once('=').ok_or_else(|| InputError::Set {
                assignment: assignment.to_owned(),
                reason: "expected path=value".into(),
            })?;
        let mut path = TreePath::parse(path_text.trim()).map_err(|source| InputError::SetPath {
            assignment: assignment.to_owned(),
            source,
        })?;
        if let Some(Segment::Key(first)) = path.0.first()
            && !SPEC_KEYS.contains(&first.as_str())
        {
            path.0.insert(0, Segment::Key("values".into()));
        }
        let value = scalar(value_text.trim());
        let mut root = Value::Object(std::mem::take(&mut self.spec));
        let result = put(&mut root, &path.0, value);
        self.spec = match root {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        result.map(|()| path).map_err(|reason| InputError::Set {
            assignment: assignment.to_owned(),
            reason,
        })
    }
}

/// `--set` values as istioctl types them: booleans and integers; anything else (including
/// `1.20`, which a float would turn into `1.2`) stays text.
fn scalar(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match text.parse::<i64>() {
            // `+1` and `007` keep their spelling.
            Ok(number) if number.to_string() == text => Value::from(number),
            _ => Value::String(text.to_owned()),
        },
    }
}

fn put(node: &mut Value, path: &[Segment], value: Value) -> Result<(), String> {
    let Some((segment, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    match segment {
        Segment::Key(key) => {
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            let Value::Object(map) = node else {
                return Err(format!("`{key}` is below a value that is not a map"));
            };
            put(map.entry(key.clone()).or_insert(Value::Null), rest, value)
        }
        Segment::Index(index) => {
            if node.is_null() {
                *node = Value::Array(Vec::new());
            }
            let Value::Array(items) = node else {
                return Err(format!("[{index}] indexes a value that is not a list"));
            };
            match index.cmp(&items.len()) {
                std::cmp::Ordering::Less => put(&mut items[*index], rest, value),
                std::cmp::Ordering::Equal => {
                    items.push(Value::Null);
                    put(&mut items[*index], rest, value)
                }
                std::cmp::Ordering::Greater => Err(format!(
                    "[{index}] is past the end of a list of {} (append with [{}])",
                    items.len(),
                    items.len()
                )),
            }
        }
        Segment::Select { key, value: wanted } => {
            let Value::Array(items) = node else {
                return Err(format!(
                    "[{key}:{wanted}] selects from a value that is not a list"
                ));
            };
            let item = items
                .iter_mut()
                .find(|item| item.get(key).and_then(Value::as_str) == Some(wanted.as_str()))
                .ok_or_else(|| format!("no item of the list has {key}: {wanted}"))?;
            put(item, rest, value)
        }
    }
}

/// istioctl's overlay: maps merge key by key, lists whose items all have a `name` merge item by
/// item, anything else is replaced by the later value.
pub fn merge_maps(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (key, value) in overlay {
        match base.get_mut(&key) {
            Some(existing) => merge_values(existing, value),
            None => {
                base.insert(key, value);
            }
        }
    }
}

fn merge_values(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => merge_maps(base, overlay),
        (Value::Array(base), Value::Array(overlay)) if named(base) && named(&overlay) => {
            for item in overlay {
                let name = item.get("name").cloned();
                match base
                    .iter_mut()
                    .find(|existing| existing.get("name") == name.as_ref())
                {
                    Some(existing) => merge_values(existing, item),
                    None => base.push(item),
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn named(items: &[Value]) -> bool {
    items
        .iter()
        .all(|item| item.get("name").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PRIMARY: &str = "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  values:
    global:
      meshID: mesh1
      multiCluster:
        clusterName: cluster01
      network: network1
";

    #[test]
    fn later_files_and_sets_override_earlier_ones() {
        let mut input = OperatorInput::default();
        input.add_file("a.yaml", PRIMARY).unwrap();
        input
            .add_file(
                "b.yaml",
                "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata:\n  name: eastwest\nspec:\n  values:\n    global:\n      network: network2\n",
            )
            .unwrap();
        input.set("values.global.meshID=mesh2").unwrap();
        input.set("values.pilot.env.EXTERNAL_ISTIOD=true").unwrap();
        input.set("values.global.tag=1.20").unwrap();
        let spec = Value::Object(input.spec.clone());
        assert_eq!(spec["values"]["global"]["network"], "network2");
        assert_eq!(spec["values"]["global"]["meshID"], "mesh2");
        assert_eq!(
            spec["values"]["global"]["multiCluster"]["clusterName"],
            "cluster01"
        );
        assert_eq!(spec["values"]["pilot"]["env"]["EXTERNAL_ISTIOD"], true);
        assert_eq!(spec["values"]["global"]["tag"], "1.20", "not the float 1.2");
        assert_eq!(input.name.as_deref(), Some("eastwest"));
    }

    #[test]
    fn helm_value_names_land_under_values() {
        let mut input = OperatorInput::default();
        let path = input.set("global.remotePilotAddress=172.18.11.1").unwrap();
        assert_eq!(path.to_string(), "values.global.remotePilotAddress");
        input.set("profile=remote").unwrap();
        input.set("meshConfig.trustDomain=example.org").unwrap();
        assert_eq!(
            Value::Object(input.spec),
            json!({
                "values": {"global": {"remotePilotAddress": "172.18.11.1"}},
                "profile": "remote",
                "meshConfig": {"trustDomain": "example.org"},
            })
        );
    }

    #[test]
    fn named_lists_merge_by_name_and_sets_reach_into_them() {
        let mut input = OperatorInput::default();
        input
            .add_file(
                "gw.yaml",
                "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  components:\n    ingressGateways:\n    - name: a\n      enabled: true\n    - name: b\n      enabled: true\n",
            )
            .unwrap();
        input
            .add_file(
                "gw2.yaml",
                "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  components:\n    ingressGateways:\n    - name: b\n      enabled: false\n    - name: c\n",
            )
            .unwrap();
        input
            .set("components.ingressGateways.[name:a].k8s.replicaCount=2")
            .unwrap();
        input
            .set("components.ingressGateways[2].enabled=true")
            .unwrap();
        let gateways = &Value::Object(input.spec)["components"]["ingressGateways"];
        assert_eq!(
            gateways,
            &json!([
                {"name": "a", "enabled": true, "k8s": {"replicaCount": 2}},
                {"name": "b", "enabled": false},
                {"name": "c", "enabled": true},
            ])
        );
    }

    #[test]
    fn bad_inputs_name_the_file_document_or_flag() {
        let mut input = OperatorInput::default();
        let cases = [
            ("spec: [unclosed", "not valid YAML"),
            (
                "apiVersion: v1\nkind: ConfigMap\n",
                "is a v1 ConfigMap, not an IstioOperator",
            ),
            ("spec: {}\n", "without `kind`"),
            (
                "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: 3\n",
                "must be a map",
            ),
            ("", "holds no IstioOperator"),
        ];
        for (text, expected) in cases {
            let error = input.add_file("bad.yaml", text).unwrap_err().to_string();
            assert!(error.starts_with("bad.yaml"), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        for (assignment, expected) in [
            ("values.global.meshID", "expected path=value"),
            ("values..x=1", "empty key"),
            ("components.ingressGateways[5].enabled=true", "past the end"),
            (
                "components.ingressGateways.[name:zz].enabled=true",
                "no item",
            ),
        ] {
            let error = input.set(assignment).unwrap_err().to_string();
            assert!(error.starts_with(&format!("--set {assignment}")), "{error}");
            assert!(error.contains(expected), "{assignment}: {error}");
        }
        input.set("values.global.meshID=m").unwrap();
        let error = input
            .set("values.global.meshID.x=1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a map"), "{error}");
    }
}
