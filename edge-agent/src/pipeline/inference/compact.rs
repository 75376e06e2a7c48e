//! The compact plan: batch 1 of the small models the agent scores every reading with
//! (dense autoencoders, logistic scorers, small 1-D CNNs: a few matrix products or
//! convolutions, element-wise functions, poolings and reductions over a few dozen values). On such a model tract spends most of a call on
//! work that does not depend on the input: per node an output tensor allocated, its
//! scratch space looked up, its shape evaluated, and the turn reset after the run, about
//! 0.3–1 µs a node (B6). The compact plan is compiled once from tract's decluttered graph
//! into steps over buffers allocated at load: a matrix product (any `EinSum` with one
//! constant operand) or a convolution with constant kernel and bias becomes a dense matrix
//! (and bias), a max pooling the list of inputs in each window, a broadcast or a reduction
//! an index map, a reshape a copy. It takes only the ops [`Step`] lists, tensors of at most
//! [`MAX_VALUES`] values and at most [`MAX_MACS`] multiply-adds per row; the model keeps
//! it only when it gives tract's results on the probe rows ([`Compact::agrees`]). Any other
//! model runs on tract's plan alone.

use std::collections::HashMap;

use tract_tflite::internal::tract_core::ops::binary::TypedBinOp;
use tract_tflite::internal::tract_core::ops::change_axes::AxisOp;
use tract_tflite::internal::tract_core::ops::cnn::{Conv, MaxPool};
use tract_tflite::internal::tract_core::ops::einsum::EinSum;
use tract_tflite::internal::tract_core::ops::element_wise::ElementWiseOp;
use tract_tflite::internal::tract_core::ops::konst::Const;
use tract_tflite::internal::tract_core::ops::nn::{Reduce, Reducer};
use tract_tflite::internal::tract_core::ops::source::TypedSource;
use tract_tflite::prelude::*;

/// Largest tensor (values) a compact plan holds; past it tract's per-node cost no longer
/// dominates and its kernels win.
pub(super) const MAX_VALUES: usize = 4096;
/// Most multiply-adds a row may take (the entries of all its dense matrices): up to
/// here a row costs a few microseconds at most, and the plan also runs batches row by row
/// (faster per row than tract's batch plan on such models, B6); past it tract's kernels
/// and batching win.
pub(super) const MAX_MACS: usize = 1 << 14;

/// A compiled compact plan. Buffers are indexed by the graph outlet they hold.
pub(super) struct Compact {
    steps: Vec<Step>,
    /// Every buffer at the start of a call: the constants' values, zeros elsewhere.
    initial: Vec<Vec<f32>>,
    input: usize,
    output: usize,
}

/// The buffers one caller runs the plan in, kept from one call to the next.
pub(super) struct Buffers(Vec<Vec<f32>>);

/// One step: reads earlier buffers, writes its own.
enum Step {
    /// `out = bias + M · x`, M stored column by column (`rows` values per column of `x`);
    /// no bias when empty.
    Linear {
        x: usize,
        out: usize,
        columns: Vec<f32>,
        rows: usize,
        bias: Vec<f32>,
    },
    /// `out[i] = max(x[j] for j in window i)`, window i being
    /// `indices[starts[i]..starts[i + 1]]` (a max pooling).
    WindowMax {
        x: usize,
        out: usize,
        starts: Vec<u32>,
        indices: Vec<u32>,
    },
    /// `out[i] = f(x[i])`.
    Unary { f: Unary, x: usize, out: usize },
    /// `out[i] = f(a[map_a[i]], b[map_b[i]])`; no map where the operand has the output's
    /// shape.
    Binary {
        f: Binary,
        a: usize,
        map_a: Option<Vec<u32>>,
        b: usize,
        map_b: Option<Vec<u32>>,
        out: usize,
    },
    /// `out[map[i]] ⊕= x[i]`, then the mean for [`Reducing::MeanOfSquares`].
    Reduce {
        f: Reducing,
        x: usize,
        map: Vec<u32>,
        per_output: usize,
        out: usize,
    },
    /// A reshape: the same values in the same order.
    Copy { x: usize, out: usize },
}

