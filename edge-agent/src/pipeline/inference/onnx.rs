//! What an ONNX file contains, read from its protobuf (no tract graph): the graph's ops in
//! node order, its inputs and outputs, and whether tract-onnx 0.23.9 runs each op.
//!
//! ONNX is the format PyTorch and most training stacks export to, and tract started as an
//! ONNX runtime: it covers many models tract-tflite cannot load (float16 weights, ops the
//! TFLite loader lacks). An op is "verified" when this project's fixtures compare it with
//! onnxruntime, "registered" when tract-onnx translates it, unsupported otherwise.

use std::collections::HashSet;
use std::sync::OnceLock;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{ModelProto, ValueInfoProto};
use tract_onnx::prelude::Framework;

use super::ops::{FormatError, ModelContents, ModelFormat, OpInfo, OpSupport, TensorInfo};

/// The ops of the fixture `anomaly_dense.onnx`, whose outputs match onnxruntime within 1e-5.
const VERIFIED: &[&str] = &["Gemm", "Relu", "Tanh", "Sub", "Mul", "ReduceSum", "Sigmoid"];

fn registered() -> &'static HashSet<String> {
    static OPS: OnceLock<HashSet<String>> = OnceLock::new();
    OPS.get_or_init(|| tract_onnx::onnx().op_register.0.keys().cloned().collect())
}

/// How well tract-onnx 0.23.9 runs the ONNX op `name` (an `op_type` of the default
/// domain; ops of other domains are `domain:op_type` and unsupported).
pub fn onnx_op_support(name: &str) -> OpSupport {
    if VERIFIED.contains(&name) {
        OpSupport::Verified
    } else if registered().contains(name) {
        OpSupport::Registered
    } else {
        OpSupport::Unsupported
    }
}

/// Reads the ops and tensors declared in an `.onnx` file's bytes.
pub fn read_onnx_contents(bytes: &[u8]) -> Result<ModelContents, FormatError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| {
            FormatError(format!(
                "not a readable model: no TFLite identifier, and as ONNX: {e:#}"
            ))
        })?;
    contents_of(&proto)
}

fn contents_of(proto: &ModelProto) -> Result<ModelContents, FormatError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| FormatError("not a readable ONNX model: no graph".into()))?;
    let ops = graph
        .node
        .iter()
        .map(|n| OpInfo {
            name: if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            },
            missing_bias: false,
        })
        .collect();
    // Older exporters list the weights among the inputs too.
    let weights: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !weights.contains(i.name.as_str()))
        .map(tensor)
        .collect();
    let outputs = graph.output.iter().map(tensor).collect();
    Ok(ModelContents {
        format: ModelFormat::Onnx,
        ops,
        inputs,
        outputs,
    })
}

fn tensor(v: &ValueInfoProto) -> TensorInfo {
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => {
            let dtype = DataType::try_from(t.elem_type).map_or_else(
                |_| format!("TYPE_{}", t.elem_type),
                |d| format!("{d:?}").to_uppercase(),
            );
            let shape = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Dim::DimValue(n)) => i32::try_from(n).unwrap_or(-1),
                            _ => -1,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (dtype, shape)
        }
        _ => ("UNKNOWN".to_string(), Vec::new()),
    };
    TensorInfo {
        name: v.name.clone(),
        shape,
        dtype,
        quantized: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_support_table_knows_tract_onnx_ops() {
        assert_eq!(onnx_op_support("Gemm"), OpSupport::Verified);
        assert_eq!(onnx_op_support("Conv"), OpSupport::Registered);
        assert_eq!(onnx_op_support("com.example:Magic"), OpSupport::Unsupported);
        assert_eq!(onnx_op_support("NoSuchOp"), OpSupport::Unsupported);
    }

    #[test]
    fn garbage_is_a_format_error() {
        assert!(read_onnx_contents(b"\x08\x07 definitely not protobuf").is_err());
    }
}
