//! Transformer students that are small where the parameters are: the word embeddings. A
//! trimmed vocabulary keeps the rows of the tokens the training texts use (and the exported
//! tokenizer is cut to match); a student narrower than its teacher starts from the teacher's
//! embeddings projected onto their top principal directions instead of random ones.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::engine::data::text::TextDataset;
use crate::engine::models::bert::{BertConfig, Trimmed};
use crate::spec::SpecError;

const FIELD: &str = "student.vocabulary";

/// The vocabulary the training and transfer texts use, with every special token of the
/// tokenizer; only for WordPiece, whose greedy longest-match tokenises the kept texts alike
/// with the cut vocabulary (BPE merges would need their intermediate tokens too).
pub fn trimmed(tokenizer_json: &[u8], text: &TextDataset, vocabulary: usize) -> Result<Trimmed, SpecError> {
    let tokenizer: Value = serde_json::from_slice(tokenizer_json)
        .map_err(|e| SpecError::new(FIELD, format!("the teacher's tokenizer.json is not JSON: {e}")))?;
    let model = &tokenizer["model"];
    if model["type"] != "WordPiece" {
        return Err(SpecError::new(
            FIELD,
            format!(
                "`trim` needs a WordPiece tokenizer (BERT family), whose tokens stay the same with a cut vocabulary; this teacher's is {}",
                model["type"]
            ),
        ));
    }
    let id_of = |token: &Value| model["vocab"].get(token.as_str()?)?.as_u64();
    let unknown = id_of(&model["unk_token"])
        .ok_or_else(|| SpecError::new(FIELD, "the teacher's tokenizer names no unknown token in its vocabulary"))?;
    let special = tokenizer["added_tokens"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_u64());
    let used = text.train.input_ids.iter().chain(&text.transfer.input_ids).map(|&id| u64::from(id));
    let ids: Vec<u32> = used.chain(special).filter(|&id| id < vocabulary as u64).map(|id| id as u32).collect();
    Ok(Trimmed::new(ids, unknown as u32, vocabulary))
}

/// The teacher's `tokenizer.json` with the kept tokens renumbered as the student's rows: the
/// vocabulary, the added tokens, the post-processor's special tokens and the padding id.
pub fn cut_tokenizer(bytes: &[u8], trimmed: &Trimmed) -> std::io::Result<Vec<u8>> {
    let mut tokenizer: Value = serde_json::from_slice(bytes)?;
    let kept = |id: u64| trimmed.kept.binary_search(&(id as u32)).is_ok();
    let row = |id: &Value| id.as_u64().map(|id| Value::from(trimmed.map[id as usize]));
    if let Some(vocab) = tokenizer["model"]["vocab"].as_object_mut() {
        vocab.retain(|_, id| id.as_u64().is_some_and(kept));
        for id in vocab.values_mut() {
            *id = row(id).expect("kept ids are numbers");
        }
    }
    for token in tokenizer["added_tokens"].as_array_mut().into_iter().flatten() {
        if let Some(new) = row(&token["id"]) {
            token["id"] = new;
        }
    }
    let specials = tokenizer["post_processor"]["special_tokens"].as_object_mut();
    for special in specials.into_iter().flat_map(|s| s.values_mut()) {
        for id in special["ids"].as_array_mut().into_iter().flatten() {
            if let Some(new) = row(id) {
                *id = new;
            }
        }
    }
    if let Some(new) = row(&tokenizer["padding"]["pad_id"]) {
        tokenizer["padding"]["pad_id"] = new;
    }
    Ok(serde_json::to_vec(&tokenizer)?)
}

/// `vocab.txt` (one token a line, the line its id) with the kept lines alone.
pub fn cut_vocab_txt(bytes: &[u8], trimmed: &Trimmed) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| trimmed.kept.binary_search(&(*i as u32)).is_ok())
        .map(|(_, l)| l)
        .collect();
    (lines.join("\n") + "\n").into_bytes()
}

const WORD: &str = "embeddings.word_embeddings.weight";
const EMBEDDINGS: [&str; 3] =
    [WORD, "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight"];

/// The student's embedding tables from the teacher's where their shapes differ: the kept rows
/// of a trimmed vocabulary, projected onto the top `hidden_size` principal directions of the
/// teacher's (kept) word embeddings when the student is narrower. Returns how many it set.
pub fn fit_embeddings(
    student: &BertConfig,
    teacher: &BertConfig,
    source: &HashMap<String, Tensor>,
    named: &mut HashMap<String, Tensor>,
) -> candle_core::Result<usize> {
    let (Some(word), true) = (source.get(WORD), student.hidden_size <= teacher.hidden_size) else {
        return Ok(0);
    };
    let word = match &student.trimmed {
        Some(trimmed) => {
            word.index_select(&Tensor::from_slice(&trimmed.kept, trimmed.kept.len(), word.device())?, 0)?
        }
        None => word.clone(),
    };
    let projection = match student.hidden_size < teacher.hidden_size {
        true => Some(principal_directions(&word, student.hidden_size)?),
        false => None,
    };
    let mut fitted = 0;
    for name in EMBEDDINGS {
        let (Some(theirs), Some(ours)) = (source.get(name), named.get(name)) else { continue };
        let theirs = if name == WORD { &word } else { theirs };
        let theirs = match &projection {
            Some(p) => theirs.matmul(p)?,
            None => theirs.clone(),
        };
        if theirs.dims() == ours.dims() && ours.dims() != source[name].dims() {
            named.insert(name.to_string(), theirs.contiguous()?);
            fitted += 1;
        }
    }
    Ok(fitted)
}

