//! The embedded broker (`source.mqtt.embedded`) of a running `edge-agent run`, driven by
//! the real Mosquitto command-line clients: readings published with `mosquitto_pub` reach
//! the HTTP receiver, a local alert published by the agent reaches `mosquitto_sub`, the
//! source's credentials are required of every client, beyond loopback only configured
//! users connect and only within their topics, and a taken port stops the agent with a
//! clear error.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use edge_testkit::pki::Pki;
use serde_json::Value;

const PUB: &str = "/usr/bin/mosquitto_pub";
const SUB: &str = "/usr/bin/mosquitto_sub";

fn pipeline(broker_port: u16, receiver_port: u16, credentials: &str) -> String {
    pipeline_yaml(
        "factory",
        "test",
        &format!(
            r#"  source:
    mqtt:
      embedded: {{listen: "127.0.0.1:{broker_port}"}}
      topics: ["sensors/+/temperature"]
{credentials}
    format: {{value: value, device: device_id}}
  processors:
    - threshold: {{above: 100}}
  actions:
    - trigger: threshold
      mqtt: {{topic: "alerts/{{device}}", qos: 1}}
  sink:
    http:
      url: http://127.0.0.1:{receiver_port}/ingest
      flushInterval: 100ms
      retry: {{initialBackoff: 50ms, maxBackoff: 500ms}}
"#
        ),
    )
}

/// `mosquitto_pub` of one QoS 1 message: `Ok` when the broker took it, else what the
/// client printed.
fn publish(
    port: u16,
    topic: &str,
    payload: &str,
    login: Option<(&str, &str)>,
) -> Result<(), String> {
    let login = login.map_or_else(Vec::new, |(user, password)| {
        vec!["-u", user, "-P", password]
    });
    mosquitto_pub("127.0.0.1", port, topic, payload, &login)
}

