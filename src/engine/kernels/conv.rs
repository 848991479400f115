//! Convolution for the CPU as im2col + the fused linear kernel, on channels-last (NHWC) maps.
//!
//! candle's own conv2d backward computes the kernel gradient in a direct loop (what that cost is
//! in benches/RESULTS.md); as im2col the convolution is a single matrix product each way, run by
//! the same gemm as the linear layers. Channels-last keeps the product's output already in the layout the next
//! block reads, so no transposes run between layers.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::engine::kernels::linear::{contiguous_f32, Linear};

/// Geometry of one convolution over an `n × h × w × c` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn columns(&self) -> usize {
        self.kernel * self.kernel * self.c
    }

    /// The kernel offsets that land inside an input axis of `size` pixels for output coordinate
    /// `o`, as a range. Consecutive offsets read consecutive input pixels (the stride applies to
    /// `o` only), so a kernel row inside the image is one contiguous span of its row.
    fn inside(&self, o: usize, size: usize) -> std::ops::Range<usize> {
        let origin = o * self.stride;
        let start = self.padding.saturating_sub(origin);
        let end = (size + self.padding).saturating_sub(origin).min(self.kernel);
        start..end.max(start)
    }

    /// For each kernel row inside the image at output pixel (oy, ox): the offset of its span in
    /// an im2col row, the offset in the image, and the span's length (in values).
    fn spans(&self, oy: usize, ox: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let columns = self.inside(ox, self.w);
        let len = columns.len() * self.c;
        self.inside(oy, self.h).filter(move |_| len > 0).map(move |ky| {
            let (y, x) = (oy * self.stride + ky - self.padding, ox * self.stride + columns.start - self.padding);
            ((ky * self.kernel + columns.start) * self.c, (y * self.w + x) * self.c, len)
        })
    }
}

/// `x` (n·h·w·c, channels last) → rows (n·oh·ow) × columns (ky, kx, c).
struct Im2col(Window);

/// The adjoint of `Im2col`: sums each column entry back onto the input pixel it came from.
struct Col2im(Window);

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(storage, layout, "conv: the map")?;
        let (oh, ow, cols) = (g.out_h(), g.out_w(), g.columns());
        let mut out = vec![0f32; g.n * oh * ow * cols];
        out.par_chunks_mut(oh * ow * cols).enumerate().for_each(|(n, image_rows)| {
            let image = &x[n * g.h * g.w * g.c..(n + 1) * g.h * g.w * g.c];
            for (r, row) in image_rows.chunks_exact_mut(cols).enumerate() {
                for (at, from, len) in g.spans(r / ow, r % ow) {
                    row[at..at + len].copy_from_slice(&image[from..from + len]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n * oh * ow, cols))))
    }

    fn bwd(&self, _x: &Tensor, _cols: &Tensor, grad_cols: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_cols.contiguous()?.apply_op1_no_bwd(&Col2im(self.0))?))
    }
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = contiguous_f32(storage, layout, "conv: the map")?;
        let (oh, ow, width) = (g.out_h(), g.out_w(), g.columns());
        let mut out = vec![0f32; g.n * g.h * g.w * g.c];
        out.par_chunks_mut(g.h * g.w * g.c).enumerate().for_each(|(n, image)| {
            let rows = &cols[n * oh * ow * width..(n + 1) * oh * ow * width];
            for (r, row) in rows.chunks_exact(width).enumerate() {
                for (at, to, len) in g.spans(r / ow, r % ow) {
                    image[to..to + len].iter_mut().zip(&row[at..at + len]).for_each(|(o, v)| *o += v);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.h, g.w, g.c))))
    }
}

/// Convolution of `x` (n × h × w × c) with `weight` (out × c × k × k, PyTorch's layout) plus
/// `bias`, optionally followed by ReLU; returns n × oh × ow × out.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: usize, relu: bool) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (out, _, kernel, _) = weight.dims4()?;
    let g = Window { n, h, w, c, kernel, stride, padding };
    // Columns run (ky, kx, c), so the weight is read in (out, ky, kx, c) order.
    let weight_rows = weight.permute((0, 2, 3, 1))?.reshape((out, kernel * kernel * c))?;
    let y = if matches!(x.device(), candle_core::Device::Cpu) {
        let cols = x.contiguous()?.apply_op1(Im2col(g))?;
        Linear { relu, input_grad: x.track_op(), handover: None }.forward(&cols, &weight_rows, bias)?
    } else {
        let nchw = x.permute((0, 3, 1, 2))?.conv2d(weight, padding, stride, 1, 1)?;
        let z = nchw.permute((0, 2, 3, 1))?.reshape((n * g.out_h() * g.out_w(), out))?.broadcast_add(bias)?;
        if relu {
            z.relu()?
        } else {
            z
        }
    };
    y.reshape((n, g.out_h(), g.out_w(), out))
}

