//! A fused linear layer for the CPU: y = act(x·Wᵀ + b) as one candle `CustomOp3`.
//!
//! Against the same layer built from candle's ops (matmul of a transposed view, broadcast add,
//! relu) it saves, per layer and step: the zero-fill and the separate passes for bias and
//! activation in the forward; the transpose node and its copy in the backward; and, for the
//! first layer, the input gradient (a full matmul) that nothing reads. The gradients are the
//! textbook ones, checked against PyTorch and finite differences in `tests/numerics.rs`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::engine::kernels::activation::gelu;
use crate::engine::kernels::handover::WeightGrads;

#[derive(Debug, Clone)]
pub struct Linear {
    /// Apply ReLU to the output.
    pub relu: bool,
    /// Compute the gradient for the input; false where the input is data, not an activation.
    pub input_grad: bool,
    /// Where a training pass collects the weight and bias gradients (None: candle's store).
    pub handover: Option<WeightGrads>,
}

impl Linear {
    /// `x`: batch × in, `weight`: out × in (PyTorch's layout), `bias`: out.
    pub fn forward(self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, self)
    }
}

/// candle's thread count, for the gemm calls of our kernels.
fn gemm_parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        threads if threads > 1 => gemm::Parallelism::Rayon(threads),
        _ => gemm::Parallelism::None,
    }
}

/// `out` (rows × cols, row-major) = [`out` +] A·B, with A (rows × inner) and B (inner × cols)
/// read through their (column, row) strides, so either may be a transposed view.
///
/// # Safety
/// The strides must keep every element of A and B inside `a` and `b`.
pub(crate) unsafe fn gemm_rows(
    out: &mut [f32],
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    dims: (usize, usize, usize),
    accumulate: bool,
) {
    // SAFETY: passed on from the caller.
    unsafe { gemm_rows_with(out, (a, a_strides), (b, b_strides), dims, accumulate, gemm_parallelism()) }
}

/// [`gemm_rows`] with the given parallelism.
///
/// # Safety
/// As for [`gemm_rows`].
unsafe fn gemm_rows_with(
    out: &mut [f32],
    (a, (a_cs, a_rs)): (&[f32], (usize, usize)),
    (b, (b_cs, b_rs)): (&[f32], (usize, usize)),
    (rows, cols, inner): (usize, usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(out.len() >= rows * cols, "gemm_rows: the output holds {} values, not {rows}×{cols}", out.len());
    // SAFETY: out holds rows × cols (checked above); the caller vouches for a's and b's strides.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            inner,
            out.as_mut_ptr(),
            1,
            cols as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Weight gradients of at most this many values, over many rows, are split by rows.
const SPLIT_WEIGHT_GRAD_MAX: usize = 16_384;

/// The weight gradient gradientᵀ·x (`out`: outputs × inputs) of a layer that read `x` (rows ×
/// inputs) and got `gradient` (rows × outputs). gemm splits its work over the output, so a small
/// weight over many rows (a convolution's: 16 × 150 over 12,800 positions) ran slower on two
/// threads than on one; such products are split by rows instead, one partial sum a thread.
fn weight_grad(out: &mut [f32], gradient: &[f32], x: &[f32], (outputs, inputs): (usize, usize)) {
    let rows = x.len() / inputs;
    assert!(gradient.len() == rows * outputs && out.len() == outputs * inputs, "weight_grad: shapes do not fit");
    let threads = candle_core::utils::get_num_threads();
    if threads < 2 || outputs * inputs > SPLIT_WEIGHT_GRAD_MAX || rows < 1024 * threads {
        // SAFETY: the gradient holds rows × outputs, read transposed (column stride `outputs`);
        // x holds rows × inputs, read row-major.
        return unsafe { gemm_rows(out, gradient, (outputs, 1), x, (1, inputs), (outputs, inputs, rows), false) };
    }
    let per_task = rows.div_ceil(threads);
    let partial = gradient.par_chunks(per_task * outputs).zip(x.par_chunks(per_task * inputs)).map(|(g, x)| {
        let mut sum = vec![0f32; outputs * inputs];
        let dims = (outputs, inputs, x.len() / inputs);
        // SAFETY: as above, for this task's rows of the gradient and of x.
        unsafe { gemm_rows_with(&mut sum, (g, (outputs, 1)), (x, (1, inputs)), dims, false, gemm::Parallelism::None) };
        sum
    });
    let total = partial.reduce_with(|mut a, b| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    });
    out.copy_from_slice(&total.expect("at least one row"));
}

/// The values of a contiguous f32 CPU tensor, for the engine's custom ops.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{what} must be f32") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{what} must be contiguous") };
    Ok(&values[start..end])
}

