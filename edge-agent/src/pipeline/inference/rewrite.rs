//! Rewrites of tract's optimised graph, applied once at load, where tract takes a slow
//! generic path for an op the models we run use on every call (profiled on the fixture
//! CNN and the stock MobileNetV2, B6). Each rewrite computes the same values (up to the
//! order of float additions):
//!
//! - a float `Sum` over axes `[1, 2]` behind a batch axis of 1 (a global pooling over H and
//!   W of an NHWC tensor, from `SUM` or `MEAN`) reduces the leading unit axes too: tract
//!   has a column-sum path only for sums over leading axes, and its generic path took
//!   29 µs of the fixture CNN's 100 µs;
//! - a constant `Pad` of a float tensor (tract's convolution codegen puts one before every
//!   `SAME`-padded convolution) becomes [`RowPad`], which copies whole rows where tract's
//!   goes through ndarray slicing: 13 µs of the fixture CNN, 43 µs of the MobileNet.
//!
//! The golden vectors of every fixture model run through the rewritten graph (tests).

use tract_tflite::internal::tract_core::ops::array::{Pad, PadMode};
use tract_tflite::internal::tract_core::ops::nn::{Reduce, Reducer};
use tract_tflite::internal::*;

/// Applies every rewrite to `model` (optimised, concrete shapes); the number of nodes
/// rewritten.
pub(super) fn fast_paths(model: &mut TypedModel) -> TractResult<usize> {
    let mut rewritten = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(&input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        if fact.datum_type != f32::datum_type() {
            continue;
        }
        let Some(shape) = fact.shape.as_concrete().map(<[usize]>::to_vec) else {
            continue;
        };
        let op: Option<Box<dyn TypedOp>> = if let Some(reduce) = node.op_as::<Reduce>() {
            leading_sum(reduce, &shape).map(|r| Box::new(r) as _)
        } else if let Some(pad) = node.op_as::<Pad>() {
            RowPad::new(pad, shape.len()).map(|p| Box::new(p) as _)
        } else {
            None
        };
        if let Some(op) = op {
            model.node_mut(id).op = op;
            rewritten += 1;
        }
    }
    Ok(rewritten)
}

/// `reduce` over the same values with the unit axes in front of its last axis counted in,
/// when that makes its axes the leading ones.
fn leading_sum(reduce: &Reduce, shape: &[usize]) -> Option<Reduce> {
    if reduce.reducer != Reducer::Sum {
        return None;
    }
    let last = *reduce.axes.iter().max()?;
    let leading: TVec<usize> = (0..=last).collect();
    let same = leading.len() == reduce.axes.len();
    let only_units_added = leading
        .iter()
        .all(|ax| reduce.axes.contains(ax) || shape.get(*ax) == Some(&1));
    (!same && only_units_added).then(|| Reduce::new(leading, Reducer::Sum))
}

/// A constant pad of a float32 tensor that copies rows: the input's values are runs of
/// `row` contiguous values (every axis from the last padded one inwards), each copied to
/// its place in an output filled with the pad value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct RowPad {
    pads: Vec<(usize, usize)>,
    /// The pad value's bits (an `f32`; kept as bits so the op is `Eq` as tract needs).
    value: u32,
}

impl RowPad {
    fn new(pad: &Pad, rank: usize) -> Option<RowPad> {
        let PadMode::Constant(value) = &pad.mode else {
            return None;
        };
        let value = value.cast_to_scalar::<f32>().ok()?;
        (pad.pads.len() == rank).then(|| RowPad {
            pads: pad.pads.clone(),
            value: value.to_bits(),
        })
    }

    fn pad(&self, input: &Tensor) -> TractResult<Tensor> {
        let shape = input.shape();
        ensure!(
            shape.len() == self.pads.len(),
            "pad of rank {}",
            self.pads.len()
        );
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&self.pads)
            .map(|(d, (a, b))| d + a + b)
            .collect();
        let mut output = Tensor::zero::<f32>(&out_shape)?;
        {
            let view = input.try_as_plain_ram()?;
            let mut plain = output.try_as_plain_ram_mut()?;
            self.copy_rows(shape, view.as_slice::<f32>()?, plain.as_slice_mut::<f32>()?);
        }
        Ok(output)
    }

    /// Fills `out` (the padded tensor) with the pad value and the values of `input`
    /// (of shape `shape`).
    fn copy_rows(&self, shape: &[usize], input: &[f32], out: &mut [f32]) {
        out.fill(f32::from_bits(self.value));
        // Rows run from the last padded axis inwards; the axes outside them are walked.
        let Some(split) = self.pads.iter().rposition(|p| *p != (0, 0)) else {
            out.copy_from_slice(input);
            return;
        };
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&self.pads)
            .map(|(d, (a, b))| d + a + b)
            .collect();
        let out_strides = strides(&out_shape);
        let row: usize = shape[split..].iter().product();
        let inner: usize = shape[split + 1..].iter().product();
        let rows: usize = shape[..split].iter().product();
        let mut coords = vec![0usize; split];
        for r in 0..rows {
            let mut at = self.pads[split].0 * inner;
            for (ax, c) in coords.iter().enumerate() {
                at += (c + self.pads[ax].0) * out_strides[ax];
            }
            out[at..at + row].copy_from_slice(&input[r * row..(r + 1) * row]);
            for (ax, c) in coords.iter_mut().enumerate().rev() {
                *c += 1;
                if *c < shape[ax] {
                    break;
                }
                *c = 0;
            }
        }
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Op for RowPad {
    fn name(&self) -> StaticName {
        "RowPad".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowPad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.pad(&input)?.into_tvalue()))
    }
}

