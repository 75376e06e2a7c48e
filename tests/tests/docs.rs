//! The docs still work: every manifest they show is valid as kubectl would send it, every
//! `edge-agent` and `edge-operator` command they show parses with the real binary (and the
//! ones marked `console run` print what the page shows), every repository path a command or
//! a code span names exists, every link between pages reaches its file and heading, the
//! CLI references list every flag, and the chart's values table lists every value of
//! `values.yaml` with its current default. The marks a page puts on a fence line are
//! described in `edge_tests::docs`.
//!
//! Needs the debug binaries (`cargo build -p edge-agent -p edge-operator`; `tests/run.sh`
//! builds them). `EDGEPIPE_UPDATE_DOCS=1` writes the chart's values table instead of
//! comparing it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_testkit::workspace_bin;
use edge_tests::api::{rust_layer, schema_layer};
use edge_tests::docs::{self, Block};
use edge_tests::values_table;
use edge_tests::workspace_root;
use serde_json::{Value, json};

/// Where a finding is: `page:line`.
fn at(page: &Path, line: usize) -> String {
    format!("{}:{line}", page.display())
}

fn read(page: &Path) -> String {
    fs::read_to_string(workspace_root().join(page))
        .unwrap_or_else(|e| panic!("{}: {e}", page.display()))
}

fn all_blocks() -> Vec<(PathBuf, Block)> {
    let root = workspace_root();
    docs::pages(&root)
        .into_iter()
        .flat_map(|page| {
            let text = read(&page);
            docs::blocks(&text)
                .into_iter()
                .map(move |b| (page.clone(), b))
        })
        .collect()
}

fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n{}",
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What a fragment is merged into: the smallest pipeline both layers accept.
fn base_pipeline() -> Value {
    json!({
        "apiVersion": "edgepipe.dev/v1alpha1",
        "kind": "EdgePipeline",
        "metadata": {"name": "docs", "namespace": "docs"},
        "spec": {
            "source": {"mqtt": {"url": "mqtt://127.0.0.1:1883", "topics": ["sensors/+/temperature"]}},
            "sink": {"http": {"url": "https://ingest.example.com/batch"}}
        }
    })
}

/// Both validation layers of the API on a manifest, as kubectl would send it.
fn pipeline_problems(manifest: &Value) -> Vec<String> {
    let text = manifest.to_string();
    let mut problems: Vec<String> = rust_layer(&text)
        .iter()
        .map(|p| format!("validate(): {p}"))
        .collect();
    problems.extend(
        schema_layer(&text)
            .iter()
            .map(|p| format!("CRD schema/CEL: {p}")),
    );
    problems
}

/// A pipeline file as the agent reads it: a full manifest, or a bare spec.
fn as_manifest(value: Value) -> Value {
    if value.get("kind").is_some() {
        return value;
    }
    let mut manifest = base_pipeline();
    manifest["spec"] = value;
    manifest
}

#[test]
fn every_manifest_shown_is_valid_as_kubectl_sends_it() {
    let mut problems = Vec::new();
    let mut checked = BTreeMap::<&str, usize>::new();
    for (page, block) in all_blocks() {
        let place = at(&page, block.line);
        if block.lang == "yaml" || block.lang == "yml" {
            let text = docs::dedent(&block.body);
            let value = match docs::as_kubectl_sends(&text) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{place}: not YAML 1.1: {e}"));
                    continue;
                }
            };
            if block.has("sketch") {
                *checked.entry("sketches (parsed only)").or_default() += 1;
                continue;
            }
            let manifest = if let Some(path) = block.mark("fragment") {
                let placed = if path.is_empty() {
                    if value.get("spec").is_some() {
                        value
                    } else {
                        docs::nest("spec", value)
                    }
                } else {
                    docs::nest(path, value)
                };
                let mut manifest = base_pipeline();
                docs::merge(&mut manifest, placed);
                *checked.entry("EdgePipeline fragments").or_default() += 1;
                manifest
            } else {
                match value.get("kind").and_then(Value::as_str) {
                    Some("EdgePipeline") => {
                        *checked.entry("EdgePipelines").or_default() += 1;
                        value
                    }
                    Some(_) => {
                        for field in ["/apiVersion", "/kind", "/metadata/name"] {
                            if !value.pointer(field).is_some_and(Value::is_string) {
                                problems.push(format!("{place}: no {field}"));
                            }
                        }
                        *checked.entry("other manifests").or_default() += 1;
                        continue;
                    }
                    None => {
                        problems.push(format!(
                            "{place}: a YAML block without `kind`: mark its fence `yaml fragment`, \
                             `yaml fragment=PATH` or `yaml sketch`"
                        ));
                        continue;
                    }
                }
            };
            problems.extend(
                pipeline_problems(&manifest)
                    .into_iter()
                    .map(|p| format!("{place}: {p}")),
            );
        } else if is_shell(&block) {
            for heredoc in docs::command_lines(&block).1 {
                if !heredoc.file.ends_with(".yaml") {
                    continue;
                }
                *checked
                    .entry("pipeline files written by a shell block")
                    .or_default() += 1;
                match docs::as_kubectl_sends(&heredoc.body) {
                    Ok(v) => problems.extend(
                        pipeline_problems(&as_manifest(v))
                            .into_iter()
                            .map(|p| format!("{place} ({}): {p}", heredoc.file)),
                    ),
                    Err(e) => problems.push(format!("{place} ({}): not YAML: {e}", heredoc.file)),
                }
            }
        }
    }
    println!("checked: {checked:?}");
    assert!(
        checked.get("EdgePipeline fragments").copied().unwrap_or(0) >= 10,
        "the pages show fewer pipeline fragments than expected: {checked:?}"
    );
    report("manifests in the docs that the API would refuse", &problems);
}

