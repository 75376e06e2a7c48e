//! The model loader thread: fetches the model from its source, loads it beside the
//! running one (ops checked, `catch_unwind` around tract, golden vectors checked,
//! warmed up) and hands it to the inference thread, which swaps it in between two
//! jobs. It then watches the source: a file-based model is re-checked every poll
//! (size, mtime and inode first, content hash before a reload), so a ConfigMap update
//! that re-projects the mounted directory, or a new file at `path`, swaps the model
//! without a restart. A new model reference (another `url` + `sha256`, path or ConfigMap in
//! the pipeline) arrives as a [`Control::Source`] and is fetched and swapped in the same
//! way. A model that fails leaves the running one in place; the failure is logged and
//! counted once per version, not once per poll.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_crds::{Inference as InferenceSpec, InferenceTask};

use super::classify::{Preprocess, image_size, parse_labels};
use super::golden::{GoldenError, GoldenSet};
use super::model::{LoadError, Model};
use super::source::{ModelFiles, ModelLocation, SourceError};
use super::worker::Msg;
use super::{InferenceMetrics, ModelStatus};

/// Longest wait between two attempts to fetch a URL model that is not available yet.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A model ready to swap in.
pub struct Prepared {
    /// The model.
    pub model: Model,
    /// Class labels (classification).
    pub labels: Vec<String>,
    /// How images become input (classification).
    pub preprocess: Preprocess,
    /// SHA-256 of the model file.
    pub sha256: String,
    /// Where it came from.
    pub origin: String,
    /// Largest error over the golden vectors, if any were checked.
    pub golden_error: Option<f64>,
}

/// Why a fetched model was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The golden vectors could not be read.
    #[error("golden vectors: {0}")]
    GoldenFile(GoldenError),
    /// The model's outputs diverge from the golden vectors.
    #[error("golden check failed: {0}")]
    Golden(GoldenError),
    /// Files could not be fetched.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl PrepareError {
    /// Static `outcome` label of `edge_agent_model_loads_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Load(e) => e.outcome(),
            Self::GoldenFile(_) => "invalid_golden",
            Self::Golden(_) => "golden_mismatch",
            Self::Source(e) => e.outcome(),
        }
    }
}

/// Loads `files` for `spec`'s task and checks them; never panics.
pub fn prepare(files: &ModelFiles, spec: &InferenceSpec) -> Result<Prepared, PrepareError> {
    let mut model = Model::load(&files.model)?;
    let labels = match (&files.labels, spec.labels.is_empty()) {
        (Some(bytes), _) => parse_labels(&String::from_utf8_lossy(bytes)),
        (None, false) => spec.labels.clone(),
        (None, true) => Vec::new(),
    };
    check_task(&model, spec, &labels)?;
    let golden = golden_set(files, spec)?;
    let mut golden_error = None;
    if let Some(set) = &golden {
        let err = set
            .check(model.row_len(), |row| model.run_single(row))
            .map_err(PrepareError::Golden)?;
        golden_error = Some(err);
    }
    // The batched plan must agree with the checked batch-1 plan.
    let rows: Vec<Vec<f32>> = match &golden {
        Some(set) if set.vectors.len() >= 2 => set
            .vectors
            .iter()
            .take(8)
            .map(|v| v.input.clone())
            .collect(),
        _ => (0..4)
            .map(|k| {
                (0..model.row_len())
                    .map(|i| ((i * 7 + k * 3) % 11) as f32 / 5.0 - 1.0)
                    .collect()
            })
            .collect(),
    };
    let tolerance = golden.as_ref().map_or(1e-4, |g| g.tolerance.max(1e-6));
    model.verify_batch(&rows, tolerance);
    Ok(Prepared {
        model,
        labels,
        preprocess: spec.input.as_ref().map(Preprocess::new).unwrap_or_default(),
        sha256: files.sha256.clone(),
        origin: files.origin.clone(),
        golden_error,
    })
}

fn check_task(model: &Model, spec: &InferenceSpec, labels: &[String]) -> Result<(), LoadError> {
    match spec.task {
        InferenceTask::Anomaly => {
            let window = spec.window as usize;
            if model.row_len() != window {
                return Err(LoadError::Invalid(format!(
                    "the model input {:?} does not take a window of {window} readings (spec.inference.window)",
                    model.input_shape
                )));
            }
            if model.output_len() == 0 {
                return Err(LoadError::Invalid("the model has an empty output".into()));
            }
        }
        InferenceTask::Classification => {
            image_size(&model.input_shape).map_err(|e| LoadError::Invalid(e.to_string()))?;
            if !labels.is_empty() && labels.len() != model.output_len() {
                return Err(LoadError::Invalid(format!(
                    "{} labels for {} model outputs",
                    labels.len(),
                    model.output_len()
                )));
            }
        }
    }
    Ok(())
}