/// The `k` right singular vectors of `rows` (n × d) with the largest singular values, as a
/// d × k matrix: the eigenvectors of rowsᵀ·rows, found by cyclic Jacobi rotations.
pub fn principal_directions(rows: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let d = rows.dim(1)?;
    let rows64 = rows.to_dtype(DType::F64)?;
    let gram: Vec<f64> = rows64.t()?.matmul(&rows64)?.flatten_all()?.to_vec1()?;
    let (values, vectors) = symmetric_eigen(gram, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut out = Vec::with_capacity(d * k);
    for i in 0..d {
        out.extend(order[..k].iter().map(|&j| vectors[i * d + j] as f32));
    }
    Tensor::from_vec(out, (d, k), rows.device())
}

/// Eigenvalues and eigenvectors (as the columns of a row-major d × d matrix) of the symmetric
/// row-major `a`.
fn symmetric_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..64 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        if off.sqrt() <= 1e-12 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                rotate(&mut a, &mut v, d, p, q);
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// One Jacobi rotation that zeroes a[p][q] (and a[q][p]), applied to the eigenvectors too.
fn rotate(a: &mut [f64], v: &mut [f64], d: usize, p: usize, q: usize) {
    let apq = a[p * d + q];
    if apq.abs() < f64::MIN_POSITIVE {
        return;
    }
    let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
    for k in 0..d {
        let (akp, akq) = (a[k * d + p], a[k * d + q]);
        a[k * d + p] = c * akp - s * akq;
        a[k * d + q] = s * akp + c * akq;
    }
    for k in 0..d {
        let (apk, aqk) = (a[p * d + k], a[q * d + k]);
        a[p * d + k] = c * apk - s * aqk;
        a[q * d + k] = s * apk + c * aqk;
    }
    for k in 0..d {
        let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
        v[k * d + p] = c * vkp - s * vkq;
        v[k * d + q] = s * vkp + c * vkq;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn a_trimmed_vocabulary_keeps_the_used_and_the_unknown_token_in_order() {
        let trimmed = Trimmed::new([7, 2, 7, 9], 1, 12);
        assert_eq!(&*trimmed.kept, &[1, 2, 7, 9]);
        assert_eq!(trimmed.map[7], 2);
        assert_eq!(trimmed.map[9], 3);
        assert_eq!(trimmed.map[4], 0, "a dropped token is the unknown token");
    }

    #[test]
    fn the_principal_directions_are_orthonormal_and_capture_the_top_variance() {
        // Rows spread mostly along (1, 1, 0, 0) / √2, then (0, 0, 1, -1) / √2, hardly elsewhere.
        let mut rng = crate::engine::rng::Rng::new(3);
        let mut data = Vec::new();
        for _ in 0..400 {
            let (a, b, c) = (rng.normal(3.0), rng.normal(1.0), rng.normal(0.05));
            data.extend([a + c, a - c, b + c, -b + c]);
        }
        let rows = Tensor::from_vec(data, (400, 4), &Device::Cpu).unwrap();
        let p = principal_directions(&rows, 2).unwrap();
        let gram: Vec<Vec<f32>> = p.t().unwrap().matmul(&p).unwrap().to_vec2().unwrap();
        for (i, row) in gram.iter().enumerate() {
            for (j, value) in row.iter().enumerate() {
                assert!((value - f32::from(i == j)).abs() < 1e-5, "{gram:?}");
            }
        }
        let columns: Vec<Vec<f32>> = p.t().unwrap().to_vec2().unwrap();
        let half = std::f32::consts::FRAC_1_SQRT_2;
        let along = |column: &[f32], axis: [f32; 4]| column.iter().zip(axis).map(|(a, b)| a * b).sum::<f32>().abs();
        assert!(along(&columns[0], [half, half, 0.0, 0.0]) > 0.999, "{columns:?}");
        assert!(along(&columns[1], [0.0, 0.0, half, -half]) > 0.999, "{columns:?}");
    }

    #[test]
    fn only_a_wordpiece_tokenizer_is_trimmed() {
        let text = TextDataset {
            name: "t".into(),
            max_length: 4,
            classes: 2,
            label_names: None,
            train: crate::engine::data::text::TextSplit::default(),
            validation: crate::engine::data::text::TextSplit::default(),
            monitor: None,
            transfer: crate::engine::data::text::TextSplit::default(),
            truncated: 0,
        };
        let bpe = serde_json::json!({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}});
        let refused = trimmed(bpe.to_string().as_bytes(), &text, 1).unwrap_err();
        assert_eq!(refused.field, "student.vocabulary");
        assert!(refused.message.contains("WordPiece"), "{}", refused.message);
    }

    #[test]
    fn a_cut_tokenizer_renumbers_its_vocabulary_specials_and_padding() {
        let json = serde_json::json!({
            "added_tokens": [{"id": 0, "content": "[PAD]"}, {"id": 1, "content": "[UNK]"}, {"id": 4, "content": "[CLS]"}],
            "padding": {"pad_id": 0},
            "post_processor": {"special_tokens": {"[CLS]": {"ids": [4]}}},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3, "[CLS]": 4, "c": 5}}
        });
        let trimmed = Trimmed::new([0, 4, 5], 1, 6);
        let cut: Value =
            serde_json::from_slice(&cut_tokenizer(json.to_string().as_bytes(), &trimmed).unwrap()).unwrap();
        assert_eq!(cut["model"]["vocab"], serde_json::json!({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "c": 3}));
        assert_eq!(cut["post_processor"]["special_tokens"]["[CLS]"]["ids"], serde_json::json!([2]));
        assert_eq!(cut["added_tokens"][2]["id"], 2);
        assert_eq!(cut_vocab_txt(b"[PAD]\n[UNK]\na\nb\n[CLS]\nc\n", &trimmed), b"[PAD]\n[UNK]\n[CLS]\nc\n");
    }
}