fn is_shell(block: &Block) -> bool {
    matches!(block.lang.as_str(), "sh" | "bash" | "shell" | "console")
}

/// The binaries whose commands the docs show.
fn binary(program: &str) -> Option<PathBuf> {
    matches!(program, "edge-agent" | "edge-operator").then(|| workspace_bin(program))
}

fn run(bin: &Path, args: &[String]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(workspace_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The subcommands a clap help text lists under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The long flags a help text names.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let before = text[..i].chars().next_back();
        if name.starts_with(|c: char| c.is_ascii_lowercase())
            && before.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '-')
        {
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

/// Every subcommand path of a binary with its help text (`["model", "test"]` -> help).
fn command_tree(bin: &Path) -> BTreeMap<Vec<String>, String> {
    let mut tree = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let mut args = path.clone();
        args.push("--help".into());
        let (ok, help) = run(bin, &args);
        assert!(ok, "{} {}: {help}", bin.display(), args.join(" "));
        for sub in subcommands(&help) {
            let mut next = path.clone();
            next.push(sub);
            todo.push(next);
        }
        tree.insert(path, help);
    }
    tree
}

/// Checks a usage line (`edge-agent top [--url URL] [--once]`): its subcommand exists and
/// every flag it names belongs to that subcommand or one below it. Alternatives written
/// ` | cmd ...` start again at the program.
fn check_synopsis(program: &str, line: &str, tree: &BTreeMap<Vec<String>, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, alternative) in line.split(" | ").enumerate() {
        let words: Vec<&str> = alternative.split_whitespace().collect();
        let words = if k == 0 {
            match words.split_first() {
                Some((p, rest)) if *p == program => rest.to_vec(),
                _ => continue,
            }
        } else {
            words
        };
        let mut path: Vec<String> = Vec::new();
        for word in &words {
            let mut next = path.clone();
            next.push(word.to_string());
            if tree.contains_key(&next) {
                path = next;
            } else {
                break;
            }
        }
        if path.is_empty() {
            problems.push(format!("`{alternative}`: no subcommand of {program}"));
            continue;
        }
        let helps: String = tree
            .iter()
            .filter(|(p, _)| p.starts_with(&path))
            .map(|(_, h)| h.as_str())
            .collect();
        let known = long_flags(&helps);
        for flag in long_flags(alternative) {
            if !known.contains(&flag) {
                problems.push(format!("`{program} {}` has no {flag}", path.join(" ")));
            }
        }
    }
    problems
}

/// Lines with `[--flag]`, `a|b` or `VALUE...` are usage, not commands.
fn looks_like_usage(args: &[String]) -> bool {
    args.iter()
        .any(|a| a.starts_with('[') || a.ends_with(']') || a.contains('|') || a.ends_with("..."))
}

