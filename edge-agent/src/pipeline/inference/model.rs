//! A model loaded with tract (TFLite through tract-tflite, ONNX through tract-onnx), made
//! safe to use: the file's ops are checked against what tract runs correctly, loading
//! runs under `catch_unwind` (some malformed or unusual models make tract's loader panic),
//! the graph is optimised once, a batch variant with a symbolic batch dimension is built
//! when the model allows it, and both plans are warmed up before the model is handed out.
//! The batch-1 plan keeps its run state from one call to the next ([`Runner`]); a small
//! dense model runs on a compact plan instead, checked against tract's at load
//! ([`super::compact`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use tract_tflite::internal::tract_core::ops::source::TypedSource;
use tract_tflite::prelude::*;

use super::compact::{self, Buffers, Compact};
use super::ops::{FormatError, ModelContents, ModelFormat, read_contents};
use super::rewrite;

/// A plan ready to run (optimised tract graph).
type Plan = Arc<TypedRunnableModel>;

/// Why a model is refused. [`LoadError::outcome`] is the `outcome` label of
/// `edge_agent_model_loads_total`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are neither a TFLite flatbuffer nor an ONNX model.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The model contains ops tract cannot run, or runs wrongly.
    #[error("the model uses ops tract cannot run correctly: {}", .0.join("; "))]
    UnsupportedOps(Vec<String>),
    /// tract's loader panicked.
    #[error("{engine} panicked while loading the model: {message}{hint}")]
    Panic {
        /// The engine (`tract-tflite` or `tract-onnx`).
        engine: &'static str,
        /// The panic message.
        message: String,
        /// A likely cause found in the file, if any.
        hint: &'static str,
    },
    /// tract's loader returned an error.
    #[error("tract could not load the model: {0:#}")]
    Load(#[source] TractError),
    /// The loaded model failed its first run.
    #[error("tract could not load the model: warm-up run failed: {0}")]
    WarmUp(#[source] RunError),
    /// The model loads but its inputs or outputs do not fit the agent.
    #[error("{0}")]
    Invalid(String),
}

impl LoadError {
    /// Static metric label for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Format(_) | Self::Load(_) | Self::WarmUp(_) => "load_error",
            Self::UnsupportedOps(_) => "unsupported_op",
            Self::Panic { .. } => "panic",
            Self::Invalid(_) => "invalid_model",
        }
    }
}

/// Why a model run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The input does not have the model's shape.
    #[error("input has {got} values, the model takes {want} per row")]
    InputSize {
        /// Values given.
        got: usize,
        /// Values per row.
        want: usize,
    },
    /// tract returned an error.
    #[error("model run failed: {0:#}")]
    Tract(#[source] TractError),
    /// The model's output does not have the size its shape says.
    #[error(
        "model run failed: model returned {got} values for {rows} rows, expected {want} per row"
    )]
    OutputSize {
        /// Values returned.
        got: usize,
        /// Rows run.
        rows: usize,
        /// Values per row.
        want: usize,
    },
    /// tract panicked while running.
    #[error("model run panicked: {0}")]
    Panic(String),
}

/// A loaded, optimised and warmed-up model with one float32 input and one float32 output.
pub struct Model {
    /// What the flatbuffer declares.
    pub contents: ModelContents,
    /// Input shape as loaded (batch 1).
    pub input_shape: Vec<usize>,
    /// Output shape as loaded (batch 1).
    pub output_shape: Vec<usize>,
    single: Runner,
    batched: Option<Plan>,
}

/// The batch-1 plan with the run state it keeps between calls. Building a state per call
/// (what `SimplePlan::run` does) allocates every node's state and dominated a small
/// model's call (B6); a state is reusable because each run resets its turn. A run that
/// fails or panics leaves no state behind: the next call builds a fresh one. A small
/// dense model also gets a [`Compact`] plan, checked against this one at load, which then
/// runs its rows instead.
struct Runner {
    plan: Plan,
    state: Mutex<Option<TypedSimpleState>>,
    compact: Option<(Compact, Mutex<Buffers>)>,
}

