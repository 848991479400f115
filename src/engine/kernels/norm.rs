//! Batch norm and (add +) layer norm for the CPU, each a pass or two over the map instead of a dozen.
//!
//! Built from candle's ops, batch norm over a 128 × 28 × 28 × 32 map took longer than the
//! convolution before it: each op is a full pass, and its reductions run along the slow axis.
//! Here one pass gathers the per-channel statistics, one normalises, and the backward is the
//! closed form (one pass for the two sums, one for the input gradient).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Arc;

use rayon::prelude::*;

use crate::engine::kernels::fastmath::vectorised;
use crate::engine::kernels::linear::contiguous_f32;

/// Per-channel mean and biased variance of a rows × channels matrix, accumulated in f64.
fn statistics(x: &[f32], channels: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (x.len() / channels).max(1) as f64;
    let (mut sum, mut squares) = (vec![0f64; channels], vec![0f64; channels]);
    for row in x.chunks_exact(channels) {
        for ((s, q), &v) in sum.iter_mut().zip(&mut squares).zip(row) {
            *s += v as f64;
            *q += v as f64 * v as f64;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / rows).collect();
    let var = squares.iter().zip(&mean).map(|(q, m)| (q / rows - m * m).max(0.0)).collect();
    (mean, var)
}

/// Per-channel mean and biased variance as a 2 × channels tensor, read in place.
struct Statistics;

impl CustomOp1 for Statistics {
    fn name(&self) -> &'static str {
        "batch-norm-statistics"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let channels = layout.dims()[1];
        let (mean, var) = statistics(contiguous_f32(storage, layout, "batch norm: the map")?, channels);
        let out = mean.into_iter().chain(var).map(|v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, channels))))
    }
}

/// y = (x − mean)·inv_std·γ + β, with the batch's statistics fixed at construction.
struct Normalize {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

/// The input, γ and β gradients of `Normalize` stacked as rows × c, then γ, then β.
struct NormalizeGrad {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (
            contiguous_f32(xs, xl, "batch norm: the map")?,
            contiguous_f32(gs, gl, "batch norm: the map")?,
            contiguous_f32(bs, bl, "batch norm: the map")?,
        );
        let c = gamma.len();
        let scale: Vec<f32> = gamma.iter().zip(&self.inv_std).map(|(g, s)| g * s).collect();
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks_exact(c) {
            y.extend(row.iter().enumerate().map(|(j, v)| (v - self.mean[j]) * scale[j] + beta[j]));
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = NormalizeGrad { mean: self.mean.clone(), inv_std: self.inv_std.clone() };
        let stacked = x.apply_op3_no_bwd(gamma, &grad_y.contiguous()?, &grad)?;
        let rows = x.dim(0)?;
        Ok((Some(stacked.narrow(0, 0, rows)?), Some(stacked.get(rows)?), Some(stacked.get(rows + 1)?)))
    }
}

impl CustomOp3 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "batch-norm-train-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, dy) = (
            contiguous_f32(xs, xl, "batch norm: the map")?,
            contiguous_f32(gs, gl, "batch norm: the map")?,
            contiguous_f32(ds, dl, "batch norm: the map")?,
        );
        let c = gamma.len();
        let rows = x.len() / c;
        // Σ dy and Σ dy·x̂ per channel: the β and γ gradients, and the two corrections of dx.
        let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; c], vec![0f64; c]);
        for (row, grad) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
            for j in 0..c {
                let xhat = (row[j] - self.mean[j]) * self.inv_std[j];
                sum_dy[j] += grad[j] as f64;
                sum_dy_xhat[j] += (grad[j] * xhat) as f64;
            }
        }
        let n = rows as f64;
        let mean_dy: Vec<f32> = sum_dy.iter().map(|s| (s / n) as f32).collect();
        let mean_dy_xhat: Vec<f32> = sum_dy_xhat.iter().map(|s| (s / n) as f32).collect();
        let scale: Vec<f32> = gamma.iter().zip(&self.inv_std).map(|(g, s)| g * s).collect();
        let mut out = Vec::with_capacity(x.len() + 2 * c);
        for (row, grad) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
            out.extend((0..c).map(|j| {
                let xhat = (row[j] - self.mean[j]) * self.inv_std[j];
                scale[j] * (grad[j] - mean_dy[j] - xhat * mean_dy_xhat[j])
            }));
        }
        out.extend(sum_dy_xhat.iter().map(|&s| s as f32));
        out.extend(sum_dy.iter().map(|&s| s as f32));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
    }
}