#[derive(Clone, Copy, Debug)]
enum Unary {
    Tanh,
    Sigmoid,
    Exp,
    Ln,
    Abs,
    Neg,
    Sqrt,
    Rsqrt,
    Square,
    Recip,
}

#[derive(Clone, Copy, Debug)]
enum Binary {
    Add,
    Sub,
    /// `b - a` (tract's flipped subtraction).
    SubF,
    Mul,
    Div,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug)]
enum Reducing {
    Sum,
    MeanOfSquares,
    Max,
    Min,
    Prod,
}

impl Compact {
    /// Compiles `model` (decluttered, one float32 input, one float32 output, concrete
    /// shapes), or `None` when it holds anything the compact plan does not take.
    pub(super) fn compile(model: &TypedModel) -> Option<Compact> {
        let (&[source], &[result]) = (model.input_outlets().ok()?, model.output_outlets().ok()?)
        else {
            return None;
        };
        let mut buffer: HashMap<OutletId, usize> = HashMap::new();
        let mut shapes: Vec<Vec<usize>> = Vec::new();
        let mut initial: Vec<Vec<f32>> = Vec::new();
        let mut steps = Vec::new();
        let mut macs = 0usize;
        for id in model.eval_order().ok()? {
            let node = model.node(id);
            let [output] = node.outputs.as_slice() else {
                return None;
            };
            let shape = f32_shape(&output.fact)?;
            let len: usize = shape.iter().product();
            if len > MAX_VALUES {
                return None;
            }
            let inputs: Vec<usize> = node
                .inputs
                .iter()
                .map(|o| buffer.get(o).copied())
                .collect::<Option<_>>()?;
            let out = initial.len();
            let mut values = vec![0.0f32; len];
            if let Some(konst) = node.op_as::<Const>() {
                let tensor = konst.val();
                if tensor.datum_type() != f32::datum_type() || tensor.len() != len {
                    return None;
                }
                values = f32_values(tensor)?;
            } else if node.op_is::<TypedSource>() {
                if OutletId::new(id, 0) != source {
                    return None;
                }
            } else {
                let input_shapes: Vec<&[usize]> =
                    inputs.iter().map(|&i| shapes[i].as_slice()).collect();
                let step = step(Site {
                    model,
                    node,
                    inputs: &inputs,
                    input_shapes: &input_shapes,
                    shape: &shape,
                    out,
                })?;
                let work = match &step {
                    Step::Linear { columns, .. } => columns.len(),
                    Step::WindowMax { indices, .. } => indices.len(),
                    _ => 0,
                };
                macs += work;
                if macs > MAX_MACS {
                    return None;
                }
                steps.push(step);
            }
            buffer.insert(OutletId::new(id, 0), out);
            shapes.push(shape);
            initial.push(values);
        }
        Some(Compact {
            steps,
            initial,
            input: *buffer.get(&source)?,
            output: *buffer.get(&result)?,
        })
    }

    /// Fresh buffers for a caller.
    pub(super) fn buffers(&self) -> Buffers {
        Buffers(self.initial.clone())
    }

    /// Number of steps (what `model inspect` reports).
    pub(super) fn len(&self) -> usize {
        self.steps.len()
    }

    /// Runs one row. `input` must have the model's row length (the caller checks it).
    pub(super) fn run(&self, buffers: &mut Buffers, input: &[f32]) -> Vec<f32> {
        let b = &mut buffers.0;
        b[self.input].copy_from_slice(input);
        for step in &self.steps {
            step.run(b);
        }
        b[self.output].clone()
    }

    /// Whether the plan gives `reference`'s results on every row of `rows`: equal
    /// non-finite values, and finite ones within 1e-4 relative (1e-4 absolute below 1).
    pub(super) fn agrees(
        &self,
        rows: &[Vec<f32>],
        mut reference: impl FnMut(&[f32]) -> Option<Vec<f32>>,
    ) -> bool {
        let mut buffers = self.buffers();
        rows.iter().all(|row| {
            let Some(want) = reference(row) else {
                return false;
            };
            let got = self.run(&mut buffers, row);
            got.len() == want.len()
                && got.iter().zip(&want).all(|(&g, &w)| {
                    if w.is_finite() {
                        (f64::from(g) - f64::from(w)).abs() <= 1e-4 * f64::from(w.abs()).max(1.0)
                    } else {
                        g.is_nan() && w.is_nan() || g == w
                    }
                })
        })
    }
}

