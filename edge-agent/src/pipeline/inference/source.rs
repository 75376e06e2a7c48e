//! Where model files come from, and getting their bytes: a `path` on the node, a key of
//! the ConfigMap the operator mounts, or a `url` checked against its `sha256`.
//!
//! Golden and labels files named in the spec are read "next to the model": in the
//! model's directory, from the same ConfigMap, or relative to the model URL on the model's
//! origin (see [`super::download`]: same-origin redirects only, only a 200 is a file).
//!
//! URL models are cached content-addressed in `<data-dir>/models/<sha256>.tflite`
//! (written to a temporary file, verified, fsynced, renamed). A verified cached copy is
//! used without touching the network, so a node that restarts offline keeps its model;
//! bytes that do not match `sha256` are never written under that name nor run.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_crds::{ModelSource, redact};
use reqwest::Url;
use sha2::{Digest, Sha256};

use super::download::{Downloader, file_url};

/// Where the operator mounts the ConfigMap named in `model.configMap` (the operator's
/// `MODEL_MOUNT_DIR`); the model is the file named after its key. The operator also
/// rewrites such a source to `path: <dir>/<key>` in the agent's configuration.
pub const CONFIG_MAP_MOUNT_DIR: &str = "/etc/edgepipe-model";

/// Largest model (or golden / labels file) accepted, in bytes.
pub const MAX_MODEL_BYTES: u64 = 256 * 1024 * 1024;

/// Settings for resolving model sources.
#[derive(Clone, Debug)]
pub struct SourceSettings {
    /// The agent's data directory; URL models are cached in `<data_dir>/models`.
    pub data_dir: PathBuf,
    /// Directory where the model ConfigMap is mounted.
    pub config_map_dir: PathBuf,
    /// Timeout of one download (model, golden or labels file).
    pub download_timeout: Duration,
    /// Request headers of downloads (name, value), e.g. an `Authorization` token.
    pub headers: Vec<(String, String)>,
}

impl SourceSettings {
    /// Settings with the default ConfigMap mount and a two-minute download timeout.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            config_map_dir: PathBuf::from(CONFIG_MAP_MOUNT_DIR),
            download_timeout: Duration::from_secs(120),
            headers: Vec::new(),
        }
    }
}

/// Why a URL does not parse (`url::ParseError`, which reqwest does not re-export).
pub type UrlError = <Url as std::str::FromStr>::Err;

/// Why the model files could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The model source in the spec is unusable.
    #[error("model source: {0}")]
    Spec(String),
    /// A URL of the model source does not parse.
    #[error("model source: {what}: {source}")]
    Url {
        /// Which URL: the spec's `url`, or the name of a file beside the model (as shown).
        what: String,
        /// The parse error.
        #[source]
        source: UrlError,
    },
    /// A configured download header's name or value is not valid in HTTP.
    #[error("model source: header {name:?}: {source}")]
    Header {
        /// The header's name.
        name: String,
        /// The invalid name or value.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTP client for downloads cannot be built.
    #[error("model source: HTTP client: {}", crate::runtime::diagnostics::chain(.0))]
    Client(#[source] reqwest::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_MODEL_BYTES`].
    #[error("{0} is larger than {MAX_MODEL_BYTES} bytes")]
    TooLarge(String),
    /// A download failed on the way: connecting, TLS, the request, or the body.
    #[error("downloading {url}: {}", crate::runtime::diagnostics::chain(.source))]
    Transfer {
        /// What was downloaded.
        url: String,
        /// The error (its URL removed: `url` is the redacted one).
        #[source]
        source: reqwest::Error,
    },
    /// A download was answered with something other than the file.
    #[error("downloading {url}: {message}")]
    Download {
        /// What was downloaded.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The model's bytes do not match the configured sha256.
    #[error("{origin}: sha256 is {actual}, the spec says {expected}; the model is refused")]
    ChecksumMismatch {
        /// URL or cache file.
        origin: String,
        /// The configured checksum.
        expected: String,
        /// The checksum of the bytes.
        actual: String,
    },
}

impl SourceError {
    /// Static `outcome` label of `edge_agent_model_loads_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::Download { .. } | Self::Transfer { .. } => "download_error",
            Self::Spec(_)
            | Self::Url { .. }
            | Self::Header { .. }
            | Self::Client(_)
            | Self::Io { .. }
            | Self::TooLarge(_) => "source_error",
        }
    }
}

/// The bytes of a model and of the files beside it.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// Model bytes.
    pub model: Vec<u8>,
    /// Lowercase hex SHA-256 of the model bytes.
    pub sha256: String,
    /// Golden JSON, when the spec names a golden file.
    pub golden: Option<Vec<u8>>,
    /// Labels file, when the spec names one.
    pub labels: Option<Vec<u8>>,
    /// Where the model came from, for messages.
    pub origin: String,
}

impl ModelFiles {
    /// SHA-256 over the model and the files beside it: a change in any of them is a new
    /// model version.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.sha256.as_bytes());
        for part in [&self.golden, &self.labels] {
            match part {
                Some(bytes) => {
                    h.update([1u8]);
                    h.update(Sha256::digest(bytes));
                }
                None => h.update([0u8]),
            }
        }
        hex::encode(h.finalize())
    }
}

