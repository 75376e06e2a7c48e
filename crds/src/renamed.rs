//! Keys v1alpha1 renamed, and the clear error a manifest that still uses one gets.
//!
//! An action's trigger used to be the key `on`. kubectl and Helm read YAML 1.1, where an
//! unquoted `on` is the boolean true, so `- on: anomaly` reached the API server as the key
//! `"true"` and was refused without a word about why. The key is now `trigger`, and both
//! validation layers name the old one: the CRD declares `on` and `"true"` on an action only
//! to reject them with a CEL rule (the API server would otherwise prune or refuse them as
//! unknown fields), and [`check`] does the same for the files the agent and
//! `edge-operator render` read, before the typed parse would report a bare unknown field.

use schemars::Schema;
use serde_json::{Value, json};

use crate::validate::FieldError;

/// Why an action's key `on` (or `"true"`, what YAML 1.1 makes of it) is refused.
pub const ON_RENAMED: &str = "renamed to \"trigger\" (e.g. `- trigger: anomaly`): kubectl and Helm read YAML 1.1, which turns the key on into \"true\"";

/// The action keys YAML 1.1 readers turn into `"true"` that stand for the old `on`.
fn is_old_trigger_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("on") || key.eq_ignore_ascii_case("true")
}

/// Schema transform of `Action`: declares the old keys (so the API server neither prunes
/// nor refuses them as unknown before the rules run) and rejects them with a CEL rule that
/// names `on`. `trigger` is required by a rule instead of `required`: a missing required
/// property is a blocking error that stops the API server from running any CEL rule, and
/// so from ever saying that `on` was renamed.
pub(crate) fn action_schema(schema: &mut Schema) {
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.insert(
            "on".into(),
            json!({
                "description": "Not a field: the old name of `trigger`, rejected with a message saying so.",
                "type": "string",
            }),
        );
        properties.insert(
            "true".into(),
            json!({
                "description": "Not a field: what kubectl and Helm (YAML 1.1) make of an unquoted key `on`, the old name of `trigger`; rejected with a message saying so.",
                "type": "string",
            }),
        );
    }
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|r| r != "trigger");
    }
    let rules = schema
        .remove("x-kubernetes-validations")
        .and_then(|v| match v {
            Value::Array(rules) => Some(rules),
            _ => None,
        })
        .unwrap_or_default();
    let mut renamed = json!([
            {
                "rule": "!has(self.on) && !has(self.__true__)",
                "message": ON_RENAMED,
                "fieldPath": ".on",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": "has(self.trigger) || has(self.on) || has(self.__true__)",
                "message": "set trigger: anomaly, threshold or classification",
                "fieldPath": ".trigger",
                "reason": "FieldValueRequired",
            },
    ]);
    if let Value::Array(all) = &mut renamed {
        all.extend(rules);
    }
    schema.insert("x-kubernetes-validations".into(), renamed);
}

/// The renamed keys in the actions of a spec, as parsed from YAML before the typed parse.
pub(crate) fn check(spec: &Value) -> Vec<FieldError> {
    let Some(Value::Array(actions)) = spec.get("actions") else {
        return vec![];
    };
    actions
        .iter()
        .enumerate()
        .filter(|(_, action)| {
            action
                .as_object()
                .is_some_and(|keys| keys.keys().any(|k| is_old_trigger_key(k)))
        })
        .map(|(i, _)| FieldError {
            path: format!("spec.actions[{i}].on"),
            message: ON_RENAMED.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_key_is_named_as_written_and_as_kubectl_sends_it() {
        for key in ["on", "On", "ON", "true", "True"] {
            let spec = json!({"actions": [
                {"trigger": "anomaly", "mqtt": {"topic": "a"}},
                {key: "anomaly", "mqtt": {"topic": "a"}},
            ]});
            let errors = check(&spec);
            assert_eq!(errors.len(), 1, "{key}: {errors:?}");
            assert_eq!(
                errors[0].to_string(),
                format!("spec.actions[1].on: {ON_RENAMED}")
            );
        }
        assert!(check(&json!({"actions": [{"trigger": "anomaly"}]})).is_empty());
        assert!(check(&json!({"source": {}})).is_empty());
    }

    /// An object stored with `on` before the CRD refused it still reads in the operator,
    /// which writes it back to the agent as `trigger`.
    #[test]
    fn an_object_stored_with_on_still_reads_and_is_written_as_trigger() {
        let stored = json!({"on": "threshold", "mqtt": {"topic": "a"}});
        let action: crate::Action = serde_json::from_value(stored).unwrap();
        assert_eq!(action.trigger, crate::ActionTrigger::Threshold);
        let written = serde_json::to_value(&action).unwrap();
        assert_eq!(written["trigger"], "threshold");
        assert!(written.get("on").is_none());
    }
}
