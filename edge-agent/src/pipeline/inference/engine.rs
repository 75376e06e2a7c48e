//! [`Inference`]: the handle the data path calls, once per batch of readings (anomaly
//! task) or once per image payload (classification task).
//!
//! Windows are kept on the caller's side (cheap, in reading order); the model runs on
//! the inference thread. A call hands one job to the thread's bounded queue without
//! blocking (a full queue skips the inference: `overloaded`) and waits at most
//! `spec.inference.timeout` for the reply (`timeout` otherwise). Either way the readings
//! go on to the processors; only the inference is skipped, and counted.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use edge_crds::units::UnitError;
use edge_crds::{Inference as InferenceSpec, InferenceTask};
use tokio::sync::oneshot;

use super::loader::{Control, Loader};
use super::source::{ModelLocation, SourceError, SourceSettings};
use super::window::{Normalizer, WindowStats, Windows};
use super::worker::{self, ImageScores, Msg};
use super::{InferenceMetrics, ModelStatus, Skip};
use crate::record::{Reading, Record, RecordKind};

/// How [`Inference`] runs.
#[derive(Clone, Debug)]
pub struct InferenceSettings {
    /// `spec.inference`.
    pub spec: InferenceSpec,
    /// Where model sources are resolved.
    pub source: SourceSettings,
    /// Most devices with a window (`spec.source.maxDevices`).
    pub max_devices: usize,
    /// How often a file-based model source is checked for changes.
    pub poll_interval: Duration,
    /// Jobs the inference queue holds before calls are skipped as `overloaded`.
    pub queue_capacity: usize,
    /// Most windows in one model call.
    pub max_batch: usize,
}

impl InferenceSettings {
    /// Settings with the defaults: 2 s polling, 64 queued jobs, batches of 64 windows.
    pub fn new(spec: InferenceSpec, source: SourceSettings, max_devices: usize) -> Self {
        Self {
            spec,
            source,
            max_devices,
            poll_interval: Duration::from_secs(2),
            queue_capacity: 64,
            max_batch: 64,
        }
    }
}

/// Why inference could not start.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The model source is unusable.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// `spec.inference.timeout` does not parse.
    #[error("spec.inference.timeout: {0}")]
    Timeout(#[source] UnitError),
    /// A thread could not be started.
    #[error("starting the {0} thread: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
}

/// The score of one full window.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// Index of the reading (in the slice passed to [`Inference::score`]) that completed
    /// the window.
    pub index: usize,
    /// The model's score.
    pub score: f32,
    /// Summary of the window's raw values.
    pub stats: WindowStats,
    /// Generation of the model that scored it (see [`ModelStatus::generation`]).
    pub generation: u64,
}

/// The scores of a batch of readings, and its anomalies.
#[derive(Debug, Default)]
pub struct BatchScores {
    /// (index of the reading, score) for every full window.
    pub scores: Vec<(usize, f64)>,
    /// (index of the reading, anomaly record) for every score above the threshold.
    pub anomalies: Vec<(usize, Record)>,
}

/// Inference for one pipeline: windows, the inference thread and the model loader.
pub struct Inference {
    task: InferenceTask,
    threshold: f64,
    top_k: usize,
    timeout: Duration,
    windows: Windows,
    tx: SyncSender<Msg>,
    status: Arc<Mutex<ModelStatus>>,
    metrics: InferenceMetrics,
    evicted: u64,
    max_devices: usize,
    /// Whether window changes are kept for [`Inference::take_changes`].
    tracking: bool,
    /// Window changes of the last [`Inference::score`]: (reading index, device, saved
    /// window or `None` when evicted).
    changes: Vec<(usize, String, Option<Vec<u8>>)>,
    /// The loader thread's controls; dropping the last one stops it.
    control: ModelControl,
}

/// Where `spec` takes its model (and golden and labels files) from.
fn location_of(spec: &InferenceSpec, source: SourceSettings) -> Result<ModelLocation, SourceError> {
    ModelLocation::new(
        &spec.model,
        spec.golden.as_ref().and_then(|g| g.file.as_deref()),
        spec.labels_file.as_deref(),
        source,
    )
}

/// Changes where a running [`Inference`] takes its model from. Cloneable, so a task that
/// watches the pipeline file can hold one while the data path owns the engine.
#[derive(Clone, Debug)]
pub struct ModelControl {
    tx: mpsc::Sender<Control>,
    source: SourceSettings,
}

impl ModelControl {
    /// Takes the model from `spec`'s model source (and its golden and labels files) from
    /// now on: fetched, verified and swapped in like any model update; the running model
    /// keeps answering until then, and stays if the new one is refused (logged and
    /// counted). `false` when the loader has stopped.
    pub fn change_source(&self, spec: &InferenceSpec) -> Result<bool, InferenceError> {
        let location = location_of(spec, self.source.clone())?;
        let msg = Control::Source(Box::new(location), Box::new(spec.clone()));
        Ok(self.tx.send(msg).is_ok())
    }
}

