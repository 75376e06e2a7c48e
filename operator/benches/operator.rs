//! B8: the operator's pure work for 1,000 pipelines — render (ConfigMap + DaemonSet) and
//! status — timed with the process's peak RSS, against a baseline of plain `serde_json`
//! serialisation of the same rendered objects in the same run.
//!
//! `cargo bench -p edge-operator --bench operator` prints Markdown table rows (`| B8 ...`).

use std::time::Instant;

use edge_operator::render::{check, pipeline_from_manifest};
use edge_operator::{RenderOptions, Rendered, render, status};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Pipelines rendered per round.
const PIPELINES: usize = 1_000;
/// Rounds; the best round is reported (least disturbed by other processes).
const ROUNDS: usize = 5;

const MANIFEST: &str = include_str!("../../deploy/examples/temperature-significant-change.yaml");

fn main() {
    let base = match pipeline_from_manifest(MANIFEST) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("example manifest: {e}");
            std::process::exit(1);
        }
    };
    let pipelines: Vec<_> = (0..PIPELINES)
        .map(|i| {
            let mut p = base.clone();
            p.metadata.name = Some(format!("line{i}-temperature"));
            p.metadata.namespace = Some(format!("site{}", i % 20));
            p.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
            p.metadata.generation = Some(1);
            p
        })
        .collect();
    let options = RenderOptions::default();
    let now = Time(Timestamp::now());
    let rss_before = rss_kib("VmRSS");

    let mut best_render = f64::MAX;
    let mut best_json = f64::MAX;
    let mut rendered: Vec<Rendered> = Vec::with_capacity(PIPELINES);
    let mut json_bytes = 0usize;
    for _ in 0..ROUNDS {
        rendered.clear();
        let start = Instant::now();
        for p in &pipelines {
            let validation = check(p);
            match render(p, &options) {
                Ok(r) => {
                    let s = status::compute(
                        p,
                        validation.as_ref().map(|_| ()).map_err(Vec::as_slice),
                        Some(&r.daemon_set),
                        &now,
                    );
                    std::hint::black_box(s);
                    rendered.push(r);
                }
                Err(e) => {
                    eprintln!("render {:?}: {e}", p.metadata.name);
                    std::process::exit(1);
                }
            }
        }
        best_render = best_render.min(start.elapsed().as_secs_f64());

        let start = Instant::now();
        json_bytes = 0;
        for r in &rendered {
            let cm = serde_json::to_vec(&r.config_map).unwrap_or_default();
            let ds = serde_json::to_vec(&r.daemon_set).unwrap_or_default();
            json_bytes += cm.len() + ds.len();
            std::hint::black_box((cm, ds));
        }
        best_json = best_json.min(start.elapsed().as_secs_f64());
    }
    let hwm = rss_kib("VmHWM");
    println!(
        "| B8 operator render+status, {PIPELINES} pipelines | {:.1} ms ({:.1} µs/pipeline), peak RSS {:.1} MiB ({:+.1} MiB for the batch) | serde_json of the same objects: {:.1} ms ({:.0} KiB) | {:.1}x | — |",
        best_render * 1e3,
        best_render * 1e6 / PIPELINES as f64,
        hwm / 1024.0,
        (hwm - rss_before) / 1024.0,
        best_json * 1e3,
        json_bytes as f64 / 1024.0,
        best_render / best_json,
    );
}

/// A `/proc/self/status` field in KiB (0 if unreadable).
fn rss_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}