/// Rows the compact plan is checked on: zeros, then values of growing magnitude (so
/// activations saturate and exponentials overflow as they would on wild readings).
pub(super) fn probe_rows(row_len: usize) -> Vec<Vec<f32>> {
    let mut seed: u32 = 0x9e37_79b9;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        f64::from(seed) / f64::from(u32::MAX) * 2.0 - 1.0
    };
    let mut rows = vec![vec![0.0; row_len]];
    for scale in [0.01, 1.0, 1.0, 1.0, 4.0, 4.0, 30.0, 1000.0] {
        for _ in 0..4 {
            rows.push((0..row_len).map(|_| (next() * scale) as f32).collect());
        }
    }
    rows
}

/// The concrete shape of a float32 fact.
fn f32_shape(fact: &TypedFact) -> Option<Vec<usize>> {
    if fact.datum_type != f32::datum_type() {
        return None;
    }
    Some(fact.shape.as_concrete()?.to_vec())
}

/// A constant's values in row-major order.
fn f32_values(tensor: &Tensor) -> Option<Vec<f32>> {
    if tensor.datum_type() != f32::datum_type() {
        return None;
    }
    Some(
        tensor
            .to_plain_array_view::<f32>()
            .ok()?
            .iter()
            .copied()
            .collect(),
    )
}

/// A node being compiled: the graph, the node, the buffers and shapes of its inputs, its
/// output's shape and buffer.
#[derive(Clone, Copy)]
struct Site<'a> {
    model: &'a TypedModel,
    node: &'a TypedNode,
    inputs: &'a [usize],
    input_shapes: &'a [&'a [usize]],
    shape: &'a [usize],
    out: usize,
}

/// The step computing `node`, or `None` for an op the compact plan does not take.
fn step(site: Site) -> Option<Step> {
    let Site {
        node,
        inputs,
        input_shapes,
        shape,
        out,
        ..
    } = site;
    let op = node.op();
    if let Some(einsum) = node.op_as::<EinSum>() {
        if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() {
            return None;
        }
        return linear(site, einsum);
    }
    if let Some(conv) = op.downcast_ref::<Conv>() {
        if conv.q_params.is_some() {
            return None;
        }
        return affine(site);
    }
    if let Some(pool) = op.downcast_ref::<MaxPool>() {
        if pool.with_index_outputs.is_some() {
            return None;
        }
        return window_max(site);
    }
    if let Some(ElementWiseOp(mini, None)) = op.downcast_ref::<ElementWiseOp>() {
        let f = match mini.name().as_str() {
            "Tanh" => Unary::Tanh,
            "Sigmoid" => Unary::Sigmoid,
            "Exp" => Unary::Exp,
            "Ln" => Unary::Ln,
            "Abs" => Unary::Abs,
            "Neg" => Unary::Neg,
            "Sqrt" => Unary::Sqrt,
            "Rsqrt" => Unary::Rsqrt,
            "Square" => Unary::Square,
            "Recip" => Unary::Recip,
            _ => return None,
        };
        let [x] = inputs else { return None };
        return (input_shapes[0] == shape).then_some(Step::Unary { f, x: *x, out });
    }
    if let Some(TypedBinOp(mini, None)) = op.downcast_ref::<TypedBinOp>() {
        let f = match mini.name() {
            "Add" => Binary::Add,
            "Sub" => Binary::Sub,
            "SubF" => Binary::SubF,
            "Mul" => Binary::Mul,
            "Div" => Binary::Div,
            "Max" => Binary::Max,
            "Min" => Binary::Min,
            _ => return None,
        };
        let [a, b] = inputs else { return None };
        return Some(Step::Binary {
            f,
            a: *a,
            map_a: broadcast(input_shapes[0], shape)?,
            b: *b,
            map_b: broadcast(input_shapes[1], shape)?,
            out,
        });
    }
    if let Some(reduce) = op.downcast_ref::<Reduce>() {
        let f = match reduce.reducer {
            Reducer::Sum => Reducing::Sum,
            Reducer::MeanOfSquares => Reducing::MeanOfSquares,
            Reducer::Max => Reducing::Max,
            Reducer::Min => Reducing::Min,
            Reducer::Prod => Reducing::Prod,
            _ => return None,
        };
        let [x] = inputs else { return None };
        let from = input_shapes[0];
        let expected: Vec<usize> = (0..from.len())
            .map(|ax| {
                if reduce.axes.contains(&ax) {
                    1
                } else {
                    from[ax]
                }
            })
            .collect();
        if expected != shape || reduce.axes.iter().any(|&ax| ax >= from.len()) {
            return None;
        }
        let map = reduction(from, &reduce.axes)?;
        let per_output = from.iter().product::<usize>() / shape.iter().product::<usize>().max(1);
        return Some(Step::Reduce {
            f,
            x: *x,
            map,
            per_output,
            out,
        });
    }
    if let Some(axis_op) = op.downcast_ref::<AxisOp>() {
        if matches!(axis_op, AxisOp::Move(..)) {
            return None;
        }
        let [x] = inputs else { return None };
        let same_len = input_shapes[0].iter().product::<usize>() == shape.iter().product::<usize>();
        return same_len.then_some(Step::Copy { x: *x, out });
    }
    None
}

