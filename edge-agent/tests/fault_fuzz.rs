//! F6 (issue 8): fuzzing with proptest, many cases per run (10k by default, more with
//! `EDGEPIPE_SOAK=1` or `PROPTEST_CASES`). Payload parsing takes arbitrary bytes and
//! arbitrary JSON shapes; config loading takes YAML-ish noise and mutated valid manifests
//! (never a panic; every validation error names a field); the HTTP sink's response
//! classification takes any status and any `Retry-After` (bounded wait). And for real:
//! an upstream answering 503 with a huge body does not blow up the agent's memory.

use crate::common;
use crate::faults;

use std::time::{Duration, Instant};

use common::*;
use edge_agent::config::{AgentConfig, ConfigError};
use edge_agent::delivery::sink::http::{Verdict, verdict};
use edge_agent::pipeline::parse::PayloadParser;
use edge_crds::PayloadFormat;
use edge_crds::manifest::ManifestError;
use faults::*;
use proptest::prelude::*;
use serde_json::Value;

fn cases() -> u32 {
    if soak() { 200_000 } else { 10_000 }
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES, when set, wins over the default.
    let mut c = ProptestConfig::with_cases(cases());
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.cases = n;
    }
    c.failure_persistence = None;
    c
}

fn parsers() -> Vec<PayloadParser> {
    let formats = [
        ("value", "device_id", Some("timestamp")),
        ("data.temp", "topic[1]", None),
        ("a.b.c", "meta.device", Some("meta.ts")),
        ("value", "topic[9]", Some("value")),
    ];
    formats
        .iter()
        .map(|(value, device, ts)| {
            let format = PayloadFormat {
                value: value.to_string(),
                device: device.to_string(),
                timestamp: ts.map(str::to_string),
                ..PayloadFormat::default()
            };
            PayloadParser::new(&format, 64 * 1024)
        })
        .collect()
}

