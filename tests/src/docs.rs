//! The project's Markdown as the docs test reads it: which pages there are, their fenced
//! blocks (with the marks written after the language on the fence line), their headings as
//! GitHub turns them into anchors, their links, and the shell commands of a block.
//!
//! Marks on a fence line say what a block is, so the test knows what to hold it to:
//!
//! - ` ```yaml ` is a complete manifest (it has a `kind`);
//! - ` ```yaml fragment ` is part of an EdgePipeline: its keys go under `spec` (or at the top
//!   when it starts with `spec:`), `fragment=spec.source.mqtt` names where they go;
//! - ` ```yaml sketch ` holds placeholders (`[...]`, a shortened hash): it must parse, no more;
//! - ` ```sh synopsis ` shows a command's usage (`[--flag VALUE]`, `a|b`), not a command line;
//! - ` ```console run ` is run for real, and what it prints must be what the block shows.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The pages the docs test reads: the top-level README, SECURITY and BENCHMARKS, and every
/// Markdown file under the directories a newcomer is sent to.
pub fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = ["README.md", "SECURITY.md", "BENCHMARKS.md"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| root.join(p).is_file())
        .collect();
    for dir in ["edge-agent", "operator", "charts", "deploy"] {
        collect_markdown(root, Path::new(dir), &mut pages);
    }
    pages.sort();
    pages
}

fn collect_markdown(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let rel = dir.join(&name);
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && name != "target" {
            collect_markdown(root, &rel, out);
        } else if kind.is_file() && rel.extension().is_some_and(|e| e == "md") {
            out.push(rel);
        }
    }
}

/// A fenced code block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Line of the opening fence (1-based).
    pub line: usize,
    /// The language (`yaml`, `sh`, `console`, ...), empty when none is given.
    pub lang: String,
    /// The words after the language on the fence line.
    pub marks: Vec<String>,
    /// The content, without the indentation of the fence.
    pub body: String,
}

impl Block {
    /// Whether the fence carries `mark` (a word, or the name of `name=value`).
    pub fn has(&self, mark: &str) -> bool {
        self.mark(mark).is_some()
    }

    /// The value of a mark: `Some("")` for a bare word, `Some(value)` for `mark=value`.
    pub fn mark(&self, mark: &str) -> Option<&str> {
        self.marks.iter().find_map(|m| match m.split_once('=') {
            Some((name, value)) if name == mark => Some(value),
            None if m == mark => Some(""),
            _ => None,
        })
    }
}

/// The fenced blocks of a page.
pub fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<OpenFence> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace().map(str::to_string);
                    let lang = words.next().unwrap_or_default();
                    open = Some(OpenFence {
                        block: Block {
                            line: i + 1,
                            lang,
                            marks: words.collect(),
                            body: String::new(),
                        },
                        indent,
                        lines: Vec::new(),
                    });
                }
            }
            Some(mut fence) => {
                if trimmed.starts_with("```") && trimmed.trim_end() == "```" {
                    fence.block.body = fence
                        .lines
                        .iter()
                        .map(|l| strip_indent(l, fence.indent))
                        .collect::<Vec<_>>()
                        .join("\n");
                    out.push(fence.block);
                } else {
                    fence.lines.push(line);
                    open = Some(fence);
                }
            }
        }
    }
    out
}

/// A block being read: its fence's indentation and the lines so far.
struct OpenFence<'a> {
    block: Block,
    indent: usize,
    lines: Vec<&'a str>,
}

fn strip_indent(line: &str, indent: usize) -> &str {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    &line[spaces.min(indent)..]
}

/// The lines of a page outside fenced blocks, with their line numbers (1-based).
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, in order; a repeated heading gets `-1`, `-2`, ...
pub fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let seen = out
            .iter()
            .filter(|a| *a == &base || a.strip_prefix(&format!("{base}-")).is_some_and(is_number))
            .count();
        out.push(if seen == 0 {
            base
        } else {
            format!("{base}-{seen}")
        });
    }
    out
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// A link of a page: `[text](target)` outside code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Line of the link (1-based).
    pub line: usize,
    /// The target as written.
    pub target: String,
}

/// The inline links of a page, outside fenced blocks and code spans.
pub fn links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for (line_no, line) in prose(text) {
        for (k, part) in line.split('`').enumerate() {
            if k % 2 == 1 {
                continue; // inside a code span
            }
            let mut rest = part;
            while let Some(at) = rest.find("](") {
                let after = &rest[at + 2..];
                let Some(end) = after.find(')') else { break };
                let target = &after[..end];
                if !target.is_empty() && !target.contains(char::is_whitespace) {
                    out.push(Link {
                        line: line_no,
                        target: target.to_string(),
                    });
                }
                rest = &after[end..];
            }
        }
    }
    out
}

