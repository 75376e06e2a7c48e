//! `mqtts://` for real: a Mosquitto TLS listener that requires a client certificate, a
//! private CA made with the `openssl` CLI, and the agent trusting only that CA; and the
//! same listener met by an agent that does not trust that CA, whose log must say why
//! every connection fails (source, sinks, model download), not just that it did; and the
//! source's TLS files rotated under a running agent.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost and a client certificate, as PEM files.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=edgepipe-test-ca",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "edge-agent")] {
        let mut req = vec!["req"];
        req.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={cn}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// The broker process, killed when the test ends, passing or not.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mosquitto with a plain listener and a TLS listener (certificate from the private CA of
/// `pki`); returns the process and the (plain, tls) ports once TLS accepts connections.
async fn tls_broker(pki: &Path, require_certificate: bool) -> (Broker, u16, u16) {
    // Mosquitto reads its TLS files after dropping root for its own user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pki, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        pki.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (plain, tls) = (free_port(), free_port());
    let conf = pki.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\npersistence false\nlistener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             require_certificate {require_certificate}\n",
            d = pki.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(pki.join("mosquitto.log")).unwrap();
    let broker = Broker(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto TLS listener did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (broker, plain, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_connects_over_mqtts_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    make_pki(pki);
    let (_broker, plain, tls) = tls_broker(pki, true).await;

    let receiver = Receiver::start().await;
    let tls_source = format!(
        "    mqtt:\n      url: mqtts://localhost:{tls}\n      topics: [\"sensors/+/temperature\"]\n      clientId: agent-tls\n      tls:\n        ca: {{file: {d}/ca.crt}}\n        cert: {{file: {d}/client.crt}}\n        key: {{file: {d}/client.key}}",
        d = pki.display()
    );
    let yaml = format!(
        "source:\n{tls_source}\nsink:\n  http: {{url: 'http://127.0.0.1:{}/ingest', flushInterval: 100ms}}\n",
        receiver.port
    );
    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(agent_dir.path(), &yaml);
    agent.wait_ready().await;
    eventually(Duration::from_secs(10), "the subscription", async || {
        agent.log_text().contains("subscribed").then_some(())
    })
    .await;
    let mut publisher = Publisher::connect(plain, "tls-test-pub");
    publisher
        .send(
            "sensors/t1/temperature",
            reading("t1", 21.5, 1_795_608_000_000),
        )
        .await;
    publisher.flush().await;
    let got = eventually(
        Duration::from_secs(10),
        "the reading upstream",
        async || {
            let got = receiver.accepted();
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(got[0]["value"], 21.5);
    assert_eq!(got[0]["pipeline"], "default/standalone");
}

/// The certificate problem, as rustls names it, for a server whose CA the agent does not
/// trust (it trusts the system roots only).
const CAUSE: &str = "invalid peer certificate: UnknownIssuer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_logged_with_its_cause_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    make_pki(pki);
    let (_broker, plain, tls) = tls_broker(pki, false).await;

    // Source over mqtts, HTTPS sink and HTTPS model download, all to the TLS listener:
    // each handshake fails on the certificate, and each log line says so.
    let yaml = format!(
        "source:\n  mqtt: {{url: \"mqtts://localhost:{tls}\", topics: [\"sensors/+/temperature\"]}}\n\
         inference:\n  model: {{url: \"https://localhost:{tls}/m.tflite?sig=s3cret\", sha256: \"{}\"}}\n\
         sink:\n  http: {{url: \"https://localhost:{tls}/ingest\", flushInterval: 100ms, timeout: 2s}}\n",
        "ab".repeat(32)
    );
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(agent_dir.path(), &yaml);
    let lines = |agent: &Agent, what: &str| -> Vec<String> {
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect()
    };
    eventually(
        Duration::from_secs(20),
        "the source's failure with its cause",
        async || {
            lines(&agent, "source broker connection failed")
                .iter()
                .any(|l| l.contains(CAUSE))
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the model download's failure with its cause",
        async || {
            lines(&agent, "model refused")
                .iter()
                .any(|l| l.contains(CAUSE))
                .then_some(())
        },
    )
    .await;
    assert!(!agent.log_text().contains("s3cret"), "{}", agent.log_text());

    // The sinks connect only with something to send, and no reading gets past the failing
    // source above: two more agents read the plain listener, one with an HTTPS sink and
    // one with an mqtts:// sink, both to the TLS listener.
    let yaml = format!(
        "source:\n  mqtt: {{url: \"mqtt://127.0.0.1:{plain}\", topics: [\"sensors/+/temperature\"], clientId: agent-untrusted}}\n\
         sink:\n  http: {{url: \"https://localhost:{tls}/ingest\", flushInterval: 100ms, timeout: 2s}}\n"
    );
    let http_dir = tempfile::tempdir().unwrap();
    let mut http_agent = Agent::start(http_dir.path(), &yaml);
    http_agent.wait_ready().await;
    let yaml = format!(
        "source:\n  mqtt: {{url: \"mqtt://127.0.0.1:{plain}\", topics: [\"sensors/+/temperature\"], clientId: agent-untrusted-mqtt}}\n\
         sink:\n  mqtt: {{url: \"mqtts://localhost:{tls}\", topic: up, flushInterval: 100ms}}\n"
    );
    let mqtt_dir = tempfile::tempdir().unwrap();
    let mut mqtt_agent = Agent::start(mqtt_dir.path(), &yaml);
    mqtt_agent.wait_ready().await;
    eventually(Duration::from_secs(10), "both subscriptions", async || {
        (http_agent.log_text().contains("subscribed")
            && mqtt_agent.log_text().contains("subscribed"))
        .then_some(())
    })
    .await;
    let mut publisher = Publisher::connect(plain, "tls-untrusted-pub");
    publisher
        .send(
            "sensors/t1/temperature",
            reading("t1", 21.5, 1_795_608_000_000),
        )
        .await;
    publisher.flush().await;
    for (agent, what) in [
        (&http_agent, "upstream unavailable"),
        (&mqtt_agent, "upstream broker unavailable"),
    ] {
        eventually(Duration::from_secs(20), what, async || {
            lines(agent, what)
                .iter()
                .any(|l| l.contains(CAUSE))
                .then_some(())
        })
        .await;
    }
}

/// The source's TLS files change under a running agent: a broken CA bundle is counted and
/// the connection stays; a valid new bundle makes the source reconnect with it, resume its
/// session and keep delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_reconnects_with_rotated_tls_files_and_keeps_them_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    make_pki(pki);
    let (_broker, plain, tls) = tls_broker(pki, true).await;
    let receiver = Receiver::start().await;
    let agent_dir = tempfile::tempdir().unwrap();
    let files = agent_dir.path().join("tls");
    std::fs::create_dir_all(&files).unwrap();
    for f in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(pki.join(f), files.join(f)).unwrap();
    }
    let yaml = format!(
        "source:\n    mqtt:\n      url: mqtts://localhost:{tls}\n      topics: [\"sensors/+/temperature\"]\n      clientId: agent-tls-rotate\n      tls:\n        ca: {{file: {d}/ca.crt}}\n        cert: {{file: {d}/client.crt}}\n        key: {{file: {d}/client.key}}\nsink:\n  http: {{url: 'http://127.0.0.1:{}/ingest', flushInterval: 100ms}}\n",
        receiver.port,
        d = files.display()
    );
    let mut agent = Agent::start(agent_dir.path(), &yaml);
    agent.wait_ready().await;
    let reloads = |result: &str| {
        format!(
            "edge_agent_credential_reloads_total{{pipeline=\"default/standalone\",result=\"{result}\",use=\"source\"}}"
        )
    };
    let expiry = "edge_agent_certificate_expiry_timestamp_seconds{pipeline=\"default/standalone\",use=\"source_client\"}";
    assert!(agent.metric(expiry) > 0.0);
    let subscriptions = |agent: &Agent| agent.log_text().matches("subscribed").count();
    eventually(Duration::from_secs(10), "the subscription", async || {
        (subscriptions(&agent) >= 1).then_some(())
    })
    .await;
    let mut publisher = Publisher::connect(plain, "tls-rotate-pub");
    let delivered = async |publisher: &mut Publisher, value: f64| {
        publisher
            .send(
                "sensors/t1/temperature",
                reading("t1", value, 1_795_608_000_000),
            )
            .await;
        publisher.flush().await;
        eventually(
            Duration::from_secs(15),
            "the reading upstream",
            async || {
                receiver
                    .accepted()
                    .iter()
                    .any(|r| r["value"] == value)
                    .then_some(())
            },
        )
        .await;
    };
    delivered(&mut publisher, 1.0).await;

    // A CA file that is no certificate: counted, the connection stays as it is.
    let ca = files.join("ca.crt");
    let aside = files.join("ca.new");
    std::fs::write(&aside, "not a certificate\n").unwrap();
    std::fs::rename(&aside, &ca).unwrap();
    agent
        .wait_metric(&reloads("failed"), 1.0, Duration::from_secs(15))
        .await;
    delivered(&mut publisher, 2.0).await;
    assert!(
        !agent
            .log_text()
            .contains("reconnecting to the source broker")
    );

    // A valid new bundle (the CA twice): the source reconnects with it.
    let bundle = std::fs::read_to_string(pki.join("ca.crt"))
        .unwrap()
        .repeat(2);
    std::fs::write(&aside, bundle).unwrap();
    std::fs::rename(&aside, &ca).unwrap();
    agent
        .wait_metric(&reloads("ok"), 1.0, Duration::from_secs(15))
        .await;
    eventually(Duration::from_secs(15), "the reconnection", async || {
        let log = agent.log_text();
        (log.contains("reconnecting to the source broker with the new credentials")
            && log.matches("connected to the source broker").count() >= 2)
            .then_some(())
    })
    .await;
    delivered(&mut publisher, 3.0).await;
    assert_eq!(agent.metric(&reloads("failed")), 1.0);
    assert_eq!(agent.log_text().matches("agent running").count(), 1);
}