/// `mosquitto_pub -h host` of one QoS 1 message with `extra` arguments (a login, TLS
/// files): `Ok` when the broker took it, else the client's exit status and message.
fn mosquitto_pub(
    host: &str,
    port: u16,
    topic: &str,
    payload: &str,
    extra: &[&str],
) -> Result<(), String> {
    let out = Command::new(PUB)
        .args(["-h", host, "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run mosquitto_pub (apt install mosquitto-clients)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mosquitto_pub {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Publishes a probe reading until the receiver has one: the agent is then subscribed
/// (a message published before its subscription would have no subscriber to reach).
async fn wait_subscribed(port: u16, receiver: &Receiver, login: Option<(&str, &str)>) {
    let payload = r#"{"device_id":"probe","value":1000}"#;
    eventually(
        Duration::from_secs(15),
        "the agent subscribed",
        async || {
            if receiver.accepted().iter().any(|r| r["device"] == "probe") {
                return Some(());
            }
            publish(port, "sensors/probe/temperature", payload, login).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        },
    )
    .await;
}

/// `mosquitto_sub -v` on `filter`, with its stdout lines sent to the returned channel.
fn subscribe(port: u16, filter: &str) -> (Child, mpsc::Receiver<String>) {
    subscribe_as(port, filter, None)
}

/// [`subscribe`] logged in as `login`.
fn subscribe_as(
    port: u16,
    filter: &str,
    login: Option<(&str, &str)>,
) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(SUB);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v"])
        .args(["-t", filter]);
    if let Some((user, password)) = login {
        cmd.args(["-u", user, "-P", password]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto_sub (apt install mosquitto-clients)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Publishes probe readings until `mosquitto_sub` printed the alert of one: the agent and
/// the subscriber are then both subscribed. Each probe is followed by a reading below the
/// limit, which ends its alert episode, so the next probe alerts again.
async fn wait_alert_seen(port: u16, lines: &mpsc::Receiver<String>) {
    let payload = r#"{"device_id":"probe","value":1000}"#;
    let clear = r#"{"device_id":"probe","value":0}"#;
    eventually(
        Duration::from_secs(15),
        "a probe alert at mosquitto_sub",
        async || {
            publish(port, "sensors/probe/temperature", payload, None).unwrap();
            publish(port, "sensors/probe/temperature", clear, None).unwrap();
            let seen = lines
                .recv_timeout(Duration::from_millis(200))
                .is_ok_and(|l| l.starts_with("alerts/probe "));
            seen.then_some(())
        },
    )
    .await;
}

fn start_agent(dir: &Path, broker_port: u16, receiver: &Receiver, credentials: &str) -> Agent {
    Agent::start(dir, &pipeline(broker_port, receiver.port, credentials))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_publish_readings_and_receive_alerts_through_the_embedded_broker() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(dir.path(), port, &receiver, "");
    agent.wait_ready().await;
    let (mut sub, lines) = subscribe(port, "alerts/#");
    wait_alert_seen(port, &lines).await;

    for (device, value) in [("t1", 150.5), ("t2", 20.0), ("t2", 180.0), ("t1", 99.0)] {
        let payload = format!(r#"{{"device_id":"{device}","value":{value}}}"#);
        publish(
            port,
            &format!("sensors/{device}/temperature"),
            &payload,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_text()));
    }

    let records = eventually(
        Duration::from_secs(15),
        "readings at the receiver",
        async || {
            let got: Vec<Value> = receiver
                .accepted()
                .into_iter()
                .filter(|r| r["device"] != "probe")
                .collect();
            (got.len() >= 2).then_some(got)
        },
    )
    .await;
    let got: Vec<(String, f64)> = records
        .iter()
        .map(|r| {
            let device = r["device"].as_str().unwrap_or_default().to_string();
            (device, r["value"].as_f64().unwrap_or(f64::NAN))
        })
        .collect();
    assert_eq!(got, [("t1".to_string(), 150.5), ("t2".to_string(), 180.0)]);
    assert!(records.iter().all(|r| {
        r["topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("sensors/"))
    }));
    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            4.0,
            Duration::from_secs(10),
        )
        .await;

    // The alerts of both threshold crossings, published by the agent on its own broker.
    let mut alerts: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alerts.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("alerts/t") => alerts.push(line),
            Ok(_) => {}
            Err(_) => panic!("alerts seen by mosquitto_sub: {alerts:?}"),
        }
    }
    alerts.sort();
    assert!(alerts[0].starts_with("alerts/t1 {"), "{alerts:?}");
    assert!(alerts[0].contains("150.5"), "{alerts:?}");
    assert!(alerts[1].starts_with("alerts/t2 {"), "{alerts:?}");
    let _ = sub.kill();
    let _ = sub.wait();

    assert!(agent.terminate().success(), "{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_requires_the_sources_credentials() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret").unwrap();
    let credentials = format!(
        "      username: edge\n      passwordFrom: {{file: {:?}}}",
        secret.display().to_string()
    );
    let port = free_port();
    let mut agent = start_agent(dir.path(), port, &receiver, &credentials);
    agent.wait_ready().await;
    let login = Some(("edge", "s3cret"));
    wait_subscribed(port, &receiver, login).await;

    let payload = r#"{"device_id":"t9","value":500}"#;
    assert!(publish(port, "sensors/t9/temperature", payload, None).is_err());
    assert!(
        publish(
            port,
            "sensors/t9/temperature",
            payload,
            Some(("edge", "wrong"))
        )
        .is_err()
    );
    publish(port, "sensors/t9/temperature", payload, login).unwrap();
    eventually(
        Duration::from_secs(10),
        "the authenticated reading",
        async || {
            let t9 = receiver
                .accepted()
                .into_iter()
                .filter(|r| r["device"] == "t9")
                .count();
            (t9 > 0).then_some(t9)
        },
    )
    .await;
    // Only the authenticated publish got through (the others were refused at CONNECT).
    let t9 = receiver
        .accepted()
        .into_iter()
        .filter(|r| r["device"] == "t9")
        .count();
    assert_eq!(t9, 1);
    assert!(agent.terminate().success(), "{}", agent.log_text());
}

/// Clients that connect, publish once and disconnect (shell scripts, battery sensors),
/// several at a time: none may be cut off by another one leaving. (rumqttd 0.20.0 let a
/// closing link disconnect the next connection that reused its id; vendor/README.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_publishers_are_never_cut_off() {
    const THREADS: usize = 4;
    const EACH: usize = 40;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(dir.path(), port, &receiver, "");
    agent.wait_ready().await;
    wait_subscribed(port, &receiver, None).await;

    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (0..EACH)
                        .filter_map(|i| {
                            let payload = format!(r#"{{"device_id":"s{t}","value":{}}}"#, 1000 + i);
                            publish(port, &format!("sensors/s{t}/temperature"), &payload, None)
                                .err()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("publisher thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} publishes failed, first: {}",
        failures.len(),
        THREADS * EACH,
        failures[0]
    );
    let want = THREADS * EACH;
    eventually(
        Duration::from_secs(20),
        "every reading at the receiver",
        async || {
            let got = receiver
                .accepted()
                .into_iter()
                .filter(|r| r["device"].as_str().is_some_and(|d| d.starts_with('s')))
                .count();
            (got >= want).then_some(())
        },
    )
    .await;
    assert!(agent.terminate().success(), "{}", agent.log_text());
}

#[test]
fn a_taken_port_stops_the_agent_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(&config, pipeline(port, free_port(), "")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--node-name")
        .arg("edge-test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edge-agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent kept running on a taken broker port");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "embedded broker: cannot listen on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    drop(taken);
}

/// `mosquitto_sub` on `filter` for at most `seconds`, logged in as `login`: its exit
/// status and every line it printed.
fn subscribe_for(port: u16, filter: &str, login: Option<(&str, &str)>, seconds: u32) -> Child {
    let mut cmd = Command::new(SUB);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v"])
        .args(["-t", filter, "-W", &seconds.to_string()]);
    if let Some((user, password)) = login {
        cmd.args(["-u", user, "-P", password]);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub (apt install mosquitto-clients)")
}

/// An embedded broker on every address: anonymous clients are refused, a device may only
/// publish and subscribe within its own topics, and nobody may take the agent's client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_only_users_connect_and_only_within_their_topics() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("press-1");
    std::fs::write(&secret, "pw-press-1\n").unwrap();
    let port = free_port();
    let yaml = pipeline(port, receiver.port, "").replace(
        &format!(r#"embedded: {{listen: "127.0.0.1:{port}"}}"#),
        &format!(
            r#"embedded:
        listen: "0.0.0.0:{port}"
        users:
          - username: press-1
            passwordFrom: {{file: {:?}}}
            publish: ["sensors/{{username}}/#"]
            subscribe: ["alerts/{{username}}"]"#,
            secret.display().to_string()
        ),
    );
    assert!(yaml.contains("0.0.0.0"), "{yaml}");
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    let login = Some(("press-1", "pw-press-1"));

    // Anonymous clients and wrong passwords are refused at CONNECT.
    let reading = r#"{"device_id":"press-1","value":150}"#;
    let refused = publish(port, "sensors/press-1/temperature", reading, None).unwrap_err();
    assert!(refused.contains("not authori"), "{refused}");
    assert!(
        publish(
            port,
            "sensors/press-1/temperature",
            reading,
            Some(("press-1", "wrong"))
        )
        .is_err()
    );
    let anonymous = subscribe_for(port, "#", None, 3)
        .wait_with_output()
        .unwrap();
    assert!(!anonymous.status.success(), "anonymous subscribe to #");
    assert!(anonymous.stdout.is_empty());

    // Another device's topic and a topic outside the pipeline are refused.
    let spoofed = r#"{"device_id":"press-2","value":999}"#;
    assert!(publish(port, "sensors/press-2/temperature", spoofed, login).is_err());
    assert!(publish(port, "plc/valve1/cmd", "open", login).is_err());
    // Nobody else may take the agent's session (client id factory-test-edge-test).
    let mut takeover = Command::new(PUB);
    takeover
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args([
            "-i",
            "factory-test-edge-test",
            "-u",
            "press-1",
            "-P",
            "pw-press-1",
        ])
        .args(["-t", "sensors/press-1/temperature", "-m", reading]);
    assert!(!takeover.output().unwrap().status.success());

    // The device's own topics work, end to end (the alert is within its subscription).
    let (mut everything, everything_lines) = subscribe_as(port, "#", login);
    let (mut own, own_lines) = subscribe_as(port, "alerts/press-1", login);
    // Until the device's own subscriber sees an alert of its reading (both subscribers
    // are then subscribed, or refused).
    // A reading below the limit after each one ends its alert episode: the next alerts.
    let clear = r#"{"device_id":"press-1","value":0}"#;
    eventually(Duration::from_secs(15), "the device's alert", async || {
        publish(port, "sensors/press-1/temperature", reading, login).unwrap();
        publish(port, "sensors/press-1/temperature", clear, login).unwrap();
        own_lines
            .recv_timeout(Duration::from_millis(300))
            .is_ok_and(|l| l.starts_with("alerts/press-1 {"))
            .then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the device's reading",
        async || {
            receiver
                .accepted()
                .iter()
                .any(|r| r["device"] == "press-1")
                .then_some(())
        },
    )
    .await;
    for child in [&mut everything, &mut own] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let served: Vec<String> = everything_lines.try_iter().collect();
    assert!(
        served.is_empty(),
        "a subscription to # was served: {served:?}"
    );
    let devices: Vec<Value> = receiver
        .accepted()
        .into_iter()
        .map(|r| r["device"].clone())
        .collect();
    assert!(devices.iter().all(|d| d == "press-1"), "{devices:?}");
    assert_eq!(
        agent
            .log_text()
            .matches("connected to the source broker")
            .count(),
        1,
        "the agent kept its session:\n{}",
        agent.log_text()
    );
    assert!(agent.terminate().success(), "{}", agent.log_text());
}

/// `embedded.tls` with a client CA: devices connect over TLS with a certificate of that
/// CA; plain MQTT and TLS without a client certificate are refused; the agent itself keeps
/// reaching its broker inside the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_the_embedded_broker_over_tls_with_a_client_certificate() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    pki.cert(
        "server",
        "/CN=localhost",
        &[
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "extendedKeyUsage=serverAuth",
        ],
    );
    pki.cert("device", "/CN=press-1", &["extendedKeyUsage=clientAuth"]);
    let port = free_port();
    let yaml = pipeline(port, receiver.port, "").replace(
        &format!(r#"embedded: {{listen: "127.0.0.1:{port}"}}"#),
        &format!(
            r#"embedded:
        listen: "127.0.0.1:{port}"
        tls:
          cert: {{file: {:?}}}
          key: {{file: {:?}}}
          clientCa: {{file: {:?}}}"#,
            pki.path("server.crt"),
            pki.path("server.key"),
            pki.path("ca.crt"),
        ),
    );
    assert!(yaml.contains("clientCa"), "{yaml}");
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;

    let topic = "sensors/press-1/temperature";
    let reading = r#"{"device_id":"press-1","value":150}"#;
    assert!(
        publish(port, topic, reading, None).is_err(),
        "plain MQTT on the TLS port"
    );
    let ca = pki.path("ca.crt");
    let refused = mosquitto_pub("localhost", port, topic, reading, &["--cafile", &ca]);
    assert!(refused.is_err(), "TLS without a client certificate");
    let (cert, key) = (pki.path("device.crt"), pki.path("device.key"));
    let device = ["--cafile", ca.as_str(), "--cert", &cert, "--key", &key];
    eventually(
        Duration::from_secs(15),
        "the device's reading",
        async || {
            if receiver.accepted().iter().any(|r| r["device"] == "press-1") {
                return Some(());
            }
            mosquitto_pub("localhost", port, topic, reading, &device)
                .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_text()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        },
    )
    .await;
    assert_eq!(
        agent
            .log_text()
            .matches("connected to the source broker")
            .count(),
        1,
        "{}",
        agent.log_text()
    );
    assert!(agent.terminate().success(), "{}", agent.log_text());
}
