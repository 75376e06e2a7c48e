//! Every repository path a page names, in a code span or as a command's argument, exists.

use std::fs;
use std::path::Path;

use edge_tests::docs;
use edge_tests::workspace_root;

use super::{at, is_shell, read, report};

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
