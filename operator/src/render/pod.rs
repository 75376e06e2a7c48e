//! The agent pod: container, probes, environment, volumes (the configuration revision,
//! the queue, the model, the referenced Secrets, the API credentials of its fleet
//! record) and the hard-coded hardening.
//!
//! The queue lives in a hostPath directory so it survives restarts and upgrades. The
//! kubelet creates that directory owned by root, so a tiny init container (the agent
//! image, `edge-agent prepare-data-dir`: a node pulls one image) runs as root with only `CAP_CHOWN` (every
//! other capability dropped, no privilege escalation, read-only root filesystem) and
//! hands the directory to the agent user; the agent itself runs as 65532 with nothing.

use std::collections::BTreeMap;

use edge_crds::{EdgePipeline, PIPELINE_UID_ENV, fallback, fleet};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, KeyToPath,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
    PodSecurityContext, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::secrets::secret_volumes;
use super::{
    AGENT_UID, AgentConfig, CONFIG_DIR, CONFIG_KEY, DATA_DIR, FallbackInstall, MODEL_MOUNT_DIR,
    RenderOptions,
};

/// Name of the agent container.
pub const AGENT_CONTAINER: &str = "edge-agent";
/// Name of the volume holding the agent's configuration revision.
pub const CONFIG_VOLUME: &str = "config";
/// Name of the volume holding the agent's API credentials (for its fleet record).
pub const API_VOLUME: &str = "api";
/// Name of the init container preparing the queue directory.
pub const INIT_CONTAINER: &str = "prepare-data-dir";
/// Name of the init container arming the node's fallback (with `agent.fallback`).
pub const FALLBACK_INIT_CONTAINER: &str = "install-fallback";
/// Volumes and mount points of the node's unit and binary directories.
pub const FALLBACK_UNITS_VOLUME: &str = "fallback-units";
pub const FALLBACK_BIN_VOLUME: &str = "fallback-bin";
pub const FALLBACK_UNITS_MOUNT: &str = "/host/systemd";
pub const FALLBACK_BIN_MOUNT: &str = "/host/fallback";
/// Seconds the agent gets to drain (stop ingest, commit, stop sync) on SIGTERM.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;

/// The port of a `host:port` listen address.
pub fn listen_port(listen: &str) -> Option<i32> {
    let (_, port) = listen.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p > 0).map(i32::from)
}

/// Whether `listen` (`host:port`) is a loopback address.
pub fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// Node labels of control-plane nodes (kubeadm, k3s and RKE2 set one or more of them).
/// With `avoid_control_plane` a node carrying any of them never runs an agent.
pub const CONTROL_PLANE_LABELS: [&str; 3] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/etcd",
];