/// An `EinSum` with one constant operand as a dense matrix over the other one: every
/// index of every axis is visited once and the constant's entry added where the output
/// and the variable operand's entries meet (so contractions sum, and axes of the output
/// alone broadcast).
fn linear(site: Site, einsum: &EinSum) -> Option<Step> {
    let Site {
        model,
        node,
        inputs,
        input_shapes,
        shape,
        out,
    } = site;
    let [_, _] = inputs else { return None };
    let constant = |slot: usize| {
        model
            .node(node.inputs[slot].node)
            .op_as::<Const>()
            .map(|k| k.val().clone())
    };
    let (w_slot, weights) = match (constant(0), constant(1)) {
        (Some(w), None) => (0, w),
        (None, Some(w)) => (1, w),
        _ => return None,
    };
    let x_slot = 1 - w_slot;
    let weights = f32_values(&weights)?;
    let rows: usize = shape.iter().product();
    let cols: usize = input_shapes[x_slot].iter().product();
    if rows * cols > MAX_MACS {
        return None;
    }
    // Per axis: its extent, and its stride in the weights, the variable operand and the
    // output (0 where the axis is absent).
    let strides = |dims: &[usize]| -> Vec<usize> {
        let mut s = vec![1; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * dims[i + 1];
        }
        s
    };
    let shapes = [input_shapes[0], input_shapes[1], shape];
    let all_strides = shapes.map(strides);
    let mut axes = Vec::new();
    for axis in einsum.axes.iter_all_axes() {
        let positions = [&axis.inputs[0], &axis.inputs[1], &axis.outputs[0]];
        if positions.iter().any(|p| p.len() > 1) || axis.inputs.len() != 2 {
            return None;
        }
        let mut extent = None;
        let mut stride = [0usize; 3];
        for (k, p) in positions.iter().enumerate() {
            if let Some(&pos) = p.first() {
                let dim = *shapes[k].get(pos)?;
                if extent.is_some_and(|e| e != dim) {
                    return None;
                }
                extent = Some(dim);
                stride[k] = all_strides[k][pos];
            }
        }
        axes.push((extent?, stride));
    }
    let visits: usize = axes.iter().map(|(e, _)| e).product();
    if visits > 4 * MAX_MACS {
        return None;
    }
    let mut columns = vec![0.0f32; rows * cols];
    let mut index = vec![0usize; axes.len()];
    for _ in 0..visits {
        let offset =
            |k: usize| -> usize { axes.iter().zip(&index).map(|((_, s), i)| s[k] * i).sum() };
        let (w, x, o) = (offset(w_slot), offset(x_slot), offset(2));
        *columns.get_mut(x * rows + o)? += *weights.get(w)?;
        for (i, (extent, _)) in index.iter_mut().zip(&axes).rev() {
            *i += 1;
            if *i < *extent {
                break;
            }
            *i = 0;
        }
    }
    Some(Step::Linear {
        x: inputs[x_slot],
        out,
        columns,
        rows,
        bias: Vec::new(),
    })
}

