//! The docs still work: every manifest they show is valid as kubectl would send it, every
//! `edge-agent` and `edge-operator` command they show parses with the real binary (and the
//! ones marked `console run` print what the page shows), the command references list every
//! subcommand and flag, every repository path a command or a code span names exists, every
//! link between pages (and from the alerts' runbook URLs) reaches its file and heading, and
//! the chart's values table lists every value of `values.yaml` with its current default.
//! The marks a page puts on a fence line are described in `edge_tests::docs`.
//!
//! Needs the debug binaries (`cargo build -p edge-agent -p edge-operator`; `tests/run.sh`
//! builds them). `EDGEPIPE_UPDATE_DOCS=1 cargo test -p edge-tests --test local docs::`
//! writes the chart's values table instead of comparing it.

mod commands;
mod links;
mod manifests;
mod paths;
mod values;

use std::fs;
use std::path::{Path, PathBuf};

use edge_tests::docs::{self, Block};
use edge_tests::workspace_root;

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

fn is_shell(block: &Block) -> bool {
    matches!(block.lang.as_str(), "sh" | "bash" | "shell" | "console")
}
