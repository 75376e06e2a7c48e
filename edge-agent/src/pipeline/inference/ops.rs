//! What a model file contains, read straight from the file (no tract graph): the ops in
//! operator order, the input and output tensors, and whether tract runs each op
//! correctly. TFLite flatbuffers are read here; ONNX files in [`super::onnx`].
//!
//! The support table comes from tract-tflite's operator registry and from measurements
//! against the LiteRT reference interpreter (see edge-agent/INFERENCE.md): an op
//! can be verified, registered but not measured here, loaded but known to compute a
//! wrong result, or not supported at all (the loader returns an error).

use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_tflite::internal::TfliteProtoModel;
use tract_tflite::prelude::Framework;
use tract_tflite::tflite::BuiltinOperator;

/// Ops whose float32 results matched LiteRT within 1.2e-7 on this project's models.
const VERIFIED: &[&str] = &[
    "ADD",
    "AVERAGE_POOL_2D",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "LOGISTIC",
    "MAX_POOL_2D",
    "MEAN",
    "MUL",
    "RESHAPE",
    "SOFTMAX",
    "SUB",
    "SUM",
    "TANH",
];

/// Ops tract-tflite 0.23.9 translates but that were not measured against LiteRT here.
const REGISTERED: &[&str] = &[
    "ABS",
    "BATCH_MATMUL",
    "BROADCAST_TO",
    "CEIL",
    "CONCATENATION",
    "COS",
    "DIV",
    "EQUAL",
    "EXP",
    "EXPAND_DIMS",
    "FLOOR",
    "GREATER",
    "GREATER_EQUAL",
    "HARD_SWISH",
    "LEAKY_RELU",
    "LESS",
    "LESS_EQUAL",
    "LOG",
    "LOGICAL_AND",
    "LOGICAL_NOT",
    "LOGICAL_OR",
    "MAXIMUM",
    "MINIMUM",
    "NOT_EQUAL",
    "PAD",
    "PADV2",
    "REDUCE_MAX",
    "REDUCE_MIN",
    "REDUCE_PROD",
    "RELU",
    "RELU6",
    "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR",
    "RSQRT",
    "SELECT",
    "SELECT_V2",
    "SHAPE",
    "SIN",
    "SLICE",
    "SQRT",
    "SQUARE",
    "SQUEEZE",
    "STRIDED_SLICE",
    "TRANSPOSE",
];

/// Ops that load but compute a wrong result, with the way around it. (MEAN was one until
/// the patch in `vendor/tract-tflite`: it rounded a float mean to an integer.)
const KNOWN_WRONG: &[(&str, &str)] = &[];

/// How well tract-tflite 0.23.9 runs one TFLite builtin op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpSupport {
    /// Loads and matches the reference interpreter (measured).
    Verified,
    /// Loads; not measured against the reference interpreter here.
    Registered,
    /// Loads but computes a wrong result; the text says why and what to use instead.
    KnownWrong(&'static str),
    /// The loader refuses it.
    Unsupported,
}

impl OpSupport {
    /// Whether a model containing this op may run.
    pub fn runs(self) -> bool {
        matches!(self, Self::Verified | Self::Registered)
    }

    /// Short text for `edge-agent model inspect`, for an op of a `format` model.
    pub fn describe(self, format: ModelFormat) -> &'static str {
        match (self, format) {
            (Self::Verified, ModelFormat::Tflite) => "yes (verified against LiteRT)",
            (Self::Verified, ModelFormat::Onnx) => "yes (verified against onnxruntime)",
            (Self::Registered, _) => "yes (not verified here)",
            (Self::KnownWrong(_), _) => "NO (loads, but results are wrong)",
            (Self::Unsupported, ModelFormat::Tflite) => "NO (tract-tflite cannot load it)",
            (Self::Unsupported, ModelFormat::Onnx) => "NO (tract-onnx cannot load it)",
        }
    }
}

