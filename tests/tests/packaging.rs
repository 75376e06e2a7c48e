//! Packaging outside Kubernetes: the container images' Dockerfile, the single-device
//! Docker Compose deployment (deploy/docker) and the systemd unit for a standalone
//! device (deploy/systemd): the structure of the Dockerfile and compose file (they are
//! built and run for real by `images.rs`); the systemd unit goes through
//! `systemd-analyze`.

use std::process::Command;

use edge_tests::{api, workspace_root};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The Dockerfile's stages: (stage name, lines of the stage).
fn stages(dockerfile: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in dockerfile.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.rsplit(" AS ").next().unwrap_or_default().to_string();
            out.push((name, vec![line]));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out
}

#[test]
fn dockerfile_builds_both_images_as_non_root_distroless() {
    let text = read("deploy/docker/Dockerfile");
    let stages = stages(&text);
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["builder", "prebuilt", "binaries", "operator", "agent"]
    );
    let (_, builder) = &stages[0];
    assert_eq!(
        builder[0],
        "FROM --platform=$BUILDPLATFORM ${BUILDER_IMAGE} AS builder"
    );
    // The public bases are the defaults; `images.rs` builds the same stages from a local
    // base, without a registry.
    assert!(text.contains("ARG RUST_VERSION=1.91"), "Rust 1.91 or newer");
    assert!(text.contains("ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm"));
    assert!(text.contains("ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot"));
    assert!(text.contains("ARG BINARIES=builder"));
    assert!(
        builder
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "the builder builds with the lock file"
    );
    for (name, lines) in &stages[3..] {
        assert_eq!(lines[0], format!("FROM ${{RUNTIME_IMAGE}} AS {name}"));
        assert!(lines.contains(&"USER 65532:65532"), "{name}: USER 65532");
        let entrypoint = format!(r#"ENTRYPOINT ["/usr/local/bin/edge-{name}"]"#);
        assert!(lines.contains(&entrypoint.as_str()), "{name}: {entrypoint}");
    }
    // Every platform deploy/docker/README.md documents is handled by the cross-compiling builder.
    for triple in [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "armv7-unknown-linux-gnueabihf",
    ] {
        assert!(text.contains(triple), "{triple}");
    }

    // The operator starts the agent and its init container by command name; each image
    // has that binary on PATH (/usr/local/bin).
    let pipeline: edge_crds::EdgePipeline =
        serde_saphyr::from_str(&read("deploy/examples/temperature-significant-change.yaml"))
            .expect("the example is an EdgePipeline");
    let options = edge_tests::fleet::render_options();
    let agents = edge_operator::render(&pipeline, &options).expect("the operator renders it");
    let pod =
        serde_json::to_value(&agents.daemon_set).expect("serializes")["spec"]["template"]["spec"]
            .clone();
    for list in ["initContainers", "containers"] {
        for container in pod[list].as_array().expect("containers") {
            let image = container["image"].as_str().expect("image");
            let target = if image == options.agent_image {
                "agent"
            } else {
                "operator"
            };
            let binary = strings(&container["command"])[0];
            let (_, lines) = stages.iter().find(|(n, _)| n == target).expect("stage");
            let copy = format!("/usr/local/bin/{binary}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("COPY ") && l.ends_with(&copy)),
                "the {target} image has no {copy} for container {}",
                container["name"]
            );
        }
    }

    let ignore = read(".dockerignore");
    for entry in ["target/", ".venv/", "tests/.tools/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
}

#[test]
fn compose_runs_the_agent_read_only_and_non_root_next_to_mosquitto() {
    let compose: Value =
        serde_saphyr::from_str(&read("deploy/docker/compose.yaml")).expect("compose is YAML");
    let services = compose["services"].as_object().expect("services");
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["agent", "mosquitto"]);

    for (name, service) in services {
        assert_eq!(service["read_only"], true, "{name}: read_only");
        let user = service["user"].as_str().expect("user is set");
        assert!(
            !user.starts_with("0:") && user != "root",
            "{name}: non-root"
        );
        assert_eq!(strings(&service["cap_drop"]), ["ALL"], "{name}: cap_drop");
        assert!(
            strings(&service["security_opt"]).contains(&"no-new-privileges:true"),
            "{name}: no-new-privileges"
        );
        // Every bind-mounted file exists next to compose.yaml.
        for volume in strings(&service["volumes"]) {
            if let Some(local) = volume.strip_prefix("./") {
                let file = local.split(':').next().unwrap_or_default();
                assert!(
                    workspace_root().join("deploy/docker").join(file).is_file(),
                    "{name}: {file} is missing"
                );
            }
        }
    }

    let agent = &compose["services"]["agent"];
    assert_eq!(agent["user"], "65532:65532");
    assert_eq!(agent["build"]["target"], "agent");
    assert_eq!(agent["build"]["dockerfile"], "deploy/docker/Dockerfile");
    assert_eq!(agent["build"]["context"], "../..");
    assert_eq!(
        strings(&agent["command"]),
        [
            "run",
            "--config",
            "/etc/edgepipe/pipeline.yaml",
            "--data-dir",
            "/var/lib/edgepipe",
            "--listen",
            "0.0.0.0:9464"
        ]
    );
    let volumes = strings(&agent["volumes"]);
    assert!(volumes.contains(&"./pipeline.yaml:/etc/edgepipe/pipeline.yaml:ro"));
    assert!(volumes.contains(&"agent-data:/var/lib/edgepipe"));
    assert!(compose["volumes"].get("agent-data").is_some());
    assert_eq!(
        agent["depends_on"]["mosquitto"]["condition"],
        "service_healthy"
    );
}

