//! How well a causal LM predicts held-out blocks: next-token cross-entropy (its exponential is
//! the perplexity) and accuracy, and, beside its teacher, top-1 agreement and the mean
//! KL(teacher ‖ model) per token at T = 1.

use candle_core::{Device, Tensor, D};
use candle_nn::ops::log_softmax;

use super::corpus::Blocks;
use super::targets::{ids_tensor, Targets};
use crate::engine::models::llama::Llama;
use crate::engine::EngineError;

#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Mean next-token cross-entropy, nats per token.
    pub loss: f64,
    pub accuracy: f64,
    /// The model's top-1 prediction at every target position, in order.
    pub predictions: Vec<u32>,
    /// The tokens that followed.
    pub next: Vec<u32>,
    /// With a teacher: the share of positions where both predict the same token.
    pub agreement: f64,
    pub kl_to_teacher: f64,
}

impl Scores {
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }
}

/// Scores `model` on `blocks`, beside `teacher` when given (its own scores would compare it
/// with itself: agreement 1, KL 0).
pub fn score(
    model: &Llama,
    blocks: &Blocks,
    teacher: Option<&Llama>,
    batch_size: usize,
    device: &Device,
) -> Result<Scores, EngineError> {
    let mut scores = Scores::default();
    let (mut loss_sum, mut kl_sum, mut agreed) = (0.0, 0.0, 0usize);
    let all: Vec<usize> = (0..blocks.count()).collect();
    for batch in all.chunks(batch_size.max(1)) {
        let Some(targets) = Targets::of(blocks, batch, device)? else { continue };
        let ids = ids_tensor(blocks, batch, device)?;
        let log_p = log_softmax(&targets.select(&model.forward(&ids, false, false)?.logits)?, D::Minus1)?;
        let next = targets.next.to_vec1::<u32>()?;
        let picked = log_p.gather(&targets.next.unsqueeze(1)?, 1)?.squeeze(1)?;
        loss_sum -= picked.sum_all()?.to_scalar::<f32>()? as f64;
        let predictions = log_p.argmax(D::Minus1)?.to_vec1::<u32>()?;
        if let Some(teacher) = teacher {
            let teacher_log_p = log_softmax(&targets.select(&teacher.forward(&ids, false, false)?.logits)?, D::Minus1)?;
            let kl = (teacher_log_p.exp()? * (&teacher_log_p - &log_p)?)?.sum_all()?;
            kl_sum += kl.to_scalar::<f32>()? as f64;
            let teacher_top = teacher_log_p.argmax(D::Minus1)?.to_vec1::<u32>()?;
            agreed += predictions.iter().zip(&teacher_top).filter(|(a, b)| a == b).count();
        }
        scores.predictions.extend(predictions);
        scores.next.extend(next);
    }
    let n = scores.next.len().max(1) as f64;
    scores.loss = loss_sum / n;
    scores.accuracy = scores.predictions.iter().zip(&scores.next).filter(|(p, y)| p == y).count() as f64 / n;
    if teacher.is_some() {
        scores.agreement = agreed as f64 / n;
        scores.kl_to_teacher = kl_sum / n;
    } else {
        scores.agreement = 1.0;
    }
    Ok(scores)
}

/// Milliseconds of one forward pass over `batch` blocks of `blocks` (the first ones, cycled):
/// the median of a few passes after one warm-up.
pub fn scoring_ms(model: &Llama, blocks: &Blocks, batch: usize, device: &Device) -> Result<f64, EngineError> {
    let rows: Vec<usize> = (0..batch).map(|i| i % blocks.count().max(1)).collect();
    let ids: Tensor = ids_tensor(blocks, &rows, device)?;
    model.forward(&ids, false, false)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        model.forward(&ids, false, false)?;
        device.synchronize()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}
