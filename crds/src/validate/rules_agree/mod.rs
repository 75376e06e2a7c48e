//! The two layers of API rules agree: the CRD's CEL rules (evaluated with kube-cel, as the
//! API server would at admission) and [`validate`] (what `edge-agent check`, the agent and
//! the operator run).
//!
//! [`table`] says which CEL rule is which `validate()` check, and lists the rules of one
//! layer only, each with the reason. A property test generates specs around every rule's
//! boundary ([`generator`]) and asserts, for each shared rule, that CEL rejects a spec at
//! an object exactly when `validate()` reports the matching field error there, and that
//! every shared rule was broken at least once. A CEL rule in no table, or a `validate()`
//! error that matches none, fails the tests until it is classified. Values JSON cannot
//! hold (NaN) and shapes the OpenAPI schema refuses before CEL runs are not generated.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use kube_cel::{CompiledSchema, ErrorKind, ValidationError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use self::table::{CEL_ONLY, Row, shared_rows, validate_only};
use crate::EdgePipelineSpec;
use crate::validate::{FieldError, validate};

mod generator;
mod table;

/// `spec.processors[2].range` as `["spec", "processors", "[2]", "range"]`.
fn segments(path: &str) -> Vec<&str> {
    let mut out = vec![];
    for part in path.split('.') {
        match part.find('[') {
            Some(i) => {
                if i > 0 {
                    out.push(&part[..i]);
                }
                out.extend(part[i..].split_inclusive(']'));
            }
            None => out.push(part),
        }
    }
    out
}

/// Joins segments back into a path.
fn join(segments: &[&str]) -> String {
    let mut out = String::new();
    for s in segments {
        if !out.is_empty() && !s.starts_with('[') {
            out.push('.');
        }
        out.push_str(s);
    }
    out
}

/// A path with every list index written `[]`.
fn general(path: &str) -> String {
    let segs: Vec<&str> = segments(path)
        .into_iter()
        .map(|s| if s.starts_with('[') { "[]" } else { s })
        .collect();
    join(&segs)
}

/// How many leading segments two general paths share.
fn common_depth(a: &str, b: &str) -> usize {
    segments(a)
        .iter()
        .zip(segments(b).iter())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Every CEL rule of the schema: (general path it reports at, rule text) -> message.
fn cel_rules(compiled: &CompiledSchema) -> BTreeMap<(String, String), String> {
    fn walk(node: &CompiledSchema, path: &str, out: &mut BTreeMap<(String, String), String>) {
        for v in node.validations.iter().flatten() {
            let at = match v.rule.field_path.as_deref() {
                Some(fp) => format!("{path}{fp}"),
                None => path.to_string(),
            };
            let message = v.rule.message.clone().unwrap_or_default();
            out.insert((at, v.rule.rule.clone()), message);
        }
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), out);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(compiled, "", &mut out);
    out.into_iter()
        .map(|((at, rule), m)| ((at.trim_start_matches('.').to_string(), rule), m))
        .collect()
}

fn compiled_schema() -> CompiledSchema {
    let crd = serde_json::to_value(crate::crd()).expect("the CRD serializes");
    kube_cel::compile_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
}

#[test]
fn every_cel_rule_is_classified_and_every_row_names_a_rule() {
    let rules = cel_rules(&compiled_schema());
    let in_schema: BTreeSet<(String, String)> = rules
        .iter()
        .map(|((at, _), message)| (at.clone(), message.clone()))
        .collect();
    let shared: BTreeSet<(String, String)> = shared_rows()
        .into_iter()
        .map(|row| (row.at.to_string(), row.message.to_string()))
        .collect();
    let cel_only: BTreeSet<(String, String)> = CEL_ONLY
        .iter()
        .map(|(at, message, _)| (at.to_string(), message.to_string()))
        .collect();
    let unclassified: Vec<_> = in_schema
        .iter()
        .filter(|r| !shared.contains(*r) && !cel_only.contains(*r))
        .collect();
    assert!(
        unclassified.is_empty(),
        "CEL rules in neither SHARED (with the validate() check that enforces the same) \
         nor CEL_ONLY (with the reason): {unclassified:#?}"
    );
    let stale: Vec<_> = shared
        .iter()
        .chain(&cel_only)
        .filter(|r| !in_schema.contains(*r))
        .collect();
    assert!(
        stale.is_empty(),
        "rows naming no CEL rule of the schema: {stale:#?}"
    );
    assert!(shared.len() >= 60, "{} shared rules", shared.len());
}

/// What one spec showed: the shared rows that fired, and the disagreements.
#[derive(Default)]
struct Outcome {
    fired: BTreeSet<usize>,
    problems: Vec<String>,
}

