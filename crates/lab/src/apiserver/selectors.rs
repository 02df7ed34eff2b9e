//! Label and field selectors, as in `?labelSelector=app=helloworld,version in (v1,v2)` and
//! `?fieldSelector=metadata.name=cacerts`.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use serde_json::Value;

use super::http::Query;
use super::resources::Resource;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement in labelSelector {text:?}: {why}"
            ))
        };
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                LabelRequirement::NotExists(checked_key(key.trim(), &bad)?)
            } else if let Some((key, values)) = split_set(term, " notin ") {
                LabelRequirement::NotIn(checked_key(key, &bad)?, set_values(values, &bad)?)
            } else if let Some((key, values)) = split_set(term, " in ") {
                LabelRequirement::In(checked_key(key, &bad)?, set_values(values, &bad)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelRequirement::NotEquals(checked_key(key.trim(), &bad)?, value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("==") {
                LabelRequirement::Equals(checked_key(key.trim(), &bad)?, value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once('=') {
                LabelRequirement::Equals(checked_key(key.trim(), &bad)?, value.trim().to_owned())
            } else {
                LabelRequirement::Exists(checked_key(term, &bad)?)
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object with these `metadata.labels` matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = |key: &str| labels.get(key).map(String::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(key, value) => label(key) == Some(value.as_str()),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            LabelRequirement::In(key, values) => {
                label(key).is_some_and(|found| values.iter().any(|value| value == found))
            }
            LabelRequirement::NotIn(key, values) => {
                label(key).is_none_or(|found| values.iter().all(|value| value != found))
            }
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::NotExists(key) => label(key).is_none(),
        })
    }
}

/// Whether a Service-style selector map (`spec.selector`) matches these labels. An empty or absent
/// selector matches nothing, as for Services.
pub fn selector_map_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn split_set<'a>(term: &'a str, operator: &str) -> Option<(&'a str, &'a str)> {
    let (key, values) = term.split_once(operator)?;
    Some((key.trim(), values.trim()))
}

fn set_values(values: &str, bad: &dyn Fn(&str) -> ApiError) -> Result<Vec<String>, ApiError> {
    let inner = values
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| bad("a set of values must be in parentheses"))?;
    Ok(inner
        .split(',')
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .collect())
}

fn checked_key(key: &str, bad: &dyn Fn(&str) -> ApiError) -> Result<String, ApiError> {
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(bad("a label key must be non-empty and have no spaces"));
    }
    Ok(key.to_owned())
}

/// A parsed `fieldSelector`: `path=value`, `path==value` and `path!=value` terms on the fields a
/// kind supports.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str, supported: &[&str], kind: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in text
            .split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
        {
            let (path, equal, value) = if let Some((path, value)) = term.split_once("!=") {
                (path, false, value)
            } else if let Some((path, value)) = term.split_once("==") {
                (path, true, value)
            } else if let Some((path, value)) = term.split_once('=') {
                (path, true, value)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {term:?}: expected field=value or field!=value"
                )));
            };
            let path = path.trim();
            if path != "metadata.name" && path != "metadata.namespace" && !supported.contains(&path)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {path} (for {kind}: metadata.name, metadata.namespace{})",
                    supported
                        .iter()
                        .map(|field| format!(", {field}"))
                        .collect::<String>()
                )));
            }
            terms.push((path.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &DynamicObject) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let found = match path.as_str() {
                "metadata.name" => object.metadata.name.as_deref(),
                "metadata.namespace" => object.metadata.namespace.as_deref(),
                _ => path
                    .split('.')
                    .try_fold(&object.data, |value, segment| value.get(segment))
                    .and_then(Value::as_str),
            };
            (found.unwrap_or("") == value) == *equal
        })
    }
}

/// Label and field selectors of a list or watch.
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_query(query: &Query, kind: &Resource) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(
                query.get("fieldSelector").unwrap_or(""),
                kind.field_selectors,
                kind.plural,
            )?,
        })
    }

    pub fn matches(&self, object: &DynamicObject) -> bool {
        let labels = object.metadata.labels.as_ref();
        self.labels.matches(labels.unwrap_or(&BTreeMap::new())) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_cover_every_operator() {
        let labels: BTreeMap<String, String> = [("app", "helloworld"), ("version", "v1")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .into();
        let matches = |text: &str| LabelSelector::parse(text).unwrap().matches(&labels);
        assert!(matches("app=helloworld"));
        assert!(matches("app==helloworld,version=v1"));
        assert!(!matches("app=helloworld,version=v2"));
        assert!(matches("version in (v1, v2)"));
        assert!(!matches("version notin (v1,v2)"));
        assert!(matches("version notin (v3),app"));
        assert!(matches("!missing"));
        assert!(!matches("!app"));
        assert!(matches("app!=sleep"));
        assert!(matches(""));
        assert!(LabelSelector::parse("version in v1").is_err());
    }

    #[test]
    fn field_selectors_refuse_fields_the_kind_does_not_index() {
        let object: DynamicObject = serde_json::from_value(
            json!({"metadata": {"name": "a", "namespace": "sample"}, "type": "Opaque"}),
        )
        .unwrap();
        let selector =
            FieldSelector::parse("metadata.name=a,type!=x", &["type"], "secrets").unwrap();
        assert!(selector.matches(&object));
        let error = FieldSelector::parse("spec.foo=a", &[], "configmaps").unwrap_err();
        assert!(
            error
                .message
                .contains("field label not supported: spec.foo")
        );
    }

    #[test]
    fn service_selectors_match_nothing_when_empty() {
        let labels = BTreeMap::from([("app".to_owned(), "a".to_owned())]);
        assert!(!selector_map_matches(&BTreeMap::new(), &labels));
        assert!(selector_map_matches(&labels.clone(), &labels));
        assert!(!selector_map_matches(&labels, &BTreeMap::new()));
    }
}