/// x·Wᵀ + b for the fused kernels' forward: `x` batch × in, `weight` out × in, `bias` out.
pub(crate) fn affine(
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    bs: &CpuStorage,
    bl: &Layout,
) -> Result<(Vec<f32>, Shape)> {
    bias_plus_product((xs, xl), (ws, wl), (bs, bl), WeightLayout::OutByIn)
}

/// How a linear layer's weight is stored.
#[derive(Debug, Clone, Copy)]
enum WeightLayout {
    /// `out × in`, PyTorch's layout: what trains ([`Linear`]).
    OutByIn,
    /// `in × out` ([`FrozenLinear`]).
    InByOut,
}

/// `bias` + x·Wᵀ (batch × out) for `x` batch × in and the weight stored in `layout`, after
/// checking that the three fit.
fn bias_plus_product(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
    layout: WeightLayout,
) -> Result<(Vec<f32>, Shape)> {
    let what = match layout {
        WeightLayout::OutByIn => "fused linear: expected x batch×in, weight out×in, bias out",
        WeightLayout::InByOut => "frozen linear: expected x batch×in, weight in×out, bias out",
    };
    let (&[batch, inputs], &[rows, cols], &[b_outputs]) = (xl.dims(), wl.dims(), bl.dims()) else {
        candle_core::bail!("{what}")
    };
    // Wᵀ's (column, row) strides in the stored weight: from out × in, a transposed view.
    let (w_inputs, outputs, w_strides) = match layout {
        WeightLayout::OutByIn => (cols, rows, (cols, 1)),
        WeightLayout::InByOut => (rows, cols, (1, cols)),
    };
    if inputs != w_inputs || outputs != b_outputs {
        candle_core::bail!("{what}; got x {:?}, weight {:?}, bias {:?}", xl.dims(), wl.dims(), bl.dims());
    }
    let x = contiguous_f32(xs, xl, "linear: the input")?;
    let w = contiguous_f32(ws, wl, "linear: the weight")?;
    let b = contiguous_f32(bs, bl, "linear: the bias")?;
    // Start from the bias and let the matmul accumulate onto it: one pass fewer than
    // zero-filling, multiplying and adding.
    let mut y: Vec<f32> = Vec::with_capacity(batch * outputs);
    for _ in 0..batch {
        y.extend_from_slice(b);
    }
    // SAFETY: x holds batch × in, read row-major; the weight holds in × out values (checked
    // above), which `w_strides` read as Wᵀ.
    unsafe { gemm_rows(&mut y, x, (1, inputs), w, w_strides, (batch, outputs, inputs), true) };
    Ok((y, Shape::from((batch, outputs))))
}

/// A layer's weight stored for inference: Wᵀ (in × out, row-major). gemm packs a row-major
/// right-hand side faster than the transposed view of W that [`Linear`] reads; on the Intel Xeon
/// of issue 17 (AVX-512 gemm, 2 threads) a batch-128 800 × 784 layer took 0.57 ms against 0.84,
/// batch 32 0.21 against 0.58. Transposing costs about as much as it saves, so it pays only for
/// weights that stay fixed over many passes: inference (`Net::frozen`).
#[derive(Debug, Clone, Copy)]
pub struct FrozenLinear {
    pub activation: Activation,
}

/// What a [`FrozenLinear`] applies to x·Wᵀ + b.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    /// Exact (erf) GELU, as `activation::linear_gelu` computes it.
    Gelu,
}

impl Activation {
    fn apply(self, mut y: Vec<f32>) -> Vec<f32> {
        match self {
            Activation::Identity => y,
            Activation::Relu => {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
                y
            }
            Activation::Gelu => gelu(&y),
        }
    }
}

impl FrozenLinear {
    /// `x`: batch × in, `weight_t`: in × out, `bias`: out. No gradient flows through it.
    pub fn forward(self, x: &Tensor, weight_t: &Tensor, bias: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op3_no_bwd(&weight_t.contiguous()?, &bias.contiguous()?, &self)
    }
}

