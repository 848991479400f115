//! gelu(x·Wᵀ + b), exact (erf) GELU, as one op for the CPU: the fused linear's forward with the
//! activation applied in a second pass, and a backward that turns the gradient into the
//! pre-activation's in one pass before the linear's own gradients.
//!
//! As candle's ops (`gelu_erf` after the linear) the activation was a node of its own: libm's
//! `erff` per element, ten tensor ops in its backward, and candle's gradient store zero-filling
//! and adding a `tokens × intermediate` gradient once more. Here Φ(x) comes from Abramowitz &
//! Stegun 7.1.26 (absolute error below 1.5·10⁻⁷) in plain arithmetic that vectorises, and its
//! e^(−x²/2) also gives the density the backward needs.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::engine::kernels::fastmath::{self, vectorised};
use crate::engine::kernels::handover::WeightGrads;
use crate::engine::kernels::linear::{affine, contiguous_f32, hand_over, weight_and_bias_grads};

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// gelu(x·Wᵀ + b) for `x` batch × in, `weight` out × in (PyTorch's layout), `bias` out; the
/// weight and bias gradients go to `handover` where one is given.
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor, handover: Option<WeightGrads>) -> Result<Tensor> {
    let op = LinearGelu { input_grad: x.track_op(), pre_activation: OnceLock::new(), handover };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// z·Φ(z) for each value of `z`.
pub(crate) fn gelu(z: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; z.len()];
    y.par_chunks_mut(CHUNK).zip(z.par_chunks(CHUNK)).for_each(|(y, z)| {
        vectorised(|| {
            for (y, &z) in y.iter_mut().zip(z) {
                *y = z * normal_cdf_pdf(z).0;
            }
        })
    });
    y
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

struct LinearGelu {
    /// Compute the gradient for the input; false where the input is data.
    input_grad: bool,
    /// x·Wᵀ + b, kept from the forward for the backward. (An op that records no graph is
    /// dropped after its forward, and this with it.)
    pre_activation: OnceLock<Vec<f32>>,
    handover: Option<WeightGrads>,
}

impl CustomOp3 for LinearGelu {
    fn name(&self) -> &'static str {
        "fused-linear-gelu"
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
        let (z, shape) = affine(xs, xl, ws, wl, bs, bl)?;
        let y = gelu(&z);
        if self.pre_activation.set(z).is_err() {
            candle_core::bail!("fused linear gelu: an op instance runs its forward once")
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(z) = self.pre_activation.get() else {
            candle_core::bail!("fused linear gelu: backward before forward")
        };
        let grad_z = grad_y.contiguous()?.apply_op1_no_bwd(&GeluGrad { pre_activation: z })?;
        let (grad_weight, grad_bias) = weight_and_bias_grads(x, &grad_z)?;
        let grad_x = match self.input_grad {
            true => Some(grad_z.matmul(weight)?),
            false => None,
        };
        Ok((grad_x, hand_over(&self.handover, weight, grad_weight), hand_over(&self.handover, bias, grad_bias)))
    }
}

/// dz = dy · (Φ(z) + z·φ(z)), from the gradient of gelu(z) read in place.
struct GeluGrad<'a> {
    pre_activation: &'a [f32],
}

impl CustomOp1 for GeluGrad<'_> {
    fn name(&self) -> &'static str {
        "gelu-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad_y = contiguous_f32(storage, layout, "gelu grad: the gradient")?;
        let mut grad_z = vec![0f32; grad_y.len()];
        grad_z.par_chunks_mut(CHUNK).zip(self.pre_activation.par_chunks(CHUNK)).zip(grad_y.par_chunks(CHUNK)).for_each(
            |((dz, z), dy)| {
                vectorised(|| {
                    for ((dz, &z), &dy) in dz.iter_mut().zip(z).zip(dy) {
                        let (cdf, pdf) = normal_cdf_pdf(z);
                        *dz = dy * (cdf + z * pdf);
                    }
                })
            },
        );
        Ok((CpuStorage::F32(grad_z), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn matches_candles_linear_and_exact_gelu_with_their_gradients() {
        let mut rng = crate::engine::rng::Rng::new(3);
        let mut random = |shape: &[usize], std: f32| {
            Var::from_vec((0..shape.iter().product()).map(|_| rng.normal(std)).collect(), shape, &Device::Cpu).unwrap()
        };
        // Pre-activations spread over (−8, 8), where both tails and the bend show.
        let (x, weight, bias) = (random(&[40, 7], 1.0), random(&[9, 7], 1.2), random(&[9], 1.0));
        let ours = linear_gelu(&x, &weight, &bias, None).unwrap();
        let reference = x.matmul(&weight.t().unwrap()).unwrap().broadcast_add(&bias).unwrap().gelu_erf().unwrap();
        let difference =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(difference(&ours, &reference) < 1e-5, "forward differs by {}", difference(&ours, &reference));
        let weights =
            Tensor::from_vec((0..360).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(), (40, 9), &Device::Cpu)
                .unwrap();
        let ours = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let reference = reference.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [x.as_tensor(), weight.as_tensor(), bias.as_tensor()] {
            let (a, b) = (ours.get(var).unwrap(), reference.get(var).unwrap());
            assert!(difference(a, b) < 1e-4, "gradient differs by {}", difference(a, b));
        }
    }

    #[test]
    fn the_left_tail_keeps_its_relative_precision() {
        // Φ(−5) = 2.8665·10⁻⁷: 1 + erf(−5/√2) in f32 keeps about one digit of it.
        let (cdf, _) = normal_cdf_pdf(-5.0);
        assert!((cdf / 2.866_515_7e-7 - 1.0).abs() < 2e-3, "Φ(−5) = {cdf}");
    }
}
