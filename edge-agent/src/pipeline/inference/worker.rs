//! The inference thread: the only place models run. It takes jobs (a batch of windows,
//! or one image) from a bounded queue in order, runs them on the current model and
//! replies on a oneshot channel. A model swap is a message in the same queue, so every
//! job runs on exactly one model: jobs queued before the swap on the old one, after it on
//! the new one. A job whose caller has given up (timeout) is skipped, and a long job stops
//! between two chunks once its deadline has passed.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::classify::{image_input, image_size, top_k};
use super::loader::Prepared;
use super::model::RunError;
use super::{InferenceMetrics, ModelStatus, Skip};

/// Scores of a batch of windows: one score (the model's first output) per window.
#[derive(Debug)]
pub struct WindowScores {
    /// One score per window, in order.
    pub scores: Vec<f32>,
    /// Generation of the model that computed them.
    pub generation: u64,
}

/// Class scores of one image.
#[derive(Debug)]
pub struct ImageScores {
    /// The best classes, best first.
    pub top: Vec<(String, f64)>,
    /// Generation of the model that computed them.
    pub generation: u64,
}

/// A message to the inference thread.
pub enum Msg {
    /// Score `rows` windows laid out flat in `input`.
    Windows {
        /// Normalised windows, flat.
        input: Vec<f32>,
        /// Number of windows.
        rows: usize,
        /// Give up after this instant.
        deadline: Instant,
        /// Where the result goes.
        reply: oneshot::Sender<Result<WindowScores, Skip>>,
    },
    /// Classify an image payload.
    Image {
        /// JPEG or PNG bytes.
        payload: Vec<u8>,
        /// How many classes to report.
        top_k: usize,
        /// Give up after this instant.
        deadline: Instant,
        /// Where the result goes.
        reply: oneshot::Sender<Result<ImageScores, Skip>>,
    },
    /// Replace the current model.
    Swap(Box<Prepared>),
    /// Block the thread: say so on `held`, then wait until `release` is dropped.
    Hold {
        /// Signalled once the thread is blocked.
        held: std::sync::mpsc::SyncSender<()>,
        /// Dropped by the holder to let the thread go on.
        release: Receiver<()>,
    },
}

/// Runs the inference loop until every sender is dropped.
pub fn run(
    rx: Receiver<Msg>,
    max_batch: usize,
    status: Arc<Mutex<ModelStatus>>,
    metrics: InferenceMetrics,
) {
    let mut current: Option<Prepared> = None;
    let mut generation = 0u64;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Swap(prepared) => {
                generation += 1;
                if let Ok(mut s) = status.lock() {
                    s.generation = generation;
                    s.sha256 = Some(prepared.sha256.clone());
                    s.origin = Some(prepared.origin.clone());
                    s.batched = prepared.model.batches();
                    s.input_shape = prepared.model.input_shape.clone();
                }
                metrics.model_info.reset();
                metrics
                    .model_info
                    .with_label_values(&[&prepared.sha256])
                    .set(1);
                current = Some(*prepared);
            }
            Msg::Hold { held, release } => {
                let _ = held.send(());
                let _ = release.recv();
            }
            Msg::Windows {
                input,
                rows,
                deadline,
                reply,
            } => answer(reply, deadline, current.as_ref(), |p| {
                score_windows(p, &input, rows, max_batch, deadline, &metrics)
                    .map(|scores| WindowScores { scores, generation })
            }),
            Msg::Image {
                payload,
                top_k: k,
                deadline,
                reply,
            } => answer(reply, deadline, current.as_ref(), |p| {
                classify(p, &payload, k, &metrics).map(|top| ImageScores { top, generation })
            }),
        }
    }
}

/// Replies with `work` done on the current model, unless nobody waits for the answer any
/// more (the caller gave up, or its deadline passed): then the work is not done at all.
fn answer<T>(
    reply: oneshot::Sender<Result<T, Skip>>,
    deadline: Instant,
    current: Option<&Prepared>,
    work: impl FnOnce(&Prepared) -> Result<T, Skip>,
) {
    if reply.is_closed() || Instant::now() > deadline {
        return;
    }
    let _ = reply.send(current.map_or(Err(Skip::NoModel), work));
}

fn score_windows(
    p: &Prepared,
    input: &[f32],
    rows: usize,
    max_batch: usize,
    deadline: Instant,
    metrics: &InferenceMetrics,
) -> Result<Vec<f32>, Skip> {
    let row_len = p.model.row_len();
    let out_len = p.model.output_len();
    let chunk_rows = if p.model.batches() {
        max_batch.max(1)
    } else {
        1
    };
    let mut scores = Vec::with_capacity(rows);
    for chunk in input.chunks(row_len * chunk_rows) {
        if Instant::now() > deadline {
            return Err(Skip::Timeout);
        }
        let n = chunk.len() / row_len;
        let started = Instant::now();
        let out = p.model.run(chunk, n).map_err(failed)?;
        metrics.duration.observe(started.elapsed().as_secs_f64());
        metrics.inferences.inc_by(n as u64);
        scores.extend(out.chunks(out_len).map(|row| row[0]));
    }
    Ok(scores)
}

fn classify(
    p: &Prepared,
    payload: &[u8],
    k: usize,
    metrics: &InferenceMetrics,
) -> Result<Vec<(String, f64)>, Skip> {
    let (h, w) = image_size(&p.model.input_shape).map_err(|e| Skip::Failed(e.to_string()))?;
    let preprocess = &p.preprocess;
    let input = std::panic::catch_unwind(|| image_input(payload, h, w, preprocess))
        .map_err(|_| Skip::InvalidImage("the image decoder panicked".into()))?
        .map_err(|e| Skip::InvalidImage(e.to_string()))?;
    let started = Instant::now();
    let out = p.model.run_single(&input).map_err(failed)?;
    metrics.duration.observe(started.elapsed().as_secs_f64());
    metrics.inferences.inc();
    Ok(top_k(&out, &p.labels, k))
}

fn failed(e: RunError) -> Skip {
    Skip::Failed(e.to_string())
}