impl CustomOp3 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = bias_plus_product((xs, xl), (ws, wl), (bs, bl), WeightLayout::InByOut)?;
        Ok((CpuStorage::F32(self.activation.apply(y)), shape))
    }
}

/// The weight and bias gradients of x·Wᵀ + b for the gradient `grad` of its output, and with
/// `relu` (`y` the ReLU's output) the masked gradient, from one `LinearGrad` op.
fn grads(x: &Tensor, y: &Tensor, grad: &Tensor, relu: bool) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let ((rows, inputs), outputs) = (x.dims2()?, grad.dim(1)?);
    // Stacked in one buffer: weight (out·in), bias (out), with ReLU the masked gradient (rows·out).
    let stacked = x.contiguous()?.apply_op3_no_bwd(y, grad, &LinearGrad { relu })?;
    let grad_weight = stacked.narrow(0, 0, outputs * inputs)?.reshape((outputs, inputs))?;
    let grad_bias = stacked.narrow(0, outputs * inputs, outputs)?;
    let masked = match relu {
        true => Some(stacked.narrow(0, outputs * (inputs + 1), rows * outputs)?.reshape((rows, outputs))?),
        false => None,
    };
    Ok((grad_weight, grad_bias, masked))
}

/// The weight and bias gradients of x·Wᵀ + b for the gradient `grad` of its (pre-activation)
/// output.
pub(crate) fn weight_and_bias_grads(x: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let (grad_weight, grad_bias, _) = grads(x, grad, grad, false)?;
    Ok((grad_weight, grad_bias))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = affine(xs, xl, ws, wl, bs, bl)?;
        let activation = if self.relu { Activation::Relu } else { Activation::Identity };
        Ok((CpuStorage::F32(activation.apply(y)), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let (grad_weight, grad_bias, masked) = grads(x, y, &grad_y, self.relu)?;
        let grad_x = match self.input_grad {
            true => Some(masked.as_ref().unwrap_or(&grad_y).matmul(weight)?),
            false => None,
        };
        Ok((grad_x, hand_over(&self.handover, weight, grad_weight), hand_over(&self.handover, bias, grad_bias)))
    }
}

/// A parameter's gradient for candle's store: None where `handover` keeps it instead.
pub(crate) fn hand_over(handover: &Option<WeightGrads>, param: &Tensor, grad: Tensor) -> Option<Tensor> {
    match handover {
        Some(kept) => kept.hand_over(param, grad),
        None => Some(grad),
    }
}

/// Rows per parallel task in the backward's passes over the gradient.
const ROWS_PER_TASK: usize = 64;

/// The backward of `Linear` but for the input gradient: with ReLU, its mask (PyTorch: 0 at 0);
/// the bias gradient (column sums, rows in parallel); and the weight gradient (gradientᵀ·x, one
/// gemm reading the gradient transposed in place). Built from candle's ops these were three
/// passes over the gradient, a slow reduction along rows and a transposed copy.
struct LinearGrad {
    relu: bool,
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[rows, inputs] = xl.dims() else { candle_core::bail!("fused linear grad: expected x rows×in") };
        let outputs = gl.dims()[1];
        let x = contiguous_f32(xs, xl, "fused linear grad: the input")?;
        let y = contiguous_f32(ys, yl, "fused linear grad: the output")?;
        let g = contiguous_f32(gs, gl, "fused linear grad: the gradient")?;
        let masked_len = if self.relu { rows * outputs } else { 0 };
        let mut out = vec![0f32; outputs * inputs + outputs + masked_len];
        let (grad_w, rest) = out.split_at_mut(outputs * inputs);
        let (bias_grad, masked) = rest.split_at_mut(outputs);
        let chunk = ROWS_PER_TASK * outputs;
        let column_sums = |rows: &[f32]| {
            let mut sums = vec![0f64; outputs];
            for row in rows.chunks_exact(outputs) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            }
            sums
        };
        let add = |mut a: Vec<f64>, b: Vec<f64>| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        };
        let sums = if self.relu {
            masked
                .par_chunks_mut(chunk)
                .zip(g.par_chunks(chunk))
                .zip(y.par_chunks(chunk))
                .map(|((m, g), y)| {
                    for ((m, &gv), &yv) in m.iter_mut().zip(g).zip(y) {
                        *m = if yv <= 0.0 { 0.0 } else { gv };
                    }
                    column_sums(m)
                })
                .reduce(|| vec![0f64; outputs], add)
        } else {
            g.par_chunks(chunk).map(column_sums).reduce(|| vec![0f64; outputs], add)
        };
        for (b, s) in bias_grad.iter_mut().zip(&sums) {
            *b = *s as f32;
        }
        let gradient = if self.relu { &masked[..] } else { g };
        weight_grad(grad_w, gradient, x, (outputs, inputs));
        Ok((CpuStorage::F32(out), Shape::from(outputs * inputs + outputs + masked_len)))
    }
}

