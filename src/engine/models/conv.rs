//! The conv net: blocks of convolution, optional batch norm, ReLU and pooling on channels-last
//! maps, then an MLP head.

use candle_core::{Result, Tensor, D};

use super::mlp::Mlp;
use super::{next, Pass};
use crate::engine::data::ImageShape;
use crate::engine::kernels::conv::{conv2d, max_pool};
use crate::engine::kernels::norm::batch_norm_train;
use crate::spec::{ConvBlock, PoolKind};

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone)]
pub(super) struct ConvNet {
    pub blocks: Vec<ConvBlock>,
    pub image: ImageShape,
    pub head: Mlp,
}

impl ConvNet {
    pub fn forward<'t>(
        &self,
        x: &Tensor,
        params: &mut impl Iterator<Item = &'t Tensor>,
        buffers: &mut impl Iterator<Item = &'t Tensor>,
        pass: &mut Pass,
    ) -> Result<Tensor> {
        let (batch, image) = (x.dim(0)?, self.image);
        let mut h = x.reshape((batch, image.channels, image.height, image.width))?;
        h = if image.channels == 1 {
            h.reshape((batch, image.height, image.width, 1))?
        } else {
            h.permute((0, 2, 3, 1))?.contiguous()?
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let (weight, bias) = (next(params)?, next(params)?);
            h = if pass.kernels.fused {
                conv2d(&h, weight, bias, block.stride, block.padding, !block.batch_norm)?
            } else {
                let z = h.permute((0, 3, 1, 2))?.conv2d(weight, block.padding, block.stride, 1, 1)?;
                let z = z.broadcast_add(&bias.reshape((1, (), 1, 1))?)?.permute((0, 2, 3, 1))?;
                if block.batch_norm {
                    z
                } else {
                    z.relu()?
                }
            };
            if block.batch_norm {
                let (gamma, beta) = (next(params)?, next(params)?);
                let (mean, var) = (next(buffers)?, next(buffers)?);
                let (y, updated) = batch_norm(&h, gamma, beta, mean, var, pass.training, pass.kernels.fused)?;
                h = y.relu()?;
                pass.buffers.extend(updated);
            }
            h = pool(&h, block, pass.kernels.fused)?;
            pass.keep(format!("blocks.{i}"), &h);
        }
        let (fh, fw, fc) = self.head.flatten.expect("a conv net's head flattens its maps");
        self.head.forward(h.reshape((batch, fh * fw * fc))?, params, pass)
    }
}

/// Batch norm over the channels (last axis). Training normalises with the batch's statistics
/// and returns the running statistics moved towards them (PyTorch: momentum 0.1, unbiased
/// variance in the running estimate); evaluation uses the running statistics. `fused` trains
/// through `norm.rs`'s kernels; otherwise candle's ops, the reference they are tested against.
fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    training: bool,
    fused: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let channels = x.dim(D::Minus1)?;
    let shape = x.shape().clone();
    let rows = x.reshape(((), channels))?;
    if training && fused {
        let n = rows.dim(0)? as f64;
        let (y, mean, var) = batch_norm_train(&rows, gamma, beta, BN_EPS)?;
        let unbiased = (var * (n / (n - 1.0).max(1.0)))?;
        let new_mean = ((running_mean * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
        let new_var = ((running_var * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
        return Ok((y.reshape(shape)?, vec![new_mean, new_var]));
    }
    let (mean, var, updated) = if training {
        let n = rows.dim(0)? as f64;
        let mean = rows.mean(0)?;
        let centred = rows.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean(0)?;
        let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
        let new_mean = ((running_mean * (1.0 - BN_MOMENTUM))? + (mean.detach() * BN_MOMENTUM)?)?;
        let new_var = ((running_var * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
        (mean, var, vec![new_mean, new_var])
    } else {
        (running_mean.clone(), running_var.clone(), vec![running_mean.clone(), running_var.clone()])
    };
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let y = rows.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(beta)?;
    Ok((y.reshape(shape)?, updated))
}

/// Non-overlapping k×k pooling of an n × h × w × c map (PyTorch's default stride = kernel,
/// floor: trailing rows and columns that do not fill a window are dropped). Unfused, max
/// pooling is candle's reduction over reshaped windows, the reference for our kernel.
fn pool(x: &Tensor, block: &ConvBlock, fused: bool) -> Result<Tensor> {
    let Some(kind) = block.pool else { return Ok(x.clone()) };
    let k = block.pool_size;
    let (n, h, w, c) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let x = if oh * k != h || ow * k != w {
        x.narrow(1, 0, oh * k)?.narrow(2, 0, ow * k)?.contiguous()?
    } else {
        x.clone()
    };
    let windows = || x.reshape((n, oh, k, ow, k, c));
    match kind {
        PoolKind::Max if fused => max_pool(&x, k),
        PoolKind::Max => windows()?.max(4)?.max(2),
        PoolKind::Avg => windows()?.mean(4)?.mean(2),
    }
}
