//! Exact (erf) GELU for the CPU as one pass forward and one backward.
//!
//! candle's `gelu_erf` calls libm's `erff` per element and its backward is ten tensor ops, each
//! a full pass over the `tokens × intermediate` map with a fresh output. Here Φ(x) comes from
//! Abramowitz & Stegun 7.1.26 (absolute error below 1.5·10⁻⁷) in plain arithmetic that
//! vectorises, and its e^(−x²/2) also gives the density the backward needs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{self, vectorised};
use super::linear::contiguous_f32;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// x·Φ(x), Φ the standard normal distribution function.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Φ(x) and the density φ(x).
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let gaussian = fastmath::exp(-z * z);
    // Half of erfc(z), computed directly: the left tail keeps its relative precision (0.2% at
    // x = −5) where 1 + erf would cancel.
    let tail = 0.5 * t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4])))) * gaussian;
    let cdf = if x >= 0.0 { 1.0 - tail } else { tail };
    (cdf, gaussian * 0.398_942_3)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "gelu: the input")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            vectorised(|| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * normal_cdf_pdf(x).0;
                }
            })
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad_y.contiguous()?, &GeluGrad)?))
    }
}

/// dy · (Φ(x) + x·φ(x)).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "gelu grad: the input")?;
        let dy = contiguous_f32(gs, gl, "gelu grad: the gradient")?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(|((dx, x), dy)| {
            vectorised(|| {
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let (cdf, pdf) = normal_cdf_pdf(x);
                    *dx = dy * (cdf + x * pdf);
                }
            })
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn inputs() -> Vec<f32> {
        (-800..=800).map(|i| i as f32 / 100.0).collect()
    }

    #[test]
    fn matches_candles_exact_gelu_and_its_gradient() {
        let x = Var::from_vec(inputs(), 1601, &Device::Cpu).unwrap();
        let ours = gelu_erf(x.as_tensor()).unwrap();
        let reference = x.as_tensor().gelu_erf().unwrap();
        let difference = (&ours - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(difference < 1e-6, "forward differs by {difference}");
        let weights = Tensor::from_vec((0..1601).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(), 1601, &Device::Cpu).unwrap();
        let ours = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let reference = reference.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (ours, reference) = (ours.get(x.as_tensor()).unwrap(), reference.get(x.as_tensor()).unwrap());
        let difference = (ours - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(difference < 1e-5, "gradient differs by {difference}");
    }

    #[test]
    fn the_left_tail_keeps_its_relative_precision() {
        // Φ(−5) = 2.8665·10⁻⁷: 1 + erf(−5/√2) in f32 keeps about one digit of it.
        let (cdf, _) = normal_cdf_pdf(-5.0);
        assert!((cdf / 2.866_515_7e-7 - 1.0).abs() < 2e-3, "Φ(−5) = {cdf}");
    }
}