/// Normalises `x` (rows × channels, contiguous f32 on the CPU) with its own batch statistics,
/// scaled by `gamma` and shifted by `beta`. Also returns the batch mean and biased variance,
/// for the running estimates.
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&Statistics)?;
    let (mean, var) = (stats.get(0)?, stats.get(1)?);
    let inv_std = var.to_vec1::<f32>()?.iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect();
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, Normalize { mean: mean.to_vec1()?, inv_std })?;
    Ok((y, mean, var))
}

/// Rows per parallel task in the layer-norm passes.
const ROWS_PER_TASK: usize = 32;

/// LayerNorm(x ⊙ dropout + residual) over the last axis: a transformer sublayer's output, its
/// dropout, the residual connection and the norm as one op, one pass forward and one backward
/// (rows in parallel). Composed of candle's ops this was ten passes with fresh outputs, and
/// twice that backward. `dropout`: multipliers (0 or 1/(1 − p)) for `x`, one per element.
pub fn add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let width = gamma.elem_count();
    let (x, residual) = (x.reshape(((), width))?.contiguous()?, residual.reshape(((), width))?.contiguous()?);
    let affine = Tensor::cat(&[gamma, beta], 0)?;
    let op = AddLayerNorm { eps: eps as f32, dropout: dropout.map(Arc::from) };
    x.apply_op3(&residual, &affine, op)?.reshape(dims)
}

struct AddLayerNorm {
    eps: f32,
    dropout: Option<Arc<[f32]>>,
}

/// One row of x ⊙ dropout + residual.
#[inline(always)]
fn row_sum(x: &[f32], residual: &[f32], dropout: Option<&[f32]>, out: &mut [f32]) {
    match dropout {
        Some(mask) => out.iter_mut().zip(x).zip(residual).zip(mask).for_each(|(((o, x), r), m)| *o = x * m + r),
        None => out.iter_mut().zip(x).zip(residual).for_each(|((o, x), r)| *o = x + r),
    }
}

/// The mean and 1/√(variance + ε) of one row.
#[inline(always)]
fn row_statistics(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// The dropout multipliers of parallel task `task`'s rows (`chunk` values a task).
fn task_mask(dropout: &Option<Arc<[f32]>>, task: usize, chunk: usize) -> Option<&[f32]> {
    dropout.as_deref().map(|m| &m[task * chunk..((task + 1) * chunk).min(m.len())])
}

impl CustomOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "layer norm: the input")?;
        let residual = contiguous_f32(rs, rl, "layer norm: the residual")?;
        let affine = contiguous_f32(a_s, al, "layer norm: the weight and bias")?;
        let width = affine.len() / 2;
        let (gamma, beta) = affine.split_at(width);
        let chunk = width * ROWS_PER_TASK;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).zip(residual.par_chunks(chunk)).enumerate().for_each(
            |(task, ((y, x), residual))| {
                let mask = task_mask(&self.dropout, task, chunk);
                vectorised(|| {
                    for (row, y) in y.chunks_exact_mut(width).enumerate() {
                        let range = row * width..(row + 1) * width;
                        row_sum(&x[range.clone()], &residual[range.clone()], mask.map(|m| &m[range]), y);
                        let (mean, inv_std) = row_statistics(y, self.eps);
                        for ((y, g), b) in y.iter_mut().zip(gamma).zip(beta) {
                            *y = (*y - mean) * inv_std * g + b;
                        }
                    }
                })
            },
        );
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        affine: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, width) = x.dims2()?;
        let grad = AddLayerNormGrad {
            eps: self.eps,
            dropout: self.dropout.clone(),
            gamma: affine.narrow(0, 0, width)?.to_vec1()?,
        };
        let stacked = x.apply_op3_no_bwd(residual, &grad_y.contiguous()?, &grad)?;
        let grad_sum = stacked.narrow(0, 0, rows)?;
        let grad_x = match self.dropout {
            Some(_) => stacked.narrow(0, rows, rows)?,
            None => grad_sum.clone(),
        };
        let grad_affine = stacked.narrow(0, stacked.dim(0)? - 2, 2)?.flatten_all()?;
        Ok((Some(grad_x), Some(grad_sum), Some(grad_affine)))
    }
}

/// The gradients of `AddLayerNorm` stacked as rows × width: the sum's (the residual's), with
/// dropout the input's, then γ's and β's rows.
struct AddLayerNormGrad {
    eps: f32,
    dropout: Option<Arc<[f32]>>,
    gamma: Vec<f32>,
}