fn golden_set(files: &ModelFiles, spec: &InferenceSpec) -> Result<Option<GoldenSet>, PrepareError> {
    let Some(g) = &spec.golden else {
        return Ok(None);
    };
    let mut vectors = g.vectors.clone();
    if let Some(bytes) = &files.golden {
        let file =
            GoldenSet::from_json(bytes, Some(g.tolerance)).map_err(PrepareError::GoldenFile)?;
        vectors.extend(file.vectors);
    }
    if vectors.is_empty() {
        return Err(PrepareError::GoldenFile(GoldenError::Empty));
    }
    Ok(Some(GoldenSet {
        vectors,
        tolerance: g.tolerance,
    }))
}

/// What the agent tells the loader thread while it runs (dropping the sender stops it).
pub enum Control {
    /// Take the model from this source from now on, checked against this spec's golden
    /// vectors and labels.
    Source(Box<ModelLocation>, Box<InferenceSpec>),
}

/// State the loader thread runs with.
pub struct Loader {
    /// The model source.
    pub location: ModelLocation,
    /// The inference spec.
    pub spec: InferenceSpec,
    /// The inference thread's queue.
    pub tx: SyncSender<Msg>,
    /// Shared status.
    pub status: Arc<Mutex<ModelStatus>>,
    /// Counters.
    pub metrics: InferenceMetrics,
    /// How often a file source is checked.
    pub poll: Duration,
}

impl Loader {
    /// Runs until `control`'s sender is dropped or the inference thread is gone.
    pub fn run(mut self, control: Receiver<Control>) {
        // Downloads run on a small runtime of this thread's own, so loading never borrows
        // (or blocks) the data path's runtime.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                self.fail(
                    "source_error",
                    &format!("starting the model download runtime: {e}"),
                );
                return;
            }
        };
        let mut last_stamp = None;
        let mut loaded: Option<String> = None;
        let mut refused: Option<String> = None;
        // Whether the current source's files were fetched once (a URL is fetched until
        // then; a file source is re-checked every poll anyway).
        let mut fetched_once = false;
        let mut retry = self.poll;
        loop {
            let stamp = self.location.stamp();
            let due = match &stamp {
                Some(_) => stamp != last_stamp,
                None => !fetched_once,
            };
            if due {
                last_stamp = stamp;
                let fetched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.location.fetch(&rt)
                }));
                match fetched {
                    // Files changed while they were read (e.g. the model read before and
                    // the golden file after a ConfigMap update): read them again next poll.
                    Ok(Ok(_)) if self.location.stamp() != last_stamp => last_stamp = None,
                    Ok(Ok(files)) => {
                        retry = self.poll;
                        fetched_once = true;
                        let version = files.version();
                        if loaded.as_ref() != Some(&version) && refused.as_ref() != Some(&version) {
                            match self.load(&files) {
                                Ok(true) => loaded = Some(version),
                                Ok(false) => return,
                                Err(()) => refused = Some(version),
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        self.fail(e.outcome(), &e.to_string());
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                    Err(_) => self.fail("panic", "fetching the model panicked"),
                }
            }
            let wait = if self.location.watchable() {
                self.poll
            } else {
                retry
            };
            match control.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Control::Source(location, spec)) => {
                    tracing::info!(
                        from = %self.location.describe(),
                        to = %location.describe(),
                        "model source changed; loading the new model beside the running one"
                    );
                    self.location = *location;
                    self.spec = *spec;
                    (last_stamp, refused, fetched_once, retry) = (None, None, false, self.poll);
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Prepares `files` and sends the model to the inference thread. `Ok(false)` when the
    /// inference thread is gone.
    fn load(&self, files: &ModelFiles) -> Result<bool, ()> {
        match prepare(files, &self.spec) {
            Ok(prepared) => {
                tracing::info!(
                    origin = %prepared.origin,
                    sha256 = %prepared.sha256,
                    input = ?prepared.model.input_shape,
                    batched = prepared.model.batches(),
                    golden_max_error = ?prepared.golden_error,
                    "model loaded and verified"
                );
                self.metrics
                    .model_loads
                    .with_label_values(&["success"])
                    .inc();
                Ok(self.tx.send(Msg::Swap(Box::new(prepared))).is_ok())
            }
            Err(e) => {
                self.fail(
                    e.outcome(),
                    &format!("{} ({}): {e}", files.origin, files.sha256),
                );
                Err(())
            }
        }
    }

    fn fail(&self, outcome: &'static str, message: &str) {
        tracing::error!(
            outcome,
            "model refused, the previous model (if any) keeps running: {message}"
        );
        self.metrics.model_loads.with_label_values(&[outcome]).inc();
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(message.to_string());
            s.refused += 1;
        }
    }
}