#[test]
fn compose_pipeline_is_valid_and_reads_the_compose_broker() {
    let text = read("deploy/docker/pipeline.yaml");
    let problems = api::rust_layer(&text);
    assert!(problems.is_empty(), "validate(): {problems:?}");
    let problems = api::schema_layer(&text);
    assert!(problems.is_empty(), "CRD schema: {problems:?}");
    let file = edge_crds::parse_pipeline(&text).expect("parses");
    assert_eq!(
        file.spec.source.mqtt.url.as_deref(),
        Some("mqtt://mosquitto:1883"),
        "the agent reaches the broker by its compose service name"
    );
    let conf = read("deploy/docker/mosquitto.conf");
    assert!(conf.lines().any(|l| l == "listener 1883"));
    assert!(conf.lines().any(|l| l == "persistence true"));
}

fn systemd_analyze(args: &[&str], unit: &std::path::Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze ({e}): apt-get install systemd"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Checks a unit of `deploy/systemd`: it carries every `wanted` directive, and systemd
/// loads it (as `name`, so an instance of a template) without a word and rates its
/// exposure at most `threshold` (systemd's 0-10 scale, times 10). The binary is not
/// installed here, so ExecStart points at /bin/true in the copy under test; everything
/// else is verbatim.
fn check_unit(file: &str, name: &str, wanted: &[&str], threshold: u32) {
    let text = read(file);
    let directives: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in wanted {
        assert!(directives.contains(wanted), "{file}: missing {wanted}");
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("systemd-{name}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = dir.join(name);
    std::fs::write(
        &unit,
        text.replace(
            "ExecStart=/usr/local/bin/edge-agent ",
            "ExecStart=/bin/true ",
        ),
    )
    .expect("write unit");
    let (ok, out) = systemd_analyze(&["verify"], &unit);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify {file}:\n{out}"
    );
    let (ok, out) = systemd_analyze(
        &[
            "security",
            "--offline=true",
            &format!("--threshold={threshold}"),
        ],
        &unit,
    );
    assert!(ok, "systemd-analyze security {file}:\n{out}");
}

#[test]
fn systemd_unit_is_valid_and_hardened() {
    check_unit(
        "deploy/systemd/edge-agent.service",
        "edge-agent.service",
        &[
            "ExecStart=/usr/local/bin/edge-agent run --config /etc/edgepipe/pipeline.yaml --data-dir /var/lib/edgepipe",
            "DynamicUser=yes",
            "StateDirectory=edgepipe",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=always",
        ],
        20,
    );
}

#[test]
fn the_fallback_unit_is_valid_and_hardened() {
    check_unit(
        "deploy/systemd/edgepipe-fallback@.service",
        "edgepipe-fallback@factory-line1.service",
        &[
            "ExecStart=/usr/local/bin/edge-agent fallback --data-dir /var/lib/edgepipe/%I --grace 2m --listen 127.0.0.1:0",
            "User=65532",
            "ReadWritePaths=/var/lib/edgepipe/%I",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
        ],
        25,
    );
    // `--grace 2m` is what the agent's duration parser reads.
    let grace = edge_crds::units::parse_duration("2m");
    assert!(grace.is_ok(), "--grace 2m: {grace:?}");
}