/// The one input of `node` that is not a constant, with every input as a value (the
/// variable one left empty); `None` unless exactly one input varies.
fn one_variable(model: &TypedModel, node: &TypedNode) -> Option<(usize, TVec<Option<TValue>>)> {
    let mut variable = None;
    let mut values = TVec::new();
    for (slot, outlet) in node.inputs.iter().enumerate() {
        match model.node(outlet.node).op_as::<Const>() {
            Some(k) => values.push(Some(TValue::from_const(k.val().clone()))),
            None if variable.is_none() => {
                variable = Some(slot);
                values.push(None);
            }
            None => return None,
        }
    }
    Some((variable?, values))
}

/// Runs `node`'s op once on a batch of rows of its variable input: the rows stacked on
/// the leading axis, which must be 1 (a batch axis). Returns the output rows.
fn eval_rows(
    node: &TypedNode,
    mut values: TVec<Option<TValue>>,
    variable: usize,
    x_shape: &[usize],
    rows: &[Vec<f32>],
) -> Option<Vec<Vec<f32>>> {
    if x_shape.first() != Some(&1) {
        return None;
    }
    let mut shape = x_shape.to_vec();
    shape[0] = rows.len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    values[variable] = Some(Tensor::from_shape(&shape, &flat).ok()?.into_tvalue());
    let inputs: TVec<TValue> = values.into_iter().collect::<Option<_>>()?;
    let out = node.op().eval_out_of_plan(inputs).ok()??;
    let values = f32_values(out.first()?)?;
    let per_row = values.len() / rows.len();
    Some(values.chunks_exact(per_row).map(<[f32]>::to_vec).collect())
}

/// Runs `node` (one variable input, of at most [`MAX_MACS`] values times its output's) on
/// one-hot rows, one per value of its input (the 1 at that value), after a row of zeros
/// when `zeros_first`. Returns the variable input's slot and the output rows.
fn one_hot_runs(site: Site, zeros_first: bool) -> Option<(usize, Vec<Vec<f32>>)> {
    let Site {
        model,
        node,
        input_shapes,
        shape,
        ..
    } = site;
    let (variable, values) = one_variable(model, node)?;
    let x_shape = input_shapes[variable];
    let cols: usize = x_shape.iter().product();
    let rows: usize = shape.iter().product();
    if rows * cols > MAX_MACS {
        return None;
    }
    let hot_rows = (0..cols).map(|j| (0..cols).map(|i| f32::from(u8::from(i == j))).collect());
    let probes: Vec<Vec<f32>> = if zeros_first {
        std::iter::once(vec![0.0; cols]).chain(hot_rows).collect()
    } else {
        hot_rows.collect()
    };
    let outputs = eval_rows(node, values, variable, x_shape, &probes)?;
    outputs
        .iter()
        .all(|o| o.len() == rows)
        .then_some((variable, outputs))
}

/// A convolution with a constant kernel and bias, an affine map of its input: its bias
/// part and columns are read from one run on zeros and on every basis vector.
fn affine(site: Site) -> Option<Step> {
    let Site { inputs, out, .. } = site;
    let (variable, outputs) = one_hot_runs(site, true)?;
    let (bias, units) = outputs.split_first()?;
    let columns: Vec<f32> = units
        .iter()
        .flat_map(|unit| unit.iter().zip(bias).map(|(u, b)| u - b))
        .collect();
    Some(Step::Linear {
        x: inputs[variable],
        out,
        columns,
        rows: bias.len(),
        bias: bias.clone(),
    })
}

/// A max pooling as the window of input values each output takes: output `i`'s window
/// holds input `j` when a one-hot input at `j` gives 1 at `i`.
fn window_max(site: Site) -> Option<Step> {
    let Site {
        inputs, shape, out, ..
    } = site;
    let (variable, outputs) = one_hot_runs(site, false)?;
    let mut windows: Vec<Vec<u32>> = vec![Vec::new(); shape.iter().product()];
    for (j, output) in outputs.iter().enumerate() {
        for (window, &v) in windows.iter_mut().zip(output) {
            if v == 1.0 {
                window.push(u32::try_from(j).ok()?);
            }
        }
    }
    let mut starts = vec![0u32];
    let mut indices = Vec::new();
    for window in windows {
        indices.extend(window);
        starts.push(u32::try_from(indices.len()).ok()?);
    }
    Some(Step::WindowMax {
        x: inputs[variable],
        out,
        starts,
        indices,
    })
}

