//! Training-mode batch norm for the CPU as two passes over the map instead of a dozen.
//!
//! Built from candle's ops, batch norm over a 128 × 28 × 28 × 32 map took longer than the
//! convolution before it: each op is a full pass, and its reductions run along the slow axis.
//! Here one pass gathers the per-channel statistics, one normalises, and the backward is the
//! closed form (one pass for the two sums, one for the input gradient).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::linear::contiguous_f32;

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

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (contiguous_f32(xs, xl, "batch norm: the map")?, contiguous_f32(gs, gl, "batch norm: the map")?, contiguous_f32(bs, bl, "batch norm: the map")?);
        let c = gamma.len();
        let scale: Vec<f32> = gamma.iter().zip(&self.inv_std).map(|(g, s)| g * s).collect();
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks_exact(c) {
            y.extend(row.iter().enumerate().map(|(j, v)| (v - self.mean[j]) * scale[j] + beta[j]));
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
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

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, dy) = (contiguous_f32(xs, xl, "batch norm: the map")?, contiguous_f32(gs, gl, "batch norm: the map")?, contiguous_f32(ds, dl, "batch norm: the map")?);
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