#[test]
fn every_command_shown_parses_and_the_marked_ones_print_what_is_shown() {
    let trees: BTreeMap<&str, BTreeMap<Vec<String>, String>> = ["edge-agent", "edge-operator"]
        .into_iter()
        .map(|p| (p, command_tree(&workspace_bin(p))))
        .collect();
    let mut problems = Vec::new();
    let (mut parsed, mut usage, mut ran) = (0, 0, 0);
    for (page, block) in all_blocks().into_iter().filter(|(_, b)| is_shell(b)) {
        let (lines, _) = docs::command_lines(&block);
        let mut env: Vec<(String, String)> = Vec::new();
        for line in &lines {
            let place = at(&page, block.line + 1 + line.offset);
            if block.has("synopsis") {
                for (program, tree) in &trees {
                    if line.text.starts_with(&format!("{program} ")) {
                        usage += 1;
                        problems.extend(
                            check_synopsis(program, &line.text, tree)
                                .into_iter()
                                .map(|p| format!("{place}: {p}")),
                        );
                    }
                }
                continue;
            }
            let commands = match docs::simple_commands(&line.text) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("{place}: {e}"));
                    continue;
                }
            };
            for words in commands {
                if words.first().is_some_and(|w| w == "export") {
                    env.extend(words[1..].iter().filter_map(|w| {
                        w.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    }));
                }
                let Some((program, args)) = docs::invocation(&words) else {
                    continue;
                };
                let Some(bin) = binary(&program) else {
                    continue;
                };
                if looks_like_usage(&args) {
                    problems.push(format!(
                        "{place}: `{}` is usage, not a command: mark the block `synopsis`",
                        line.text
                    ));
                    continue;
                }
                parsed += 1;
                let mut with_help = args.clone();
                with_help.push("--help".into());
                let (ok, out) = run(&bin, &with_help);
                if !ok {
                    problems.push(format!("{place}: `{}` does not parse: {out}", line.text));
                    continue;
                }
                if block.has("run") {
                    ran += 1;
                    let (_, out) = run_with_env(&bin, &args, &env);
                    if let Err(e) = matches_shown(&out, &line.output) {
                        problems.push(format!("{place}: `{}` printed otherwise: {e}", line.text));
                    }
                }
            }
        }
        // A pipeline file written by the block and checked by it: the check passes.
        for heredoc in docs::command_lines(&block).1 {
            let checks_it = lines.iter().any(|l| {
                l.text
                    .contains(&format!("edge-agent check --config {}", heredoc.file))
            });
            if checks_it {
                ran += 1;
                let dir = tempfile::tempdir().expect("temp dir");
                let file = dir.path().join(&heredoc.file);
                fs::write(&file, &heredoc.body).expect("write the pipeline");
                let args = vec![
                    "check".to_string(),
                    "--config".into(),
                    file.display().to_string(),
                ];
                let (ok, out) = run_with_env(&workspace_bin("edge-agent"), &args, &env);
                if !ok {
                    problems.push(format!(
                        "{}: `edge-agent check` refuses {}: {out}",
                        at(&page, block.line),
                        heredoc.file
                    ));
                }
            }
        }
    }
    println!("{parsed} commands parsed, {usage} usage lines checked, {ran} run");
    assert!(
        parsed >= 10 && usage >= 5 && ran >= 2,
        "fewer commands than expected"
    );
    report("commands in the docs that no longer work", &problems);
}

fn run_with_env(bin: &Path, args: &[String], env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(workspace_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Output against what a page shows, where a line `...` stands for any lines.
fn matches_shown(output: &str, shown: &[String]) -> Result<(), String> {
    fn go(out: &[&str], shown: &[&str]) -> bool {
        match shown.split_first() {
            None => out.is_empty(),
            Some((&"...", rest)) => (0..=out.len()).any(|k| go(&out[k..], rest)),
            Some((line, rest)) => out.first() == Some(line) && go(&out[1..], rest),
        }
    }
    let out: Vec<&str> = output.lines().collect();
    let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
    if go(&out, &shown) {
        Ok(())
    } else {
        Err(format!("\n{output}"))
    }
}

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

/// The top-level directories of the repository, as a path in the docs starts.
const REPO_DIRS: &[&str] = &[
    "crds/",
    "operator/",
    "edge-agent/",
    "charts/",
    "deploy/",
    "tests/",
    "vendor/",
    ".ci/",
];

/// Whether a repository path named in a page exists (a `*` matches within one name).
fn repo_path_exists(root: &Path, path: &str) -> bool {
    let path = path.trim_end_matches(['.', ',', ':', ';', ')']);
    let Some((dir, name)) = path.rsplit_once('/') else {
        return root.join(path).exists();
    };
    match name.split_once('*') {
        None => root.join(path).exists(),
        Some((prefix, suffix)) => fs::read_dir(root.join(dir)).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(prefix) && n.ends_with(suffix)
            })
        }),
    }
}

