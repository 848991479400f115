//! A language model's output layer and its token loss as one op, over vocabulary chunks.
//!
//! With the final hidden states `h` (tokens × hidden) and the output weight `W` (vocab × hidden),
//! the logits are z = h·Wᵀ. The op returns `[soft, hard]`: soft = T²·mean over tokens of
//! KL(softmax(t/T) ‖ softmax(z/T)) against the teacher's logits `t` (0 without a teacher), hard =
//! mean cross-entropy of z against the next tokens. Over a 49k-token vocabulary the logits and
//! every composed op's output and gradient over them are a step's largest tensors (25 MB each at
//! 128 tokens, most of the step's page faults); here only one chunk of logits (tokens × CHUNK)
//! exists at a time. The forward keeps three log-normalisers per token for the backward, which
//! recomputes each chunk's logits (one more product) rather than keep them.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{exp, vectorised};
use super::linear::{contiguous_f32, gemm_rows};

/// Vocabulary columns a chunk holds: 127 tokens × 2048 columns is 1 MB, about one core's L2.
const CHUNK: usize = 2048;

/// `[soft, hard]` (soft 0 without a teacher) for the final hidden states `hidden` (tokens ×
/// hidden), the output weight `weight` (vocab × hidden), the teacher's logits at the same tokens
/// (tokens × vocab) and the next tokens; CPU only.
pub fn head_loss(
    hidden: &Tensor,
    weight: &Tensor,
    teacher: Option<&Tensor>,
    next: &[u32],
    temperature: f64,
) -> Result<Tensor> {
    let op = HeadLoss { next: next.into(), temperature: temperature as f32, chunk: CHUNK, saved: Arc::default() };
    let (hidden, weight) = (hidden.contiguous()?, weight.contiguous()?);
    match teacher {
        Some(teacher) => hidden.apply_op3(&weight, &teacher.detach().contiguous()?, op),
        None => hidden.apply_op2(&weight, op),
    }
}

struct HeadLoss {
    next: Arc<[u32]>,
    temperature: f32,
    chunk: usize,
    /// The forward's log-normalisers per token, for the backward.
    saved: Arc<Mutex<Option<Normalisers>>>,
}

/// Per token: log Σ exp(z/T), log Σ exp(z), and the teacher's log Σ exp(t/T).
#[derive(Clone)]
struct Normalisers {
    student_at_t: Vec<f32>,
    student: Vec<f32>,
    teacher: Vec<f32>,
}

/// The shapes and values one call reads.
struct Inputs<'a> {
    h: &'a [f32],
    w: &'a [f32],
    t: Option<&'a [f32]>,
    tokens: usize,
    width: usize,
    vocab: usize,
}

