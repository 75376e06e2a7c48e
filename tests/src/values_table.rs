//! The values table of a Helm chart's README, made from its `values.yaml`: every key with a
//! `# --` comment above it (the helm-docs convention) is a row, with its default as Helm
//! reads it and the values the schema allows.

use serde_json::Value;

use crate::docs::{as_kubectl_sends, strip_comment};

/// One row of the chart's values table.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueRow {
    /// Dotted path (`metrics.podMonitor.enabled`).
    pub key: String,
    /// The value in values.yaml, as Helm reads it.
    pub default: Value,
    /// The `# --` comment above it, joined into one line.
    pub description: String,
}

/// The documented values of a chart: each key preceded by a `# --` comment (the
/// helm-docs convention), with everything under it as its default. A key that holds a
/// plain value and has no such comment, and is under no documented key, is an error.
pub fn value_rows(values_yaml: &str) -> Result<Vec<ValueRow>, String> {
    let values = as_kubectl_sends(values_yaml)?;
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut documented_at: Option<usize> = None; // indentation of the documented key above
    let mut doc: Option<Vec<String>> = None;
    for (i, line) in values_yaml.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(first) = trimmed.strip_prefix("# --") {
            doc = Some(vec![first.trim().to_string()]);
            continue;
        }
        if let Some(more) = trimmed.strip_prefix('#') {
            if let Some(d) = doc.as_mut() {
                d.push(more.trim().to_string());
            }
            continue;
        }
        if trimmed.is_empty() {
            doc = None;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if documented_at.is_some_and(|at| indent > at) || trimmed.starts_with('-') {
            continue; // inside a documented value
        }
        documented_at = None;
        let Some((key, value)) = trimmed.split_once(':') else {
            return Err(format!("values.yaml:{}: not a key: {line}", i + 1));
        };
        let key = key.trim().trim_matches('"').to_string();
        stack.retain(|(at, _)| *at < indent);
        stack.push((indent, key));
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        if let Some(d) = doc.take() {
            let mut default = &values;
            for k in &path {
                default = default
                    .get(k)
                    .ok_or_else(|| format!("values.yaml: {} not found", path.join(".")))?;
            }
            rows.push(ValueRow {
                key: path.join("."),
                default: default.clone(),
                description: d.join(" ").trim().to_string(),
            });
            documented_at = Some(indent);
        } else if !strip_comment(value).trim().is_empty() {
            return Err(format!(
                "values.yaml:{}: {} has no `# --` comment",
                i + 1,
                path.join(".")
            ));
        }
    }
    Ok(rows)
}

/// The Markdown table of a chart's values: key, default and description, with the
/// allowed values when the schema names them.
pub fn values_table(rows: &[ValueRow], schema: &Value) -> Result<String, String> {
    let mut out = String::from("| Value | Default | Description |\n| --- | --- | --- |\n");
    for row in rows {
        let mut node = schema;
        for key in row.key.split('.') {
            node = node
                .get("properties")
                .and_then(|p| p.get(key))
                .ok_or_else(|| format!("{} is not in values.schema.json", row.key))?;
        }
        let mut description = escape_html(&row.description);
        if let Some(Value::Array(allowed)) = node.get("enum") {
            let allowed: Vec<String> = allowed
                .iter()
                .map(|v| {
                    format!(
                        "`{}`",
                        v.as_str().map_or_else(|| v.to_string(), str::to_string)
                    )
                })
                .collect();
            description.push_str(&format!(" One of: {}.", allowed.join(", ")));
        }
        let default = serde_json::to_string(&row.default).map_err(|e| e.to_string())?;
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            row.key,
            default.replace('|', "\\|"),
            description.replace('|', "\\|")
        ));
    }
    Ok(out)
}

/// `<` and `>` outside code spans as entities, so `<release>` shows instead of vanishing as
/// an HTML tag.
fn escape_html(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(k, part)| {
            if k % 2 == 1 {
                part.to_string()
            } else {
                part.replace('<', "&lt;").replace('>', "&gt;")
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rows_follow_the_helm_docs_comments() {
        let yaml = "# header\n\nimage:\n  # -- The image.\n  # Its repository.\n  repository: x\n# -- Limits.\nresources:\n  limits: {memory: 1Mi}\n";
        let rows = value_rows(yaml).unwrap();
        assert_eq!(rows[0].key, "image.repository");
        assert_eq!(rows[0].description, "The image. Its repository.");
        assert_eq!(
            rows[1].default,
            serde_json::json!({"limits": {"memory": "1Mi"}})
        );
        assert!(
            value_rows("a: 1\n")
                .unwrap_err()
                .contains("no `# --` comment")
        );
    }
}