/// The directories `.gitignore` keeps out of a clone (`/tests/.tools`): made by the test
/// command, so absent from a fresh clone, and named by the docs all the same.
fn generated_dirs(root: &Path) -> Vec<String> {
    fs::read_to_string(root.join(".gitignore"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix('/'))
        .map(|d| d.trim_end_matches('/').to_string())
        .collect()
}

fn names_a_repo_path(word: &str, generated: &[String]) -> bool {
    REPO_DIRS.iter().any(|d| word.starts_with(d))
        && !generated
            .iter()
            .any(|g| word == g || word.starts_with(&format!("{g}/")))
        && !word.contains(['<', '$', '{', '`'])
        && !word.contains(" ")
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let root = workspace_root();
    let generated = generated_dirs(&root);
    let mut problems = Vec::new();
    let mut count = 0;
    for page in docs::pages(&root) {
        let text = read(&page);
        for (line, span) in docs::code_spans(&text) {
            if names_a_repo_path(&span, &generated) {
                count += 1;
                if !repo_path_exists(&root, &span) {
                    problems.push(format!("{}: `{span}` does not exist", at(&page, line)));
                }
            }
        }
        for block in docs::blocks(&text).iter().filter(|b| is_shell(b)) {
            for line in docs::command_lines(block).0 {
                let Ok(commands) = docs::simple_commands(&line.text) else {
                    continue;
                };
                for word in commands.iter().flat_map(|c| path_arguments(c)) {
                    let word = word.rsplit_once('=').map_or(word.as_str(), |(_, v)| v);
                    if names_a_repo_path(word, &generated) {
                        count += 1;
                        if !repo_path_exists(&root, word) {
                            problems.push(format!(
                                "{}: {word} does not exist",
                                at(&page, block.line + 1 + line.offset)
                            ));
                        }
                    }
                }
            }
        }
    }
    println!("{count} repository paths checked");
    assert!(count >= 50, "fewer paths than expected: {count}");
    report("paths the docs name that are gone", &problems);
}

/// The words of a command that name files: all of them, but for kubectl (whose
/// `deploy/NAME` is a Deployment) only the values of `-f` and `--from-file`.
fn path_arguments(words: &[String]) -> Vec<&String> {
    let kubectl = words
        .iter()
        .find(|w| *w != "sudo")
        .is_some_and(|w| w == "kubectl");
    if !kubectl {
        return words.iter().collect();
    }
    words
        .iter()
        .enumerate()
        .filter(|(i, w)| {
            w.starts_with("--from-file=")
                || (*i > 0 && matches!(words[i - 1].as_str(), "-f" | "--filename"))
        })
        .map(|(_, w)| w)
        .collect()
}

/// Subcommands the agent pods and the operator's Jobs run, not people: the docs name
/// them, but their flags are the operator's business.
const INTERNAL_AGENT_COMMANDS: &[&str] =
    &["prepare-data-dir", "install-fallback", "disarm-fallback"];

#[test]
fn the_command_references_list_every_subcommand_and_flag() {
    let root = workspace_root();
    let agent_docs: String = docs::pages(&root)
        .iter()
        .filter(|p| p.starts_with("edge-agent"))
        .map(|p| read(p))
        .collect();
    let operator_docs = read(Path::new("operator/README.md"));
    let mut problems = Vec::new();
    for (program, text) in [
        ("edge-agent", &agent_docs),
        ("edge-operator", &operator_docs),
    ] {
        let documented = long_flags(text);
        for (path, help) in command_tree(&workspace_bin(program)) {
            let Some(first) = path.first() else { continue };
            let named = format!("{program} {}", path.join(" "));
            if path.len() == 1 && !text.contains(&named) {
                problems.push(format!("`{named}` is not named in the {program} docs"));
            }
            if INTERNAL_AGENT_COMMANDS.contains(&first.as_str()) {
                continue;
            }
            for flag in long_flags(&help) {
                if flag != "--help" && flag != "--version" && !documented.contains(&flag) {
                    problems.push(format!("`{named}` {flag} is not in the {program} docs"));
                }
            }
        }
    }
    report("commands and flags the docs leave out", &problems);
}

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
             run `EDGEPIPE_UPDATE_DOCS=1 cargo test -p edge-tests --test docs` and commit it.\n\
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
