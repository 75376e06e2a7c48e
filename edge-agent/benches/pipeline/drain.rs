//! B3 backlog drain: a queue of 1M records (filled directly through the queue's store)
//! is sent by the agent to a fast local HTTP receiver, without and with gzip; baseline:
//! raw loopback HTTP POSTs of the same number of same-size bodies from one client.

use std::path::Path;
use std::time::{Duration, Instant};

use edge_agent::delivery::queue::seal::Keyring;
use edge_agent::delivery::queue::{Store, StoreSettings};
use edge_agent::record::{Reading, Record};
use edge_crds::{Durability, WhenFull};
use edge_testkit::metrics::sum;

use crate::scaled;
use crate::util::{self, BenchResult};

/// Messages per fill transaction.
const FILL_GROUP: usize = 10_000;

fn fill(dir: &Path, n: usize, keys: Keyring) -> BenchResult<()> {
    let settings = StoreSettings {
        pipeline: "bench/ingest".into(),
        node: "bench".into(),
        max_bytes: 1 << 34,
        max_dead_letter_bytes: 1 << 30,
        when_full: WhenFull::DropOldest,
        durability: Durability::Os,
        keys,
    };
    let mut store = Store::open(dir, settings).map_err(|e| e.to_string())?.store;
    let now = edge_agent::runtime::clock::now_ms();
    let mut i = 0usize;
    while i < n {
        let units: Vec<[Record; 1]> = (i..(i + FILL_GROUP).min(n))
            .map(|k| {
                let d = k % 100;
                [Record::reading(&Reading {
                    device: format!("d{d}"),
                    topic: format!("sensors/d{d}/temperature"),
                    value: 20.0 + (k % 1000) as f64 / 1000.0,
                    timestamp_ms: now - 3_600_000 + (k / 100) as i64,
                    received_ms: now,
                })]
            })
            .collect();
        let refs: Vec<&[Record]> = units.iter().map(|u| u.as_slice()).collect();
        store.append(&refs, now).map_err(|e| e.to_string())?;
        i += FILL_GROUP;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> BenchResult<()> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Sequential POSTs of `count` bodies of `size` bytes; seconds taken.
async fn raw_posts(count: u64, size: usize) -> BenchResult<f64> {
    let receiver = util::receiver().await;
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| e.to_string())?;
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let url = format!("http://127.0.0.1:{}/ingest", receiver.port);
    let start = Instant::now();
    for _ in 0..count {
        let resp = client
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.bytes().await.map_err(|e| e.to_string())?;
    }
    Ok(start.elapsed().as_secs_f64())
}

pub async fn b3(dir: &Path) -> BenchResult<Vec<String>> {
    let n = scaled(1_000_000);
    let filled = dir.join("filled");
    let fill_start = Instant::now();
    tokio::task::block_in_place(|| fill(&filled, n, Keyring::default()))?;
    let sealed = dir.join("filled-sealed");
    tokio::task::block_in_place(|| fill(&sealed, n, util::bench_keys()))?;
    eprintln!("b3: filled {n} records twice in {:?}", fill_start.elapsed());
    let broker = util::broker("");
    let mut rows = Vec::new();
    let mut plain_rate = None;
    for (gzip, encrypted) in [(false, false), (true, false), (false, true)] {
        let run = dir.join(match (gzip, encrypted) {
            (_, true) => "sealed",
            (true, _) => "gzip",
            _ => "plain",
        });
        let from = if encrypted { &sealed } else { &filled };
        tokio::task::block_in_place(|| copy_dir(from, &run.join("data")))?;
        let receiver = util::receiver().await;
        let sink = format!("http://127.0.0.1:{}/ingest", receiver.port);
        let durability = if encrypted {
            util::encrypted("os", dir)?
        } else {
            "os".to_string()
        };
        let start = Instant::now();
        let mut agent = util::agent(
            &run,
            &util::pipeline(broker.port, "", &durability, &sink, gzip),
        )
        .await;
        let synced = |m: &util::Series| sum(m, "edge_agent_records_synced_total");
        util::until_metrics(
            &mut agent,
            Duration::from_secs(240),
            Duration::from_millis(20),
            |m| synced(m) >= n as f64,
        )
        .await
        .map_err(|m| format!("only {} of {n} records drained in 240 s", synced(&m)))?;
        let secs = start.elapsed().as_secs_f64();
        let counts = receiver.counts();
        let (requests, wire) = (counts.requests, counts.bytes);
        drop(agent);
        let size = (wire / requests.max(1)) as usize;
        let base = raw_posts(requests, size).await?;
        let rate = n as f64 / secs;
        let base_rate = n as f64 / base;
        if encrypted {
            let plain: f64 = plain_rate.unwrap_or(rate);
            let ratio = rate / plain;
            rows.push(format!(
                "| B3 drain {n} queued records, batch 1000, encrypted | {rate:.0} records/s ({secs:.1} s) | unencrypted, same run: {plain:.0} records/s | {ratio:.2} | ≥ 0.85 (at most 15% slower) {} |",
                if ratio >= 0.85 { "met" } else { "**missed**" },
            ));
            continue;
        }
        if !gzip {
            plain_rate = Some(rate);
        }
        rows.push(format!(
            "| B3 drain {n} queued records, batch 1000, {} | {rate:.0} records/s ({secs:.1} s), {requests} POSTs, {:.1} MiB body bytes ({:.1} B/record) | raw loopback POSTs of {requests} x {size} B: {base:.2} s = {base_rate:.0} records/s | {:.2} | — |",
            if gzip { "gzip" } else { "no compression" },
            wire as f64 / 1_048_576.0,
            wire as f64 / n as f64,
            rate / base_rate,
        ));
    }
    Ok(rows)
}