/// For each value of a tensor of shape `to`, the index of the value of `from` that
/// broadcasts to it (numpy rules, aligned on the last axis); `None` inside when no map is
/// needed, outer `None` when `from` does not broadcast to `to`.
fn broadcast(from: &[usize], to: &[usize]) -> Option<Option<Vec<u32>>> {
    if from == to {
        return Some(None);
    }
    if from.len() > to.len() {
        return None;
    }
    let pad = to.len() - from.len();
    let dims: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(from.iter().copied())
        .collect();
    if dims.iter().zip(to).any(|(&f, &t)| f != t && f != 1) {
        return None;
    }
    let len: usize = to.iter().product();
    let mut map = Vec::with_capacity(len);
    for flat in 0..len {
        let (mut rest, mut index, mut stride) = (flat, 0usize, 1usize);
        for (&t, &f) in to.iter().zip(&dims).rev() {
            let coord = rest % t;
            rest /= t;
            if f != 1 {
                index += coord * stride;
            }
            stride *= f;
        }
        map.push(u32::try_from(index).ok()?);
    }
    Some(Some(map))
}

/// For each value of a tensor of shape `from`, the index of its output once `axes` are
/// reduced to 1.
fn reduction(from: &[usize], axes: &[usize]) -> Option<Vec<u32>> {
    let len: usize = from.iter().product();
    let mut map = Vec::with_capacity(len);
    for flat in 0..len {
        let (mut rest, mut index, mut stride) = (flat, 0usize, 1usize);
        for (ax, &d) in from.iter().enumerate().rev() {
            let coord = rest % d;
            rest /= d;
            if !axes.contains(&ax) {
                index += coord * stride;
                stride *= d;
            }
        }
        map.push(u32::try_from(index).ok()?);
    }
    Some(map)
}

impl Step {
    fn run(&self, b: &mut [Vec<f32>]) {
        match self {
            Step::Linear {
                x,
                out,
                columns,
                rows,
                bias,
            } => {
                let mut o = std::mem::take(&mut b[*out]);
                if bias.is_empty() {
                    o.fill(0.0);
                } else {
                    o.copy_from_slice(bias);
                }
                for (&xc, column) in b[*x].iter().zip(columns.chunks_exact(*rows)) {
                    for (acc, &w) in o.iter_mut().zip(column) {
                        *acc += xc * w;
                    }
                }
                b[*out] = o;
            }
            Step::WindowMax {
                x,
                out,
                starts,
                indices,
            } => {
                let mut o = std::mem::take(&mut b[*out]);
                let xv = &b[*x];
                for (y, bounds) in o.iter_mut().zip(starts.windows(2)) {
                    *y = indices[bounds[0] as usize..bounds[1] as usize]
                        .iter()
                        .map(|&j| xv[j as usize])
                        .fold(f32::NEG_INFINITY, f32::max);
                }
                b[*out] = o;
            }
            Step::Unary { f, x, out } => {
                let mut o = std::mem::take(&mut b[*out]);
                for (y, &v) in o.iter_mut().zip(&b[*x]) {
                    *y = f.apply(v);
                }
                b[*out] = o;
            }
            Step::Binary {
                f,
                a,
                map_a,
                b: bi,
                map_b,
                out,
            } => {
                let mut o = std::mem::take(&mut b[*out]);
                let (av, bv) = (&b[*a], &b[*bi]);
                let pick = |v: &[f32], map: &Option<Vec<u32>>, i: usize| match map {
                    Some(m) => v[m[i] as usize],
                    None => v[i],
                };
                for (i, y) in o.iter_mut().enumerate() {
                    *y = f.apply(pick(av, map_a, i), pick(bv, map_b, i));
                }
                b[*out] = o;
            }
            Step::Reduce {
                f,
                x,
                map,
                per_output,
                out,
            } => {
                let mut o = std::mem::take(&mut b[*out]);
                o.fill(f.identity());
                for (&v, &to) in b[*x].iter().zip(map) {
                    let acc = &mut o[to as usize];
                    *acc = f.fold(*acc, v);
                }
                if let Reducing::MeanOfSquares = f {
                    let n = *per_output as f32;
                    o.iter_mut().for_each(|v| *v /= n);
                }
                b[*out] = o;
            }
            Step::Copy { x, out } => {
                let mut o = std::mem::take(&mut b[*out]);
                o.copy_from_slice(&b[*x]);
                b[*out] = o;
            }
        }
    }
}

