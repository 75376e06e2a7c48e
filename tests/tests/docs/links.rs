//! Every link between pages reaches its file and, for a `#heading`, the heading (as GitHub
//! makes anchors); so do the alerts' runbook URLs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use edge_tests::docs;
use edge_tests::workspace_root;

use super::{at, read, report};

#[test]
fn every_link_between_pages_reaches_its_file_and_heading() {
    let root = workspace_root();
    let mut anchors: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let mut anchors_of = |page: &Path| -> Option<Vec<String>> {
        if !anchors.contains_key(page) {
            let text = fs::read_to_string(root.join(page)).ok()?;
            anchors.insert(page.to_path_buf(), docs::anchors(&text));
        }
        anchors.get(page).cloned()
    };
    let mut problems = Vec::new();
    let mut count = 0;
    for page in docs::pages(&root) {
        let text = read(&page);
        let dir = page.parent().unwrap_or(Path::new(""));
        for link in docs::links(&text) {
            if link.target.contains("://") || link.target.starts_with("mailto:") {
                continue;
            }
            count += 1;
            let (file, anchor) = match link.target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.target.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                normalize(&dir.join(file))
            };
            if !root.join(&target).exists() {
                problems.push(format!(
                    "{}: {} does not exist",
                    at(&page, link.line),
                    link.target
                ));
                continue;
            }
            if let Some(anchor) = anchor
                && target.extension().is_some_and(|e| e == "md")
                && !anchors_of(&target).is_some_and(|a| a.iter().any(|x| x == anchor))
            {
                problems.push(format!(
                    "{}: {} has no heading #{anchor}",
                    at(&page, link.line),
                    target.display()
                ));
            }
        }
    }
    // The alerts' runbook links point into the docs of this repository.
    for rules in RULE_FILES {
        let text = read(Path::new(rules));
        for (i, line) in text.lines().enumerate() {
            let Some((_, link)) = line.split_once(REPO_URL) else {
                continue;
            };
            count += 1;
            let link = link.trim().trim_matches('"');
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let anchors = anchors_of(Path::new(file));
            if !anchors.is_some_and(|a| anchor.is_empty() || a.iter().any(|x| x == anchor)) {
                problems.push(format!("{rules}:{}: {link} is not a heading", i + 1));
            }
        }
    }
    println!("{count} links checked");
    assert!(count >= 100, "fewer links than expected: {count}");
    report("broken links", &problems);
}

/// Files outside the docs that link into them (the alerts' runbook URLs).
const RULE_FILES: &[&str] = &[
    "deploy/prometheus/edgepipe-rules.yaml",
    "charts/edge-operator/files/edgepipe-rules.yaml",
];

/// How those files address a page of this repository.
const REPO_URL: &str = "https://github.com/edgepipe/edgepipe/blob/main/";

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
