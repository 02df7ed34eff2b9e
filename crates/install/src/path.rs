//! Paths into an install tree as istioctl's `--set` writes them: `values.global.meshID`,
//! `components.ingressGateways[0].enabled`, `components.ingressGateways.[name:eastwest].enabled`,
//! and `\.` for a dot inside a key (`values.pilot.env.A\.B`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
    /// `[key:value]`: the list item whose `key` is `value`.
    Select {
        key: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreePath(pub Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{path}` is not a path: {reason}; write it as istioctl does, e.g. values.global.meshID or components.ingressGateways[0].enabled"
)]
pub struct BadPath {
    pub path: String,
    pub reason: String,
}

impl TreePath {
    pub fn parse(text: &str) -> Result<TreePath, BadPath> {
        let bad = |reason: &str| BadPath {
            path: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut segments = Vec::new();
        let mut key = String::new();
        let mut chars = text.chars().peekable();
        // A key ends at an unescaped `.` or `[`; `[` opens an index or a selector.
        let finish_key = |key: &mut String, segments: &mut Vec<Segment>| {
            if !key.is_empty() {
                segments.push(Segment::Key(std::mem::take(key)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped) => key.push(escaped),
                    None => return Err(bad("it ends with a lone backslash")),
                },
                '.' => {
                    if key.is_empty()
                        && !matches!(
                            segments.last(),
                            Some(Segment::Index(_) | Segment::Select { .. })
                        )
                    {
                        return Err(bad("it has an empty key"));
                    }
                    finish_key(&mut key, &mut segments);
                }
                '[' => {
                    finish_key(&mut key, &mut segments);
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some(']') => break,
                            Some(c) => inner.push(c),
                            None => return Err(bad("a `[` is never closed")),
                        }
                    }
                    let segment = match inner.split_once(':') {
                        Some((key, value)) if !key.is_empty() => Segment::Select {
                            key: key.to_owned(),
                            value: value.to_owned(),
                        },
                        Some(_) => return Err(bad("a `[key:value]` selector has no key")),
                        None => Segment::Index(inner.trim().parse().map_err(|_| {
                            bad(&format!(
                                "`[{inner}]` is neither an index nor a [key:value] selector"
                            ))
                        })?),
                    };
                    segments.push(segment);
                }
                c => key.push(c),
            }
        }
        if text.ends_with('.') {
            return Err(bad("it ends with a dot"));
        }
        finish_key(&mut key, &mut segments);
        if segments.is_empty() {
            return Err(bad("it is empty"));
        }
        Ok(TreePath(segments))
    }

    pub fn child(&self, segment: Segment) -> TreePath {
        let mut segments = self.0.clone();
        segments.push(segment);
        TreePath(segments)
    }

    pub fn key(&self, key: &str) -> TreePath {
        self.child(Segment::Key(key.to_owned()))
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if index > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(&key.replace('.', "\\."))?;
                }
                Segment::Index(position) => write!(f, "[{position}]")?,
                Segment::Select { key, value } => write!(f, "[{key}:{value}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Segment {
        Segment::Key(text.to_owned())
    }

    #[test]
    fn paths_read_as_istioctl_writes_them() {
        let cases: &[(&str, Vec<Segment>)] = &[
            (
                "values.global.meshID",
                vec![key("values"), key("global"), key("meshID")],
            ),
            (
                "components.ingressGateways[0].enabled",
                vec![
                    key("components"),
                    key("ingressGateways"),
                    Segment::Index(0),
                    key("enabled"),
                ],
            ),
            (
                "components.ingressGateways.[name:eastwest].k8s",
                vec![
                    key("components"),
                    key("ingressGateways"),
                    Segment::Select {
                        key: "name".into(),
                        value: "eastwest".into(),
                    },
                    key("k8s"),
                ],
            ),
            (
                r"values.sidecarInjectorWebhook.injectedAnnotations.sidecar\.istio\.io/x",
                vec![
                    key("values"),
                    key("sidecarInjectorWebhook"),
                    key("injectedAnnotations"),
                    key("sidecar.istio.io/x"),
                ],
            ),
            ("profile", vec![key("profile")]),
        ];
        for (text, expected) in cases {
            let path = TreePath::parse(text).unwrap();
            assert_eq!(&path.0, expected, "{text}");
        }
        assert_eq!(
            TreePath::parse("components.ingressGateways[0].enabled")
                .unwrap()
                .to_string(),
            "components.ingressGateways[0].enabled"
        );
    }

    #[test]
    fn malformed_paths_say_what_is_wrong() {
        for (text, reason) in [
            ("", "empty"),
            ("values..global", "empty key"),
            ("values.global.", "ends with a dot"),
            ("a[0", "never closed"),
            ("a[x]", "`[x]`"),
            ("a[:x]", "no key"),
            ("a\\", "backslash"),
        ] {
            let error = TreePath::parse(text).unwrap_err();
            assert!(error.to_string().contains(reason), "{text}: {error}");
        }
    }
}
