//! Multi-head self-attention for the CPU as one candle op, forward and backward.
//!
//! Composed of candle's ops, one attention layer was a dozen passes with fresh outputs: three
//! head splits (transpose + copy), a copy of Kᵀ, scale, mask add, a five-op softmax, the merge of
//! the heads, and about twice as many in the backward. Here the query, key and value projections
//! arrive as one `tokens × 3·hidden` matrix; each (sequence, head) pair reads its slices in place
//! through the gemm's strides, and the softmax, its mask, the dropout and their gradients are
//! single passes over each `length × length` block. `tests/text.rs` checks the encoder against
//! `transformers`, and the tests below check this op against the composed one, gradients too.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::engine::kernels::fastmath;
use crate::engine::kernels::linear::contiguous_f32;

#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub batch: usize,
    pub length: usize,
    pub heads: usize,
    /// Added to each key's score, per sequence: 0, or a large negative number for padding.
    pub key_bias: Arc<[f32]>,
    /// Dropout multipliers (0 or 1/(1 − p)) for the probabilities, `batch × heads × length ×
    /// length`; None in evaluation.
    pub dropout: Option<Arc<[f32]>>,
}

/// A pointer that parallel tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task that receives a `Shared` writes only its own (sequence, head) columns.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `offset` elements on. A method, so closures capture the whole `Shared`.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst (m × n) = scale · lhs (m × k) · rhs (k × n)` on one thread (the callers run one product
/// per task). Each matrix is given as (pointer, row stride, column stride).
///
/// # Safety
/// Each pointer with its strides must address an m×n, m×k and k×n matrix inside its buffer, and
/// `dst` must not overlap the other two.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        1,
        dst.1 as isize,
        false,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        0.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

impl SelfAttention {
    /// `qkv`: `tokens × 3·hidden` (queries, keys, values side by side; head j owns columns
    /// j·d .. (j+1)·d of each). Returns the context (`tokens × hidden`, heads merged) and the
    /// attention probabilities before dropout (`batch × heads × length × length`).
    pub fn forward(self, qkv: &Tensor) -> Result<(Tensor, Tensor)> {
        let (tokens, width) = qkv.dims2()?;
        let hidden = width / 3;
        let (batch, heads, length) = (self.batch, self.heads, self.length);
        let stacked = qkv.contiguous()?.apply_op1(self)?;
        let context = stacked.narrow(0, 0, tokens * hidden)?.reshape((tokens, hidden))?;
        let probs = stacked
            .narrow(0, tokens * hidden, batch * heads * length * length)?
            .reshape((batch, heads, length, length))?;
        Ok((context, probs))
    }

    fn geometry(&self, layout: &Layout) -> Result<(usize, usize)> {
        let &[tokens, width] = layout.dims() else { candle_core::bail!("attention: expected tokens × 3·hidden") };
        let hidden = width / 3;
        if tokens != self.batch * self.length || width % 3 != 0 || hidden % self.heads != 0 {
            candle_core::bail!(
                "attention: {:?} does not fit {} sequences of {} tokens and {} heads",
                layout.dims(),
                self.batch,
                self.length,
                self.heads
            )
        }
        Ok((hidden, hidden / self.heads))
    }

    /// Task `task`'s probabilities after dropout: the weights the context is made of.
    fn dropped<'a>(&self, probs: &'a [f32], task: usize, block: usize) -> Cow<'a, [f32]> {
        match &self.dropout {
            Some(mask) => {
                Cow::Owned(probs.iter().zip(&mask[task * block..(task + 1) * block]).map(|(p, m)| p * m).collect())
            }
            None => Cow::Borrowed(probs),
        }
    }

    fn scale(head_dim: usize) -> f32 {
        1.0 / (head_dim as f32).sqrt()
    }
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "self-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (hidden, head_dim) = self.geometry(layout)?;
        let qkv = contiguous_f32(storage, layout, "attention: the projections")?;
        let (length, heads) = (self.length, self.heads);
        let tokens = self.batch * length;
        let block = length * length;
        let mut out = vec![0f32; tokens * hidden + self.batch * heads * block];
        let (context, probs) = out.split_at_mut(tokens * hidden);
        let context = Shared(context.as_mut_ptr());
        let scale = Self::scale(head_dim);
        probs.par_chunks_mut(block).enumerate().for_each(|(task, p)| {
            let (sequence, head) = (task / heads, task % heads);
            let q = qkv[sequence * length * 3 * hidden + head * head_dim..].as_ptr();
            // SAFETY: q, k, v rows are 3·hidden apart and `head_dim` wide inside `qkv`; `p` is
            // this task's length × length block; the context block is rows of `sequence`,
            // columns of `head`, which no other task writes.
            unsafe {
                product(
                    length,
                    length,
                    head_dim,
                    (p.as_mut_ptr(), length),
                    (q, 3 * hidden, 1),
                    (q.add(hidden), 1, 3 * hidden),
                    scale,
                );
            }
            let bias = &self.key_bias[sequence * length..(sequence + 1) * length];
            fastmath::vectorised(|| p.chunks_exact_mut(length).for_each(|row| softmax_row(row, bias)));
            let weights = self.dropped(p, task, block);
            // SAFETY: as above; `weights` is this task's length × length block.
            unsafe {
                let dst = context.at(sequence * length * hidden + head * head_dim);
                product(
                    length,
                    head_dim,
                    length,
                    (dst, hidden),
                    (weights.as_ptr(), length, 1),
                    (q.add(2 * hidden), 3 * hidden, 1),
                    1.0,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(tokens * hidden + self.batch * heads * block)))
    }

    fn bwd(&self, qkv: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op3_no_bwd(res, &grad_res.contiguous()?, &AttentionGrad(self.clone()))?))
    }
}