impl Runner {
    fn new(plan: Plan) -> Self {
        Self {
            plan,
            state: Mutex::new(None),
            compact: None,
        }
    }

    fn run(&self, shape: &[usize], input: &[f32]) -> Result<Vec<f32>, RunError> {
        match &self.compact {
            Some((compact, buffers)) => {
                let mut buffers = buffers.lock().unwrap_or_else(|p| p.into_inner());
                let result = guarded(|| compact.run(&mut buffers, input));
                if result.is_err() {
                    *buffers = compact.buffers();
                }
                result.map_err(RunError::Panic)
            }
            None => self.run_tract(shape, input),
        }
    }

    fn run_tract(&self, shape: &[usize], input: &[f32]) -> Result<Vec<f32>, RunError> {
        let mut cached = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = guarded(|| -> TractResult<Vec<f32>> {
            let state = match cached.as_mut() {
                Some(state) => state,
                None => cached.insert(self.plan.spawn()?),
            };
            let tensor = Tensor::from_shape(shape, input)?;
            let out = state.run(tvec!(tensor.into()))?;
            first_output(&out)
        });
        if !matches!(result, Ok(Ok(_))) {
            *cached = None;
        }
        outcome(result)
    }

    /// Takes `compact` when it gives this plan's results on the probe rows.
    fn adopt(&mut self, compact: Compact, shape: &[usize]) {
        let rows = compact::probe_rows(shape.iter().product());
        let agrees = guarded(|| compact.agrees(&rows, |row| self.run_tract(shape, row).ok()));
        if agrees == Ok(true) {
            let buffers = Mutex::new(compact.buffers());
            self.compact = Some((compact, buffers));
        } else {
            tracing::debug!("the compact plan differs from tract's; batch 1 runs on tract");
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("input_shape", &self.input_shape)
            .field("output_shape", &self.output_shape)
            .field("batched", &self.batched.is_some())
            .finish()
    }
}

impl Model {
    /// Loads a model from the bytes of a `.tflite` or `.onnx` file (told apart by their
    /// content). Never panics: a panic inside tract becomes [`LoadError::Panic`].
    pub fn load(bytes: &[u8]) -> Result<Self, LoadError> {
        let contents = read_contents(bytes)?;
        let blocking = contents.blocking_ops();
        if !blocking.is_empty() {
            return Err(LoadError::UnsupportedOps(blocking));
        }
        let engine = contents.format.crate_name();
        let hint = if contents.ops.iter().any(|o| o.missing_bias) {
            " (likely cause: a FULLY_CONNECTED without a bias; train the Dense layer with use_bias=True)"
        } else {
            ""
        };
        let typed = guarded(|| match contents.format {
            ModelFormat::Tflite => tract_tflite::tflite().model_for_read(&mut &bytes[..]),
            ModelFormat::Onnx => typed_onnx(bytes),
        })
        .map_err(|message| LoadError::Panic {
            engine,
            message,
            hint,
        })?
        .map_err(LoadError::Load)?;
        let (input_shape, output_shape) = io_shapes(&typed)?;
        let single = guarded(|| optimise(typed.clone()))
            .map_err(|message| LoadError::Panic {
                engine,
                message,
                hint: "",
            })?
            .map_err(LoadError::Load)?;
        let compact = guarded(|| {
            typed
                .clone()
                .into_decluttered()
                .ok()
                .and_then(|m| Compact::compile(&m))
        })
        .ok()
        .flatten();
        // A batch variant exists only when the declared batch is 1; if tract cannot
        // re-type the graph with a symbolic batch the model simply runs one row at a time.
        let batched = if input_shape.first() == Some(&1) {
            guarded(|| with_symbolic_batch(typed).and_then(optimise))
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let mut model = Self {
            contents,
            input_shape,
            output_shape,
            single: Runner::new(single),
            batched,
        };
        model.warm_up()?;
        if let Some(compact) = compact {
            let shape = model.input_shape.clone();
            model.single.adopt(compact, &shape);
        }
        Ok(model)
    }

    /// Number of input values per row (one window or one image).
    pub fn row_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of output values per row.
    pub fn output_len(&self) -> usize {
        self.output_shape.iter().product()
    }

    /// Steps of the compact plan batch 1 runs on, if the model has one.
    pub fn compact_steps(&self) -> Option<usize> {
        self.single.compact.as_ref().map(|(c, _)| c.len())
    }

    /// Whether the model has tract's batch plan (several rows in one call). A model with a
    /// compact plan runs its rows one after the other on that instead, faster per row than
    /// the batch plan on the models it takes.
    pub fn batches(&self) -> bool {
        self.batched.is_some()
    }

    /// Runs `input` (`rows` rows of [`Model::row_len`] values) and returns `rows` rows of
    /// [`Model::output_len`] values.
    pub fn run(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, RunError> {
        let row_len = self.row_len();
        if rows == 0 || input.len() != rows * row_len {
            return Err(RunError::InputSize {
                got: input.len(),
                want: row_len,
            });
        }
        match &self.batched {
            Some(plan) if rows > 1 && self.single.compact.is_none() => {
                let mut shape = self.input_shape.clone();
                shape[0] = rows;
                let out = run_plan(plan, &shape, input)?;
                self.check_output(out, rows)
            }
            _ => {
                let mut out = Vec::with_capacity(rows * self.output_len());
                for row in input.chunks(row_len) {
                    out.extend(self.check_output(self.single.run(&self.input_shape, row)?, 1)?);
                }
                Ok(out)
            }
        }
    }

    /// Runs one row through the batch-1 plan (what golden vectors check).
    pub fn run_single(&self, row: &[f32]) -> Result<Vec<f32>, RunError> {
        if row.len() != self.row_len() {
            return Err(RunError::InputSize {
                got: row.len(),
                want: self.row_len(),
            });
        }
        self.check_output(self.single.run(&self.input_shape, row)?, 1)
    }

    /// Drops the batch plan when its results differ from the batch-1 plan's on `rows`
    /// by more than `tolerance` (a model is trusted only in the form that was checked).
    pub fn verify_batch(&mut self, rows: &[Vec<f32>], tolerance: f64) {
        if self.batched.is_none() || rows.len() < 2 {
            return;
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let agree = match self.run(&flat, rows.len()) {
            Ok(batched) => rows.iter().enumerate().all(|(i, row)| {
                let Ok(single) = self.run_single(row) else {
                    return false;
                };
                let n = single.len();
                single
                    .iter()
                    .zip(&batched[i * n..(i + 1) * n])
                    .all(|(a, b)| (f64::from(*a) - f64::from(*b)).abs() <= tolerance)
            }),
            Err(_) => false,
        };
        if !agree {
            tracing::warn!(
                "batched model results differ from single runs; running one row at a time"
            );
            self.batched = None;
        }
    }

    fn check_output(&self, out: Vec<f32>, rows: usize) -> Result<Vec<f32>, RunError> {
        if out.len() != rows * self.output_len() {
            return Err(RunError::OutputSize {
                got: out.len(),
                rows,
                want: self.output_len(),
            });
        }
        Ok(out)
    }

    fn warm_up(&mut self) -> Result<(), LoadError> {
        let zeros = vec![0.0f32; self.row_len()];
        self.run_single(&zeros).map_err(LoadError::WarmUp)?;
        if self.batched.is_some() {
            let two = [zeros.as_slice(), zeros.as_slice()].concat();
            if self.run(&two, 2).is_err() {
                self.batched = None;
            }
        }
        Ok(())
    }
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// An ONNX model as a typed graph; a dynamic batch dimension (`batch_size`, `N`...) is
/// fixed to 1 so the graph has concrete shapes (the batch plan re-types it later).
fn typed_onnx(bytes: &[u8]) -> TractResult<TypedModel> {
    use tract_onnx::prelude::InferenceModelExt;
    let typed = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])?
        .into_typed()?;
    let dynamic = typed
        .input_fact(0)?
        .shape
        .iter()
        .next()
        .is_some_and(|d| d.to_i64().is_err());
    if dynamic {
        with_batch(typed, 1.to_dim())
    } else {
        Ok(typed)
    }
}

fn optimise(model: TypedModel) -> TractResult<Plan> {
    let mut optimised = model.into_optimized()?;
    rewrite::fast_paths(&mut optimised)?;
    optimised.into_runnable()
}

fn with_symbolic_batch(model: TypedModel) -> TractResult<TypedModel> {
    let n = model.symbols.sym("N");
    with_batch(model, n.to_dim())
}

/// `model` with its input's first dimension set to `batch`.
fn with_batch(mut model: TypedModel, batch: TDim) -> TractResult<TypedModel> {
    let fact = model.input_fact(0)?.clone();
    let mut dims: Vec<TDim> = fact.shape.iter().cloned().collect();
    if let Some(first) = dims.first_mut() {
        *first = batch;
    }
    let batched = f32::fact(dims);
    let source = model.input_outlets()?[0].node;
    model.node_mut(source).op = Box::new(TypedSource::new(batched.clone()));
    model.set_input_fact(0, batched)?;
    model.refresh_output_facts()?;
    Ok(model)
}

fn io_shapes(model: &TypedModel) -> Result<(Vec<usize>, Vec<usize>), LoadError> {
    let invalid = |m: String| LoadError::Invalid(m);
    let inputs = model
        .input_outlets()
        .map_err(|e| invalid(e.to_string()))?
        .len();
    let outputs = model
        .output_outlets()
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if inputs != 1 || outputs != 1 {
        return Err(invalid(format!(
            "the model has {inputs} inputs and {outputs} outputs; the agent runs models with one of each"
        )));
    }
    let shape = |fact: &TypedFact, what: &str| -> Result<Vec<usize>, LoadError> {
        if fact.datum_type != f32::datum_type() {
            return Err(invalid(format!(
                "the model's {what} is {:?}; the agent runs float32 models (quantised models give wrong results in tract-tflite 0.23.9)",
                fact.datum_type
            )));
        }
        fact.shape
            .as_concrete()
            .map(<[usize]>::to_vec)
            .ok_or_else(|| {
                invalid(format!(
                    "the model's {what} shape {:?} is not fixed",
                    fact.shape
                ))
            })
    };
    let input = model.input_fact(0).map_err(|e| invalid(e.to_string()))?;
    let output = model.output_fact(0).map_err(|e| invalid(e.to_string()))?;
    let (input, output) = (shape(input, "input")?, shape(output, "output")?);
    if input.contains(&0) || output.contains(&0) {
        return Err(invalid(format!(
            "the model's input {input:?} or output {output:?} is empty"
        )));
    }
    Ok((input, output))
}

fn run_plan(plan: &Plan, shape: &[usize], input: &[f32]) -> Result<Vec<f32>, RunError> {
    outcome(guarded(|| -> TractResult<Vec<f32>> {
        let tensor = Tensor::from_shape(shape, input)?;
        first_output(&plan.run(tvec!(tensor.into()))?)
    }))
}

/// The values of a run's first output.
fn first_output(out: &[TValue]) -> TractResult<Vec<f32>> {
    let first = out
        .first()
        .ok_or_else(|| anyhow::anyhow!("the model returned no output"))?;
    Ok(first
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

/// A guarded run as a [`RunError`].
fn outcome(result: Result<TractResult<Vec<f32>>, String>) -> Result<Vec<f32>, RunError> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RunError::Tract(e)),
        Err(message) => Err(RunError::Panic(message)),
    }
}
