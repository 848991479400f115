//! Continuations of prompts, one token at a time over a key/value cache, and ROUGE-L between
//! two continuations.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::engine::models::llama::{KvCache, Llama};
use crate::engine::rng::Rng;
use crate::spec::GenerationSpec;

/// A prompt's continuation and the time its tokens took.
#[derive(Debug, Clone)]
pub struct Continuation {
    pub tokens: Vec<u32>,
    /// Seconds spent producing the tokens after the prompt's own pass.
    pub decode_s: f64,
}

/// Continues `prompt` by up to `settings.max_new_tokens` tokens, stopping after `eos`; greedy
/// unless `settings.sample`, then drawn from softmax(logits / temperature) with `rng`.
pub fn continue_prompt(
    model: &Llama,
    prompt: &[u32],
    settings: &GenerationSpec,
    eos: Option<u32>,
    rng: &mut Rng,
    device: &Device,
) -> candle_core::Result<Continuation> {
    let mut cache = KvCache::default();
    let mut logits = model.step(&Tensor::new(prompt, device)?.unsqueeze(0)?, &mut cache)?;
    let started = Instant::now();
    let mut tokens = Vec::new();
    for _ in 0..settings.max_new_tokens {
        let row = logits.squeeze(0)?.to_vec1::<f32>()?;
        let token = match settings.sample {
            true => sample(&row, settings.temperature, rng),
            false => argmax(&row),
        };
        tokens.push(token);
        if Some(token) == eos || tokens.len() == settings.max_new_tokens {
            break;
        }
        logits = model.step(&Tensor::new(&[token], device)?.unsqueeze(0)?, &mut cache)?;
    }
    Ok(Continuation { tokens, decode_s: started.elapsed().as_secs_f64() })
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(row: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = row.iter().map(|&v| ((v as f64 - max) / temperature).exp()).collect();
    let mut draw = rng.next_f64() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        draw -= w;
        if draw <= 0.0 {
            return i as u32;
        }
    }
    (row.len() - 1) as u32
}

/// ROUGE-L F1 of `candidate` against `reference`, over tokens: the longest common subsequence's
/// length over each one's length, combined harmonically. 1 when both are empty.
pub fn rouge_l(candidate: &[u32], reference: &[u32]) -> f64 {
    if candidate.is_empty() || reference.is_empty() {
        return f64::from(u8::from(candidate.is_empty() && reference.is_empty()));
    }
    let mut previous = vec![0usize; reference.len() + 1];
    for &c in candidate {
        let mut current = vec![0usize; reference.len() + 1];
        for (j, &r) in reference.iter().enumerate() {
            current[j + 1] = if c == r { previous[j] + 1 } else { current[j].max(previous[j + 1]) };
        }
        previous = current;
    }
    let common = previous[reference.len()] as f64;
    if common == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (common / candidate.len() as f64, common / reference.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_counts_the_longest_common_subsequence() {
        assert_eq!(rouge_l(&[1, 2, 3], &[1, 2, 3]), 1.0);
        assert_eq!(rouge_l(&[4, 5], &[1, 2, 3]), 0.0);
        // LCS of [1 2 3 4] and [1 3 4 5 6] is [1 3 4]: P = 3/4, R = 3/5, F1 = 2/3.
        assert!((rouge_l(&[1, 2, 3, 4], &[1, 3, 4, 5, 6]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rouge_l(&[], &[]), 1.0);
        assert_eq!(rouge_l(&[1], &[]), 0.0);
    }

    #[test]
    fn sampling_at_a_low_temperature_takes_the_likeliest_token() {
        let mut rng = Rng::new(3);
        let row = [0.0, 5.0, 1.0];
        assert!((0..50).all(|_| sample(&row, 0.01, &mut rng) == 1));
        assert_eq!(argmax(&row), 1);
    }
}
