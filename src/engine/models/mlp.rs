//! The MLP: linear layers with ReLU between them and dropout after each hidden one; also the
//! head of a conv net, which it reads flattened in PyTorch's (c, h, w) order.

use candle_core::{Result, Tensor};

use super::{next, Kernels, Pass};
use crate::engine::kernels::linear::{Activation, FrozenLinear, Linear};
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
            let (w, b) = (next(params)?, next(params)?);
            let hidden = i + 1 < self.layers;
            h = match pass.kernels.stored(w) {
                Some(w_t) => {
                    let activation = if hidden { Activation::Relu } else { Activation::Identity };
                    FrozenLinear { activation }.forward(&h, w_t, b)?
                }
                None => Self::layer(&h, &self.input_weight(i, w)?, b, hidden, pass.kernels)?,
            };
            pass.keep(format!("layers.{i}"), &h);
            if let (Some(rng), true) = (pass.rng.as_deref_mut(), hidden && self.dropout > 0.0) {
                h = dropout_mask(&h, self.dropout, rng)?;
            }
        }
        Ok(h)
    }

    /// One trainable (or unfused) layer: x·Wᵀ + b, with ReLU unless it is the classifier.
    fn layer(h: &Tensor, w: &Tensor, b: &Tensor, hidden: bool, kernels: Kernels) -> Result<Tensor> {
        if kernels.fused {
            return Linear { relu: hidden, input_grad: h.track_op(), handover: kernels.handover() }.forward(h, w, b);
        }
        let z = h.matmul(&w.t()?)?.broadcast_add(b)?;
        if hidden {
            z.relu()
        } else {
            Ok(z)
        }
    }

    /// Layer `i`'s weight in the order its input arrives: exported weights read PyTorch's
    /// (c, h, w) flattening of a conv net's maps, which are (h, w, c) here.
    pub fn input_weight(&self, i: usize, w: &Tensor) -> Result<Tensor> {
        match (i, self.flatten) {
            (0, Some((fh, fw, fc))) => {
                let out = w.dim(0)?;
                w.reshape((out, fc, fh, fw))?.permute((0, 2, 3, 1))?.reshape((out, fh * fw * fc))
            }
            _ => Ok(w.clone()),
        }
    }
}

fn dropout_mask(h: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    let mask = dropout_multipliers(h.elem_count(), p, rng);
    h.mul(&Tensor::from_vec(mask, h.shape(), h.device())?)
}
