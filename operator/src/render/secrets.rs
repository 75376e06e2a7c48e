//! Secrets reach the agent as files, and their content rolls the agents.
//!
//! Every `secretKeyRef` of a pipeline (passwords, TLS material, sink and model download
//! headers) becomes `file: <SECRETS_DIR>/<secret>/<key>` in the rendered configuration,
//! and the pod mounts each referenced Secret read-only at `<SECRETS_DIR>/<secret>`,
//! projecting only the referenced keys, mode 0440 (root and the pod's `fsGroup`, which is
//! the agent's group). No Secret value is ever in the ConfigMap or in an environment
//! variable: TLS keys stay files, and nothing leaks through the process environment.
//! [`SECRETS_DIR`] is a directory of its own, not under the configuration's directory:
//! that one is a read-only ConfigMap volume, no place for mount points.
//!
//! The pod template carries [`SECRETS_DIGEST_ANNOTATION`], [`secrets_digest`] of the
//! referenced keys' values: a rotated value rolls the agents through the DaemonSet's
//! rolling update like any other change, while a label or annotation edit of the Secret,
//! or a change of a key no pipeline references, leaves them alone. Each Secret's uid is
//! part of the digest, so someone who may read pods but not Secrets cannot check guesses
//! of a short password against the annotation.

use std::collections::{BTreeMap, BTreeSet};

use edge_crds::names::{check_config_map_key, check_dns_subdomain};
use edge_crds::{EdgePipelineSpec, FieldError, SecretKeyRef, Tls, ValueFrom};
use k8s_openapi::api::core::v1::{KeyToPath, Secret, SecretVolumeSource, Volume, VolumeMount};
use sha2::{Digest, Sha256};

use super::RenderError;

/// Where the referenced Secrets are mounted, one directory per Secret.
pub const SECRETS_DIR: &str = edge_crds::fallback::SECRETS_DIR;
/// Pod template annotation: the digest of the referenced Secret keys' values.
pub const SECRETS_DIGEST_ANNOTATION: &str = "edgepipe.dev/secrets-digest";
/// Mode of the Secret files: readable by their owner (root) and group (the pod's
/// `fsGroup`, the agent's group), by no one else, writable by no one.
pub const SECRET_FILE_MODE: i32 = 0o440;
/// Prefix of the names of the Secret volumes: `secret-<n>`, a DNS label whatever the
/// Secret's name.
pub const SECRET_VOLUME_PREFIX: &str = "secret-";

/// One Secret the agent reads keys of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMount {
    /// The Secret's name, in the pipeline's namespace.
    pub secret: String,
    /// The keys the configuration references, sorted, each once.
    pub keys: Vec<String>,
}

impl SecretMount {
    /// The directory the Secret is mounted at.
    pub fn dir(&self) -> String {
        format!("{SECRETS_DIR}/{}", self.secret)
    }
}

/// The file the agent reads the Secret key `secret` from, after checking that its name
/// and key are one path segment each (a DNS subdomain and a Secret key: never `..`,
/// never a `/`).
pub fn secret_file(secret: &SecretKeyRef) -> Result<String, String> {
    check_dns_subdomain(&secret.name).map_err(|e| format!("Secret name {e}"))?;
    check_config_map_key(&secret.key).map_err(|e| format!("Secret key {e}"))?;
    Ok(format!("{SECRETS_DIR}/{}/{}", secret.name, secret.key))
}

/// The Secrets (and their keys) `spec` references, sorted by name: what the pod mounts
/// and what [`secrets_digest`] hashes.
pub fn referenced_secrets(spec: &EdgePipelineSpec) -> Result<Vec<SecretMount>, RenderError> {
    rewrite_spec(&mut spec.clone())
}

/// Rewrites every `secretKeyRef` of `spec` into the file it is mounted as; returns the
/// Secrets to mount.
pub(super) fn rewrite_spec(spec: &mut EdgePipelineSpec) -> Result<Vec<SecretMount>, RenderError> {
    let mut references = References::default();
    references.spec(spec);
    if !references.errors.is_empty() {
        return Err(RenderError::Invalid(references.errors));
    }
    Ok(references
        .keys
        .into_iter()
        .map(|(secret, keys)| SecretMount {
            secret,
            keys: keys.into_iter().collect(),
        })
        .collect())
}

/// The pod's volume and the agent container's mount of each Secret: `secret-<n>`,
/// only the referenced keys, [`SECRET_FILE_MODE`], read-only, never optional.
pub fn secret_volumes(mounts: &[SecretMount]) -> Vec<(Volume, VolumeMount)> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, mount)| {
            let name = format!("{SECRET_VOLUME_PREFIX}{i}");
            let volume = Volume {
                name: name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(mount.secret.clone()),
                    items: Some(
                        mount
                            .keys
                            .iter()
                            .map(|key| KeyToPath {
                                key: key.clone(),
                                path: key.clone(),
                                mode: None,
                            })
                            .collect(),
                    ),
                    default_mode: Some(SECRET_FILE_MODE),
                    optional: Some(false),
                }),
                ..Volume::default()
            };
            let volume_mount = VolumeMount {
                name,
                mount_path: mount.dir(),
                read_only: Some(true),
                ..VolumeMount::default()
            };
            (volume, volume_mount)
        })
        .collect()
}