impl Inference {
    /// Starts the inference and loader threads; the model loads in the background
    /// (until it has, inferences are skipped as `no_model`). The async methods need a
    /// Tokio runtime with the time driver.
    pub fn start(
        settings: InferenceSettings,
        metrics: InferenceMetrics,
    ) -> Result<Self, InferenceError> {
        let spec = settings.spec;
        let timeout = spec.timeout.to_std().map_err(InferenceError::Timeout)?;
        let location = location_of(&spec, settings.source.clone())?;
        let status = Arc::new(Mutex::new(ModelStatus::default()));
        let (tx, rx) = mpsc::sync_channel(settings.queue_capacity.max(1));
        let (control, control_rx) = mpsc::channel();
        {
            let (status, metrics, max_batch) =
                (status.clone(), metrics.clone(), settings.max_batch);
            thread::Builder::new()
                .name("inference".into())
                .spawn(move || worker::run(rx, max_batch, status, metrics))
                .map_err(|e| InferenceError::Spawn("inference", e))?;
        }
        let loader = Loader {
            location,
            spec: spec.clone(),
            tx: tx.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
            poll: settings.poll_interval,
        };
        thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || loader.run(control_rx))
            .map_err(|e| InferenceError::Spawn("model loader", e))?;
        Ok(Self {
            task: spec.task,
            threshold: spec.threshold,
            top_k: spec.top_k.max(1) as usize,
            timeout,
            windows: Windows::new(
                spec.window as usize,
                Normalizer::from_spec(spec.normalize.as_ref()),
                settings.max_devices,
            ),
            tx,
            status,
            metrics,
            evicted: 0,
            max_devices: settings.max_devices,
            tracking: false,
            changes: Vec::new(),
            control: ModelControl {
                tx: control,
                source: settings.source,
            },
        })
    }

    /// A handle that changes the model source while this engine runs.
    pub fn control(&self) -> ModelControl {
        self.control.clone()
    }

    /// What the model computes.
    pub fn task(&self) -> InferenceTask {
        self.task
    }

    /// The running model and the last refusal.
    pub fn status(&self) -> ModelStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the running model's generation is at least `generation`; `false` if
    /// that did not happen within `timeout`.
    pub async fn wait_for_generation(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.status().generation >= generation {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Keeps each reading's window change for [`Inference::take_changes`] from now on.
    pub fn track_changes(&mut self) {
        self.tracking = self.task == InferenceTask::Anomaly;
    }

    /// The window changes of the readings scored since the last call: (index of the
    /// reading in its batch, device, its saved window or `None` when evicted).
    pub fn take_changes(&mut self) -> Vec<(usize, String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.changes)
    }

    /// Loads saved windows (see [`Windows::restore`]); returns the devices skipped.
    pub fn restore<'a>(
        &mut self,
        saved: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<String> {
        self.windows.restore(saved)
    }

    /// Devices whose window was evicted so far (more than `max_devices` devices).
    pub fn evicted_devices(&self) -> u64 {
        self.evicted
    }

    /// Feeds `readings` into their devices' windows and scores every full window in one
    /// job. Skipped inferences are counted (one per window) and returned as the error.
    pub async fn score(&mut self, readings: &[Reading]) -> Result<Vec<Scored>, Skip> {
        if self.task != InferenceTask::Anomaly {
            return Ok(Vec::new());
        }
        let mut full = Vec::new();
        let mut input = Vec::new();
        self.changes.clear();
        for (index, r) in readings.iter().enumerate() {
            let (window, evicted) = self.windows.push_evicting(&r.device, r.value);
            if self.tracking {
                if let Some(gone) = &evicted {
                    self.changes.push((index, gone.clone(), None));
                }
                let saved = self.windows.saved(&r.device);
                self.changes.push((index, r.device.clone(), saved));
            }
            if evicted.is_some() {
                self.evicted += 1;
                self.metrics.windows_evicted.inc();
                if self.evicted.is_power_of_two() {
                    tracing::warn!(
                        evicted = self.evicted,
                        max_devices = self.max_devices,
                        "more devices than source.maxDevices: the least recently seen device's inference window was thrown away before it could fill; raise maxDevices"
                    );
                }
            }
            if let Some(w) = window {
                input.extend_from_slice(&w.input);
                full.push((index, w.stats));
            }
        }
        if full.is_empty() {
            return Ok(Vec::new());
        }
        let rows = full.len();
        let deadline = Instant::now() + self.timeout;
        let (reply, rx) = oneshot::channel();
        let result = match self.submit(Msg::Windows {
            input,
            rows,
            deadline,
            reply,
        }) {
            Ok(()) => self.wait(rx).await,
            Err(skip) => Err(skip),
        };
        match result {
            Ok(out) if out.scores.len() == rows => Ok(full
                .into_iter()
                .zip(out.scores)
                .map(|((index, stats), score)| Scored {
                    index,
                    score,
                    stats,
                    generation: out.generation,
                })
                .collect()),
            Ok(_) => Err(self.count(Skip::Failed("wrong number of scores".into()), rows)),
            Err(skip) => Err(self.count(skip, rows)),
        }
    }

    /// Anomaly records for `readings`, each with the index of the reading it scores: one
    /// per window whose score is above the threshold, all windows scored in one model
    /// call. Skipped inferences yield none (and are counted).
    pub async fn anomalies(&mut self, readings: &[Reading]) -> Vec<(usize, Record)> {
        self.scored(readings).await.anomalies
    }

    /// The score of every full window of `readings` (index of the reading, score) and the
    /// anomaly records among them (see [`Inference::anomalies`]), all windows scored in
    /// one model call. Skipped inferences yield neither (and are counted).
    pub async fn scored(&mut self, readings: &[Reading]) -> BatchScores {
        let Ok(scored) = self.score(readings).await else {
            return BatchScores::default();
        };
        let scores = scored
            .iter()
            .map(|s| (s.index, f64::from(s.score)))
            .collect();
        let records: Vec<(usize, Record)> = scored
            .into_iter()
            .filter(|s| f64::from(s.score) > self.threshold)
            .filter_map(|s| {
                let r = readings.get(s.index)?;
                let record = Record {
                    kind: RecordKind::Anomaly,
                    device: r.device.clone(),
                    topic: r.topic.clone(),
                    value: Some(r.value),
                    timestamp_ms: r.timestamp_ms,
                    score: Some(f64::from(s.score)),
                    stats: Some(s.stats.to_map()),
                    labels: None,
                    urgent: true,
                };
                Some((s.index, record))
            })
            .collect();
        self.metrics.anomalies.inc_by(records.len() as u64);
        BatchScores {
            scores,
            anomalies: records,
        }
    }

    /// The best classes of an image payload. Skips are counted.
    pub async fn classify_scores(&mut self, payload: &[u8]) -> Result<ImageScores, Skip> {
        if self.task != InferenceTask::Classification {
            return Err(Skip::Failed("the model is not a classifier".into()));
        }
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Image {
            payload: payload.to_vec(),
            top_k: self.top_k,
            deadline: Instant::now() + self.timeout,
            reply,
        };
        let result = match self.submit(msg) {
            Ok(()) => self.wait(rx).await,
            Err(skip) => Err(skip),
        };
        result.map_err(|skip| self.count(skip, 1))
    }

    /// A classification record for an image payload from `device`, or `None` when the
    /// inference was skipped (counted).
    pub async fn classify(
        &mut self,
        device: &str,
        topic: &str,
        timestamp_ms: i64,
        payload: &[u8],
    ) -> Option<Record> {
        let scores = self.classify_scores(payload).await.ok()?;
        Some(Record {
            kind: RecordKind::Classification,
            device: device.to_string(),
            topic: topic.to_string(),
            value: None,
            timestamp_ms,
            score: scores.top.first().map(|(_, s)| *s),
            stats: None,
            labels: Some(scores.top),
            urgent: true,
        })
    }

    /// Blocks the inference thread until the returned guard is dropped (jobs queue up
    /// meanwhile). Lets tests drive the timeout and overload paths deterministically.
    #[doc(hidden)]
    pub async fn hold_inference_thread(&self) -> Result<InferenceHold, Skip> {
        let (held_tx, held) = mpsc::sync_channel(1);
        let (release, release_rx) = mpsc::sync_channel(1);
        self.submit(Msg::Hold {
            held: held_tx,
            release: release_rx,
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match held.try_recv() {
                Ok(()) => return Ok(InferenceHold { _release: release }),
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::task::yield_now().await
                }
                Err(_) => return Err(Skip::Failed("the inference thread did not stop".into())),
            }
        }
    }

    fn submit(&self, msg: Msg) -> Result<(), Skip> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => Skip::Overloaded,
            TrySendError::Disconnected(_) => {
                Skip::Failed("the inference thread has stopped".into())
            }
        })
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, Skip>>) -> Result<T, Skip> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            // The thread drops the reply of a job whose deadline passed.
            Ok(Err(_)) | Err(_) => Err(Skip::Timeout),
        }
    }

    fn count(&self, skip: Skip, n: usize) -> Skip {
        tracing::debug!(
            reason = skip.reason(),
            windows = n,
            "inference skipped: {skip}"
        );
        self.metrics
            .errors
            .with_label_values(&[skip.reason()])
            .inc_by(n as u64);
        skip
    }
}

/// Keeps the inference thread blocked while alive (see [`Inference::hold_inference_thread`]).
#[doc(hidden)]
pub struct InferenceHold {
    _release: mpsc::SyncSender<()>,
}