/// In place: softmax(row + bias). Separate passes, so the exponentials vectorise.
#[inline(always)]
fn softmax_row(row: &mut [f32], bias: &[f32]) {
    row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    row.iter_mut().for_each(|s| *s = fastmath::exp(*s - max));
    let inverse = 1.0 / row.iter().sum::<f32>();
    row.iter_mut().for_each(|s| *s *= inverse);
}

/// The gradient of the projections from the gradients of the context and the probabilities.
struct AttentionGrad(SelfAttention);

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "self-attention-grad"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let attention = &self.0;
        let (hidden, head_dim) = attention.geometry(ql)?;
        let qkv = contiguous_f32(qs, ql, "attention grad: the projections")?;
        let res = contiguous_f32(rs, rl, "attention grad: the output")?;
        let grad = contiguous_f32(gs, gl, "attention grad: the gradient")?;
        let (length, heads) = (attention.length, attention.heads);
        let tokens = attention.batch * length;
        let block = length * length;
        let (probs, grad_context, grad_probs) =
            (&res[tokens * hidden..], &grad[..tokens * hidden], &grad[tokens * hidden..]);
        let mut out = vec![0f32; tokens * 3 * hidden];
        let grad_qkv = Shared(out.as_mut_ptr());
        let scale = SelfAttention::scale(head_dim);
        (0..attention.batch * heads).into_par_iter().for_each(|task| {
            let (sequence, head) = (task / heads, task % heads);
            let p = &probs[task * block..(task + 1) * block];
            let mask = attention.dropout.as_ref().map(|m| &m[task * block..(task + 1) * block]);
            let weights = attention.dropped(p, task, block);
            let q = qkv[sequence * length * 3 * hidden + head * head_dim..].as_ptr();
            let dc = grad_context[sequence * length * hidden + head * head_dim..].as_ptr();
            let mut dp = vec![0f32; block];
            // SAFETY: as in the forward; the three destination blocks (rows of `sequence`,
            // columns of `head` in the query, key and value thirds) belong to this task only.
            unsafe {
                let dq = grad_qkv.at(sequence * length * 3 * hidden + head * head_dim);
                // dV = weightsᵀ · dC; d(weights) = dC · Vᵀ
                product(
                    length,
                    head_dim,
                    length,
                    (dq.add(2 * hidden), 3 * hidden),
                    (weights.as_ptr(), 1, length),
                    (dc, hidden, 1),
                    1.0,
                );
                product(
                    length,
                    length,
                    head_dim,
                    (dp.as_mut_ptr(), length),
                    (dc, hidden, 1),
                    (q.add(2 * hidden), 1, 3 * hidden),
                    1.0,
                );
            }
            let direct = &grad_probs[task * block..(task + 1) * block];
            fastmath::vectorised(|| {
                for (i, row) in dp.chunks_exact_mut(length).enumerate() {
                    let range = i * length..(i + 1) * length;
                    let p = &p[range.clone()];
                    if let Some(mask) = mask {
                        row.iter_mut().zip(&mask[range.clone()]).for_each(|(d, m)| *d *= m);
                    }
                    row.iter_mut().zip(&direct[range]).for_each(|(d, g)| *d += g);
                    // softmax: dS = P ⊙ (dP − Σ dP ⊙ P), times the score scale.
                    let dot: f32 = row.iter().zip(p).map(|(d, p)| d * p).sum();
                    row.iter_mut().zip(p).for_each(|(d, p)| *d = p * (*d - dot) * scale);
                }
            });
            // SAFETY: as above; `dp` now holds this task's dS block.
            unsafe {
                let dq = grad_qkv.at(sequence * length * 3 * hidden + head * head_dim);
                // dQ = dS · K; dK = dSᵀ · Q
                product(
                    length,
                    head_dim,
                    length,
                    (dq, 3 * hidden),
                    (dp.as_ptr(), length, 1),
                    (q.add(hidden), 3 * hidden, 1),
                    1.0,
                );
                product(
                    length,
                    head_dim,
                    length,
                    (dq.add(hidden), 3 * hidden),
                    (dp.as_ptr(), 1, length),
                    (q, 3 * hidden, 1),
                    1.0,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, 3 * hidden))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::engine::rng::dropout_multipliers;
    use crate::engine::rng::Rng;

    /// The same attention composed of candle's ops, as `bert::forward` runs it unfused.
    fn composed(qkv: &Tensor, attention: &SelfAttention) -> (Tensor, Tensor) {
        let (batch, length, heads) = (attention.batch, attention.length, attention.heads);
        let hidden = qkv.dim(1).unwrap() / 3;
        let head_dim = hidden / heads;
        let split = |i: usize| {
            qkv.narrow(1, i * hidden, hidden)
                .unwrap()
                .reshape((batch, length, heads, head_dim))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let bias = Tensor::from_slice(&attention.key_bias, (batch, 1, 1, length), &Device::Cpu).unwrap();
        let scores =
            (q.matmul(&k.t().unwrap()).unwrap() / (head_dim as f64).sqrt()).unwrap().broadcast_add(&bias).unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let weights = match &attention.dropout {
            Some(mask) => probs.mul(&Tensor::from_slice(mask, probs.shape(), &Device::Cpu).unwrap()).unwrap(),
            None => probs.clone(),
        };
        let context = weights.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((batch * length, hidden)).unwrap();
        (context, probs)
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_the_composed_attention_with_padding_and_dropout_gradients_included() {
        let (batch, length, heads, hidden) = (3, 7, 2, 8);
        let mut rng = Rng::new(11);
        let values: Vec<f32> = (0..batch * length * 3 * hidden).map(|_| rng.normal(1.0)).collect();
        let qkv = Var::from_vec(values, (batch * length, 3 * hidden), &Device::Cpu).unwrap();
        // Sequence 1 has three padding tokens, sequence 2 one.
        let key_bias: Vec<f32> = (0..batch * length)
            .map(|i| if (i / length == 1 && i % length >= 4) || i == 2 * length + 6 { -1e9 } else { 0.0 })
            .collect();
        for dropout in [None, Some(dropout_multipliers(batch * heads * length * length, 0.3, &mut rng).into())] {
            let attention = SelfAttention { batch, length, heads, key_bias: key_bias.clone().into(), dropout };
            let (context, probs) = attention.clone().forward(qkv.as_tensor()).unwrap();
            let (want_context, want_probs) = composed(qkv.as_tensor(), &attention);
            assert!(largest_difference(&context, &want_context) < 1e-5);
            assert!(largest_difference(&probs, &want_probs) < 1e-6);
            // A loss that reads both outputs, so both gradients flow back.
            let context_weights = Tensor::from_vec(
                (0..context.elem_count()).map(|_| rng.normal(1.0)).collect::<Vec<f32>>(),
                context.shape(),
                &Device::Cpu,
            )
            .unwrap();
            let probs_weights = Tensor::from_vec(
                (0..probs.elem_count()).map(|_| rng.normal(1.0)).collect::<Vec<f32>>(),
                probs.shape(),
                &Device::Cpu,
            )
            .unwrap();
            let loss = |c: &Tensor, p: &Tensor| {
                (c.mul(&context_weights).unwrap().sum_all().unwrap()
                    + p.mul(&probs_weights).unwrap().sum_all().unwrap())
                .unwrap()
            };
            let ours = loss(&context, &probs).backward().unwrap();
            let want = loss(&want_context, &want_probs).backward().unwrap();
            let (ours, want) = (ours.get(qkv.as_tensor()).unwrap(), want.get(qkv.as_tensor()).unwrap());
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(scale > 0.0);
            assert!(
                largest_difference(ours, want) < 1e-5 * scale,
                "gradients differ by {}",
                largest_difference(ours, want)
            );
        }
    }
}