/// Runs both layers on `spec` and compares them rule by rule.
fn compare(
    spec: &Value,
    compiled: &CompiledSchema,
    rules: &BTreeMap<(String, String), String>,
    rows: &[Row],
) -> Outcome {
    let mut outcome = Outcome::default();
    let typed: EdgePipelineSpec = match serde_json::from_value(spec.clone()) {
        Ok(typed) => typed,
        Err(e) => {
            outcome.problems.push(format!(
                "the generator made a spec that does not parse: {e}"
            ));
            return outcome;
        }
    };
    let checks: Vec<FieldError> = validate(&typed).err().unwrap_or_default();
    let object = json!({
        "apiVersion": "edgepipe.dev/v1alpha1",
        "kind": "EdgePipeline",
        "spec": spec,
    });
    let cel: Vec<ValidationError> = kube_cel::Validator::new()
        .validate_compiled(compiled, &object, None)
        .err()
        .map(|e| e.into_vec())
        .unwrap_or_default();

    // Each CEL error as (concrete path, the rule's own message).
    let mut cel_errors = vec![];
    for e in &cel {
        if e.kind != ErrorKind::ValidationFailure {
            outcome.problems.push(format!(
                "a CEL rule did not evaluate, so the user gets no message of ours: {}: {} (rule: {})",
                e.field_path, e.message, e.rule
            ));
        }
        let key = (general(&e.field_path), e.rule.clone());
        match rules.get(&key) {
            Some(message) => cel_errors.push((e.field_path.clone(), message.clone())),
            None => outcome
                .problems
                .push(format!("a CEL error from an unknown rule: {e:?}")),
        }
    }

    let matches = |e: &FieldError, &(path, fragment): &(&str, &str)| {
        general(&e.path) == path && e.message.contains(fragment)
    };
    for (i, row) in rows.iter().enumerate() {
        // Compare where the two layers report, down to the object both paths lie in:
        // `spec.actions[1]` for a rule at `spec.actions[].resolved` whose check reports at
        // `spec.actions[].clearAfter`.
        let depth = row
            .checks
            .iter()
            .map(|(path, _)| common_depth(row.at, path))
            .min()
            .unwrap_or(0);
        let object = |path: &str| {
            let segs = segments(path);
            join(&segs[..depth.min(segs.len())])
        };
        let by_cel: BTreeSet<String> = cel_errors
            .iter()
            .filter(|(path, message)| general(path) == row.at && message == row.message)
            .map(|(path, _)| object(path))
            .collect();
        let by_validate: BTreeSet<String> = checks
            .iter()
            .filter(|e| row.checks.iter().any(|c| matches(e, c)))
            .map(|e| object(&e.path))
            .collect();
        if !by_cel.is_empty() {
            outcome.fired.insert(i);
        }
        if by_cel != by_validate {
            outcome.problems.push(format!(
                "rule {:?} {:?}: CEL rejects at {by_cel:?}, validate() at {by_validate:?}",
                row.at, row.message
            ));
        }
    }

    // Every CEL error is a classified rule (the schema test checks it statically).
    for (path, message) in &cel_errors {
        let known = rows
            .iter()
            .any(|row| general(path) == row.at && row.message == message)
            || CEL_ONLY
                .iter()
                .any(|(p, m, _)| general(path) == *p && m == message);
        if !known {
            outcome
                .problems
                .push(format!("unclassified CEL rule: {path}: {message}"));
        }
    }
    // Every validate() error is a shared check or listed as validate-only.
    for e in &checks {
        let shared = rows
            .iter()
            .any(|row| row.checks.iter().any(|c| matches(e, c)));
        let only = validate_only(e);
        if !shared && !only {
            outcome.problems.push(format!(
                "a validate() error in neither SHARED nor VALIDATE_ONLY: {e}"
            ));
        }
    }
    outcome
}

/// How many specs the property test generates.
const CASES: u32 = 768;

#[test]
fn cel_rules_and_validate_agree_on_generated_specs() {
    let compiled = compiled_schema();
    let rules = cel_rules(&compiled);
    let rows = shared_rows();
    let fired: RefCell<BTreeSet<usize>> = RefCell::default();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&generator::spec(), |spec| {
        let outcome = compare(&spec, &compiled, &rules, &rows);
        fired.borrow_mut().extend(outcome.fired);
        prop_assert!(
            outcome.problems.is_empty(),
            "{:#?}\nspec: {}",
            outcome.problems,
            serde_json::to_string_pretty(&spec).unwrap_or_default()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let never: Vec<_> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !fired.borrow().contains(i))
        .map(|(_, row)| format!("{}: {}", row.at, row.message))
        .collect();
    assert!(
        never.is_empty(),
        "the generator never broke these rules, so their agreement is untested: {never:#?}"
    );
}

/// The generator's building blocks give what they say.
#[test]
fn path_helpers() {
    assert_eq!(
        segments("spec.processors[2].range"),
        ["spec", "processors", "[2]", "range"]
    );
    assert_eq!(general("spec.a[3].b[10]"), "spec.a[].b[]");
    assert_eq!(join(&["spec", "a", "[1]", "b"]), "spec.a[1].b");
    assert_eq!(
        common_depth("spec.actions[].resolved", "spec.actions[].clearAfter"),
        3
    );
}
