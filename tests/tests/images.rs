//! The container images and the single-device Compose deployment, for real, on the
//! Docker engine Debian ships (`docker.io`, started by `tests/scripts/install-deps.sh`):
//!
//! - `deploy/docker/Dockerfile` builds its `agent` and `operator` stages without a
//!   registry: the base images are build arguments (defaults: the public ones), here the
//!   local Debian base made with debootstrap, and the binaries are the suite's own
//!   (`BINARIES=prebuilt`); both images run as 65532:65532 on a read-only root filesystem
//!   with every capability dropped, and answer `--version`; their sizes are printed;
//! - `deploy/docker/compose.yaml` comes up with Compose (Debian's `docker-compose`): a
//!   reading flows from the Mosquitto container through the agent container to a receiver
//!   on the host, and a `docker kill` of the agent in the middle of a stream loses nothing.
//!
//! Needs root (the engine's socket). Built and tested here: linux/amd64; the other
//! platforms of the Dockerfile are cross-compiled by its builder stage, never run here.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use edge_testkit::agent::http_get;
use edge_testkit::images::{BASE, DOCKER, MOSQUITTO, run_ok as ok};
use edge_testkit::mqtt::Publisher;
use edge_testkit::receiver::Receiver;
use edge_testkit::{free_port, poll, workspace_root};

const WAIT: Duration = Duration::from_secs(120);

fn inspect(image: &str, format: &str) -> String {
    ok(
        DOCKER,
        &["image", "inspect", image, "--format", format],
        &[],
    )
    .trim()
    .to_string()
}

#[test]
fn the_images_build_without_a_registry_and_run_non_root_on_a_read_only_root() {
    let (agent, operator) = edge_testkit::images::build();
    let version = env!("CARGO_PKG_VERSION");
    for (image, binary) in [(agent, "edge-agent"), (operator, "edge-operator")] {
        assert_eq!(inspect(image, "{{.Config.User}}"), "65532:65532", "{image}");
        let entrypoint = inspect(image, "{{json .Config.Entrypoint}}");
        assert_eq!(entrypoint, format!(r#"["/usr/local/bin/{binary}"]"#));
        let out = ok(
            DOCKER,
            &[
                "run",
                "--rm",
                "--read-only",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges:true",
                image,
                "--version",
            ],
            &[],
        );
        assert_eq!(out.trim(), format!("{binary} {version}"), "{image}");
        let size: f64 = inspect(image, "{{.Size}}").parse().expect("a size");
        let base: f64 = inspect(BASE, "{{.Size}}").parse().expect("a size");
        println!(
            "{image}: {:.1} MB ({:.1} MB of it the local Debian base; the binary is the suite's debug build)",
            size / 1e6,
            base / 1e6
        );
    }
    // The agent's queue directory is the runtime user's, so a fresh volume is writable.
    let owner = ok(
        DOCKER,
        &[
            "run",
            "--rm",
            "--entrypoint",
            "stat",
            agent,
            "-c",
            "%u:%g",
            "/var/lib/edgepipe",
        ],
        &[],
    );
    assert_eq!(owner.trim(), "65532:65532");
}

/// The Compose project of one test, taken down (volumes included) when dropped.
struct Project {
    name: String,
    files: Vec<String>,
    env: Vec<(String, String)>,
}

impl Project {
    fn compose(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = vec!["-p", &self.name];
        for file in &self.files {
            all.extend(["-f", file.as_str()]);
        }
        all.extend(args);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ok("docker-compose", &all, &env)
    }

    fn container(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service]).trim().to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let mut args: Vec<&str> = vec!["-p", &self.name];
        for file in &self.files {
            args.extend(["-f", file.as_str()]);
        }
        args.extend(["down", "-v", "--timeout", "5"]);
        let _ = Command::new("docker-compose")
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
    }
}

fn distinct_values(receiver: &Receiver) -> BTreeSet<i64> {
    receiver
        .accepted()
        .iter()
        .filter_map(|r| r["value"].as_f64())
        .map(|v| v as i64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_runs_a_device_and_a_killed_agent_loses_nothing() {
    let (agent, _) = edge_testkit::images::build();
    let receiver = Receiver::start_for_containers().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {{name: temperature, namespace: default}}
spec:
  source:
    mqtt: {{url: "mqtt://mosquitto:1883", topics: ["sensors/+/temperature"], qos: 1}}
    format: {{value: value, device: device_id}}
  buffer: {{durability: fsync}}
  sink:
    http:
      url: http://host.docker.internal:{}/ingest
      batchSize: 10
      flushInterval: 100ms
      retry: {{initialBackoff: 50ms, maxBackoff: 500ms}}
"#,
            receiver.port
        ),
    )
    .expect("pipeline");
    // The test's own pipeline (the shipped one sends to ingest.example.com), and the way
    // to the receiver on the host.
    let override_file = dir.path().join("compose.test.yaml");
    std::fs::write(
        &override_file,
        format!(
            "services:\n  agent:\n    extra_hosts: [\"host.docker.internal:host-gateway\"]\n    volumes:\n      - {}:/etc/edgepipe/pipeline.yaml:ro\n",
            pipeline.display()
        ),
    )
    .expect("override");
    let (mqtt_port, metrics_port) = (free_port(), free_port());
    let project = Project {
        name: format!("edgepipe-test-{}", std::process::id()),
        files: vec![
            workspace_root()
                .join("deploy/docker/compose.yaml")
                .display()
                .to_string(),
            override_file.display().to_string(),
        ],
        env: vec![
            ("EDGEPIPE_AGENT_IMAGE".into(), agent.to_string()),
            ("EDGEPIPE_MOSQUITTO_IMAGE".into(), MOSQUITTO.into()),
            ("EDGEPIPE_MQTT_PORT".into(), mqtt_port.to_string()),
            ("EDGEPIPE_METRICS_PORT".into(), metrics_port.to_string()),
            ("HOSTNAME".into(), "compose-device".into()),
        ],
    };
    project.compose(&["up", "-d", "--no-build"]);
    let ready = || http_get(metrics_port, "/readyz").is_some_and(|(code, _)| code == 200);
    poll(WAIT, "the agent container ready", || ready().then_some(()));

    let mut publisher = Publisher::connect(mqtt_port, "compose-sensors");
    let mut publish = async |range: std::ops::Range<i64>| {
        for i in range {
            let payload = format!(r#"{{"device_id":"t{}","value":{i}}}"#, i % 5);
            publisher.send("sensors/t/temperature", payload).await;
        }
        publisher.flush().await;
    };
    publish(0..40).await;
    poll(WAIT, "the first readings at the receiver", || {
        (distinct_values(&receiver).len() >= 10).then_some(())
    });

    // kill -9 of the agent in the middle of the stream; what the sensors publish
    // meanwhile waits in its session at the broker, what it queued in its volume.
    ok(DOCKER, &["kill", &project.container("agent")], &[]);
    publish(40..80).await;
    project.compose(&["start", "agent"]);
    poll(WAIT, "the agent container ready again", || {
        ready().then_some(())
    });
    publish(80..100).await;

    let received = poll(WAIT, "every reading at the receiver", || {
        let values = distinct_values(&receiver);
        (values.len() == 100).then_some(values)
    });
    assert_eq!(received, (0..100).collect::<BTreeSet<i64>>());
    let records = receiver.accepted();
    let seqs: BTreeSet<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), 100, "one sequence number per reading");
    assert!(
        records
            .iter()
            .all(|r| r["node"].as_str() == Some("compose-device")),
        "the node is the compose host's name: {:?}",
        records.first()
    );
}