/// `host_data_dir` is the node's queue directory, from
/// [`crate::datadir::host_data_dir`] (built from validated names only); `config_revision`
/// is the immutable ConfigMap of this configuration, mounted by name so a pod only ever
/// reads the revision it was created for.
pub(super) fn pod_spec(
    pipeline: &EdgePipeline,
    host_data_dir: &str,
    config_revision: &str,
    config: &AgentConfig,
    options: &RenderOptions,
) -> PodSpec {
    let spec = &pipeline.spec;
    let metrics_port = spec.agent.metrics_port;

    let mut ports = vec![ContainerPort {
        name: Some("metrics".to_string()),
        container_port: metrics_port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }];
    // On loopback the broker serves the pod only: nothing to expose on the node.
    if let Some(port) = spec
        .source
        .mqtt
        .embedded
        .as_ref()
        .filter(|e| !is_loopback(&e.listen))
        .and_then(|e| listen_port(&e.listen))
    {
        ports.push(ContainerPort {
            name: Some("mqtt".to_string()),
            container_port: port,
            host_port: Some(port),
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        });
    }

    let mut env = vec![
        field_env("NODE_NAME", "spec.nodeName"),
        field_env("HOST_IP", "status.hostIP"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        // Where `kubectl exec ... edge-agent doctor` finds the pipeline and the queue.
        EnvVar {
            name: edge_crds::AGENT_CONFIG_ENV.to_string(),
            value: Some(format!("{CONFIG_DIR}/{CONFIG_KEY}")),
            value_from: None,
        },
        EnvVar {
            name: edge_crds::AGENT_DATA_DIR_ENV.to_string(),
            value: Some(DATA_DIR.to_string()),
            value_from: None,
        },
    ];
    // The queue on the node belongs to this pipeline, not to one deleted before under the
    // same name. In the pod, not in the configuration: a revision's content (and name)
    // stays the spec's alone.
    if let Some(uid) = &pipeline.metadata.uid {
        env.push(EnvVar {
            name: PIPELINE_UID_ENV.to_string(),
            value: Some(uid.clone()),
            value_from: None,
        });
    }
    if let Some(level) = &spec.agent.log_level {
        env.push(EnvVar {
            name: "RUST_LOG".to_string(),
            value: Some(level.clone()),
            value_from: None,
        });
    }
    if let Some(format) = spec.agent.log_format {
        env.push(EnvVar {
            name: edge_crds::logging::FORMAT_ENV.to_string(),
            value: Some(format.as_str().to_string()),
            value_from: None,
        });
    }
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_revision.to_string(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "data".to_string(),
            host_path: Some(HostPathVolumeSource {
                path: host_data_dir.to_string(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".to_string())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount(CONFIG_VOLUME, CONFIG_DIR, true),
        mount("data", DATA_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    if let Some(model) = &config.model_config_map {
        volumes.push(Volume {
            name: "model".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: model.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("model", MODEL_MOUNT_DIR, true));
    }
    // Secret values are files only the agent's group may read (the pod's fsGroup).
    for (volume, volume_mount) in secret_volumes(&config.secrets) {
        volumes.push(volume);
        mounts.push(volume_mount);
    }
    let service_account = options.agent_access.as_ref().map(|access| {
        let pipeline = pipeline.metadata.name.clone().unwrap_or_default();
        let (volume, volume_mount) = api_credentials();
        volumes.push(volume);
        mounts.push(volume_mount);
        for (name, value) in [
            (
                fleet::LEASE_ENV,
                fleet::lease_name(&pipeline, "$(NODE_NAME)"),
            ),
            (fleet::INTERVAL_ENV, access.heartbeat_seconds.to_string()),
        ] {
            env.push(EnvVar {
                name: name.to_string(),
                value: Some(value),
                value_from: None,
            });
        }
        fleet::account_name(&pipeline)
    });
    let install_fallback = options.fallback.as_ref().map(|install| {
        env.push(EnvVar {
            name: fallback::ARMED_ENV.to_string(),
            value: Some(fallback::ARMED.to_string()),
            value_from: None,
        });
        let (container, host_volumes) = fallback_installer(pipeline, install, &options.agent_image);
        volumes.extend(host_volumes);
        container
    });

    let agent = Container {
        name: AGENT_CONTAINER.to_string(),
        image: Some(options.agent_image.clone()),
        command: Some(vec!["edge-agent".to_string()]),
        args: Some(vec![
            "run".to_string(),
            "--config".to_string(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            "--data-dir".to_string(),
            DATA_DIR.to_string(),
            "--listen".to_string(),
            format!("0.0.0.0:{metrics_port}"),
        ]),
        env: Some(env),
        ports: Some(ports),
        liveness_probe: Some(http_probe("/livez", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: Some(
            spec.agent
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(agent_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let init = Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(options.agent_image.clone()),
        command: Some(vec![
            "edge-agent".to_string(),
            "prepare-data-dir".to_string(),
            "--path".to_string(),
            DATA_DIR.to_string(),
            "--uid".to_string(),
            AGENT_UID.to_string(),
            "--gid".to_string(),
            AGENT_UID.to_string(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "5m"), ("memory", "8Mi")])),
            limits: Some(quantities(&[("memory", "32Mi")])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(init_security_context()),
        volume_mounts: Some(vec![mount("data", DATA_DIR, false)]),
        ..Container::default()
    };

    PodSpec {
        // No token of the namespace's default account: with agent access, only the
        // projected token of the pipeline's own account (bound to this pod and its node).
        automount_service_account_token: Some(false),
        service_account_name: service_account,
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            fs_group: Some(AGENT_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        init_containers: Some(std::iter::once(init).chain(install_fallback).collect()),
        containers: vec![agent],
        volumes: Some(volumes),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        affinity: options.avoid_control_plane.then(not_on_control_plane),
        ..PodSpec::default()
    }
}

/// The init container arming the node's fallback (`edge-agent install-fallback`) and
/// the node's directories it writes: the systemd unit directory and the root-owned
/// binary directory. Root, to write where root owns, with every capability dropped.
fn fallback_installer(
    pipeline: &EdgePipeline,
    install: &FallbackInstall,
    image: &str,
) -> (Container, Vec<Volume>) {
    let host_dir = |name: &str, path: &str, type_: &str| Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(type_.to_string()),
        }),
        ..Volume::default()
    };
    let volumes = vec![
        // Created where missing: a node without systemd runs its agents all the same (the
        // unit there is inert), rather than a pod stuck on a mount.
        host_dir(
            FALLBACK_UNITS_VOLUME,
            &install.unit_dir,
            "DirectoryOrCreate",
        ),
        host_dir(
            FALLBACK_BIN_VOLUME,
            fallback::HOST_BIN_DIR,
            "DirectoryOrCreate",
        ),
    ];
    let mut args: Vec<String> = [
        "install-fallback",
        "--unit-dir",
        FALLBACK_UNITS_MOUNT,
        "--bin-dir",
        FALLBACK_BIN_MOUNT,
        "--host-bin-dir",
        fallback::HOST_BIN_DIR,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--namespace".to_string(),
        pipeline.metadata.namespace.clone().unwrap_or_default(),
        "--name".to_string(),
        pipeline.metadata.name.clone().unwrap_or_default(),
        "--grace".to_string(),
        format!("{}s", install.grace_seconds),
    ]);
    let container = Container {
        name: FALLBACK_INIT_CONTAINER.to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["edge-agent".to_string()]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "5m"), ("memory", "16Mi")])),
            limits: Some(quantities(&[("memory", "64Mi")])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(root_without_capabilities()),
        volume_mounts: Some(vec![
            mount(FALLBACK_UNITS_VOLUME, FALLBACK_UNITS_MOUNT, false),
            mount(FALLBACK_BIN_VOLUME, FALLBACK_BIN_MOUNT, false),
        ]),
        ..Container::default()
    };
    (container, volumes)
}

/// Root (to write files root owns on the node), every capability dropped, no privilege
/// escalation, read-only root filesystem.
pub fn root_without_capabilities() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(false),
        run_as_user: Some(0),
        run_as_group: Some(0),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// A required node affinity: only nodes without any [`CONTROL_PLANE_LABELS`].
fn not_on_control_plane() -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(
                        CONTROL_PLANE_LABELS
                            .iter()
                            .map(|key| NodeSelectorRequirement {
                                key: key.to_string(),
                                operator: "DoesNotExist".to_string(),
                                values: None,
                            })
                            .collect(),
                    ),
                    match_fields: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// Requests 20m CPU / 32Mi memory, limit 256Mi memory.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "20m"), ("memory", "32Mi")])),
        limits: Some(quantities(&[("memory", "256Mi")])),
        ..ResourceRequirements::default()
    }
}

fn agent_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Root, but only to `chown` one directory: every capability but `CHOWN` is dropped.
fn init_security_context() -> SecurityContext {
    let mut context = root_without_capabilities();
    if let Some(capabilities) = context.capabilities.as_mut() {
        capabilities.add = Some(vec!["CHOWN".to_string()]);
    }
    context
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The volume holding the agent's API credentials for its fleet record: a ServiceAccount
/// token the kubelet projects and rotates (for the API server's audience, bound to the
/// pod, valid an hour) and the cluster's CA, mounted read-only at
/// [`fleet::CREDENTIALS_DIR`].
fn api_credentials() -> (Volume, VolumeMount) {
    let volume = Volume {
        name: API_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_string(),
                        expiration_seconds: Some(3600),
                        audience: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_string(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_string(),
                            path: "ca.crt".to_string(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            default_mode: None,
        }),
        ..Volume::default()
    };
    (volume, mount(API_VOLUME, fleet::CREDENTIALS_DIR, true))
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}
