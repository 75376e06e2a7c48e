//! `edge-agent dead-letters [list|show|replay|purge]`: look at the batches the upstream
//! rejected, send them again once the upstream is fixed, or delete them.
//!
//! Every command works while the agent runs: each is one short transaction on the queue
//! file, and the agent picks up the change within a second (see `queue::dead`).

use std::path::Path;
use std::process::ExitCode;

use crate::delivery::queue::dead::{self, Selection};
use crate::delivery::queue::seal::Keyring;
use crate::record::format_timestamp_ms;
use crate::runtime::clock::now_ms;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rusqlite::Connection;

/// `edge-agent dead-letters ...`
#[derive(Subcommand)]
pub enum DeadLetterCommand {
    /// List the dead letters: id, when, HTTP status, records, `seq` range, size and the
    /// start of the upstream's answer (the default).
    List,
    /// Print the records of one dead letter (a JSON array, as it was sent).
    Show {
        /// The dead letter's id (from `list`).
        #[arg(long)]
        id: i64,
    },
    /// Put dead letters' records back into the queue, under their own `seq`: the agent
    /// sends them again, before anything newer.
    Replay(Which),
    /// Delete dead letters.
    Purge(Which),
}

/// Which dead letters a command applies to.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// A dead letter's id (from `list`); repeat for several.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<i64>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
}

/// Runs `command` (listing when none) on the queue in `dir`.
pub fn run(
    dir: &Path,
    keys: &Keyring,
    command: Option<DeadLetterCommand>,
) -> anyhow::Result<ExitCode> {
    let command = command.unwrap_or(DeadLetterCommand::List);
    let write = matches!(
        command,
        DeadLetterCommand::Replay(_) | DeadLetterCommand::Purge(_)
    );
    let Some(mut conn) = dead::open(dir, write)
        .with_context(|| format!("opening the queue in {}", dir.display()))?
    else {
        println!("no queue in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    // An encrypted queue is read only with its keys (`--config` names them).
    keys.check(&conn)
        .with_context(|| format!("the queue in {} (pass --config)", dir.display()))?;
    match command {
        DeadLetterCommand::List => list(&conn, dir)?,
        DeadLetterCommand::Show { id } => match dead::body(&conn, id, keys)? {
            Some(body) => println!("{}", String::from_utf8_lossy(&body)),
            None => bail!("no dead letter with id {id} in {}", dir.display()),
        },
        DeadLetterCommand::Replay(which) => {
            let selection = select(&conn, &which)?;
            let done = dead::replay(&mut conn, selection, now_ms(), keys)?;
            println!(
                "replayed {} dead letters ({} records) into the queue in {}; the agent sends them next",
                done.batches,
                done.records,
                dir.display()
            );
        }
        DeadLetterCommand::Purge(which) => {
            let selection = select(&conn, &which)?;
            let done = dead::purge(&mut conn, selection)?;
            println!(
                "purged {} dead letters ({} records) from {}",
                done.batches,
                done.records,
                dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The selection `which` asks for; every id given must exist.
fn select<'a>(conn: &Connection, which: &'a Which) -> anyhow::Result<Selection<'a>> {
    if which.all {
        return Ok(Selection::All);
    }
    let known: Vec<i64> = dead::list(conn)?.iter().map(|l| l.id).collect();
    let unknown: Vec<String> = which
        .ids
        .iter()
        .filter(|id| !known.contains(id))
        .map(i64::to_string)
        .collect();
    if !unknown.is_empty() {
        bail!(
            "no dead letter with id {} (nothing changed; `edge-agent dead-letters list` shows them)",
            unknown.join(", ")
        );
    }
    Ok(Selection::Ids(&which.ids))
}

fn list(conn: &Connection, dir: &Path) -> anyhow::Result<()> {
    let letters = dead::list(conn).context("reading the dead letters")?;
    if letters.is_empty() {
        println!("no dead letters in {}", dir.display());
        return Ok(());
    }
    println!(
        "{:>5}  {:<24}  {:>6}  {:>7}  {:<23}  {:>9}  REASON",
        "ID", "TIME", "STATUS", "RECORDS", "SEQ", "BYTES"
    );
    for l in letters {
        println!(
            "{:>5}  {:<24}  {:>6}  {:>7}  {:<23}  {:>9}  {}",
            l.id,
            format_timestamp_ms(l.at_ms),
            l.status,
            l.records,
            format!("{}-{}", l.first_seq, l.last_seq),
            l.bytes,
            // The upstream wrote it: no control characters reach the terminal.
            l.reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        );
    }
    Ok(())
}