/// A cheap fingerprint of the files of a file-based source (size, mtime, inode), to
/// notice a change without reading and hashing them.
pub type Stamp = Vec<Option<(u64, i64, i64, u64)>>;

enum Place {
    Files { model: PathBuf, dir: PathBuf },
    Url { url: Url, sha256: String },
}

/// A resolved model source.
pub struct ModelLocation {
    place: Place,
    golden: Option<String>,
    labels: Option<String>,
    settings: SourceSettings,
    downloader: Option<Downloader>,
}

impl ModelLocation {
    /// Resolves `spec`; `golden` and `labels` are file names read next to the model.
    pub fn new(
        spec: &ModelSource,
        golden: Option<&str>,
        labels: Option<&str>,
        settings: SourceSettings,
    ) -> Result<Self, SourceError> {
        let place = match (&spec.path, &spec.config_map, &spec.url) {
            (Some(path), None, None) => {
                let model = PathBuf::from(path);
                let dir = model.parent().map(Path::to_path_buf).unwrap_or_default();
                Place::Files { model, dir }
            }
            (None, Some(cm), None) => Place::Files {
                model: settings.config_map_dir.join(&cm.key),
                dir: settings.config_map_dir.clone(),
            },
            (None, None, Some(url)) => {
                let url = Url::parse(url).map_err(|source| SourceError::Url {
                    what: format!("url {:?}", redact::url(url)),
                    source,
                })?;
                let sha256 = spec
                    .sha256
                    .clone()
                    .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| SourceError::Spec("url needs a 64-character hex sha256".into()))?
                    .to_ascii_lowercase();
                Place::Url { url, sha256 }
            }
            _ => {
                return Err(SourceError::Spec(
                    "set exactly one of path, configMap or url".into(),
                ));
            }
        };
        let downloader = match place {
            Place::Url { .. } => Some(Downloader::new(
                settings.download_timeout,
                &settings.headers,
            )?),
            Place::Files { .. } => None,
        };
        Ok(Self {
            place,
            golden: golden.map(str::to_string),
            labels: labels.map(str::to_string),
            settings,
            downloader,
        })
    }

    /// Whether the source can change under a running agent (files; a URL is pinned by
    /// its checksum).
    pub fn watchable(&self) -> bool {
        matches!(self.place, Place::Files { .. })
    }

    /// Fingerprint of the source's files (`None` for URL sources).
    pub fn stamp(&self) -> Option<Stamp> {
        let Place::Files { model, dir } = &self.place else {
            return None;
        };
        let stamp_of = |p: &Path| {
            fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        };
        let mut stamp = vec![stamp_of(model)];
        for name in [&self.golden, &self.labels].into_iter().flatten() {
            stamp.push(stamp_of(&dir.join(name)));
        }
        Some(stamp)
    }

    /// Where the model is, for messages (a URL without user info or query string).
    pub fn describe(&self) -> String {
        match &self.place {
            Place::Files { model, .. } => model.display().to_string(),
            Place::Url { url, .. } => redact::url(url.as_str()),
        }
    }

    /// Reads the model files. For a URL source: the verified cached copy, else a
    /// download. `rt` runs the downloads (the loader thread's own runtime); call from a
    /// thread that is not a runtime worker.
    pub fn fetch(&self, rt: &tokio::runtime::Runtime) -> Result<ModelFiles, SourceError> {
        match &self.place {
            Place::Files { model, dir } => {
                let bytes = read_file(model)?;
                Ok(ModelFiles {
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    model: bytes,
                    golden: self
                        .golden
                        .as_ref()
                        .map(|g| read_file(&dir.join(g)))
                        .transpose()?,
                    labels: self
                        .labels
                        .as_ref()
                        .map(|l| read_file(&dir.join(l)))
                        .transpose()?,
                    origin: model.display().to_string(),
                })
            }
            Place::Url { url, sha256 } => self.fetch_url(rt, url, sha256),
        }
    }

    fn fetch_url(
        &self,
        rt: &tokio::runtime::Runtime,
        url: &Url,
        sha256: &str,
    ) -> Result<ModelFiles, SourceError> {
        let cache = self.settings.data_dir.join("models");
        fs::create_dir_all(&cache).map_err(|source| SourceError::Io {
            path: cache.clone(),
            source,
        })?;
        let cached = cache.join(format!("{sha256}.tflite"));
        let model = match fs::read(&cached) {
            Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == sha256 => bytes,
            Ok(bytes) => {
                // A corrupt cache entry: remove it and download again.
                let actual = hex::encode(Sha256::digest(&bytes));
                tracing::warn!(file = %cached.display(), %actual, expected = %sha256, "cached model does not match its sha256; downloading again");
                let _ = fs::remove_file(&cached);
                self.download_model(rt, url, sha256, &cached)?
            }
            Err(_) => self.download_model(rt, url, sha256, &cached)?,
        };
        let aux = |name: &Option<String>| -> Result<Option<Vec<u8>>, SourceError> {
            let Some(name) = name else { return Ok(None) };
            let file_name = name.rsplit('/').next().unwrap_or(name);
            let path = cache.join(format!("{sha256}--{file_name}"));
            if let Ok(bytes) = fs::read(&path) {
                return Ok(Some(bytes));
            }
            let bytes = self.download(rt, &file_url(url, name)?)?;
            write_atomically(&path, &bytes)?;
            Ok(Some(bytes))
        };
        Ok(ModelFiles {
            model,
            sha256: sha256.to_string(),
            golden: aux(&self.golden)?,
            labels: aux(&self.labels)?,
            origin: redact::url(url.as_str()),
        })
    }

    fn download_model(
        &self,
        rt: &tokio::runtime::Runtime,
        url: &Url,
        sha256: &str,
        cached: &Path,
    ) -> Result<Vec<u8>, SourceError> {
        let bytes = self.download(rt, url)?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha256 {
            return Err(SourceError::ChecksumMismatch {
                origin: redact::url(url.as_str()),
                expected: sha256.to_string(),
                actual,
            });
        }
        write_atomically(cached, &bytes)?;
        let url = redact::url(url.as_str());
        tracing::info!(%url, file = %cached.display(), "model downloaded and verified");
        Ok(bytes)
    }

    fn download(&self, rt: &tokio::runtime::Runtime, url: &Url) -> Result<Vec<u8>, SourceError> {
        match &self.downloader {
            Some(downloader) => downloader.get(rt, url),
            None => Err(SourceError::Download {
                url: redact::url(url.as_str()),
                message: "no HTTP client".into(),
            }),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = fs::metadata(path).map_err(io)?.len();
    if len > MAX_MODEL_BYTES {
        return Err(SourceError::TooLarge(path.display().to_string()));
    }
    fs::read(path).map_err(io)
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn spec(path: Option<&str>, url: Option<&str>, sha: Option<&str>) -> ModelSource {
        ModelSource {
            path: path.map(str::to_string),
            config_map: None,
            url: url.map(str::to_string),
            sha256: sha.map(str::to_string),
            headers: Vec::new(),
        }
    }

    #[test]
    fn path_sources_read_files_next_to_the_model() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("m.tflite"), b"model").unwrap();
        fs::write(dir.path().join("g.json"), b"golden").unwrap();
        let model = dir.path().join("m.tflite");
        let loc = ModelLocation::new(
            &spec(model.to_str(), None, None),
            Some("g.json"),
            None,
            SourceSettings::new(dir.path()),
        )
        .unwrap();
        let rt = runtime();
        let files = loc.fetch(&rt).unwrap();
        assert_eq!(files.model, b"model");
        assert_eq!(files.golden.as_deref(), Some(&b"golden"[..]));
        assert_eq!(files.sha256, hex::encode(Sha256::digest(b"model")));
        let before = files.version();
        let stamp = loc.stamp().unwrap();
        fs::write(dir.path().join("g.json"), b"other golden").unwrap();
        assert_ne!(loc.stamp().unwrap(), stamp);
        assert_ne!(loc.fetch(&rt).unwrap().version(), before);
    }

    #[test]
    fn missing_files_and_bad_specs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SourceSettings::new(dir.path());
        let loc = ModelLocation::new(
            &spec(Some("/nonexistent/m.tflite"), None, None),
            None,
            None,
            settings.clone(),
        )
        .unwrap();
        let rt = runtime();
        let err = loc.fetch(&rt).unwrap_err();
        assert_eq!(err.outcome(), "source_error");
        assert!(
            ModelLocation::new(
                &spec(None, Some("http://x/m"), Some("abc")),
                None,
                None,
                settings.clone()
            )
            .is_err()
        );
        assert!(ModelLocation::new(&spec(None, None, None), None, None, settings).is_err());
    }

    #[test]
    fn a_verified_cached_copy_is_used_without_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let sha = hex::encode(Sha256::digest(b"cached model"));
        fs::create_dir_all(dir.path().join("models")).unwrap();
        fs::write(
            dir.path().join("models").join(format!("{sha}.tflite")),
            b"cached model",
        )
        .unwrap();
        // Port 9 (discard) on loopback: nothing answers, so any download would fail.
        let loc = ModelLocation::new(
            &spec(None, Some("http://127.0.0.1:9/m.tflite"), Some(&sha)),
            None,
            None,
            SourceSettings::new(dir.path()),
        )
        .unwrap();
        let rt = runtime();
        assert_eq!(loc.fetch(&rt).unwrap().model, b"cached model");
        // A corrupt cache entry is not used: it is removed and a download is attempted.
        fs::write(
            dir.path().join("models").join(format!("{sha}.tflite")),
            b"tampered",
        )
        .unwrap();
        let err = loc.fetch(&rt).unwrap_err();
        assert_eq!(err.outcome(), "download_error", "{err}");
        assert!(
            !dir.path()
                .join("models")
                .join(format!("{sha}.tflite"))
                .exists()
        );
    }
}
