//! The teacher's next-token distributions and the token-level losses.
//!
//! A full vocabulary makes the teacher's output layer the cost of distillation, so its logits
//! over the training blocks are computed once and kept as the top k per position with one
//! filler logit that carries the rest's probability exactly (as the classifiers' top-k cache
//! does), in a file of the job folder: memory stays flat whatever the corpus, and a resumed job
//! reads the file instead of running the teacher again. Unlike the classifiers' few classes,
//! the rest is tens of thousands of tokens: spread evenly over them it would teach the student
//! a flat tail (each held-out token outside the teacher's top k then costs ln(vocabulary)), so
//! the loss compares the two models over k + 1 outcomes, the top k and the rest as one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::corpus::Blocks;
use crate::engine::kernels::head_loss::head_loss;
use crate::engine::models::llama::Llama;
use crate::engine::train::loss::{logit_loss, KdLoss, LogitLoss};
use crate::engine::train::top_k_row;
use crate::engine::EngineError;

/// Blocks the teacher scores per forward pass while filling the cache.
const FILL_BATCH: usize = 4;

/// The top-k cache of the teacher's logits, one fixed-size record per position of the training
/// blocks: k values (f32), k token ids (u32), the filler (f32).
pub struct TopKCache {
    file: File,
    pub k: usize,
    pub vocab: usize,
    pub path: PathBuf,
}

impl TopKCache {
    fn record_bytes(k: usize) -> usize {
        (2 * k + 1) * 4
    }

    /// The cache file's size for `positions` positions.
    pub fn bytes(positions: usize, k: usize) -> u64 {
        (positions * Self::record_bytes(k)) as u64
    }

    /// Opens the cache at `path` if it is complete for these blocks, else fills it by running
    /// the teacher over them (`progress` hears blocks done out of all).
    pub fn open_or_fill(
        path: &Path,
        teacher: &Llama,
        blocks: &Blocks,
        (k, temperature): (usize, f64),
        device: &Device,
        progress: &mut dyn FnMut(usize, usize) -> Result<(), EngineError>,
    ) -> Result<(Self, bool), EngineError> {
        let vocab = teacher.config.vocab_size;
        let k = k.min(vocab - 1);
        let expected = Self::bytes(blocks.ids.len(), k);
        let reused = std::fs::metadata(path).is_ok_and(|m| m.len() == expected);
        if !reused {
            fill(path, teacher, blocks, (k, temperature), device, progress)?;
        }
        Ok((Self { file: File::open(path)?, k, vocab, path: path.to_path_buf() }, reused))
    }

    /// The teacher's distributions at `positions` (indices into the training blocks' positions),
    /// at `temperature`.
    pub fn rows(&self, positions: &[usize], temperature: f64, device: &Device) -> Result<TeacherRows, EngineError> {
        let record = Self::record_bytes(self.k);
        let mut bytes = vec![0u8; record];
        let (mut values, mut ids, mut filler) = (Vec::new(), Vec::new(), Vec::new());
        for &position in positions {
            self.file.read_exact_at(&mut bytes, (position * record) as u64)?;
            let word = |i: usize| [bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]];
            values.extend((0..self.k).map(|j| f32::from_le_bytes(word(j))));
            for j in 0..self.k {
                let id = u32::from_le_bytes(word(self.k + j));
                if id as usize >= self.vocab {
                    return Err(EngineError::Corrupt(format!("{} holds token id {id}", self.path.display())));
                }
                ids.push(id);
            }
            filler.push(f32::from_le_bytes(word(2 * self.k)));
        }
        Ok(TeacherRows::top_k(&values, &ids, &filler, (self.vocab, temperature), device)?)
    }
}

/// The teacher's distribution at the target positions, as the loss reads it.
pub enum TeacherRows {
    /// Every logit (the teacher run at every step).
    Full(Tensor),
    /// The top k tokens' ids (`tokens × k`); the teacher's logits at T over k + 1 outcomes,
    /// those k tokens and one bucket for all the others (`tokens × (k + 1)`), which holds the
    /// rest's probability exactly; and a mask (`tokens × vocabulary`), −∞ at the top k.
    TopK { ids: Tensor, coarse: Tensor, mask: Tensor },
}

impl TeacherRows {
    /// From the cache's records: per token, k logits, their ids and the filler logit
    /// ([`top_k_row`]: the rest's mass at T is |rest|·exp(filler/T)).
    pub fn top_k(
        values: &[f32],
        ids: &[u32],
        filler: &[f32],
        (vocab, temperature): (usize, f64),
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (n, k) = (filler.len(), values.len() / filler.len().max(1));
        let rest = ((vocab - k) as f64).ln();
        let mut coarse = Vec::with_capacity(n * (k + 1));
        let mut mask = vec![0f32; n * vocab];
        for token in 0..n {
            coarse.extend(values[token * k..(token + 1) * k].iter().map(|v| (*v as f64 / temperature) as f32));
            coarse.push((filler[token] as f64 / temperature + rest) as f32);
            for &id in &ids[token * k..(token + 1) * k] {
                mask[token * vocab + id as usize] = f32::NEG_INFINITY;
            }
        }
        Ok(TeacherRows::TopK {
            ids: Tensor::from_slice(ids, (n, k), device)?,
            coarse: Tensor::from_vec(coarse, (n, k + 1), device)?,
            mask: Tensor::from_vec(mask, (n, vocab), device)?,
        })
    }