/// The support of the TFLite builtin op called `name` (e.g. `FULLY_CONNECTED`).
pub fn op_support(name: &str) -> OpSupport {
    if VERIFIED.contains(&name) {
        OpSupport::Verified
    } else if REGISTERED.contains(&name) {
        OpSupport::Registered
    } else if let Some((_, why)) = KNOWN_WRONG.iter().find(|(op, _)| *op == name) {
        OpSupport::KnownWrong(why)
    } else {
        OpSupport::Unsupported
    }
}

/// One op of the model's main subgraph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpInfo {
    /// TFLite builtin name, e.g. `CONV_2D` (`CUSTOM:<name>` for custom ops).
    pub name: String,
    /// A FULLY_CONNECTED op without a bias input, which makes tract-tflite's loader panic.
    pub missing_bias: bool,
}

/// An input or output tensor of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Declared shape (`-1` for a dynamic dimension).
    pub shape: Vec<i32>,
    /// TFLite element type, e.g. `FLOAT32` or `INT8`.
    pub dtype: String,
    /// Whether the tensor carries quantisation parameters.
    pub quantized: bool,
}

/// The model file formats the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A TFLite flatbuffer (file identifier `TFL3`), run by tract-tflite.
    Tflite,
    /// An ONNX protobuf, run by tract-onnx.
    Onnx,
}

impl ModelFormat {
    /// The format of a model file's bytes: TFLite when they carry the flatbuffer's
    /// `TFL3` identifier, ONNX otherwise.
    pub fn of(bytes: &[u8]) -> Self {
        if bytes.get(4..8) == Some(b"TFL3") {
            Self::Tflite
        } else {
            Self::Onnx
        }
    }

    /// The engine that runs it, with its version, for messages.
    pub fn engine(self) -> &'static str {
        match self {
            Self::Tflite => "tract-tflite 0.23.9",
            Self::Onnx => "tract-onnx 0.23.9",
        }
    }

    /// The engine's crate name.
    pub fn crate_name(self) -> &'static str {
        match self {
            Self::Tflite => "tract-tflite",
            Self::Onnx => "tract-onnx",
        }
    }
}

/// What a model file declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelContents {
    /// The file format.
    pub format: ModelFormat,
    /// Ops of the main subgraph in operator order.
    pub ops: Vec<OpInfo>,
    /// Inputs of the main subgraph.
    pub inputs: Vec<TensorInfo>,
    /// Outputs of the main subgraph.
    pub outputs: Vec<TensorInfo>,
}

impl ModelContents {
    /// How well tract runs the op `name` of this model's format.
    pub fn support(&self, name: &str) -> OpSupport {
        match self.format {
            ModelFormat::Tflite => op_support(name),
            ModelFormat::Onnx => super::onnx::onnx_op_support(name),
        }
    }

    /// The distinct ops that keep the model from running, each with the reason, in the
    /// order they first appear.
    pub fn blocking_ops(&self) -> Vec<String> {
        let engine = self.format.engine();
        let mut out: Vec<String> = Vec::new();
        for op in &self.ops {
            let entry = match self.support(&op.name) {
                OpSupport::Unsupported => format!("{} (not supported by {engine})", op.name),
                OpSupport::KnownWrong(why) => format!("{} ({why})", op.name),
                _ => continue,
            };
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        out
    }
}

/// Why a file is not a readable model.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// Reads the ops and tensors declared in a model file's bytes (TFLite or ONNX).
pub fn read_contents(bytes: &[u8]) -> Result<ModelContents, FormatError> {
    match ModelFormat::of(bytes) {
        ModelFormat::Tflite => read_tflite_contents(bytes),
        ModelFormat::Onnx => super::onnx::read_onnx_contents(bytes),
    }
}

fn read_tflite_contents(bytes: &[u8]) -> Result<ModelContents, FormatError> {
    let not_tflite = |e: String| FormatError(format!("not a readable TFLite model: {e}"));
    let proto = tract_tflite::tflite()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| not_tflite(format!("{e:#}")))?;
    // The flatbuffer accessors index without checks; a corrupt index must not take the
    // caller down.
    catch_unwind(AssertUnwindSafe(|| contents_of(&proto)))
        .map_err(|_| not_tflite("inconsistent flatbuffer (an index is out of range)".into()))?
        .map_err(|e| not_tflite(e.0))
}

