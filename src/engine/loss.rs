//! The Hinton distillation loss:
//! α·KL(softmax(t/T) ‖ softmax(s/T))·T² + (1−α)·CE(s, y), KL with batch-mean reduction,
//! as PyTorch's `KLDivLoss(reduction="batchmean")` computes it.

use candle_core::{Result, Tensor, D};
use candle_nn::ops::log_softmax;

pub struct KdLoss {
    pub total: Tensor,
    /// The KL term, already scaled by T²; `None` when no teacher took part (α = 0).
    pub soft: Option<Tensor>,
    pub hard: Tensor,
}

/// `student`, `teacher`: logits `batch × classes`; `labels`: u32 class ids.
/// The teacher's logits are detached: it never receives a gradient.
pub fn hinton(student: &Tensor, teacher: Option<&Tensor>, labels: &Tensor, temperature: f64, alpha: f64) -> Result<KdLoss> {
    let hard = candle_nn::loss::cross_entropy(student, labels)?;
    let Some(teacher) = teacher.filter(|_| alpha > 0.0) else {
        return Ok(KdLoss { total: hard.clone(), soft: None, hard });
    };
    let soft = (kl_batchmean(student, &teacher.detach(), temperature)? * (temperature * temperature))?;
    let total = ((&soft * alpha)? + (&hard * (1.0 - alpha))?)?;
    Ok(KdLoss { total, soft: Some(soft), hard })
}

/// KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, averaged over the batch. Both sides use
/// log-softmax, so a teacher probability that underflows to zero contributes 0, not NaN.
pub fn kl_batchmean(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let batch = student.dim(0)? as f64;
    let log_p_student = log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_p_teacher = log_softmax(&(teacher / temperature)?, D::Minus1)?;
    let p_teacher = log_p_teacher.exp()?;
    (p_teacher * (log_p_teacher - log_p_student)?)?.sum_all()? / batch
}