    /// The divergence `kind` between teacher and student (`tokens × vocabulary` logits) at T,
    /// × T², averaged over the tokens. With the top k: between the two distributions over the
    /// k + 1 outcomes, so the student's tail is shaped by the data, not pulled flat.
    fn divergence(&self, kind: LogitLoss, student: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
        match self {
            TeacherRows::Full(teacher) => logit_loss(kind, student, &[(teacher.clone(), 1.0)], temperature),
            TeacherRows::TopK { ids, coarse, mask } => {
                let scaled = (student / temperature)?;
                let rest = (&scaled + mask)?.log_sum_exp(1)?.unsqueeze(1)?;
                let student_coarse = Tensor::cat(&[&scaled.gather(ids, 1)?, &rest], 1)?;
                logit_loss(kind, &student_coarse, &[(coarse.clone(), 1.0)], 1.0)? * (temperature * temperature)
            }
        }
    }
}

fn fill(
    path: &Path,
    teacher: &Llama,
    blocks: &Blocks,
    (k, temperature): (usize, f64),
    device: &Device,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let partial = path.with_extension("partial");
    let mut out = BufWriter::new(File::create(&partial)?);
    let (mut values, mut ids) = (Vec::new(), Vec::new());
    for first in (0..blocks.count()).step_by(FILL_BATCH) {
        let batch: Vec<usize> = (first..blocks.count().min(first + FILL_BATCH)).collect();
        let logits = teacher.forward(&ids_tensor(blocks, &batch, device)?, false, false)?.logits;
        let logits = logits.flatten_to(1)?.to_vec2::<f32>()?;
        for row in &logits {
            values.clear();
            ids.clear();
            let filler = top_k_row(row, k, temperature, &mut values, &mut ids);
            for v in &values {
                out.write_all(&v.to_le_bytes())?;
            }
            for id in &ids {
                out.write_all(&id.to_le_bytes())?;
            }
            out.write_all(&filler.to_le_bytes())?;
        }
        progress(batch.last().map_or(0, |b| b + 1), blocks.count())?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// The blocks `batch` as a `batch × length` tensor of token ids.
pub fn ids_tensor(blocks: &Blocks, batch: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let ids: Vec<u32> = batch.iter().flat_map(|&b| blocks.block(b).0.iter().copied()).collect();
    Tensor::from_vec(ids, (batch.len(), blocks.length), device)
}

/// The positions of `batch` whose next token the loss covers: their indices among all the
/// blocks' positions, among the batch's own positions, and the token each predicts.
pub struct Targets {
    pub positions: Vec<usize>,
    pub rows: Tensor,
    pub next: Tensor,
}

impl Targets {
    pub fn of(blocks: &Blocks, batch: &[usize], device: &Device) -> candle_core::Result<Option<Self>> {
        let (mut positions, mut rows, mut next) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &b) in batch.iter().enumerate() {
            let (ids, trained) = blocks.block(b);
            for (i, _) in trained.iter().enumerate().filter(|(_, &t)| t) {
                positions.push(b * blocks.length + i);
                rows.push((row * blocks.length + i) as u32);
                next.push(ids[i + 1]);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let count = rows.len();
        Ok(Some(Self {
            positions,
            rows: Tensor::from_vec(rows, count, device)?,
            next: Tensor::from_vec(next, count, device)?,
        }))
    }

    /// The rows of `values` (`batch × length × width`: logits or hidden states) at the target
    /// positions.
    pub fn select(&self, values: &Tensor) -> candle_core::Result<Tensor> {
        values.flatten_to(1)?.index_select(&self.rows, 0)
    }
}

/// α·D(teacher, student)·T² + (1 − α)·CE(student, data), averaged over the target tokens;
/// `student` holds its logits at them (`tokens × vocab`).
pub fn token_loss(
    student: &Tensor,
    teacher: Option<&TeacherRows>,
    next: &Tensor,
    (kind, temperature, alpha): (LogitLoss, f64, f64),
) -> candle_core::Result<KdLoss> {
    let hard = candle_nn::loss::cross_entropy(student, next)?;
    let Some(teacher) = teacher.filter(|_| alpha > 0.0) else {
        return Ok(KdLoss { total: hard.clone(), soft: None, hard });
    };
    let soft = teacher.divergence(kind, student, temperature)?;
    let total = ((&soft * alpha)? + (&hard * (1.0 - alpha))?)?;
    Ok(KdLoss { total, soft: Some(soft), hard })
}

/// [`token_loss`] from the student's final hidden states at the target tokens (`tokens ×
/// hidden`) and its output weight. On the CPU, for forward KL against the full teacher or for
/// the labels alone, the output layer and the loss run as one op over vocabulary chunks
/// ([`head_loss`]), never holding the student's logits; otherwise through the logits.
pub fn head_token_loss(
    hidden: &Tensor,
    weight: &Tensor,
    teacher: Option<&TeacherRows>,
    next: &Tensor,
    (kind, temperature, alpha): (LogitLoss, f64, f64),
) -> candle_core::Result<KdLoss> {
    let teacher = teacher.filter(|_| alpha > 0.0);
    let fused = hidden.device().is_cpu()
        && match teacher {
            None => true,
            Some(TeacherRows::Full(_)) => kind == LogitLoss::Kl,
            Some(TeacherRows::TopK { .. }) => false,
        };
    if !fused {
        return token_loss(&hidden.matmul(&weight.t()?)?, teacher, next, (kind, temperature, alpha));
    }
    let teacher_logits = match teacher {
        Some(TeacherRows::Full(logits)) => Some(logits),
        _ => None,
    };
    let parts = head_loss(hidden, weight, teacher_logits, &next.to_vec1::<u32>()?, temperature)?;
    let hard = parts.get(1)?;
    if teacher_logits.is_none() {
        return Ok(KdLoss { total: hard.clone(), soft: None, hard });
    }
    let soft = parts.get(0)?;
    let total = ((&soft * alpha)? + (&hard * (1.0 - alpha))?)?;
    Ok(KdLoss { total, soft: Some(soft), hard })
}