/// The code spans of a page's prose (`like this`).
pub fn code_spans(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (line_no, line) in prose(text) {
        for (k, part) in line.split('`').enumerate() {
            if k % 2 == 1 {
                out.push((line_no, part.to_string()));
            }
        }
    }
    out
}

/// A command line of a shell block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// Line in the block (0-based) where it starts.
    pub offset: usize,
    /// The line as written, continuations joined and the comment removed.
    pub text: String,
    /// For `console` blocks, what the block shows it printing.
    pub output: Vec<String>,
}

/// A file a block writes with a here-document (`cat > pipeline.yaml <<'YAML'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HereDoc {
    /// The file it writes.
    pub file: String,
    /// What it writes.
    pub body: String,
}

/// The command lines of a `sh`, `bash` or `console` block (in a console block only the
/// lines after `$ `, each with the output shown under it), and its here-documents.
pub fn command_lines(block: &Block) -> (Vec<CommandLine>, Vec<HereDoc>) {
    let console = block.lang == "console";
    let synopsis = block.has("synopsis");
    let lines: Vec<&str> = block.body.lines().collect();
    let mut commands: Vec<CommandLine> = Vec::new();
    let mut heredocs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let start = i;
        let first = if console {
            match raw.strip_prefix("$ ") {
                Some(cmd) => cmd,
                None => {
                    if let Some(last) = commands.last_mut() {
                        last.output.push(raw.to_string());
                    }
                    i += 1;
                    continue;
                }
            }
        } else {
            raw
        };
        let mut text = first.to_string();
        // A usage line goes on over `\` and over the indented lines under it.
        while i + 1 < lines.len()
            && (text.ends_with('\\') || (synopsis && lines[i + 1].starts_with(' ')))
        {
            if text.ends_with('\\') {
                text.pop();
            }
            text.truncate(text.trim_end().len());
            i += 1;
            text.push(' ');
            text.push_str(lines[i].trim_start());
        }
        i += 1;
        if let Some((file, end)) = heredoc_start(&text) {
            let mut body = Vec::new();
            while i < lines.len() && lines[i].trim() != end {
                body.push(lines[i]);
                i += 1;
            }
            i += 1;
            heredocs.push(HereDoc {
                file,
                body: body.join("\n"),
            });
        }
        let text = strip_comment(&text).trim().to_string();
        if !text.is_empty() {
            commands.push(CommandLine {
                offset: start,
                text,
                output: Vec::new(),
            });
        }
    }
    (commands, heredocs)
}

/// `cat > FILE <<'END'` -> (FILE, END).
fn heredoc_start(line: &str) -> Option<(String, String)> {
    let at = line.find("<<")?;
    let end = line[at + 2..]
        .trim_start_matches('-')
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let file = line[..at]
        .split_once('>')
        .map(|(_, f)| f.trim().to_string())
        .unwrap_or_default();
    (!end.is_empty()).then_some((file, end))
}

/// The line without its `# comment` (a `#` starting a word outside quotes).
pub fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// The words of each simple command of a line (split at `&&`, `||`, `|` and `;` outside
/// quotes), quotes removed. No expansion: `$VAR` stays as written.
pub fn simple_commands(line: &str) -> Result<Vec<Vec<String>>, String> {
    let mut commands = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => w.extend(chars.next()),
                        Some(other) => w.push(other),
                        None => return Err(format!("unclosed {c} in: {line}")),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '&' | '|' | ';' => {
                if c == '&' && chars.peek() != Some(&'&') {
                    word.get_or_insert_with(String::new).push(c);
                    continue;
                }
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                if let Some(w) = word.take() {
                    commands.last_mut().expect("one command at least").push(w);
                }
                commands.push(Vec::new());
            }
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    commands.last_mut().expect("one command at least").push(w);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word.take() {
        commands.last_mut().expect("one command at least").push(w);
    }
    commands.retain(|c| !c.is_empty());
    Ok(commands)
}

/// The program and arguments a simple command runs, past `sudo` and `NAME=value`
/// assignments; `cargo run ... -- ARGS` runs the package's binary with ARGS, and
/// `kubectl exec ... -- CMD` runs CMD.
pub fn invocation(words: &[String]) -> Option<(String, Vec<String>)> {
    let mut rest: &[String] = words;
    while let Some((first, tail)) = rest.split_first() {
        let assignment = first.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if first == "sudo" || first == "exec" || assignment {
            rest = tail;
        } else {
            break;
        }
    }
    let (program, args) = rest.split_first()?;
    let after_dashes = || {
        let at = args.iter().position(|a| a == "--")?;
        Some(args[at + 1..].to_vec())
    };
    match program.as_str() {
        "cargo" if args.first().is_some_and(|a| a == "run") => {
            let package = args
                .windows(2)
                .find(|w| w[0] == "-p")
                .map(|w| w[1].clone())?;
            Some((package, after_dashes().unwrap_or_default()))
        }
        "kubectl" if args.first().is_some_and(|a| a == "exec") => invocation(&after_dashes()?),
        _ => Some((program.clone(), args.to_vec())),
    }
}

