//! The MLP: linear layers with ReLU between them and dropout after each hidden one; also the
//! head of a conv net, which it reads flattened in PyTorch's (c, h, w) order.

use candle_core::{Result, Tensor};

use super::{next, Pass};
use crate::engine::kernels::linear::Linear;
use crate::engine::rng::{dropout_multipliers, Rng};

#[derive(Debug, Clone)]
pub(super) struct Mlp {
    /// Linear layers, the classifier included.
    pub layers: usize,
    pub dropout: f32,
    /// For a conv net's head: the (h, w, c) maps it flattens.
    pub flatten: Option<(usize, usize, usize)>,
}

impl Mlp {
    pub fn forward<'t>(
        &self,
        mut h: Tensor,
        params: &mut impl Iterator<Item = &'t Tensor>,
        pass: &mut Pass,
    ) -> Result<Tensor> {
        for i in 0..self.layers {
            let (mut w, b) = (next(params)?.clone(), next(params)?);
            if let (0, Some((fh, fw, fc))) = (i, self.flatten) {
                // Exported weights read PyTorch's (c, h, w) flattening; the maps here are (h, w, c).
                let out = w.dim(0)?;
                w = w.reshape((out, fc, fh, fw))?.permute((0, 2, 3, 1))?.reshape((out, fh * fw * fc))?;
            }
            let hidden = i + 1 < self.layers;
            h = if pass.fused {
                Linear { relu: hidden, input_grad: h.track_op() }.forward(&h, &w, b)?
            } else {
                let z = h.matmul(&w.t()?)?.broadcast_add(b)?;
                if hidden {
                    z.relu()?
                } else {
                    z
                }
            };
            pass.keep(format!("layers.{i}"), &h);
            if let (Some(rng), true) = (pass.rng.as_deref_mut(), hidden && self.dropout > 0.0) {
                h = dropout_mask(&h, self.dropout, rng)?;
            }
        }
        Ok(h)
    }
}

fn dropout_mask(h: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    let mask = dropout_multipliers(h.elem_count(), p, rng);
    h.mul(&Tensor::from_vec(mask, h.shape(), h.device())?)
}
