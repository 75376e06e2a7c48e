//! Names that end up in file paths, checked before any path is built from them.
//!
//! The operator puts a pipeline's namespace and name into the node's queue directory
//! (`/var/lib/edgepipe/<namespace>/<name>`), a model ConfigMap key into the model's path,
//! and a referenced Secret's name and key into the path of the file the agent reads the
//! value from; the agent reads golden and labels files "next to the model" by file name.
//! Each of those must be exactly one path segment: never empty, never `.` or `..`, never
//! a `/`, never absolute. Kubernetes already restricts object names to DNS-1123, but the
//! places that build a path check again, with these functions, so a name that slipped
//! through (a file read by `edge-operator render`, an older API server, a bug) cannot
//! climb out of its directory.

use crate::spec::EdgePipelineSpec;
use crate::validate::FieldError;

/// Longest DNS-1123 subdomain (object names such as an EdgePipeline's).
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest DNS-1123 label (namespace names).
pub const MAX_LABEL: usize = 63;
/// Longest file name accepted for golden and labels files (most file systems' limit).
pub const MAX_FILE_NAME: usize = 255;

/// A DNS-1123 label, as Kubernetes requires of namespace names: 1 to 63 lowercase
/// alphanumerics or `-`, starting and ending with an alphanumeric.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LABEL {
        return Err(format!(
            "{name:?} must be 1 to {MAX_LABEL} characters (a DNS-1123 label)"
        ));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let ends_ok =
        bytes.first().copied().is_some_and(alnum) && bytes.last().copied().is_some_and(alnum);
    if !ends_ok || !bytes.iter().all(|&b| alnum(b) || b == b'-') {
        return Err(format!(
            "{name:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain, as Kubernetes requires of most object names: at most 253
/// characters, dot-separated DNS-1123 labels. Never `.` or `..`, never a `/`.
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SUBDOMAIN {
        return Err(format!(
            "{name:?} must be 1 to {MAX_SUBDOMAIN} characters (a DNS-1123 subdomain)"
        ));
    }
    if name.split('.').any(|label| check_dns_label(label).is_err()) {
        return Err(format!(
            "{name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"
        ));
    }
    Ok(())
}

/// A ConfigMap or Secret key, as Kubernetes allows it: letters, digits, `-`, `_` and `.`, at most
/// 253 characters, and neither `.`, `..` nor starting with `..`.
pub fn check_config_map_key(key: &str) -> Result<(), String> {
    let charset = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if key.is_empty() || key.len() > MAX_SUBDOMAIN || !charset {
        return Err(format!(
            "{key:?} is not a ConfigMap or Secret key (1 to {MAX_SUBDOMAIN} letters, digits, '-', '_' or '.')"
        ));
    }
    if key == "." || key.starts_with("..") {
        return Err(format!(
            "{key:?} is not a ConfigMap or Secret key (it would leave its directory)"
        ));
    }
    Ok(())
}

/// A plain file name: one path segment, so joining it to a directory stays inside it.
/// Not empty, not `.` or `..`, no `/`, `\` or NUL, at most 255 bytes.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FILE_NAME {
        return Err(format!(
            "{name:?} must be a file name of 1 to {MAX_FILE_NAME} bytes"
        ));
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "{name:?} must be a plain file name next to the model (no '/', not '.' or '..')"
        ));
    }
    Ok(())
}

/// The fields of a spec that become file names: the model ConfigMap's key, the golden
/// file and the labels file (all read from the model's directory).
pub fn check_spec(spec: &EdgePipelineSpec) -> Vec<FieldError> {
    let mut errors = vec![];
    let Some(inference) = &spec.inference else {
        return errors;
    };
    let mut push = |path: &str, result: Result<(), String>| {
        if let Err(message) = result {
            errors.push(FieldError {
                path: path.to_string(),
                message,
            });
        }
    };
    if let Some(cm) = &inference.model.config_map
        && !cm.key.is_empty()
    {
        push(
            "spec.inference.model.configMap.key",
            check_config_map_key(&cm.key),
        );
    }
    if let Some(file) = inference.golden.as_ref().and_then(|g| g.file.as_deref()) {
        push("spec.inference.golden.file", check_file_name(file));
    }
    if let Some(file) = &inference.labels_file {
        push("spec.inference.labelsFile", check_file_name(file));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_their_directory_are_refused() {
        // (name, dns label, dns subdomain, ConfigMap key, file name)
        let cases: &[(&str, bool, bool, bool, bool)] = &[
            ("factory", true, true, true, true),
            ("line1-temperature", true, true, true, true),
            ("a.b", false, true, true, true),
            ("model.tflite", false, true, true, true),
            ("Model_v2.tflite", false, false, true, true),
            ("", false, false, false, false),
            (".", false, false, false, false),
            ("..", false, false, false, false),
            ("..data", false, false, false, true),
            ("../etc", false, false, false, false),
            ("a/b", false, false, false, false),
            ("/etc/shadow", false, false, false, false),
            ("a\\b", false, false, false, false),
            ("a\0b", false, false, false, false),
            ("-a", false, false, true, true),
            ("a-", false, false, true, true),
            ("a..b", false, false, true, true),
            ("UPPER", false, false, true, true),
        ];
        for &(name, label, subdomain, key, file) in cases {
            assert_eq!(check_dns_label(name).is_ok(), label, "label {name:?}");
            assert_eq!(
                check_dns_subdomain(name).is_ok(),
                subdomain,
                "subdomain {name:?}"
            );
            assert_eq!(check_config_map_key(name).is_ok(), key, "key {name:?}");
            assert_eq!(check_file_name(name).is_ok(), file, "file {name:?}");
        }
        assert!(check_dns_label(&"a".repeat(63)).is_ok());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_subdomain(&format!("{}.{}", "a".repeat(63), "b".repeat(63))).is_ok());
        assert!(check_dns_subdomain(&"a.".repeat(127)).is_err());
        assert!(check_file_name(&"f".repeat(256)).is_err());
    }

    #[test]
    fn validation_names_each_field_that_would_become_a_path_outside_its_directory() {
        let spec = |inference: &str| {
            let text = format!(
                "source:\n  mqtt: {{url: 'mqtt://h:1883', topics: [t]}}\nsink:\n  http: {{url: 'https://u/b'}}\ninference:\n{inference}"
            );
            crate::parse_pipeline(&text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"))
                .spec
        };
        let bad = spec(
            "  model: {configMap: {name: m, key: ../../../etc/passwd}}\n  golden: {file: /etc/shadow}\n  labelsFile: ../labels.txt\n",
        );
        let errors = crate::validate(&bad).expect_err("refused");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.inference.model.configMap.key",
                "spec.inference.golden.file",
                "spec.inference.labelsFile"
            ],
            "{errors:?}"
        );
        let good = spec(
            "  model: {configMap: {name: m, key: model.tflite}}\n  golden: {file: model.golden.json}\n  labelsFile: labels.txt\n",
        );
        assert_eq!(crate::validate(&good), Ok(()));
    }
}
