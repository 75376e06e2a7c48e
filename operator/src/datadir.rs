//! The agent's queue directory on the node: where it is ([`host_data_dir`], built only
//! from a validated namespace and name). The agent pod's init container hands it to the
//! agent user with `edge-agent prepare-data-dir`.

use edge_crds::names::{check_dns_label, check_dns_subdomain};

/// Parent of the per-pipeline queue directories on the node:
/// `<HOST_DATA_ROOT>/<namespace>/<name>`.
pub const HOST_DATA_ROOT: &str = "/var/lib/edgepipe";

/// A namespace or name that cannot be a directory under [`HOST_DATA_ROOT`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataDirError {
    /// The namespace is not a DNS-1123 label.
    #[error("metadata.namespace: {0}")]
    Namespace(String),
    /// The pipeline name is not a DNS-1123 subdomain.
    #[error("metadata.name: {0}")]
    Name(String),
}

/// The node directory of pipeline `namespace/name`'s queue:
/// `/var/lib/edgepipe/<namespace>/<name>`. Each part must be a Kubernetes name (a
/// DNS-1123 label for the namespace, a subdomain for the name), so it is exactly one
/// path segment and the directory cannot be anywhere else on the node.
pub fn host_data_dir(namespace: &str, name: &str) -> Result<String, DataDirError> {
    check_dns_label(namespace).map_err(DataDirError::Namespace)?;
    check_dns_subdomain(name).map_err(DataDirError::Name)?;
    Ok(format!("{HOST_DATA_ROOT}/{namespace}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_directory_is_built_from_kubernetes_names_only() {
        assert_eq!(
            host_data_dir("factory", "line1").as_deref(),
            Ok("/var/lib/edgepipe/factory/line1")
        );
        assert_eq!(
            host_data_dir("factory", "line1.v2").as_deref(),
            Ok("/var/lib/edgepipe/factory/line1.v2")
        );
        for (namespace, name) in [
            ("factory", ".."),
            ("factory", "."),
            ("factory", "../../etc"),
            ("factory", "a/b"),
            ("factory", "/etc"),
            ("factory", ""),
            ("factory", "Line1"),
            ("..", "line1"),
            ("a.b", "line1"),
            ("", "line1"),
            ("../..", "x"),
        ] {
            let result = host_data_dir(namespace, name);
            assert!(result.is_err(), "{namespace:?}/{name:?} gave {result:?}");
        }
        assert!(matches!(
            host_data_dir("factory", "x/.."),
            Err(DataDirError::Name(_))
        ));
        assert!(matches!(
            host_data_dir("../x", "line1"),
            Err(DataDirError::Namespace(_))
        ));
    }
}
