//! The container images of this build, without a registry: `deploy/docker/Dockerfile`'s
//! `agent` and `operator` stages built on the Docker engine Debian ships (`docker.io`,
//! started by `tests/scripts/install-deps.sh`) from the local Debian base made with
//! debootstrap, with the suite's own binaries (`BINARIES=prebuilt`). Used by the image
//! and Compose tests and imported into the real node ([`crate::node`]).

use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::workspace_bin;
use crate::workspace_root;

/// Debian's docker client, the engine's own version (another `docker` on PATH may be a
/// newer client without BuildKit's plugin).
pub const DOCKER: &str = "/usr/bin/docker";
/// The local Debian base (`install-deps.d/images.sh`).
pub const BASE: &str = "edgepipe-local/debian:bookworm";
/// Mosquitto laid out as eclipse-mosquitto, built from [`BASE`].
pub const MOSQUITTO: &str = "edgepipe-local/mosquitto:2";
/// The agent image of this build.
pub const AGENT: &str = "edgepipe-test/edge-agent:dev";
/// The operator image of this build.
pub const OPERATOR: &str = "edgepipe-test/edge-operator:dev";

/// Runs `program ARGS` with `envs` and returns what it did.
pub fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// Runs `program ARGS` with `envs` and returns its stdout; panics with its output when it
/// fails.
pub fn run_ok(program: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = run(program, args, envs);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds [`AGENT`] and [`OPERATOR`] once per test binary and returns their tags; panics
/// with what to install when the engine or the local bases are missing.
pub fn build() -> (&'static str, &'static str) {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let engine = run(DOCKER, &["info"], &[]);
        assert!(
            engine.status.success(),
            "these tests need the Docker engine and root: run tests/scripts/install-deps.sh as root ({})",
            String::from_utf8_lossy(&engine.stderr)
        );
        for image in [BASE, MOSQUITTO] {
            assert!(
                run(DOCKER, &["image", "inspect", image], &[]).status.success(),
                "{image} is missing: tests/scripts/install-deps.sh builds it"
            );
        }
        let context = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(context.path().join("bin")).expect("bin");
        for binary in ["edge-agent", "edge-operator"] {
            std::fs::copy(workspace_bin(binary), context.path().join("bin").join(binary))
                .unwrap_or_else(|e| panic!("{binary}: {e} (build it first)"));
        }
        let dockerfile = workspace_root().join("deploy/docker/Dockerfile");
        let dockerfile = dockerfile.to_string_lossy();
        let context = context.path().to_string_lossy();
        for (target, tag) in [("agent", AGENT), ("operator", OPERATOR)] {
            run_ok(
                DOCKER,
                &[
                    "build",
                    "-q",
                    "-f",
                    &dockerfile,
                    "--target",
                    target,
                    "--build-arg",
                    &format!("BUILDER_IMAGE={BASE}"),
                    "--build-arg",
                    &format!("RUNTIME_IMAGE={BASE}"),
                    "--build-arg",
                    "BINARIES=prebuilt",
                    "-t",
                    tag,
                    &context,
                ],
                &[("DOCKER_BUILDKIT", "1")],
            );
        }
    });
    (AGENT, OPERATOR)
}