/// A referenced Secret or key that is not there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretMissing {
    /// The Secret does not exist in the pipeline's namespace.
    #[error("Secret {0:?} does not exist")]
    Secret(String),
    /// The Secret exists without the key.
    #[error("Secret {secret:?} has no key {key:?}")]
    Key {
        /// The Secret's name.
        secret: String,
        /// The missing key.
        key: String,
    },
}

/// SHA-256 (hex) over each mounted Secret's name and uid and each referenced key and
/// its value, in the order of `mounts` (sorted by name, keys sorted), every field
/// length-prefixed so no two contents give the same input. `secrets` are the Secrets as
/// read, by name. Every missing Secret or key is reported, none is hashed as empty.
pub fn secrets_digest(
    mounts: &[SecretMount],
    secrets: &BTreeMap<String, Secret>,
) -> Result<String, Vec<SecretMissing>> {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    let mut missing = vec![];
    for mount in mounts {
        let Some(secret) = secrets.get(&mount.secret) else {
            missing.push(SecretMissing::Secret(mount.secret.clone()));
            continue;
        };
        field(b"secret");
        field(mount.secret.as_bytes());
        field(
            secret
                .metadata
                .uid
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        );
        for key in &mount.keys {
            match secret.data.as_ref().and_then(|data| data.get(key)) {
                Some(value) => {
                    field(key.as_bytes());
                    field(&value.0);
                }
                None => missing.push(SecretMissing::Key {
                    secret: mount.secret.clone(),
                    key: key.clone(),
                }),
            }
        }
    }
    if missing.is_empty() {
        Ok(hex::encode(hasher.finalize()))
    } else {
        Err(missing)
    }
}

/// Collects the Secret keys of a spec while rewriting each reference into its file.
#[derive(Default)]
struct References {
    keys: BTreeMap<String, BTreeSet<String>>,
    errors: Vec<FieldError>,
}

impl References {
    fn spec(&mut self, spec: &mut EdgePipelineSpec) {
        let mqtt = &mut spec.source.mqtt;
        self.opt(&mut mqtt.password_from);
        self.tls(&mut mqtt.tls);
        if let Some(embedded) = &mut mqtt.embedded {
            for user in &mut embedded.users {
                self.value(&mut user.password_from);
            }
            if let Some(tls) = &mut embedded.tls {
                self.value(&mut tls.cert);
                self.value(&mut tls.key);
                self.opt(&mut tls.client_ca);
            }
        }
        if let Some(http) = &mut spec.sink.http {
            for header in &mut http.headers {
                self.value(&mut header.value_from);
            }
            self.tls(&mut http.tls);
        }
        if let Some(mqtt) = &mut spec.sink.mqtt {
            self.opt(&mut mqtt.password_from);
            self.tls(&mut mqtt.tls);
        }
        if let Some(inference) = &mut spec.inference {
            for header in &mut inference.model.headers {
                self.value(&mut header.value_from);
            }
        }
        if let Some(encryption) = &mut spec.buffer.encryption {
            for key in &mut encryption.keys {
                self.value(&mut key.key_from);
            }
        }
    }

    fn tls(&mut self, tls: &mut Option<Tls>) {
        if let Some(tls) = tls {
            self.opt(&mut tls.ca);
            self.opt(&mut tls.cert);
            self.opt(&mut tls.key);
        }
    }

    fn opt(&mut self, value: &mut Option<ValueFrom>) {
        if let Some(value) = value {
            self.value(value);
        }
    }

