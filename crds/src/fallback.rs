//! Node autonomy: the contract between the operator, which arms a node's fallback for a
//! pipeline, the agent, which keeps on the node what the fallback needs, and
//! `edge-agent fallback`, which runs the pipeline after a reboot without the control
//! plane.
//!
//! - The operator sets [`ARMED_ENV`] in the agent container and gives the pod an init
//!   container (`edge-agent install-fallback`) that installs the agent binary under
//!   [`HOST_BIN_DIR`] and the systemd unit [`UNIT_TEMPLATE`], enabled for the pipeline's
//!   instance ([`unit_instance`]).
//! - An armed agent keeps a snapshot in its data directory ([`SNAPSHOT_DIR`]): the
//!   environment its pod gave it ([`SNAPSHOT_ENV`]) and the files its pipeline reads from
//!   its mounts ([`MOUNTED_DIRS`]: the Secrets and the model), readable by the agent user
//!   only. An agent that is not armed removes it.
//! - The fallback runs the stored pipeline with that environment, its mounted paths
//!   mapped into the snapshot.

use crate::manifest::PIPELINE_UID_ENV;

/// Set to [`ARMED`] in agent pods whose node keeps a fallback for the pipeline.
pub const ARMED_ENV: &str = "EDGEPIPE_FALLBACK";
/// The value of [`ARMED_ENV`] that arms the fallback.
pub const ARMED: &str = "armed";
/// The snapshot's directory inside the data directory.
pub const SNAPSHOT_DIR: &str = "fallback-snapshot";
/// Where the agent pod mounts the Secrets its pipeline references.
pub const SECRETS_DIR: &str = "/etc/edgepipe-secrets";
/// Where the agent pod mounts a model from a ConfigMap.
pub const MODEL_DIR: &str = "/etc/edgepipe-model";
/// The mounted directories whose files the snapshot keeps.
pub const MOUNTED_DIRS: [&str; 2] = [SECRETS_DIR, MODEL_DIR];
/// The pod environment the snapshot keeps (what the operator sets and a pipeline may
/// refer to).
pub const SNAPSHOT_ENV: [&str; 4] = ["NODE_NAME", "HOST_IP", "POD_NAMESPACE", PIPELINE_UID_ENV];
/// Where on the node the installer puts the agent binary the fallback runs (root-owned:
/// no agent can change what the host runs).
pub const HOST_BIN_DIR: &str = "/var/lib/edgepipe/.fallback";
/// The default directory of the node's systemd units.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// The systemd template unit; one instance per pipeline.
pub const UNIT_TEMPLATE: &str = "edgepipe-fallback@.service";
/// The target whose `.wants` directory enables an instance.
pub const WANTED_BY: &str = "multi-user.target";

/// The instance name of the unit for pipeline `namespace/name`, as `systemd-escape`
/// writes the path `namespace/name` (`/` becomes `-`; `-` and anything but ASCII letters,
/// digits, `_` and `.` become `\xNN`), so `%I` in the unit is `namespace/name` again.
pub fn unit_instance(namespace: &str, name: &str) -> String {
    let path = format!("{namespace}/{name}");
    let mut out = String::new();
    for (i, byte) in path.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The unit of pipeline `namespace/name`: `edgepipe-fallback@<instance>.service`.
pub fn unit_name(namespace: &str, name: &str) -> String {
    format!(
        "edgepipe-fallback@{}.service",
        unit_instance(namespace, name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_what_systemd_escape_writes() {
        // `systemd-escape factory/line1-temperature` prints factory-line1\x2dtemperature.
        assert_eq!(
            unit_instance("factory", "line1-temperature"),
            "factory-line1\\x2dtemperature"
        );
        assert_eq!(unit_instance("a", "b.c"), "a-b.c");
        assert_eq!(unit_name("ns", "p"), "edgepipe-fallback@ns-p.service");
    }
}