impl TypedOp for RowPad {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].without_value();
        ensure!(
            fact.rank() == self.pads.len(),
            "pad of rank {}",
            self.pads.len()
        );
        for (ix, (b, e)) in self.pads.iter().enumerate() {
            fact.shape.set(ix, fact.shape[ix].clone() + *b + *e);
        }
        Ok(tvec!(fact))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: &[usize]) -> Tensor {
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    #[test]
    fn row_pad_gives_tracts_pad_on_every_axis_pattern() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
        let cases: [Case; 5] = [
            (&[1, 4, 5, 3], &[(0, 0), (1, 1), (1, 1), (0, 0)]),
            (&[1, 4, 5, 3], &[(0, 0), (0, 1), (0, 1), (0, 0)]),
            (&[2, 3, 4], &[(1, 0), (0, 0), (2, 1)]),
            (&[2, 3], &[(0, 0), (0, 0)]),
            (&[3, 2, 2], &[(0, 2), (0, 0), (0, 0)]),
        ];
        for (shape, pads) in cases {
            let input = ramp(shape);
            let pad = Pad::new(
                pads.to_vec(),
                PadMode::Constant(tensor0(-0.5f32).into_arc_tensor()),
            );
            let want = pad
                .eval_out_of_plan(tvec!(input.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            let got = RowPad::new(&pad, shape.len()).unwrap().pad(&input).unwrap();
            assert_eq!(got, *want[0], "{shape:?} {pads:?}");
        }
    }

    /// The fixture CNN gets its three pads and its global pooling rewritten, the stock
    /// MobileNet its input pad (its pooling already sums leading axes), and both give the
    /// scores of tract's own graph.
    #[test]
    fn the_fixture_cnns_take_the_fast_paths_with_the_same_results() {
        for (name, expected) in [("image_classifier", 4), ("mobilenet_v2_035_96", 1)] {
            let path = format!(
                "{}/../tests/models/{name}.tflite",
                env!("CARGO_MANIFEST_DIR")
            );
            let bytes = std::fs::read(&path).unwrap();
            let model = tract_tflite::tflite()
                .model_for_read(&mut &bytes[..])
                .unwrap()
                .into_optimized()
                .unwrap();
            let mut fast = model.clone();
            assert_eq!(fast_paths(&mut fast).unwrap(), expected, "{name}");
            let shape = model
                .input_fact(0)
                .unwrap()
                .shape
                .as_concrete()
                .unwrap()
                .to_vec();
            let len: usize = shape.iter().product();
            let row: Vec<f32> = (0..len).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect();
            let run = |m: TypedModel| -> Vec<f32> {
                let input = Tensor::from_shape(&shape, &row).unwrap();
                let out = m.into_runnable().unwrap().run(tvec!(input.into())).unwrap();
                out[0]
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .iter()
                    .copied()
                    .collect()
            };
            let (want, got) = (run(model), run(fast));
            assert_eq!(want.len(), got.len());
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() <= 1e-5, "{name}: {w} vs {g}");
            }
        }
    }

    #[test]
    fn only_sums_whose_added_axes_are_units_are_rewritten() {
        let sum = |axes: &[usize]| Reduce::new(axes.into(), Reducer::Sum);
        let axes = |r: Option<Reduce>| r.map(|r| r.axes.to_vec());
        assert_eq!(
            axes(leading_sum(&sum(&[1, 2]), &[1, 8, 8, 16])),
            Some(vec![0, 1, 2])
        );
        assert_eq!(axes(leading_sum(&sum(&[1, 2]), &[2, 8, 8, 16])), None);
        assert_eq!(axes(leading_sum(&sum(&[0, 1]), &[1, 8, 8, 16])), None);
        assert_eq!(axes(leading_sum(&sum(&[3]), &[1, 8, 8, 16])), None);
        let max = Reduce::new(tvec![1, 2], Reducer::Max);
        assert_eq!(axes(leading_sum(&max, &[1, 8, 8, 16])), None);
    }
}
