//! Golden vectors: inputs with the outputs a reference interpreter computed for them.
//! Every model is checked against them when it loads; a model whose outputs diverge by
//! more than the tolerance is refused (it would load and silently give wrong answers).
//!
//! File format (the one `tests/models/make_models.py` writes):
//! `{"model": "x.tflite", "tolerance": 1e-5, "vectors": [{"input": [..], "output": [..]}]}`;
//! `model` and `tolerance` are optional.

use edge_crds::GoldenVector;
use serde::Deserialize;

/// A set of golden vectors and the largest absolute error allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct GoldenSet {
    /// Inputs and expected outputs, flattened row-major.
    pub vectors: Vec<GoldenVector>,
    /// Largest absolute difference allowed per output value.
    pub tolerance: f64,
}

#[derive(Deserialize)]
struct GoldenFile {
    #[serde(default)]
    tolerance: Option<f64>,
    vectors: Vec<GoldenVector>,
}

/// Why golden vectors could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The file is not golden JSON.
    #[error("golden file is not valid golden JSON: {0}")]
    Parse(#[from] serde_json::Error),
    /// The file has no vectors.
    #[error("golden file has no vectors")]
    Empty,
    /// A vector's input does not fit the model.
    #[error("golden vector {index}: input has {got} values, the model takes {want}")]
    InputSize {
        /// Vector index.
        index: usize,
        /// Values in the vector.
        got: usize,
        /// Values the model takes.
        want: usize,
    },
    /// A vector's output length differs from the model's output.
    #[error("golden vector {index}: expected {want} output values, the model gave {got}")]
    OutputSize {
        /// Vector index.
        index: usize,
        /// Values the model gave.
        got: usize,
        /// Values in the vector.
        want: usize,
    },
    /// The model's output diverges from the golden output.
    #[error(
        "golden vector {index}: output[{position}] is {got}, expected {want} (error {error:.3e} > tolerance {tolerance:.1e})"
    )]
    Mismatch {
        /// Vector index.
        index: usize,
        /// Position in the output.
        position: usize,
        /// The model's value.
        got: f32,
        /// The golden value.
        want: f32,
        /// Absolute difference.
        error: f64,
        /// Tolerance in force.
        tolerance: f64,
    },
    /// Running the model failed.
    #[error("golden vector {index}: {message}")]
    Run {
        /// Vector index.
        index: usize,
        /// What failed.
        message: String,
    },
}

impl GoldenSet {
    /// Parses a golden JSON file; `tolerance` overrides the file's own when given.
    pub fn from_json(bytes: &[u8], tolerance: Option<f64>) -> Result<Self, GoldenError> {
        let file: GoldenFile = serde_json::from_slice(bytes)?;
        if file.vectors.is_empty() {
            return Err(GoldenError::Empty);
        }
        Ok(Self {
            vectors: file.vectors,
            tolerance: tolerance.or(file.tolerance).unwrap_or(1e-5),
        })
    }

    /// Runs every vector through `run` (flattened input -> flattened output) and returns
    /// the largest absolute error, or the first divergence.
    pub fn check<E: std::fmt::Display>(
        &self,
        input_len: usize,
        mut run: impl FnMut(&[f32]) -> Result<Vec<f32>, E>,
    ) -> Result<f64, GoldenError> {
        let mut max_error = 0.0f64;
        for (index, v) in self.vectors.iter().enumerate() {
            if v.input.len() != input_len {
                return Err(GoldenError::InputSize {
                    index,
                    got: v.input.len(),
                    want: input_len,
                });
            }
            let got = run(&v.input).map_err(|e| GoldenError::Run {
                index,
                message: e.to_string(),
            })?;
            max_error = max_error.max(compare(index, &got, &v.output, self.tolerance)?);
        }
        Ok(max_error)
    }
}

/// Largest absolute difference between `got` and `want`, or the first value whose
/// difference exceeds `tolerance` (NaN never matches).
pub fn compare(
    index: usize,
    got: &[f32],
    want: &[f32],
    tolerance: f64,
) -> Result<f64, GoldenError> {
    if got.len() != want.len() {
        return Err(GoldenError::OutputSize {
            index,
            got: got.len(),
            want: want.len(),
        });
    }
    let mut max_error = 0.0f64;
    for (position, (g, w)) in got.iter().zip(want).enumerate() {
        let error = (f64::from(*g) - f64::from(*w)).abs();
        if error.is_nan() || error > tolerance {
            return Err(GoldenError::Mismatch {
                index,
                position,
                got: *g,
                want: *w,
                error,
                tolerance,
            });
        }
        max_error = max_error.max(error);
    }
    Ok(max_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fixture_format_and_compares() {
        let json =
            br#"{"model":"m.tflite","tolerance":0.01,"vectors":[{"input":[1,2],"output":[3]}]}"#;
        let set = GoldenSet::from_json(json, None).unwrap();
        assert_eq!(set.tolerance, 0.01);
        let err = set
            .check(2, |x| Ok::<_, String>(vec![x[0] + x[1] + 0.005]))
            .unwrap();
        assert!((err - 0.005).abs() < 1e-6);
        let bad = set.check(2, |_| Ok::<_, String>(vec![3.5]));
        assert!(matches!(
            bad,
            Err(GoldenError::Mismatch {
                index: 0,
                position: 0,
                ..
            })
        ));
        assert!(matches!(
            set.check(3, |_| Ok::<_, String>(vec![3.0])),
            Err(GoldenError::InputSize { .. })
        ));
        let nan = set.check(2, |_| Ok::<_, String>(vec![f32::NAN]));
        assert!(matches!(nan, Err(GoldenError::Mismatch { .. })));
        let set = GoldenSet::from_json(json, Some(1e-5)).unwrap();
        assert_eq!(set.tolerance, 1e-5);
    }

    #[test]
    fn empty_or_malformed_files_are_errors() {
        assert!(matches!(
            GoldenSet::from_json(br#"{"vectors":[]}"#, None),
            Err(GoldenError::Empty)
        ));
        assert!(matches!(
            GoldenSet::from_json(b"[", None),
            Err(GoldenError::Parse(_))
        ));
    }
}
