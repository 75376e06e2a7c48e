//! F2 (issue 8): a real cloud outage. The HTTP receiver runs in a network namespace of its
//! own behind a veth link; the test cuts the link, then makes the receiver slow (past the
//! sink timeout, then just slow) and failing (503), while readings keep streaming in. The
//! agent stays live and ready throughout, and the backlog drains to exactly the published
//! readings. Root only; the namespace is removed by a guard even on panic.

use crate::common;
use crate::faults;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use faults::netns::CloudNamespace;
use faults::*;

const TOPIC: &str = "sensors/+/temperature";

/// Polls `/livez` and `/readyz` every 50 ms until stopped; returns every non-200 answer.
fn watch_health(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut polls = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for path in ["/livez", "/readyz"] {
                match http_get(port, path) {
                    Some((200, _)) => {}
                    other => failures.push(format!("{path} after {polls} polls: {other:?}")),
                }
            }
            polls += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(polls > 20, "health was polled during the faults");
        failures
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_a_cut_link_slow_and_failing_upstream_drain_fully_while_live_and_ready() {
    require_root("F2");
    let n: u64 = if soak() { 40_000 } else { 6_000 };
    let hold = if soak() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };
    let cloud = CloudNamespace::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    prepare_session(broker.port, "agent-f2", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-f2",
        receiver_port: 1,
        batch_size: 200,
        ..Pipeline::default()
    }
    .yaml()
    .replace("http://127.0.0.1:1/ingest", &cloud.url());
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let health = watch_health(agent.metrics_port, stop.clone());
    let port = broker.port;
    // About 1000 readings a second, so the stream spans every fault.
    let publishing = tokio::spawn(publish_through_faults(port, "publisher-f2", 0..n, 10));
    let received = series("edge_agent_messages_received_total", &[]);
    let upstream_up = series("edge_agent_upstream_up", &[]);
    let synced = series("edge_agent_records_synced_total", &[]);
    agent
        .wait_metric(&synced, 200.0, Duration::from_secs(20))
        .await;

    // The link goes down: requests hang until the sink timeout, new connections fail.
    cloud.link(false);
    let cut_at = agent.metric(&received);
    eventually(
        Duration::from_secs(15),
        "the agent saw the outage",
        async || (agent.metric(&upstream_up) == 0.0).then_some(()),
    )
    .await;
    tokio::time::sleep(hold).await;
    assert!(
        agent.metric(&received) > cut_at,
        "ingest went on while the link was down"
    );
    cloud.link(true);

    // Slower than the sink's 2 s timeout, then slow but in time.
    cloud.delay(Some(Duration::from_millis(2500)));
    tokio::time::sleep(hold).await;
    cloud.delay(Some(Duration::from_millis(300)));
    tokio::time::sleep(hold).await;
    cloud.delay(None);

    // Failing with 503.
    cloud.answer(Some(503));
    tokio::time::sleep(hold).await;
    cloud.answer(None);

    tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publisher finished")
        .expect("publisher");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, _) = indices_by_seq(&cloud.accepted());
        if got.len() as u64 >= n {
            assert_eq!(got, (0..n).collect(), "{}", difference(&got, n));
            break;
        }
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain: {}\n{}",
            difference(&got, n),
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = health.join().expect("health watcher");
    assert!(
        failures.is_empty(),
        "the agent was not live and ready throughout: {failures:?}"
    );
    let retries = agent.metric(&series(
        "edge_agent_sync_requests_total",
        &[("outcome", "retry")],
    ));
    assert!(retries > 0.0, "the faults made the sink retry");
    eprintln!("f2: {n} readings delivered after the outage, {retries} retried requests");
    assert_eq!(agent.metric(&upstream_up), 1.0, "upstream up again");
}