impl Unary {
    fn apply(self, v: f32) -> f32 {
        match self {
            Unary::Tanh => v.tanh(),
            Unary::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Unary::Exp => v.exp(),
            Unary::Ln => v.ln(),
            Unary::Abs => v.abs(),
            Unary::Neg => -v,
            Unary::Sqrt => v.sqrt(),
            Unary::Rsqrt => 1.0 / v.sqrt(),
            Unary::Square => v * v,
            Unary::Recip => 1.0 / v,
        }
    }
}

impl Binary {
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::SubF => b - a,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
        }
    }
}

impl Reducing {
    fn identity(self) -> f32 {
        match self {
            Reducing::Sum | Reducing::MeanOfSquares => 0.0,
            Reducing::Max => f32::NEG_INFINITY,
            Reducing::Min => f32::INFINITY,
            Reducing::Prod => 1.0,
        }
    }

    fn fold(self, acc: f32, v: f32) -> f32 {
        match self {
            Reducing::Sum => acc + v,
            Reducing::MeanOfSquares => acc + v * v,
            Reducing::Max => acc.max(v),
            Reducing::Min => acc.min(v),
            Reducing::Prod => acc * v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_tflite::internal::tract_core::ops::{math, nn};

    /// The compact plan of `model` and tract's optimised plan of the same graph, with the
    /// input shape.
    fn both(model: TypedModel) -> (Option<Compact>, Arc<TypedRunnableModel>, Vec<usize>) {
        let shape = model
            .input_fact(0)
            .unwrap()
            .shape
            .as_concrete()
            .unwrap()
            .to_vec();
        let compact = Compact::compile(&model.clone().into_decluttered().unwrap());
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        (compact, plan, shape)
    }

    fn tract(plan: &Arc<TypedRunnableModel>, shape: &[usize], row: &[f32]) -> Option<Vec<f32>> {
        let out = plan
            .run(tvec!(Tensor::from_shape(shape, row).ok()?.into()))
            .ok()?;
        Some(
            out[0]
                .to_plain_array_view::<f32>()
                .ok()?
                .iter()
                .copied()
                .collect(),
        )
    }

    fn agrees_with_tract(model: TypedModel) -> bool {
        let (compact, plan, shape) = both(model);
        let compact = compact.expect("the graph compiles to a compact plan");
        let rows = probe_rows(shape.iter().product());
        compact.agrees(&rows, |row| tract(&plan, &shape, row))
    }

    fn einsum(expr: &str) -> EinSum {
        EinSum::new(expr.parse().unwrap(), f32::datum_type())
    }

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * scale)
            .collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    #[test]
    fn a_dense_graph_with_broadcasts_and_reductions_gives_tracts_results() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3])).unwrap();
        let w = m.add_const("w", ramp(&[4, 3], 0.1)).unwrap();
        let y = m.wire_node("mm", einsum("ij,kj->ik"), &[x, w]).unwrap()[0];
        let bias = m.add_const("bias", ramp(&[1, 4], 0.01)).unwrap();
        let y = m.wire_node("add", math::add(), &[y, bias]).unwrap()[0];
        let y = m.wire_node("tanh", math::tanh(), &[y]).unwrap()[0];
        let floor = m.add_const("floor", ramp(&[2, 1], 0.02)).unwrap();
        let y = m.wire_node("floored", math::max(), &[y, floor]).unwrap()[0];
        let back = m.wire_node("back", einsum("ik,kj->ij"), &[y, w]).unwrap()[0];
        let diff = m.wire_node("diff", math::sub(), &[x, back]).unwrap()[0];
        let y = m
            .wire_node(
                "mse",
                Reduce::new(tvec![1], Reducer::MeanOfSquares),
                &[diff],
            )
            .unwrap()[0];
        let y = m.wire_node("score", nn::sigmoid(), &[y]).unwrap()[0];
        let y = m.wire_node("rm", AxisOp::Rm(1), &[y]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        assert!(agrees_with_tract(m));
    }

    #[test]
    fn a_constant_first_operand_and_reductions_over_other_axes_give_tracts_results() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([3, 2])).unwrap();
        let w = m.add_const("w", ramp(&[5, 3], 0.2)).unwrap();
        let y = m.wire_node("mm", einsum("kj,jb->bk"), &[w, x]).unwrap()[0];
        let y = m.wire_node("exp", math::exp(), &[y]).unwrap()[0];
        let y = m
            .wire_node("sum", Reduce::new(tvec![0], Reducer::Sum), &[y])
            .unwrap()[0];
        let y = m
            .wire_node("max", Reduce::new(tvec![1], Reducer::Max), &[y])
            .unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        assert!(agrees_with_tract(m));
    }

    #[test]
    fn convolutions_and_max_pools_with_padding_give_tracts_results() {
        use tract_tflite::internal::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
        use tract_tflite::internal::tract_core::ops::nn::DataFormat;
        let spec = |kernel: [usize; 2], strides: [usize; 2], channels: (usize, usize)| PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape: tvec![kernel[0], kernel[1]],
            padding: PaddingSpec::SameUpper,
            dilations: None,
            strides: Some(tvec![strides[0], strides[1]]),
            input_channels: channels.0,
            output_channels: channels.1,
        };
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 5, 4, 2])).unwrap();
        let kernel = m.add_const("kernel", ramp(&[3, 3, 3, 2], 0.1)).unwrap();
        let bias = m.add_const("bias", ramp(&[3], 0.5)).unwrap();
        let conv = Conv {
            pool_spec: spec([3, 3], [2, 1], (2, 3)),
            kernel_fmt: KernelFormat::OHWI,
            group: 1,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, kernel, bias]).unwrap()[0];
        let pool = MaxPool {
            pool_spec: spec([2, 3], [2, 2], (3, 3)),
            with_index_outputs: None,
        };
        let y = m.wire_node("pool", pool, &[y]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        assert!(agrees_with_tract(m));
    }

    #[test]
    fn other_ops_and_large_models_stay_on_tract() {
        // A transposition.
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3])).unwrap();
        let y = m.wire_node("t", AxisOp::Move(0, 1), &[x]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        assert!(both(m).0.is_none());
        // A product of two variables.
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([4])).unwrap();
        let y = m.wire_node("sq", math::mul(), &[x, x]).unwrap()[0];
        let y = m.wire_node("mm", einsum("i,i->"), &[x, y]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        assert!(both(m).0.is_none());
        // More multiply-adds than MAX_MACS.
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 200])).unwrap();
        let w = m.add_const("w", ramp(&[100, 200], 0.01)).unwrap();
        let y = m.wire_node("mm", einsum("bi,oi->bo"), &[x, w]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        assert!(both(m).0.is_none());
    }

    #[test]
    fn a_plan_that_differs_from_the_reference_is_not_trusted() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 3])).unwrap();
        let y = m.wire_node("tanh", math::tanh(), &[x]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        let (compact, plan, shape) = both(m);
        let compact = compact.unwrap();
        let rows = probe_rows(3);
        assert!(compact.agrees(&rows, |row| tract(&plan, &shape, row)));
        // Off by 1e-3 on one value of one row, or a NaN where the reference has a number.
        let mut calls = 0;
        assert!(!compact.agrees(&rows, |row| {
            calls += 1;
            let mut out = tract(&plan, &shape, row)?;
            if calls == 7 {
                out[1] += 1e-3;
            }
            Some(out)
        }));
        assert!(!compact.agrees(&rows, |row| {
            let mut out = tract(&plan, &shape, row)?;
            out[0] = f32::NAN;
            Some(out)
        }));
        assert!(!compact.agrees(&rows, |_| None), "a failed reference run");
    }
}