    fn value(&mut self, value: &mut ValueFrom) {
        let Some(secret) = value.secret_key_ref.take() else {
            return;
        };
        match secret_file(&secret) {
            Ok(file) => {
                value.file = Some(file);
                self.keys.entry(secret.name).or_default().insert(secret.key);
            }
            Err(message) => self.errors.push(FieldError {
                path: "secretKeyRef".to_string(),
                message,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn secret(uid: &str, data: &[(&str, &str)], labels: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("broker".to_string()),
                uid: Some(uid.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn broker_mount() -> Vec<SecretMount> {
        vec![SecretMount {
            secret: "broker".to_string(),
            keys: vec!["ca.crt".to_string(), "password".to_string()],
        }]
    }

    fn digest(secret: Secret) -> Result<String, Vec<SecretMissing>> {
        secrets_digest(
            &broker_mount(),
            &BTreeMap::from([("broker".to_string(), secret)]),
        )
    }

    #[test]
    fn the_digest_follows_the_referenced_values_only() {
        let base_data = [("password", "s3cret"), ("ca.crt", "PEM"), ("other", "x")];
        let base = digest(secret("u1", &base_data, &[])).expect("complete");
        /// Key/value pairs (data or labels).
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        // (case, data, labels, uid, same digest)
        let cases: &[(&str, Pairs, Pairs, &str, bool)] = &[
            ("the same data", &base_data, &[], "u1", true),
            (
                "a label",
                &base_data,
                &[("edgepipe.dev/allow-pipelines", "true")],
                "u1",
                true,
            ),
            (
                "an unreferenced key changed",
                &[("password", "s3cret"), ("ca.crt", "PEM"), ("other", "y")],
                &[],
                "u1",
                true,
            ),
            (
                "an unreferenced key removed",
                &[("password", "s3cret"), ("ca.crt", "PEM")],
                &[],
                "u1",
                true,
            ),
            (
                "the password rotated",
                &[("password", "n3w"), ("ca.crt", "PEM"), ("other", "x")],
                &[],
                "u1",
                false,
            ),
            (
                "the CA rotated",
                &[("password", "s3cret"), ("ca.crt", "PEM2"), ("other", "x")],
                &[],
                "u1",
                false,
            ),
            (
                "the values swapped keys",
                &[("password", "PEM"), ("ca.crt", "s3cret"), ("other", "x")],
                &[],
                "u1",
                false,
            ),
            (
                "a byte moved from one value to the other",
                &[("password", "s3cre"), ("ca.crt", "tPEM"), ("other", "x")],
                &[],
                "u1",
                false,
            ),
            ("the Secret was recreated", &base_data, &[], "u2", false),
        ];
        for &(case, data, labels, uid, same) in cases {
            let changed = digest(secret(uid, data, labels)).expect(case);
            assert_eq!(changed == base, same, "{case}");
        }
        assert_eq!(base.len(), 64, "hex SHA-256");
        assert!(!base.contains("s3cret"));
    }

    #[test]
    fn every_missing_secret_and_key_is_named() {
        let mounts = vec![
            SecretMount {
                secret: "absent".to_string(),
                keys: vec!["token".to_string()],
            },
            broker_mount().remove(0),
        ];
        let secrets = BTreeMap::from([(
            "broker".to_string(),
            secret("u1", &[("password", "s3cret")], &[]),
        )]);
        assert_eq!(
            secrets_digest(&mounts, &secrets),
            Err(vec![
                SecretMissing::Secret("absent".to_string()),
                SecretMissing::Key {
                    secret: "broker".to_string(),
                    key: "ca.crt".to_string()
                },
            ])
        );
        assert_eq!(
            SecretMissing::Key {
                secret: "broker".to_string(),
                key: "ca.crt".to_string()
            }
            .to_string(),
            "Secret \"broker\" has no key \"ca.crt\""
        );
    }

    #[test]
    fn secret_files_stay_in_their_directory() {
        let file = |name: &str, key: &str| {
            secret_file(&SecretKeyRef {
                name: name.to_string(),
                key: key.to_string(),
            })
        };
        assert_eq!(
            file("broker", "tls.crt").as_deref(),
            Ok("/etc/edgepipe-secrets/broker/tls.crt")
        );
        assert_eq!(
            file("broker.tls", "Pass_word-1").as_deref(),
            Ok("/etc/edgepipe-secrets/broker.tls/Pass_word-1")
        );
        for (name, key) in [
            ("..", "password"),
            (".", "password"),
            ("a/b", "password"),
            ("", "password"),
            ("Broker", "password"),
            ("broker", ".."),
            ("broker", "..data"),
            ("broker", "."),
            ("broker", "../../etc/shadow"),
            ("broker", "a/b"),
            ("broker", "/etc/shadow"),
            ("broker", ""),
        ] {
            assert!(file(name, key).is_err(), "{name:?} {key:?}");
        }
    }

    #[test]
    fn volumes_are_dns_labels_read_only_and_limited_to_the_referenced_keys() {
        let mounts = vec![
            SecretMount {
                secret: format!("{}.{}", "a".repeat(63), "b".repeat(63)),
                keys: vec!["token".to_string()],
            },
            broker_mount().remove(0),
        ];
        let volumes = secret_volumes(&mounts);
        let names: Vec<&str> = volumes.iter().map(|(v, _)| v.name.as_str()).collect();
        assert_eq!(names, ["secret-0", "secret-1"]);
        let (volume, mount) = &volumes[1];
        let source = volume.secret.as_ref().expect("a secret volume");
        assert_eq!(source.secret_name.as_deref(), Some("broker"));
        assert_eq!(source.default_mode, Some(0o440));
        assert_eq!(source.optional, Some(false));
        let items: Vec<(&str, &str)> = source
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(items, [("ca.crt", "ca.crt"), ("password", "password")]);
        assert_eq!(mount.name, "secret-1");
        assert_eq!(mount.mount_path, "/etc/edgepipe-secrets/broker");
        assert_eq!(mount.read_only, Some(true));
    }
}
