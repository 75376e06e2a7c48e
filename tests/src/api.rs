//! The two validation layers of the EdgePipeline API, as the tests drive them: the
//! Rust `validate()` (after loading the manifest), and the generated CRD's
//! `openAPIV3Schema` evaluated by a real JSON Schema validator plus its CEL rules
//! evaluated by a real CEL implementation (kube-cel), as the API server would at admission.

use serde_json::Value;

/// A problem found by one layer, with the dotted field path it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path, e.g. `spec.processors[0].deadband`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Loads a manifest and runs `validate()`; loading errors are reported with the path
/// serde reached.
pub fn rust_layer(text: &str) -> Vec<Problem> {
    match edge_crds::parse_pipeline(text) {
        Err(e) => {
            let msg = e.to_string();
            let (path, message) = msg.split_once(": ").unwrap_or(("", &msg));
            vec![Problem {
                path: path.to_string(),
                message: message.to_string(),
            }]
        }
        Ok(file) => match edge_crds::validate(&file.spec) {
            Ok(()) => vec![],
            Err(errors) => errors
                .into_iter()
                .map(|e| Problem {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        },
    }
}

/// The CRD's `openAPIV3Schema`.
pub fn crd_schema() -> Value {
    let crd = serde_json::to_value(edge_crds::crd()).expect("CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// OpenAPI v3 `nullable: true` in JSON Schema terms: allow `null` next to the type.
fn openapi_to_json_schema(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), serde_json::json!([t, "null"]));
            }
            // Kubernetes extensions are not JSON Schema keywords; leave them, validators ignore them.
            for v in map.values_mut() {
                openapi_to_json_schema(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(openapi_to_json_schema),
        _ => {}
    }
}

/// Validates a manifest (as YAML text) against the CRD schema and its CEL rules.
pub fn schema_layer(text: &str) -> Vec<Problem> {
    let object: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return vec![Problem {
                path: String::new(),
                message: format!("not YAML: {e}"),
            }];
        }
    };
    let mut schema = crd_schema();
    let cel_schema = schema.clone();
    openapi_to_json_schema(&mut schema);
    // metadata is validated by the API server itself, not by the CRD schema.
    let mut checked = object.clone();
    if let Some(map) = checked.as_object_mut() {
        map.remove("metadata");
    }
    let validator = jsonschema::validator_for(&schema).expect("CRD schema compiles");
    let mut problems: Vec<Problem> = validator
        .iter_errors(&checked)
        .map(|e| Problem {
            path: pointer_to_path(&e.instance_path().to_string()),
            message: e.to_string(),
        })
        .collect();
    if let Err(errors) = kube_cel::Validator::new().validate(&cel_schema, &checked, None) {
        problems.extend(errors.into_vec().into_iter().map(|e| Problem {
            path: e.field_path.trim_start_matches('.').to_string(),
            message: format!("{} (rule: {})", e.message, e.rule),
        }));
    }
    problems
}

/// `/spec/processors/0/deadband` -> `spec.processors[0].deadband`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}
