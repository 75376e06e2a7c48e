//! The agent's queue directory on the node: where it is ([`host_data_dir`], built only
//! from a validated namespace and name) and `edge-operator prepare-data-dir`, run by the
//! agent pod's init container to hand that directory (a hostPath the kubelet creates
//! owned by root) to the agent user. It changes the owner of that one directory, not
//! recursively and only when it differs, so it needs `CAP_CHOWN` and nothing else.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

/// Makes `path` (an existing directory) owned by `uid:gid`; returns whether it changed.
pub fn prepare_data_dir(path: &Path, uid: u32, gid: u32) -> io::Result<bool> {
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", path.display()),
        ));
    }
    if metadata.uid() == uid && metadata.gid() == gid {
        return Ok(false);
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    Ok(true)
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

    #[test]
    fn owner_changes_once_and_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = std::fs::metadata(dir.path()).unwrap();
        let (uid, gid) = if metadata.uid() == 0 {
            (65532, 65532)
        } else {
            // Without CAP_CHOWN only the current owner and one of its groups are allowed.
            (metadata.uid(), metadata.gid())
        };
        let changed = prepare_data_dir(dir.path(), uid, gid).unwrap();
        assert_eq!(changed, metadata.uid() != uid || metadata.gid() != gid);
        let after = std::fs::metadata(dir.path()).unwrap();
        assert_eq!((after.uid(), after.gid()), (uid, gid));
        assert!(
            !prepare_data_dir(dir.path(), uid, gid).unwrap(),
            "second run changes nothing"
        );

        let file = dir.path().join("queue.db");
        std::fs::write(&file, b"").unwrap();
        let err = prepare_data_dir(&file, uid, gid).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(prepare_data_dir(&dir.path().join("missing"), uid, gid).is_err());
    }
}
