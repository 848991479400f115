//! Distillation losses.
//!
//! `hinton`: α·KL(softmax(t/T) ‖ softmax(s/T))·T² + (1−α)·CE(s, y), KL with batch-mean reduction,
//! as PyTorch's `KLDivLoss(reduction="batchmean")` computes it.
//! `logit_loss`: soft-target losses against one teacher or a weighted ensemble.
//! `feature_loss`: intermediate-layer losses.
//!
//! Probabilities are only ever formed as `exp` of a log-probability computed with log-softmax or
//! log-sum-exp, so one that underflows to zero contributes 0 to a KL sum, never 0·(−∞) = NaN.

use candle_core::{bail, Result, Tensor, D};
use candle_nn::ops::log_softmax;

pub struct KdLoss {
    pub total: Tensor,
    /// The KL term, already scaled by T²; `None` when no teacher took part (α = 0).
    pub soft: Option<Tensor>,
    pub hard: Tensor,
}

/// `student`, `teacher`: logits `batch × classes`; `labels`: u32 class ids.
/// The teacher's logits are detached: it never receives a gradient.
pub fn hinton(
    student: &Tensor,
    teacher: Option<&Tensor>,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
) -> Result<KdLoss> {
    let hard = candle_nn::loss::cross_entropy(student, labels)?;
    let Some(teacher) = teacher.filter(|_| alpha > 0.0) else {
        return Ok(KdLoss { total: hard.clone(), soft: None, hard });
    };
    let soft = (kl_batchmean(student, &teacher.detach(), temperature)? * (temperature * temperature))?;
    let total = ((&soft * alpha)? + (&hard * (1.0 - alpha))?)?;
    Ok(KdLoss { total, soft: Some(soft), hard })
}

/// Cross-entropy averaged over the samples marked in `labelled` alone: the others (transfer
/// samples) have placeholder labels that are never read. 0 when no sample is labelled.
pub fn labelled_cross_entropy(logits: &Tensor, labels: &Tensor, labelled: &[bool]) -> Result<Tensor> {
    if labelled.iter().all(|&l| l) {
        return candle_nn::loss::cross_entropy(logits, labels);
    }
    let rows: Vec<u32> = (0..labelled.len() as u32).filter(|&i| labelled[i as usize]).collect();
    if rows.is_empty() {
        return Tensor::zeros((), logits.dtype(), logits.device());
    }
    let rows = Tensor::from_vec(rows, labelled.iter().filter(|&&l| l).count(), logits.device())?;
    candle_nn::loss::cross_entropy(&logits.index_select(&rows, 0)?, &labels.index_select(&rows, 0)?)
}

/// KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, averaged over the batch.
pub fn kl_batchmean(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let log_p_student = log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_p_teacher = log_softmax(&(teacher / temperature)?, D::Minus1)?;
    kl(&log_p_teacher, &log_p_student)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogitLoss {
    Kl,
    ReverseKl,
    Js { beta: f64 },
    Mse,
}

impl LogitLoss {
    /// The spec's `distill.loss` (with its `beta`, 0.5 by default).
    pub fn of(distill: &crate::spec::DistillSpec) -> Self {
        use crate::spec::LogitLossKind;
        match distill.loss {
            LogitLossKind::Kl => LogitLoss::Kl,
            LogitLossKind::ReverseKl => LogitLoss::ReverseKl,
            LogitLossKind::Js => LogitLoss::Js { beta: distill.beta.unwrap_or(0.5) },
            LogitLossKind::Mse => LogitLoss::Mse,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureLoss {
    Mse,
    Cosine,
    Kl,
}

/// Soft-target loss between the student's logits and one or more teachers' logits.
/// `teachers`: (logits batch×classes, weight) with weights summing to 1 (caller normalises).
/// Kl:        KL(p_T ‖ p_S) · T², batchmean, where p_S = softmax(s/T) and the target p_T is the
///            weighted average of the teachers' softmax(t_k/T) (a mixture of probabilities; its
///            log is computed stably as logsumexp_k(ln w_k + log_softmax(t_k/T))).
/// ReverseKl: KL(p_S ‖ p_T) · T², batchmean, same p_T.
/// Js:        generalised Jensen–Shannon of GKD (Agarwal et al. 2024):
///            JSD_β(p_T ‖ p_S) = β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m), m = β·p_T + (1−β)·p_S, batchmean, · T².
///            β in (0,1); log m = logsumexp(ln β + log p_T, ln(1−β) + log p_S).
/// Mse:       mean over all elements of (s − t̄)², t̄ = weighted mean of the teachers' raw logits
///            (PyTorch F.mse_loss default reduction); temperature ignored.
/// Teachers never get gradients (they are detached).
pub fn logit_loss(kind: LogitLoss, student: &Tensor, teachers: &[(Tensor, f64)], temperature: f64) -> Result<Tensor> {
    if teachers.is_empty() {
        bail!("logit loss: no teacher");
    }
    for (teacher, weight) in teachers {
        if teacher.dims() != student.dims() {
            bail!("logit loss: teacher logits {:?} do not match the student's {:?}", teacher.dims(), student.dims());
        }
        if !(weight.is_finite() && *weight >= 0.0) {
            bail!("logit loss: teacher weight {weight} is not a finite non-negative number");
        }
    }
    let weight_sum: f64 = teachers.iter().map(|(_, w)| w).sum();
    if (weight_sum - 1.0).abs() > 1e-6 {
        bail!("logit loss: teacher weights sum to {weight_sum}, not 1");
    }
    if kind == LogitLoss::Mse {
        let mut mean = (teachers[0].0.detach() * teachers[0].1)?;
        for (teacher, weight) in &teachers[1..] {
            mean = (mean + (teacher.detach() * *weight)?)?;
        }
        return (student - mean)?.sqr()?.mean_all();
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("logit loss: temperature {temperature} must be positive");
    }
    let log_p_student = log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_p_teacher = log_sum_exp(
        &teachers
            .iter()
            .map(|(teacher, weight)| log_softmax(&(teacher.detach() / temperature)?, D::Minus1)? + weight.ln())
            .collect::<Result<Vec<_>>>()?,
    )?;
    let divergence = match kind {
        LogitLoss::Kl => kl(&log_p_teacher, &log_p_student)?,
        LogitLoss::ReverseKl => kl(&log_p_student, &log_p_teacher)?,
        LogitLoss::Js { beta } => {
            if !(beta > 0.0 && beta < 1.0) {
                bail!("logit loss: Jensen–Shannon β = {beta} must lie in (0, 1)");
            }
            let log_m = log_sum_exp(&[(&log_p_teacher + beta.ln())?, (&log_p_student + (1.0 - beta).ln())?])?;
            ((kl(&log_p_teacher, &log_m)? * beta)? + (kl(&log_p_student, &log_m)? * (1.0 - beta))?)?
        }
        LogitLoss::Mse => unreachable!("handled above"),
    };
    divergence * (temperature * temperature)
}

/// Intermediate-layer loss between a student feature (already projected to the teacher's shape)
/// and the teacher's feature of the same shape: batch×d or batch×C×H×W.
/// Mse:    F.mse_loss(s, t) (mean over all elements).
/// Cosine: mean over the batch of 1 − cos(flatten(s_i), flatten(t_i)) (F.cosine_similarity with eps 1e-8 semantics).
/// Kl:     for maps whose last axis holds distributions (attention rows): KL(t ‖ s) summed over
///         that axis, averaged over all rows (TinyBERT's attention loss). Probabilities are
///         clamped at 1e-12 inside the logs, so a masked key (probability 0 in both) adds 0.
/// The teacher feature is detached.
pub fn feature_loss(kind: FeatureLoss, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    if student.dims() != teacher.dims() || student.rank() < 2 {
        bail!(
            "feature loss: student {:?} and teacher {:?} must share one batch×… shape",
            student.dims(),
            teacher.dims()
        );
    }
    let teacher = teacher.detach();
    match kind {
        FeatureLoss::Mse => (student - teacher)?.sqr()?.mean_all(),
        FeatureLoss::Cosine => {
            const EPS: f64 = 1e-8;
            let (s, t) = (student.flatten_from(1)?, teacher.flatten_from(1)?);
            // Each norm is clamped at eps as in PyTorch; clamping the squared norm instead of the
            // norm keeps sqrt's infinite derivative at 0 out of the gradient of a zero vector.
            let norm = |x: &Tensor| x.sqr()?.sum(1)?.maximum(EPS * EPS)?.sqrt();
            let cos = ((&s * &t)?.sum(1)? / (norm(&s)? * norm(&t)?)?)?;
            cos.affine(-1.0, 1.0)?.mean_all()
        }
        FeatureLoss::Kl => {
            let log = |x: &Tensor| x.clamp(1e-12f32, 1f32)?.log();
            let per_row = (&teacher * (log(&teacher)? - log(student)?)?)?.sum(D::Minus1)?;
            per_row.mean_all()
        }
    }
}

/// Σ_classes p·(log p − log q), averaged over the batch (dim 0): PyTorch's batchmean KL(p ‖ q).
fn kl(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    let batch = log_p.dim(0)? as f64;
    (log_p.exp()? * (log_p - log_q)?)?.sum_all()? / batch
}

/// Element-wise ln Σ_k exp(x_k) over same-shaped tensors. The shift by the maximum is detached:
/// the result does not depend on it, so it needs no gradient.
fn log_sum_exp(xs: &[Tensor]) -> Result<Tensor> {
    let x = Tensor::stack(xs, 0)?;
    let max = x.max_keepdim(0)?.detach();
    x.broadcast_sub(&max)?.exp()?.sum_keepdim(0)?.log()?.add(&max)?.squeeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn logits<const B: usize>(rows: &[[f32; 4]; B]) -> Tensor {
        Tensor::new(rows, &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn kl_and_reverse_kl_with_one_teacher_equal_kl_batchmean_times_t_squared() {
        let (s, t) = (
            logits(&[[1.0, -2.0, 0.5, 3.0], [0.0, 4.0, -1.0, 2.0]]),
            logits(&[[2.0, 0.0, -3.0, 1.0], [1.0, 1.0, 5.0, -2.0]]),
        );
        for temperature in [1.0, 4.0] {
            let t2 = temperature * temperature;
            let kl = logit_loss(LogitLoss::Kl, &s, &[(t.clone(), 1.0)], temperature).unwrap();
            assert_eq!(scalar(&kl), scalar(&(kl_batchmean(&s, &t, temperature).unwrap() * t2).unwrap()));
            let reverse = logit_loss(LogitLoss::ReverseKl, &s, &[(t.clone(), 1.0)], temperature).unwrap();
            assert_eq!(scalar(&reverse), scalar(&(kl_batchmean(&t, &s, temperature).unwrap() * t2).unwrap()));
        }
    }

    #[test]
    fn js_with_beta_half_is_symmetric_and_bounded_by_ln_2() {
        let (s, t) = (logits(&[[1.0, -2.0, 0.5, 3.0]]), logits(&[[90.0, 0.0, -30.0, 1.0]]));
        let js = |a: &Tensor, b: &Tensor| {
            scalar(&logit_loss(LogitLoss::Js { beta: 0.5 }, a, &[(b.clone(), 1.0)], 1.0).unwrap())
        };
        assert!((js(&s, &t) - js(&t, &s)).abs() < 1e-6);
        assert!(js(&s, &t) > 0.0 && js(&s, &t) < std::f32::consts::LN_2);
    }

    #[test]
    fn an_ensemble_of_identical_teachers_is_that_teacher_and_teachers_get_no_gradient() {
        let s = Var::from_tensor(&logits(&[[1.0, -2.0, 0.5, 3.0]])).unwrap();
        let t = Var::from_tensor(&logits(&[[2.0, 0.0, -3.0, 1.0]])).unwrap();
        for kind in [LogitLoss::Kl, LogitLoss::ReverseKl, LogitLoss::Js { beta: 0.1 }, LogitLoss::Mse] {
            let one = logit_loss(kind, s.as_tensor(), &[(t.as_tensor().clone(), 1.0)], 2.0).unwrap();
            let two =
                logit_loss(kind, s.as_tensor(), &[(t.as_tensor().clone(), 0.7), (t.as_tensor().clone(), 0.3)], 2.0)
                    .unwrap();
            assert!((scalar(&one) - scalar(&two)).abs() <= 1e-6 * scalar(&one).abs(), "{kind:?}");
            let grads = two.backward().unwrap();
            assert!(grads.get(s.as_tensor()).is_some() && grads.get(t.as_tensor()).is_none(), "{kind:?}");
        }
        let grads = feature_loss(FeatureLoss::Cosine, s.as_tensor(), t.as_tensor()).unwrap().backward().unwrap();
        assert!(grads.get(s.as_tensor()).is_some() && grads.get(t.as_tensor()).is_none());
    }

    #[test]
    fn the_hard_term_averages_over_labelled_samples_and_never_reads_a_transfer_label() {
        let s =
            Var::from_tensor(&logits(&[[1.0, -2.0, 0.5, 3.0], [0.0, 4.0, -1.0, 2.0], [2.0, 0.0, -3.0, 1.0]])).unwrap();
        let labels = |placeholder: u32| Tensor::new(&[2u32, placeholder, 0], &Device::Cpu).unwrap();
        let mask = [true, false, true];
        let hard = labelled_cross_entropy(s.as_tensor(), &labels(0), &mask).unwrap();
        let rows = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let subset = candle_nn::loss::cross_entropy(
            &s.as_tensor().index_select(&rows, 0).unwrap(),
            &labels(0).index_select(&rows, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(scalar(&hard), scalar(&subset));
        let relabelled = labelled_cross_entropy(s.as_tensor(), &labels(3), &mask).unwrap();
        assert_eq!(scalar(&hard), scalar(&relabelled));
        let grad = |t: &Tensor| t.backward().unwrap().get(s.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let (g, g_relabelled) = (grad(&hard), grad(&relabelled));
        assert_eq!(g, g_relabelled);
        assert_eq!(g[1], [0.0; 4], "the transfer sample gets no gradient from the labels");

        // A batch of transfer samples only: no hard term, while the soft term still teaches.
        let none = labelled_cross_entropy(s.as_tensor(), &labels(1), &[false; 3]).unwrap();
        assert_eq!(scalar(&none), 0.0);
        let teacher = logits(&[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]);
        assert!(scalar(&logit_loss(LogitLoss::Kl, s.as_tensor(), &[(teacher, 1.0)], 2.0).unwrap()) > 0.0);
        let all = labelled_cross_entropy(s.as_tensor(), &labels(1), &[true; 3]).unwrap();
        assert_eq!(scalar(&all), scalar(&candle_nn::loss::cross_entropy(s.as_tensor(), &labels(1)).unwrap()));
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let (s, t) = (logits(&[[1.0, -2.0, 0.5, 3.0]]), logits(&[[2.0, 0.0, -3.0, 1.0]]));
        assert!(logit_loss(LogitLoss::Kl, &s, &[], 1.0).is_err());
        assert!(logit_loss(LogitLoss::Kl, &s, &[(t.clone(), 0.5)], 1.0).is_err());
        assert!(logit_loss(LogitLoss::Js { beta: 1.0 }, &s, &[(t.clone(), 1.0)], 1.0).is_err());
        assert!(logit_loss(LogitLoss::Kl, &s, &[(t.clone(), 1.0)], 0.0).is_err());
        assert!(feature_loss(FeatureLoss::Mse, &s, &t.t().unwrap()).is_err());
    }
}
