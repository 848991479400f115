//! The teacher's next-token distributions and the token-level losses.
//!
//! A full vocabulary makes the teacher's output layer the cost of distillation, so its logits
//! over the training blocks are computed once and kept as the top k per position with one
//! filler logit that carries the rest's probability exactly (as the classifiers' top-k cache
//! does), in a file of the job folder: memory stays flat whatever the corpus, and a resumed job
//! reads the file instead of running the teacher again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::corpus::Blocks;
use crate::engine::models::llama::Llama;
use crate::engine::train::loss::{logit_loss, LogitLoss};
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

    /// The teacher's logits at `positions` (indices into the training blocks' positions), as
    /// dense rows: the filler everywhere, the top k in their places.
    pub fn rows(&self, positions: &[usize], device: &Device) -> Result<Tensor, EngineError> {
        let record = Self::record_bytes(self.k);
        let mut bytes = vec![0u8; record];
        let mut out = Vec::with_capacity(positions.len() * self.vocab);
        for &position in positions {
            self.file.read_exact_at(&mut bytes, (position * record) as u64)?;
            let word = |i: usize| [bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]];
            let start = out.len();
            out.resize(start + self.vocab, f32::from_le_bytes(word(2 * self.k)));
            for j in 0..self.k {
                let id = u32::from_le_bytes(word(self.k + j)) as usize;
                if id >= self.vocab {
                    return Err(EngineError::Corrupt(format!("{} holds token id {id}", self.path.display())));
                }
                out[start + id] = f32::from_le_bytes(word(j));
            }
        }
        Ok(Tensor::from_vec(out, (positions.len(), self.vocab), device)?)
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

    /// The rows of `logits` (`batch × length × vocab`) at the target positions.
    pub fn select(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        logits.flatten_to(1)?.index_select(&self.rows, 0)
    }
}

/// The parts of one step's loss.
pub struct TokenLoss {
    pub total: Tensor,
    /// The divergence to the teacher (× T²), before weighting by α.
    pub soft: Option<Tensor>,
    /// Next-token cross-entropy on the data, before weighting by 1 − α.
    pub hard: Tensor,
}

/// α·D(teacher, student)·T² + (1 − α)·CE(student, data), averaged over the target tokens;
/// `student` and `teacher` are their rows (`tokens × vocab`).
pub fn token_loss(
    student: &Tensor,
    teacher: Option<&Tensor>,
    next: &Tensor,
    (kind, temperature, alpha): (LogitLoss, f64, f64),
) -> candle_core::Result<TokenLoss> {
    let hard = candle_nn::loss::cross_entropy(student, next)?;
    let Some(teacher) = teacher.filter(|_| alpha > 0.0) else {
        return Ok(TokenLoss { total: hard.clone(), soft: None, hard });
    };
    let soft = logit_loss(kind, student, &[(teacher.clone(), 1.0)], temperature)?;
    let total = ((&soft * alpha)? + (&hard * (1.0 - alpha))?)?;
    Ok(TokenLoss { total, soft: Some(soft), hard })
}