fn contents_of(proto: &TfliteProtoModel) -> Result<ModelContents, FormatError> {
    let root = proto.root();
    let missing = |what: &str| FormatError(format!("no {what}"));
    let codes = root
        .operator_codes()
        .ok_or_else(|| missing("operator codes"))?;
    let subgraphs = root.subgraphs().ok_or_else(|| missing("subgraphs"))?;
    if subgraphs.is_empty() {
        return Err(missing("subgraph"));
    }
    let main = subgraphs.get(0);
    let tensors = main.tensors().ok_or_else(|| missing("tensors"))?;
    let tensor = |ix: i32| -> Result<TensorInfo, FormatError> {
        let ix = usize::try_from(ix)
            .ok()
            .filter(|i| *i < tensors.len())
            .ok_or_else(|| FormatError(format!("tensor index {ix} out of range")))?;
        let t = tensors.get(ix);
        Ok(TensorInfo {
            name: t.name().unwrap_or("").to_string(),
            shape: t.shape().map(|s| s.iter().collect()).unwrap_or_default(),
            dtype: t.type_().variant_name().unwrap_or("UNKNOWN").to_string(),
            quantized: t
                .quantization()
                .and_then(|q| q.scale())
                .is_some_and(|s| !s.is_empty()),
        })
    };
    let mut ops = Vec::new();
    for op in main.operators().ok_or_else(|| missing("operators"))? {
        let ix = op.opcode_index() as usize;
        if ix >= codes.len() {
            return Err(FormatError(format!("opcode index {ix} out of range")));
        }
        let code = codes.get(ix);
        let builtin = if code.deprecated_builtin_code() as i32
            == BuiltinOperator::PLACEHOLDER_FOR_GREATER_OP_CODES.0
        {
            code.builtin_code()
        } else {
            BuiltinOperator(code.deprecated_builtin_code() as i32)
        };
        let name = if builtin == BuiltinOperator::CUSTOM {
            format!("CUSTOM:{}", code.custom_code().unwrap_or("?"))
        } else {
            builtin
                .variant_name()
                .map(str::to_string)
                .unwrap_or_else(|| format!("BUILTIN_{}", builtin.0))
        };
        let missing_bias = builtin == BuiltinOperator::FULLY_CONNECTED
            && op.inputs().is_none_or(|i| i.len() < 3 || i.get(2) < 0);
        ops.push(OpInfo { name, missing_bias });
    }
    let inputs = main
        .inputs()
        .ok_or_else(|| missing("inputs"))?
        .iter()
        .map(tensor)
        .collect::<Result<_, _>>()?;
    let outputs = main
        .outputs()
        .ok_or_else(|| missing("outputs"))?
        .iter()
        .map(tensor)
        .collect::<Result<_, _>>()?;
    Ok(ModelContents {
        format: ModelFormat::Tflite,
        ops,
        inputs,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_table_classifies_ops() {
        assert_eq!(op_support("FULLY_CONNECTED"), OpSupport::Verified);
        assert_eq!(op_support("RELU"), OpSupport::Registered);
        assert_eq!(op_support("MEAN"), OpSupport::Verified);
        assert_eq!(op_support("SQUARED_DIFFERENCE"), OpSupport::Unsupported);
        assert_eq!(op_support("DEQUANTIZE"), OpSupport::Unsupported);
        assert!(op_support("MEAN").runs());
        assert!(!op_support("SQUARED_DIFFERENCE").runs());
    }

    #[test]
    fn garbage_is_a_format_error() {
        assert!(read_contents(b"definitely not a flatbuffer").is_err());
        assert!(read_contents(&[]).is_err());
    }
}