impl CustomOp3 for AddLayerNormGrad {
    fn name(&self) -> &'static str {
        "add-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "layer norm grad: the input")?;
        let residual = contiguous_f32(rs, rl, "layer norm grad: the residual")?;
        let dy = contiguous_f32(ds, dl, "layer norm grad: the gradient")?;
        let (gamma, width) = (&self.gamma, self.gamma.len());
        let rows = x.len() / width;
        let masked_rows = if self.dropout.is_some() { rows } else { 0 };
        let mut out = vec![0f32; (rows + masked_rows + 2) * width];
        let (grad_sum, rest) = out.split_at_mut(x.len());
        let (grad_x, parameter_grads) = rest.split_at_mut(masked_rows * width);
        let chunk = width * ROWS_PER_TASK;
        // Per task: the rows' gradients, and partial sums of dy·x̂ (γ) and dy (β).
        let sums = grad_sum
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(residual.par_chunks(chunk))
            .zip(dy.par_chunks(chunk))
            .enumerate()
            .map(|(task, (((grad_sum, x), residual), dy))| {
                let mask = task_mask(&self.dropout, task, chunk);
                let mut sums = vec![0f32; 2 * width];
                let mut xhat = vec![0f32; width];
                vectorised(|| {
                    for (row, grad_sum) in grad_sum.chunks_exact_mut(width).enumerate() {
                        let range = row * width..(row + 1) * width;
                        let dy = &dy[range.clone()];
                        row_sum(&x[range.clone()], &residual[range.clone()], mask.map(|m| &m[range]), &mut xhat);
                        let (mean, inv_std) = row_statistics(&xhat, self.eps);
                        let (mut mean_g, mut mean_g_xhat) = (0f32, 0f32);
                        for (j, h) in xhat.iter_mut().enumerate() {
                            *h = (*h - mean) * inv_std;
                            let g = dy[j] * gamma[j];
                            mean_g += g;
                            mean_g_xhat += g * *h;
                            sums[j] += dy[j] * *h;
                            sums[width + j] += dy[j];
                        }
                        mean_g /= width as f32;
                        mean_g_xhat /= width as f32;
                        for (j, d) in grad_sum.iter_mut().enumerate() {
                            *d = inv_std * (dy[j] * gamma[j] - mean_g - xhat[j] * mean_g_xhat);
                        }
                    }
                });
                sums
            })
            .reduce(
                || vec![0f32; 2 * width],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        if let Some(mask) = &self.dropout {
            grad_x.par_chunks_mut(chunk).zip(grad_sum.par_chunks(chunk)).zip(mask.par_chunks(chunk)).for_each(
                |((gx, gs), m)| {
                    gx.iter_mut().zip(gs).zip(m).for_each(|((gx, gs), m)| *gx = gs * m);
                },
            );
        }
        parameter_grads.copy_from_slice(&sums);
        Ok((CpuStorage::F32(out), Shape::from((rows + masked_rows + 2, width))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::engine::rng::dropout_multipliers;
    use crate::engine::rng::Rng;

    #[test]
    fn add_layer_norm_matches_the_composed_one_and_its_gradients() {
        let mut rng = Rng::new(5);
        let (rows, width) = (70, 12);
        let mut random = |n: usize, shift: f32| -> Var {
            Var::from_vec((0..n).map(|_| rng.normal(1.0) + shift).collect(), (n / width, width), &Device::Cpu).unwrap()
        };
        let (x, residual) = (random(rows * width, 3.0), random(rows * width, -1.0));
        let (gamma, beta) = (random(width, 1.0), random(width, 0.0));
        let (gamma_row, beta_row) = (gamma.as_tensor().flatten_all().unwrap(), beta.as_tensor().flatten_all().unwrap());
        let mask = dropout_multipliers(rows * width, 0.25, &mut Rng::new(8));
        for dropout in [None, Some(mask)] {
            let ours = add_layer_norm(&x, &residual, &gamma_row, &beta_row, 1e-5, dropout.clone()).unwrap();
            let dropped = match &dropout {
                Some(m) => x.as_tensor().mul(&Tensor::from_slice(m, (rows, width), &Device::Cpu).unwrap()).unwrap(),
                None => x.as_tensor().clone(),
            };
            let sum = (dropped + residual.as_tensor()).unwrap();
            let mean = sum.mean_keepdim(D::Minus1).unwrap();
            let centred = sum.broadcast_sub(&mean).unwrap();
            let variance = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let want = centred
                .broadcast_div(&(variance + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&gamma_row)
                .unwrap()
                .broadcast_add(&beta_row)
                .unwrap();
            let difference =
                |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(difference(&ours, &want) < 1e-5);
            let weights = Tensor::from_vec(
                (0..rows * width).map(|i| ((i * 7) % 11) as f32 - 5.0).collect::<Vec<f32>>(),
                (rows, width),
                &Device::Cpu,
            )
            .unwrap();
            let ours = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let want = want.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&x, &residual, &gamma, &beta] {
                let (a, b) = (ours.get(var.as_tensor()).unwrap(), want.get(var.as_tensor()).unwrap());
                assert!(difference(a, b) < 1e-4, "gradients differ by {}", difference(a, b));
            }
        }
    }
}