/// Arbitrary JSON, with the field names the parsers look for mixed in.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,15}Z?".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("value".to_string()),
        Just("device_id".to_string()),
        Just("timestamp".to_string()),
        Just("data".to_string()),
        Just("temp".to_string()),
        Just("meta".to_string()),
        ".{0,8}",
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check_parse(payload: &[u8], topic: &str) -> Result<(), TestCaseError> {
    for parser in parsers() {
        if let Ok(reading) = parser.parse(topic, payload, 1_795_608_000_000) {
            prop_assert!(
                reading.value.is_finite(),
                "a reading with a non-finite value"
            );
            prop_assert!(!reading.device.is_empty(), "a reading without a device");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn f6_payload_parsing_never_panics_on_arbitrary_bytes(
        payload in prop::collection::vec(any::<u8>(), 0..512),
        topic in "[a-z/+#\\x00-\\x7f]{0,40}",
    ) {
        check_parse(&payload, &topic)?;
    }

    #[test]
    fn f6_payload_parsing_never_panics_on_arbitrary_json_shapes(root in json()) {
        let payload = serde_json::to_vec(&root).expect("serialise");
        check_parse(&payload, "sensors/t1/temperature")?;
    }

    #[test]
    fn f6_retry_after_is_bounded_whatever_the_status_and_header(
        status in 100u16..1000,
        header in prop_oneof![
            Just(None),
            ".{0,40}".prop_map(Some),
            any::<u64>().prop_map(|n| Some(n.to_string())),
            "[0-9]{1,40}".prop_map(Some),
            Just(Some("Wed, 21 Oct 2015 07:28:00 GMT".to_string())),
        ],
    ) {
        let Ok(code) = reqwest::StatusCode::from_u16(status) else {
            return Ok(());
        };
        let dead_letter_on = [400, 413, 415, 422];
        let v = verdict(code, header.as_deref(), &dead_letter_on);
        match v {
            Verdict::Accepted => prop_assert!(code.is_success()),
            Verdict::Rejected => prop_assert!(dead_letter_on.contains(&status)),
            Verdict::Unauthorized => prop_assert!(matches!(status, 401 | 403 | 407)),
            Verdict::Retry(after) => {
                prop_assert!(!code.is_success());
                if let Some(after) = after {
                    prop_assert!(after <= Duration::from_secs(3600), "waits {after:?}");
                }
            }
        }
    }
}

/// Valid manifests to mutate: the shipped examples.
fn examples() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/examples")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    texts.sort();
    assert!(!texts.is_empty(), "no examples in {}", dir.display());
    texts
}

#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    ReplaceToken(usize, String),
    Truncate(usize),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let garbage = prop_oneof![
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("~".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        Just("0s".to_string()),
        Just("99999999999Gi".to_string()),
        Just("NaN".to_string()),
        Just("&a *a".to_string()),
        "[ -~]{0,12}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), garbage.clone()).prop_map(|(i, g)| Mutation::ReplaceToken(i, g)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), garbage).prop_map(|(i, g)| Mutation::Insert(i, g)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
        }
        Mutation::DuplicateLine(i) => {
            if let Some(l) = lines.get(i % n).cloned() {
                lines.insert(i % n, l);
            }
        }
        Mutation::ReplaceToken(i, g) => {
            let mut tokens: Vec<String> = text.split(' ').map(str::to_owned).collect();
            let k = i % tokens.len().max(1);
            if let Some(t) = tokens.get_mut(k) {
                *t = g.clone();
            }
            return tokens.join(" ");
        }
        Mutation::Truncate(i) => {
            let cut = i % text.len().max(1);
            let cut = (0..=cut)
                .rev()
                .find(|c| text.is_char_boundary(*c))
                .unwrap_or(0);
            return text[..cut].to_string();
        }
        Mutation::Insert(i, g) => lines.insert(i % n, g.clone()),
    }
    lines.join("\n")
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match AgentConfig::from_text(text, "edge-1", &|_| None) {
        Ok(_) => {}
        Err(ConfigError::Invalid(errors)) => {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(
                    !e.path.trim().is_empty() && !e.message.trim().is_empty(),
                    "an error without a field: {e:?}"
                );
            }
        }
        Err(ConfigError::Manifest(e @ ManifestError::Shape { .. })) => {
            prop_assert!(!e.to_string().trim().is_empty(), "an empty shape error");
        }
        Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn f6_config_loading_never_panics_on_mutated_manifests(
        which in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let texts = examples();
        let mut text = texts[which % texts.len()].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        check_config(&text)?;
    }

    #[test]
    fn f6_config_loading_never_panics_on_yaml_ish_noise(
        text in "([a-zA-Z:{}\\[\\],\\-\"' \n#&*!|>0-9.]{0,16}\n?){0,24}",
    ) {
        check_config(&text)?;
    }
}

/// A real upstream that answers every request with 503 and a 256 MiB body, as fast as
/// loopback goes: the agent keeps retrying and its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_a_huge_error_body_from_the_upstream_keeps_the_agents_memory_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: u64 = 256 << 20;
    const LIMIT_KB: u64 = 96 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Read the request head (and whatever of the body arrives with it).
                let _ = stream.read(&mut buf).await;
                let head =
                    format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {BODY}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..(BODY >> 20) {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    prepare_session(broker.port, "agent-f6", &["sensors/+/temperature"]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-f6",
        receiver_port: port,
        extra_sink: "      timeout: 10s",
        ..Pipeline::default()
    }
    .yaml()
    .replace("      timeout: 2s\n", "");
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    publish_through_faults(broker.port, "publisher-f6", 0..20, 0).await;
    let pid = agent_pid(&agent.config).expect("the agent's pid");
    let retries = series("edge_agent_sync_requests_total", &[("outcome", "retry")]);
    let started = Instant::now();
    let mut peak = 0;
    while agent.metric(&retries) < 2.0 && started.elapsed() < Duration::from_secs(30) {
        peak = peak.max(status_kb(pid, "VmHWM:").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(status_kb(pid, "VmHWM:").unwrap_or(0));
    server.abort();
    assert!(
        agent.metric(&retries) >= 1.0,
        "the 503 was retried\n{}",
        agent.log_text()
    );
    assert!(
        matches!(agent.get("/livez"), Some((200, _))),
        "the agent is live"
    );
    eprintln!("f6: agent peak RSS {peak} kB while reading 256 MiB error bodies");
    assert!(
        peak < LIMIT_KB,
        "the agent's peak RSS reached {peak} kB reading a 256 MiB error body (limit {LIMIT_KB} kB)"
    );
}