fn inputs<'a>(
    (hs, hl): (&'a CpuStorage, &Layout),
    (ws, wl): (&'a CpuStorage, &Layout),
    teacher: Option<(&'a CpuStorage, &Layout)>,
    next: usize,
) -> Result<Inputs<'a>> {
    let (&[tokens, width], &[vocab, w_width]) = (hl.dims(), wl.dims()) else {
        candle_core::bail!("head loss: expected hidden tokens×width and weight vocab×width")
    };
    if width != w_width || tokens != next {
        candle_core::bail!(
            "head loss: hidden {:?}, weight {:?} and {next} next tokens do not fit",
            hl.dims(),
            wl.dims()
        );
    }
    let t = match teacher {
        Some((_, tl)) if tl.dims() != [tokens, vocab] => {
            candle_core::bail!("head loss: teacher logits {:?}, expected {:?}", tl.dims(), [tokens, vocab])
        }
        Some((ts, tl)) => Some(contiguous_f32(ts, tl, "head loss: the teacher's logits")?),
        None => None,
    };
    let h = contiguous_f32(hs, hl, "head loss: the hidden states")?;
    Ok(Inputs { h, w: contiguous_f32(ws, wl, "head loss: the weight")?, t, tokens, width, vocab })
}

/// The running maximum and sum of exponentials of one row's values seen so far.
#[derive(Clone, Copy)]
struct Running {
    max: f32,
    sum: f64,
}

impl Running {
    const EMPTY: Running = Running { max: f32::NEG_INFINITY, sum: 0.0 };

    /// Takes in `values` scaled by `scale`.
    #[inline(always)]
    fn add(&mut self, values: &[f32], scale: f32) {
        let chunk_max = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
        if chunk_max > self.max {
            self.sum *= f64::from(exp(self.max - chunk_max));
            self.max = chunk_max;
        }
        let max = self.max;
        self.sum += f64::from(values.iter().map(|&v| exp(v * scale - max)).sum::<f32>());
    }

    fn log_sum_exp(self) -> f32 {
        self.max + self.sum.ln() as f32
    }
}

impl HeadLoss {
    /// The logits of columns `start..start + cols` for every token: h · W[start..]ᵀ.
    fn logits(&self, x: &Inputs, start: usize, cols: usize, out: &mut Vec<f32>) {
        out.resize(x.tokens * cols, 0.0);
        let w = &x.w[start * x.width..(start + cols) * x.width];
        // SAFETY: h holds tokens × width read row-major; the weight's chunk cols × width read
        // transposed (column stride `width`).
        unsafe { gemm_rows(out, x.h, (1, x.width), w, (x.width, 1), (x.tokens, cols, x.width), false) }
    }

    /// The teacher's per-token log-normaliser at T and Σ p·log p.
    fn teacher_terms(&self, t: &[f32], vocab: usize) -> (Vec<f32>, Vec<f64>) {
        let inv_t = 1.0 / self.temperature;
        vectorised(|| {
            t.par_chunks(vocab)
                .map(|row| {
                    let mut running = Running::EMPTY;
                    running.add(row, inv_t);
                    let lse = running.log_sum_exp();
                    let neg_entropy: f32 = row
                        .iter()
                        .map(|&v| {
                            let log_p = v * inv_t - lse;
                            exp(log_p) * log_p
                        })
                        .sum();
                    (lse, f64::from(neg_entropy))
                })
                .unzip()
        })
    }

    /// `[soft, hard]` and the normalisers the backward needs.
    fn forward(&self, x: &Inputs) -> Result<([f32; 2], Normalisers)> {
        let inv_t = 1.0 / self.temperature;
        let (teacher_lse, neg_entropy) = match x.t {
            Some(t) => self.teacher_terms(t, x.vocab),
            None => (Vec::new(), Vec::new()),
        };
        let (mut at_t, mut plain) = (vec![Running::EMPTY; x.tokens], vec![Running::EMPTY; x.tokens]);
        let (mut cross, mut label) = (vec![0f64; x.tokens], vec![0f32; x.tokens]);
        let mut z = Vec::new();
        for start in (0..x.vocab).step_by(self.chunk) {
            let cols = self.chunk.min(x.vocab - start);
            self.logits(x, start, cols, &mut z);
            let rows = z.par_chunks(cols).zip(at_t.par_iter_mut()).zip(plain.par_iter_mut());
            let per_token = rows.zip(cross.par_iter_mut()).zip(label.par_iter_mut()).enumerate();
            vectorised(|| {
                per_token.for_each(|(i, ((((row, at_t), plain), cross), label))| {
                    at_t.add(row, inv_t);
                    if self.temperature != 1.0 {
                        plain.add(row, 1.0);
                    }
                    if let Some(t) = x.t {
                        let teacher = &t[i * x.vocab + start..][..cols];
                        let lse = teacher_lse[i];
                        let dot: f32 = row.iter().zip(teacher).map(|(&z, &t)| exp(t * inv_t - lse) * z).sum();
                        *cross += f64::from(dot * inv_t);
                    }
                    let y = self.next[i] as usize;
                    if (start..start + cols).contains(&y) {
                        *label = row[y - start];
                    }
                })
            });
        }
        let student_at_t: Vec<f32> = at_t.iter().map(|r| r.log_sum_exp()).collect();
        let student = match self.temperature == 1.0 {
            true => student_at_t.clone(),
            false => plain.iter().map(|r| r.log_sum_exp()).collect(),
        };
        let saved = Normalisers { student_at_t, student, teacher: teacher_lse };
        let n = x.tokens as f64;
        let hard: f64 = saved.student.iter().zip(&label).map(|(&lse, &z)| f64::from(lse - z)).sum::<f64>() / n;
        let soft = match x.t {
            Some(_) => {
                let kl = (0..x.tokens).map(|i| neg_entropy[i] - cross[i] + f64::from(saved.student_at_t[i]));
                kl.sum::<f64>() / n * f64::from(self.temperature * self.temperature)
            }
            None => 0.0,
        };
        Ok(([soft as f32, hard as f32], saved))
    }

    fn cpu_forward(&self, x: &Inputs) -> Result<(CpuStorage, Shape)> {
        let (losses, saved) = self.forward(x)?;
        *self.saved.lock().expect("the head loss's saved state") = Some(saved);
        Ok((CpuStorage::F32(losses.to_vec()), Shape::from(2)))
    }

    /// dL/dz for one chunk's logits `z` (in place), given dL/d[soft, hard].
    fn logit_grads(&self, x: &Inputs, saved: &Normalisers, start: usize, z: &mut [f32], [g_soft, g_hard]: [f32; 2]) {
        let (inv_t, n) = (1.0 / self.temperature, x.tokens as f32);
        // d soft/dz = T·(q − p)/n with q, p the student's and teacher's softmax at T; d hard/dz
        // = (softmax(z) − onehot(y))/n.
        let (a, b) = (g_soft * self.temperature / n, g_hard / n);
        let cols = z.len() / x.tokens;
        vectorised(|| {
            z.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
                let (lse_t, lse) = (saved.student_at_t[i], saved.student[i]);
                match x.t {
                    Some(t) => {
                        let teacher = &t[i * x.vocab + start..][..cols];
                        let lse_teacher = saved.teacher[i];
                        let same = self.temperature == 1.0;
                        for (z, &t) in row.iter_mut().zip(teacher) {
                            let r = exp(*z - lse);
                            let q = if same { r } else { exp(*z * inv_t - lse_t) };
                            *z = a * (q - exp(t * inv_t - lse_teacher)) + b * r;
                        }
                    }
                    None => row.iter_mut().for_each(|z| *z = b * exp(*z - lse)),
                }
                let y = self.next[i] as usize;
                if (start..start + cols).contains(&y) {
                    row[y - start] -= b;
                }
            })
        });
    }

    /// dL/dh (tokens × width) and dL/dW (vocab × width), chunk by chunk.
    fn backward(&self, x: &Inputs, grad: [f32; 2]) -> Result<(Vec<f32>, Vec<f32>)> {
        let saved = self.saved.lock().expect("the head loss's saved state").clone();
        let Some(saved) = saved else { candle_core::bail!("head loss: backward before forward") };
        let mut grad_h = vec![0f32; x.tokens * x.width];
        let mut grad_w = vec![0f32; x.vocab * x.width];
        let mut z = Vec::new();
        for start in (0..x.vocab).step_by(self.chunk) {
            let cols = self.chunk.min(x.vocab - start);
            self.logits(x, start, cols, &mut z);
            self.logit_grads(x, &saved, start, &mut z, grad);
            let w_chunk = &x.w[start * x.width..(start + cols) * x.width];
            let (tokens, width) = (x.tokens, x.width);
            // SAFETY: grad_h holds tokens × width; dz tokens × cols; the weight chunk cols × width
            // read row-major (dz·W); grad_w's chunk cols × width; dzᵀ read through strides (1, cols).
            unsafe {
                gemm_rows(&mut grad_h, &z, (1, cols), w_chunk, (1, width), (tokens, width, cols), true);
                let out = &mut grad_w[start * width..(start + cols) * width];
                gemm_rows(out, &z, (cols, 1), x.h, (1, width), (cols, width, tokens), false);
            }
        }
        Ok((grad_h, grad_w))
    }

    fn grads(&self, hidden: &Tensor, weight: &Tensor, teacher: Option<&Tensor>, grad: &Tensor) -> Result<[Tensor; 2]> {
        let grad: Vec<f32> = grad.to_vec1()?;
        let (hs, hl) = hidden.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let ts = teacher.map(Tensor::storage_and_layout);
        let teacher = match &ts {
            Some((storage, layout)) => Some((cpu(storage)?, *layout)),
            None => None,
        };
        let x = inputs((cpu(&hs)?, hl), (cpu(&ws)?, wl), teacher, self.next.len())?;
        let (grad_h, grad_w) = self.backward(&x, [grad[0], grad[1]])?;
        let device = hidden.device();
        Ok([Tensor::from_vec(grad_h, hidden.shape(), device)?, Tensor::from_vec(grad_w, weight.shape(), device)?])
    }
}