/// Reads YAML the way kubectl does before it sends it: YAML 1.1 booleans and octal
/// numbers, and integral floats as integers (what Go's JSON writes for them).
pub fn as_kubectl_sends(text: &str) -> Result<Value, String> {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    let mut value: Value =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())?;
    integral_floats_to_integers(&mut value);
    Ok(value)
}

fn integral_floats_to_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= 9_007_199_254_740_992.0
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// The block's text without the indentation all its lines share.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `over` merged into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `value` nested under a dotted path (`spec.source.mqtt`).
pub fn nest(path: &str, value: Value) -> Value {
    path.rsplit('.')
        .filter(|k| !k.is_empty())
        .fold(value, |inner, key| serde_json::json!({ key: inner }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_made_as_github_makes_them() {
        let text = "# A\n## Watching a running agent: `edge-agent top`\n```sh\n# not a heading\n```\n## Metrics\n### Metrics\n";
        assert_eq!(
            anchors(text),
            [
                "a",
                "watching-a-running-agent-edge-agent-top",
                "metrics",
                "metrics-1"
            ]
        );
        assert_eq!(
            slug("Encryption at rest (`buffer.encryption`)"),
            "encryption-at-rest-bufferencryption"
        );
    }

    #[test]
    fn blocks_keep_their_marks_and_lose_their_indentation() {
        let text = "x\n  ```yaml fragment=spec.source.mqtt\n  a: 1\n    b: 2\n  ```\n";
        let b = &blocks(text)[0];
        assert_eq!((b.line, b.lang.as_str()), (2, "yaml"));
        assert_eq!(b.mark("fragment"), Some("spec.source.mqtt"));
        assert!(!b.has("sketch"));
        assert_eq!(b.body, "a: 1\n  b: 2");
    }

    #[test]
    fn links_outside_code_only() {
        let text = "see [a](b.md#c) and `[x](y)`\n```\n[z](w)\n```\n";
        assert_eq!(
            links(text),
            vec![Link {
                line: 1,
                target: "b.md#c".into()
            }]
        );
    }

    #[test]
    fn command_lines_join_continuations_and_skip_heredocs() {
        let block = Block {
            line: 1,
            lang: "sh".into(),
            marks: vec![],
            body: "cat > p.yaml <<'YAML'\na: 1\nYAML\nsudo edge-agent check \\\n  --config p.yaml   # checks\n".into(),
        };
        let (commands, heredocs) = command_lines(&block);
        assert_eq!(
            heredocs,
            vec![HereDoc {
                file: "p.yaml".into(),
                body: "a: 1".into()
            }]
        );
        let texts: Vec<&str> = commands.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "cat > p.yaml <<'YAML'",
                "sudo edge-agent check --config p.yaml"
            ]
        );
    }

    #[test]
    fn console_lines_carry_their_output() {
        let block = Block {
            line: 1,
            lang: "console".into(),
            marks: vec![],
            body: "$ edge-agent check --config a.yaml\nok\n$ true\n".into(),
        };
        let (commands, _) = command_lines(&block);
        assert_eq!(commands[0].output, ["ok"]);
        assert!(commands[1].output.is_empty());
    }

    #[test]
    fn simple_commands_split_and_unquote() {
        let words =
            simple_commands(r#"make && X=1 sudo edge-agent run --config "a b.yaml" | grep 'x|y'"#)
                .unwrap();
        assert_eq!(words.len(), 3);
        assert_eq!(
            words[1],
            ["X=1", "sudo", "edge-agent", "run", "--config", "a b.yaml"]
        );
        assert_eq!(words[2], ["grep", "x|y"]);
        let (program, args) = invocation(&words[1]).unwrap();
        assert_eq!((program.as_str(), args.len()), ("edge-agent", 3));
        let cargo = simple_commands("cargo run --release -p edge-agent -- demo").unwrap();
        assert_eq!(
            invocation(&cargo[0]),
            Some(("edge-agent".into(), vec!["demo".into()]))
        );
    }

    #[test]
    fn yaml_is_read_as_kubectl_sends_it() {
        let v = as_kubectl_sends("a: yes\nb: 010\nc: 1.0\nd: \"no\"\n").unwrap();
        assert_eq!(v, serde_json::json!({"a": true, "b": 8, "c": 1, "d": "no"}));
    }
}
