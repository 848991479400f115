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

/// Running sums of one model's scores.
#[derive(Default)]
struct Tally {
    scores: Scores,
    loss_sum: f64,
    kl_sum: f64,
    agreed: usize,
}

impl Tally {
    /// One batch: the model's log-probabilities at the target positions, and the teacher's
    /// with its top tokens (`None` for the teacher itself).
    fn add(
        &mut self,
        log_p: &Tensor,
        targets: &Targets,
        teacher: Option<(&Tensor, &[u32])>,
    ) -> candle_core::Result<()> {
        let picked = log_p.gather(&targets.next.unsqueeze(1)?, 1)?.squeeze(1)?;
        self.loss_sum -= picked.sum_all()?.to_scalar::<f32>()? as f64;
        let predictions = log_p.argmax(D::Minus1)?.to_vec1::<u32>()?;
        if let Some((teacher_log_p, teacher_top)) = teacher {
            let kl = (teacher_log_p.exp()? * (teacher_log_p - log_p)?)?.sum_all()?;
            self.kl_sum += kl.to_scalar::<f32>()? as f64;
            self.agreed += predictions.iter().zip(teacher_top).filter(|(a, b)| a == b).count();
        } else {
            self.agreed += predictions.len();
        }
        self.scores.predictions.extend(predictions);
        self.scores.next.extend(targets.next.to_vec1::<u32>()?);
        Ok(())
    }

    fn finish(self) -> Scores {
        let mut scores = self.scores;
        let n = scores.next.len().max(1) as f64;
        scores.loss = self.loss_sum / n;
        scores.accuracy = scores.predictions.iter().zip(&scores.next).filter(|(p, y)| p == y).count() as f64 / n;
        scores.agreement = self.agreed as f64 / n;
        scores.kl_to_teacher = self.kl_sum / n;
        scores
    }
}

/// Scores `teacher` on `blocks`, and each of `models` beside it, running the teacher once a
/// batch (the teacher's own agreement is 1 and its KL 0).
pub fn score_beside(
    teacher: &Llama,
    models: &[&Llama],
    blocks: &Blocks,
    batch_size: usize,
    device: &Device,
) -> Result<(Scores, Vec<Scores>), EngineError> {
    let mut teacher_tally = Tally::default();
    let mut tallies: Vec<Tally> = models.iter().map(|_| Tally::default()).collect();
    let all: Vec<usize> = (0..blocks.count()).collect();
    let log_p = |model: &Llama, ids: &Tensor, targets: &Targets| -> candle_core::Result<Tensor> {
        log_softmax(&targets.select(&model.forward(ids, false, false)?.logits)?, D::Minus1)
    };
    for batch in all.chunks(batch_size.max(1)) {
        let Some(targets) = Targets::of(blocks, batch, device)? else { continue };
        let ids = ids_tensor(blocks, batch, device)?;
        let teacher_log_p = log_p(teacher, &ids, &targets)?;
        let teacher_top = teacher_log_p.argmax(D::Minus1)?.to_vec1::<u32>()?;
        teacher_tally.add(&teacher_log_p, &targets, None)?;
        for (model, tally) in models.iter().zip(&mut tallies) {
            tally.add(&log_p(model, &ids, &targets)?, &targets, Some((&teacher_log_p, &teacher_top)))?;
        }
    }
    Ok((teacher_tally.finish(), tallies.into_iter().map(Tally::finish).collect()))
}

/// Scores `model` on `blocks` alone (its loss and accuracy; agreement 1, KL 0).
pub fn score(model: &Llama, blocks: &Blocks, batch_size: usize, device: &Device) -> Result<Scores, EngineError> {
    Ok(score_beside(model, &[], blocks, batch_size, device)?.0)
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