/// x·Wᵀ without a bias (`x` rows × in, `weight` out × in), for layers that have none (Llama's
/// projections). Through candle's ops the weight's gradient comes back transposed, and adding a
/// transposed gradient into the gradient store is a strided, element-at-a-time pass per weight;
/// here it is one gemm written in the weight's own layout.
pub fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, Projection)
}

struct Projection;

impl CustomOp2 for Projection {
    fn name(&self) -> &'static str {
        "projection"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[rows, inputs], &[outputs, w_inputs]) = (xl.dims(), wl.dims()) else {
            candle_core::bail!("projection: expected x rows×in and weight out×in")
        };
        if inputs != w_inputs {
            candle_core::bail!("projection: x {:?} and weight {:?} do not fit", xl.dims(), wl.dims());
        }
        let x = contiguous_f32(xs, xl, "projection: the input")?;
        let w = contiguous_f32(ws, wl, "projection: the weight")?;
        let mut y = vec![0f32; rows * outputs];
        // SAFETY: x holds rows × in read row-major, the weight out × in read transposed.
        unsafe { gemm_rows(&mut y, x, (1, inputs), w, (inputs, 1), (rows, outputs, inputs), false) };
        Ok((CpuStorage::F32(y), Shape::from((rows, outputs))))
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_weight = grad.apply_op2_no_bwd(x, &ProjectionWeightGrad)?;
        Ok((Some(grad.matmul(weight)?), Some(grad_weight)))
    }
}

/// gradientᵀ·x (out × in) for `Projection`'s weight, from the gradient (rows × out) and x.
struct ProjectionWeightGrad;

impl CustomOp2 for ProjectionWeightGrad {
    fn name(&self) -> &'static str {
        "projection-weight-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[rows, outputs], &[x_rows, inputs]) = (gl.dims(), xl.dims()) else {
            candle_core::bail!("projection grad: expected the gradient rows×out and x rows×in")
        };
        if rows != x_rows {
            candle_core::bail!("projection grad: gradient {:?} and x {:?} do not fit", gl.dims(), xl.dims());
        }
        let g = contiguous_f32(gs, gl, "projection grad: the gradient")?;
        let x = contiguous_f32(xs, xl, "projection grad: the input")?;
        let mut out = vec![0f32; outputs * inputs];
        weight_grad(&mut out, g, x, (outputs, inputs));
        Ok((CpuStorage::F32(out), Shape::from((outputs, inputs))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng::Rng;

    /// The row-split product (a convolution's small weight over many positions, rows not a
    /// multiple of the thread count) and gemm's own agree with gradientᵀ·x summed in f64.
    #[test]
    fn weight_gradients_split_by_rows_match_the_plain_sum() {
        let mut rng = Rng::new(7);
        for (rows, outputs, inputs) in [(5_001, 6, 25), (12_800, 16, 150), (300, 40, 30)] {
            let gradient: Vec<f32> = (0..rows * outputs).map(|_| rng.normal(1.0)).collect();
            let x: Vec<f32> = (0..rows * inputs).map(|_| rng.normal(1.0)).collect();
            let mut ours = vec![f32::NAN; outputs * inputs];
            weight_grad(&mut ours, &gradient, &x, (outputs, inputs));
            for (at, &value) in ours.iter().enumerate() {
                let (o, i) = (at / inputs, at % inputs);
                let exact: f64 = (0..rows).map(|r| gradient[r * outputs + o] as f64 * x[r * inputs + i] as f64).sum();
                let tolerance = 1e-4 * (rows as f64).sqrt() * 10.0;
                assert!(
                    (value as f64 - exact).abs() < tolerance,
                    "{rows}×{outputs}×{inputs} at ({o}, {i}): {value} vs {exact}"
                );
            }
        }
    }
}
