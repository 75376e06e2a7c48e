//! The chart's README lists every value of `values.yaml` with its current default.

use std::fs;

use edge_tests::values_table;
use edge_tests::workspace_root;
use serde_json::Value;

const VALUES_START: &str = "<!-- values-table:start -->\n";
const VALUES_END: &str = "<!-- values-table:end -->";

#[test]
fn the_chart_readme_lists_every_value_with_its_default() {
    let root = workspace_root();
    let chart = root.join("charts/edge-operator");
    let values = fs::read_to_string(chart.join("values.yaml")).expect("values.yaml");
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(chart.join("values.schema.json")).expect("values.schema.json"),
    )
    .expect("the schema is JSON");
    let rows = values_table::value_rows(&values).unwrap_or_else(|e| panic!("{e}"));
    let table = values_table::values_table(&rows, &schema).unwrap_or_else(|e| panic!("{e}"));

    // Every value the schema knows is in a row, or under one.
    let mut missing = Vec::new();
    schema_leaves(&schema, String::new(), &mut missing);
    missing.retain(|leaf| {
        leaf != "global"
            && !rows
                .iter()
                .any(|r| leaf == &r.key || leaf.starts_with(&format!("{}.", r.key)))
    });
    assert!(
        missing.is_empty(),
        "values.schema.json knows values the table lacks: {missing:?}"
    );

    let readme_path = chart.join("README.md");
    let readme = fs::read_to_string(&readme_path).expect("the chart's README.md");
    let start = readme
        .find(VALUES_START)
        .expect("the values table's start mark")
        + VALUES_START.len();
    let end = readme
        .find(VALUES_END)
        .expect("the values table's end mark");
    if std::env::var_os("EDGEPIPE_UPDATE_DOCS").is_some() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        fs::write(&readme_path, updated).expect("write the chart's README.md");
        return;
    }
    if let Some((shown, wanted)) = readme[start..end]
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(table.lines().map(Some).chain(std::iter::repeat(None)))
        .take_while(|(a, b)| a.is_some() || b.is_some())
        .find(|(a, b)| a != b)
    {
        panic!(
            "charts/edge-operator/README.md's values table is not what values.yaml says; \
             run `EDGEPIPE_UPDATE_DOCS=1 cargo test -p edge-tests --test local docs::` and commit it.\n\
             shown:  {shown:?}\nwanted: {wanted:?}"
        );
    }
}

/// The dotted paths of the schema's leaves (properties that have no properties).
fn schema_leaves(node: &Value, prefix: String, out: &mut Vec<String>) {
    match node.get("properties").and_then(Value::as_object) {
        Some(props) => {
            for (k, v) in props {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                schema_leaves(v, path, out);
            }
        }
        None => out.push(prefix),
    }
}