/// Non-overlapping k×k max pooling of an n × h × w × c map whose h and w are multiples of k.
/// candle's version (a reshape and two reductions) spent ~60 ms of backward per 128-image batch
/// on a 28×28×32 map here: its gradient is a broadcast, a comparison, a cast and a product
/// over the whole input.
struct MaxPool(usize);

/// The pooling gradient: each window's gradient goes to its (first) largest input.
struct MaxPoolGrad(usize);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = self.0;
        let x = contiguous_f32(storage, layout, "conv: the map")?;
        let &[n, h, w, c] = layout.dims() else { candle_core::bail!("max pool: expected n × h × w × c") };
        let (oh, ow) = (h / k, w / k);
        let mut out = vec![f32::NEG_INFINITY; n * oh * ow * c];
        out.par_chunks_mut(oh * ow * c).enumerate().for_each(|(i, pooled)| {
            let image = &x[i * h * w * c..(i + 1) * h * w * c];
            for y in 0..oh * k {
                for xx in 0..ow * k {
                    let from = &image[(y * w + xx) * c..(y * w + xx + 1) * c];
                    let to = &mut pooled[((y / k) * ow + xx / k) * c..((y / k) * ow + xx / k + 1) * c];
                    for (o, v) in to.iter_mut().zip(from) {
                        *o = o.max(*v);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(y, &grad_y.contiguous()?, &MaxPoolGrad(self.0))?))
    }
}

impl CustomOp3 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-nhwc-grad"
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
        let k = self.0;
        let (x, y, g) = (
            contiguous_f32(xs, xl, "conv: the map")?,
            contiguous_f32(ys, yl, "conv: the map")?,
            contiguous_f32(gs, gl, "conv: the map")?,
        );
        let &[n, h, w, c] = xl.dims() else { candle_core::bail!("max pool: expected n × h × w × c") };
        let (oh, ow) = (h / k, w / k);
        let mut out = vec![0f32; n * h * w * c];
        out.par_chunks_mut(h * w * c).enumerate().for_each(|(i, grad_image)| {
            let image = &x[i * h * w * c..(i + 1) * h * w * c];
            let pooled = &y[i * oh * ow * c..(i + 1) * oh * ow * c];
            let grad = &g[i * oh * ow * c..(i + 1) * oh * ow * c];
            for p in 0..oh * ow {
                let (py, px) = (p / ow, p % ow);
                for ch in 0..c {
                    let target = pooled[p * c + ch];
                    'window: for dy in 0..k {
                        for dx in 0..k {
                            let at = ((py * k + dy) * w + px * k + dx) * c + ch;
                            if image[at] == target {
                                grad_image[at] = grad[p * c + ch];
                                break 'window;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// Max pooling with window and stride `k` (the map already cropped to multiples of `k`).
pub fn max_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    if matches!(x.device(), candle_core::Device::Cpu) {
        x.contiguous()?.apply_op1(MaxPool(k))
    } else {
        let (n, h, w, c) = x.dims4()?;
        x.reshape((n, h / k, k, w / k, k, c))?.max(4)?.max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn max_pool_matches_the_reduction_and_routes_gradients_to_the_maximum() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 4, 6, 3), &dev).unwrap();
        let ours = max_pool(x.as_tensor(), 2).unwrap();
        let theirs = x.reshape((2, 2, 2, 3, 2, 3)).unwrap().max(4).unwrap().max(2).unwrap();
        let up = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
        let g_ours = (&ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (&theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert_eq!(diff(&ours, &theirs), 0.0);
        assert!(diff(g_ours.get(&x).unwrap(), g_theirs.get(&x).unwrap()) < 1e-6);
    }

    /// The channels-last convolution equals candle's NCHW conv2d, values and gradients. (Sizes
    /// where the stride divides the span evenly: candle's own stride-2 backward fails otherwise.)
    #[test]
    fn matches_candle_conv2d() {
        let dev = Device::Cpu;
        // The last case is LeNet's first layer: one channel, 5×5, padding 2.
        for (kernel, channels, stride, padding) in [(3, 3, 1, 0), (3, 3, 1, 1), (3, 3, 2, 1), (5, 1, 1, 2)] {
            let x = Var::randn(0f32, 1.0, (2, 7, 9, channels), &dev).unwrap();
            let wt = Var::randn(0f32, 1.0, (4, channels, kernel, kernel), &dev).unwrap();
            let b = Var::randn(0f32, 1.0, 4, &dev).unwrap();
            let ours = conv2d(x.as_tensor(), &wt, &b, stride, padding, false).unwrap();
            let theirs = x
                .permute((0, 3, 1, 2))
                .unwrap()
                .conv2d(&wt, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap();
            let up = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
            let g_ours = (&ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = (&theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
            };
            assert!(diff(&ours, &theirs) < 1e-4, "values, stride {stride} padding {padding}");
            for v in [x.as_tensor(), wt.as_tensor(), b.as_tensor()] {
                assert!(
                    diff(g_ours.get(v).unwrap(), g_theirs.get(v).unwrap()) < 1e-3,
                    "gradient, stride {stride} padding {padding}"
                );
            }
        }
    }
}
