//! Watching the pipeline file of a running agent. A new model reference (`inference.model`
//! with its `golden`, `labels` and `labelsFile`: another `url` + `sha256`, path or
//! ConfigMap) is applied at once: the new model is fetched, verified and swapped in beside
//! the running one, which keeps answering until then and stays if the new one is refused.
//! Any other change needs a restart — on Kubernetes the operator rolls the pods for it
//! (the config hash) — and is logged once per version of the file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::pipeline::inference::ModelControl;

/// How often the pipeline file is checked.
pub const POLL: Duration = Duration::from_secs(2);

/// What a new version of the pipeline file asks of a running agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing that matters.
    None,
    /// Only the model reference: swap the model.
    Model,
    /// Anything else: restart to apply.
    Restart,
}

/// Compares the running config with a new version of the file.
pub fn change(running: &AgentConfig, new: &AgentConfig) -> Change {
    if running == new {
        return Change::None;
    }
    let (Some(old), Some(_)) = (&running.spec.inference, &new.spec.inference) else {
        return Change::Restart;
    };
    // The new config with the running model reference: equal means only that changed.
    let mut rest = new.clone();
    if let Some(i) = rest.spec.inference.as_mut() {
        i.model = old.model.clone();
        i.golden = old.golden.clone();
        i.labels = old.labels.clone();
        i.labels_file = old.labels_file.clone();
    }
    if rest == *running {
        Change::Model
    } else {
        Change::Restart
    }
}

/// Size, modification time and inode: a kubelet ConfigMap update replaces the file
/// behind the `..data` symlink, so the inode changes even if the rest does not.
type Stamp = (u64, Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), m.ino()))
}

/// Watches `path` until `stop`, starting from `running`; model changes go to `model`
/// (`None`: the pipeline has no inference).
pub async fn watch(
    path: PathBuf,
    mut running: AgentConfig,
    model: Option<ModelControl>,
    stop: CancellationToken,
) {
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let new = match AgentConfig::load(&path, &running.node) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the changed pipeline file is invalid; running the previous configuration");
                continue;
            }
        };
        match (change(&running, &new), &model, &new.spec.inference) {
            (Change::None, _, _) => {}
            (Change::Model, Some(control), Some(spec)) => match control.change_source(spec) {
                Ok(_) => {
                    tracing::info!(path = %path.display(), "the pipeline's model reference changed");
                    running = new;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the new model reference is unusable; the running model stays");
                }
            },
            _ => tracing::warn!(
                path = %path.display(),
                "the pipeline file changed beyond the model reference; restart the agent to apply it (running the previous configuration)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model: &str, threshold: f64) -> AgentConfig {
        let text = format!(
            "source:\n  mqtt: {{url: \"mqtt://127.0.0.1:1883\", topics: [a/+]}}\n\
             inference:\n  model: {{url: \"https://models.example/{model}.tflite\", sha256: \"{}\"}}\n  \
             window: 16\n  threshold: {threshold}\n\
             sink:\n  http: {{url: \"http://127.0.0.1:9/ingest\"}}\n",
            "ab".repeat(32)
        );
        AgentConfig::from_text(&text, "edge-1", &|_| None).expect("config")
    }

    #[test]
    fn only_a_new_model_reference_is_applied_live() {
        let running = config("v1", 0.8);
        assert_eq!(change(&running, &config("v1", 0.8)), Change::None);
        assert_eq!(change(&running, &config("v2", 0.8)), Change::Model);
        assert_eq!(change(&running, &config("v1", 0.9)), Change::Restart);
        assert_eq!(change(&running, &config("v2", 0.9)), Change::Restart);
        let mut no_inference = running.clone();
        no_inference.spec.inference = None;
        assert_eq!(change(&running, &no_inference), Change::Restart);
        assert_eq!(change(&no_inference, &running), Change::Restart);
    }
}
