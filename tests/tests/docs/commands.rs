//! Every `edge-agent` and `edge-operator` command a page shows parses with the real binary
//! (its arguments plus `--help`), usage lines name only real subcommands and flags, the
//! blocks marked `run` print what they show, and the references name every subcommand and
//! flag the binaries have.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_testkit::workspace_bin;
use edge_tests::docs;
use edge_tests::workspace_root;

use super::{all_blocks, at, is_shell, read, report};

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