fn cpu(storage: &candle_core::Storage) -> Result<&CpuStorage> {
    match storage {
        candle_core::Storage::Cpu(s) => Ok(s),
        _ => candle_core::bail!("head loss: CPU only"),
    }
}

impl CustomOp3 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-loss"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_forward(&inputs((hs, hl), (ws, wl), Some((ts, tl)), self.next.len())?)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        teacher: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [grad_h, grad_w] = self.grads(hidden, weight, Some(teacher), grad)?;
        Ok((Some(grad_h), Some(grad_w), None))
    }
}

impl CustomOp2 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-loss"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu_forward(&inputs((hs, hl), (ws, wl), None, self.next.len())?)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [grad_h, grad_w] = self.grads(hidden, weight, None, grad)?;
        Ok((Some(grad_h), Some(grad_w)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::HeadLoss;
    use crate::engine::rng::Rng;
    use crate::engine::train::loss::{logit_loss, LogitLoss};

    /// The op's [soft, hard] and gradients against candle's composed ops on the logits, with a
    /// chunk that does not divide the vocabulary.
    fn compare(temperature: f64, with_teacher: bool) {
        let device = Device::Cpu;
        let (tokens, width, vocab) = (5, 8, 300);
        let mut rng = Rng::new(7);
        let mut random = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform(-scale, scale)).collect() };
        let h = Var::from_vec(random(tokens * width, 1.0), (tokens, width), &device).unwrap();
        let w = Var::from_vec(random(vocab * width, 1.0), (vocab, width), &device).unwrap();
        let teacher = Tensor::from_vec(random(tokens * vocab, 4.0), (tokens, vocab), &device).unwrap();
        let next: Vec<u32> = vec![0, 299, 128, 127, 5];
        let op = HeadLoss {
            next: next.clone().into(),
            temperature: temperature as f32,
            chunk: 128,
            saved: Default::default(),
        };
        let fused = match with_teacher {
            true => h.as_tensor().apply_op3(w.as_tensor(), &teacher, op).unwrap(),
            false => h.as_tensor().apply_op2(w.as_tensor(), op).unwrap(),
        };
        let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let hard = candle_nn::loss::cross_entropy(&logits, &Tensor::new(next.as_slice(), &device).unwrap()).unwrap();
        let soft = match with_teacher {
            true => logit_loss(LogitLoss::Kl, &logits, &[(teacher, 1.0)], temperature).unwrap(),
            false => hard.zeros_like().unwrap(),
        };
        let composed = Tensor::stack(&[&soft, &hard], 0).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (fused.to_vec1().unwrap(), composed.to_vec1().unwrap());
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "losses {a} vs {b}");
        }
        // Weights on both parts, so each part's gradient counts.
        let weigh = |parts: &Tensor| (parts.get(0).unwrap() * 0.7).unwrap() + (parts.get(1).unwrap() * 0.3).unwrap();
        let (fused_grads, composed_grads) =
            (weigh(&fused).unwrap().backward().unwrap(), weigh(&composed).unwrap().backward().unwrap());
        for var in [&h, &w] {
            let f: Vec<f32> = fused_grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let c: Vec<f32> = composed_grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (f, c) in f.iter().zip(&c) {
                assert!((f - c).abs() < 1e-5 * scale.max(1e-3), "gradient {f} vs {c} (largest {scale})");
            }
        }
    }

    #[test]
    fn matches_the_composed_kl_and_cross_entropy_at_t_1() {
        compare(1.0, true);
    }

    #[test]
    fn matches_the_composed_kl_and_cross_entropy_at_t_4() {
        compare(4.0, true);
    }

    #[test]
    fn matches_the_composed_cross_entropy_without_a_teacher() {
        compare(2.0, false);
    }
}
