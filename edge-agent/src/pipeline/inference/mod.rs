//! TFLite inference on the node, with tract-tflite: per-device anomaly scores over a
//! sliding window of raw readings, or image classification of JPEG/PNG payloads.
//!
//! [`Inference`] is the handle the data path holds. Models run on one dedicated
//! inference thread, never on async workers; a second thread loads models (from a path,
//! the model ConfigMap or a verified URL download), checks them (ops, `catch_unwind`
//! around tract's loader, golden vectors) and swaps them in without a restart when the
//! source changes. The data path never waits on a model for more than
//! `spec.inference.timeout` and never blocks on a full queue: such inferences are skipped
//! and counted, the readings keep flowing.

mod classify;
mod compact;
mod download;
mod engine;
mod golden;
mod loader;
mod model;
mod onnx;
mod ops;
mod rewrite;
mod source;
mod stage;
mod window;
mod worker;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGaugeVec};

pub use classify::{Preprocess, image_input, image_size, parse_labels, top_k};
pub use download::{MAX_REDIRECTS, RedirectRefused, file_url, follow_redirect};
pub use engine::{
    BatchScores, Inference, InferenceError, InferenceHold, InferenceSettings, ModelControl, Scored,
};
pub use golden::{GoldenError, GoldenSet, compare};
pub use loader::{Control, PrepareError, Prepared, prepare};
pub use model::{LoadError, Model, RunError};
pub use onnx::{onnx_op_support, read_onnx_contents};
pub use ops::{
    ModelContents, ModelFormat, OpInfo, OpSupport, TensorInfo, op_support, read_contents,
};
pub use source::{CONFIG_MAP_MOUNT_DIR, ModelFiles, ModelLocation, SourceError, SourceSettings};
pub use stage::InferenceStage;
pub use window::{Normalizer, Window, WindowStats, Windows};

/// Values of the `outcome` label of `edge_agent_model_loads_total`.
pub const LOAD_OUTCOMES: [&str; 10] = [
    "success",
    "panic",
    "unsupported_op",
    "load_error",
    "invalid_model",
    "invalid_golden",
    "golden_mismatch",
    "checksum_mismatch",
    "download_error",
    "source_error",
];

/// Values of the `reason` label of `edge_agent_inference_errors_total`.
pub const ERROR_REASONS: [&str; 5] = [
    "timeout",
    "overloaded",
    "no_model",
    "failed",
    "invalid_image",
];

/// Why an inference was skipped. The data path goes on without its result.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Skip {
    /// The inference queue was full.
    #[error("inference queue full")]
    Overloaded,
    /// The result did not arrive within `spec.inference.timeout`.
    #[error("inference timed out")]
    Timeout,
    /// No model has loaded (yet).
    #[error("no model loaded")]
    NoModel,
    /// The model run failed.
    #[error("inference failed: {0}")]
    Failed(String),
    /// The payload is not a decodable image.
    #[error("invalid image: {0}")]
    InvalidImage(String),
}

impl Skip {
    /// Static `reason` label of `edge_agent_inference_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::NoModel => "no_model",
            Self::Failed(_) => "failed",
            Self::InvalidImage(_) => "invalid_image",
        }
    }
}

/// The inference metrics, as handles into the agent's registry (see `telemetry`).
#[derive(Clone)]
pub struct InferenceMetrics {
    /// `edge_agent_inferences_total`: windows or images run through a model.
    pub inferences: IntCounter,
    /// `edge_agent_anomalies_total`: scores above the threshold.
    pub anomalies: IntCounter,
    /// `edge_agent_inference_duration_seconds`: duration of one model call (one batch).
    pub duration: Histogram,
    /// `edge_agent_inference_errors_total{reason}`: skipped inferences.
    pub errors: IntCounterVec,
    /// `edge_agent_model_loads_total{outcome}`: model load attempts.
    pub model_loads: IntCounterVec,
    /// `edge_agent_inference_windows_evicted_total`: devices' windows thrown away for a
    /// new device (more devices than `source.maxDevices`).
    pub windows_evicted: IntCounter,
    /// `edge_agent_model_info{sha256}`: the model running.
    pub model_info: IntGaugeVec,
}

impl InferenceMetrics {
    /// Wraps the handles and creates every label value at zero.
    pub fn new(
        inferences: IntCounter,
        anomalies: IntCounter,
        duration: Histogram,
        errors: IntCounterVec,
        model_loads: IntCounterVec,
        windows_evicted: IntCounter,
        model_info: IntGaugeVec,
    ) -> Self {
        for r in ERROR_REASONS {
            errors.with_label_values(&[r]);
        }
        for o in LOAD_OUTCOMES {
            model_loads.with_label_values(&[o]);
        }
        Self {
            inferences,
            anomalies,
            duration,
            errors,
            model_loads,
            windows_evicted,
            model_info,
        }
    }

    /// Metrics outside any registry (tools and tests that run inference without the
    /// agent's telemetry).
    pub fn standalone() -> prometheus::Result<Self> {
        let vec = |n: &str, l: &str| IntCounterVec::new(prometheus::Opts::new(n, n), &[l]);
        Ok(Self::new(
            IntCounter::new("edge_agent_inferences_total", "model runs")?,
            IntCounter::new("edge_agent_anomalies_total", "anomalies")?,
            Histogram::with_opts(prometheus::HistogramOpts::new(
                "edge_agent_inference_duration_seconds",
                "model call duration",
            ))?,
            vec("edge_agent_inference_errors_total", "reason")?,
            vec("edge_agent_model_loads_total", "outcome")?,
            IntCounter::new("edge_agent_inference_windows_evicted_total", "evicted")?,
            IntGaugeVec::new(
                prometheus::Opts::new("edge_agent_model_info", "model running"),
                &["sha256"],
            )?,
        ))
    }

    /// Model loads with `outcome` so far.
    pub fn loads(&self, outcome: &str) -> u64 {
        self.model_loads.with_label_values(&[outcome]).get()
    }

    /// Skipped inferences with `reason` so far.
    pub fn skipped(&self, reason: &str) -> u64 {
        self.errors.with_label_values(&[reason]).get()
    }
}

/// What model is running and what went wrong last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelStatus {
    /// Incremented on every swap; 0 until a model is running.
    pub generation: u64,
    /// SHA-256 of the running model file.
    pub sha256: Option<String>,
    /// Where the running model came from.
    pub origin: Option<String>,
    /// Input shape of the running model.
    pub input_shape: Vec<usize>,
    /// Whether the running model batches windows of several devices in one call.
    pub batched: bool,
    /// Number of refused models (any outcome but success).
    pub refused: u64,
    /// The last refusal, with its reason.
    pub last_error: Option<String>,
}
