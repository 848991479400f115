//! Transformers: the encoder against `transformers` (fixtures by `scripts/make_bert_fixtures.py`:
//! tiny random BERT, RoBERTa and DistilBERT folders and their outputs and gradients), and text
//! jobs end to end with the tiny BERT as the teacher.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use distillery::engine::bert::{self, BertConfig};
use distillery::engine::model::{Input, Net};
use distillery::spec::{ArchSpec, TransformerArch};
use serde_json::Value;

fn fixtures() -> Value {
    serde_json::from_slice(&std::fs::read("tests/fixtures/bert.json").unwrap()).unwrap()
}

fn floats(t: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let data = t["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    (shape, data)
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32)).collect()
}

/// Largest absolute difference, relative to the largest expected magnitude.
fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= tolerance * scale, "{what}: max difference {worst} against scale {scale}");
}

fn load(folder: &str) -> (BertConfig, Net) {
    let (config, tensors) = bert::load_folder(Path::new(folder), &Device::Cpu).unwrap();
    let input = Input { features: 36, image: None };
    let net = Net::transformer(&ArchSpec::Transformer(TransformerArch::default()), config.clone(), input, tensors, &Device::Cpu).unwrap();
    (config, net)
}

fn packed(case: &Value) -> Tensor {
    let rows = bert::pack(&ints(&case["input_ids"]), &ints(&case["token_type_ids"]), &ints(&case["attention_mask"]), 12);
    Tensor::from_vec(rows, (3, 36), &Device::Cpu).unwrap()
}

#[test]
fn encoders_match_transformers_outputs() {
    let fixtures = fixtures();
    for (name, case) in fixtures["models"].as_object().unwrap() {
        let (config, net) = load(case["folder"].as_str().unwrap());
        for fused in [true, false] {
            let net = net.clone().with_fused_kernels(fused);
            let mut want: Vec<String> = vec!["embeddings".into(), "pooled".into()];
            for i in 0..config.num_layers {
                want.push(format!("layers.{i}"));
                want.push(format!("attentions.{i}"));
            }
            let names: Vec<&str> = want.iter().map(String::as_str).collect();
            let out = net.forward(&packed(case), None, &names).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let what = |part: &str| format!("{name} {part} (fused {fused})");
            assert_close(&what("logits"), &flat(&out.logits), &floats(&case["logits"]).1, 1e-4);
            assert_close(&what("mean_pooled"), &flat(&out.features["pooled"]), &floats(&case["mean_pooled"]).1, 1e-4);
            let (shape, hidden) = floats(&case["hidden_states"]);
            let per_layer = hidden.len() / shape[0];
            for layer in 0..shape[0] {
                let key = if layer == 0 { "embeddings".to_string() } else { format!("layers.{}", layer - 1) };
                assert_close(&what(&key), &flat(&out.features[&key]), &hidden[layer * per_layer..(layer + 1) * per_layer], 1e-4);
            }
            let (shape, attentions) = floats(&case["attentions"]);
            let per_layer = attentions.len() / shape[0];
            for layer in 0..shape[0] {
                let key = format!("attentions.{layer}");
                assert_close(&what(&key), &flat(&out.features[&key]), &attentions[layer * per_layer..(layer + 1) * per_layer], 1e-4);
            }
        }
    }
}

#[test]
fn bert_gradients_match_transformers_and_reach_every_parameter() {
    let fixtures = fixtures();
    let case = &fixtures["models"]["tiny-bert"];
    let (config, net) = load(case["folder"].as_str().unwrap());
    let labels = Tensor::new(case["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    for fused in [true, false] {
        let vars: Vec<Var> = net.to_vars().unwrap();
        let model = net.with_vars(&vars, &[]).with_fused_kernels(fused);
        let logits = model.forward(&packed(case), None, &[]).unwrap().logits;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let expected_loss = case["loss"].as_f64().unwrap() as f32;
        assert!((loss.to_scalar::<f32>().unwrap() - expected_loss).abs() < 1e-4 * expected_loss.abs().max(1.0));
        let grads = loss.backward().unwrap();
        let by_name: HashMap<String, Tensor> = model
            .named()
            .into_iter()
            .zip(&vars)
            .map(|((name, _), var)| (name, grads.get(var.as_tensor()).cloned().unwrap_or_else(|| var.as_tensor().zeros_like().unwrap())))
            .collect();
        for (hf_name, expected) in case["grads"].as_object().unwrap() {
            let ours = config.our_name(hf_name);
            let got = by_name[&ours].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_close(&format!("grad {hf_name} (fused {fused})"), &got, &floats(expected).1, 1e-3);
        }
        // Every tensor learns: the word embeddings of ids absent from the batch are the only
        // zero rows, so each tensor must have some nonzero gradient.
        for (name, grad) in &by_name {
            let largest = grad.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(largest > 0.0, "{name} receives no gradient (fused {fused})");
        }
    }
}

#[test]
fn hugging_face_names_round_trip() {
    for folder in ["tests/fixtures/tiny-bert", "tests/fixtures/tiny-roberta", "tests/fixtures/tiny-distilbert"] {
        let (config, _) = load(folder);
        let (raw, _) = distillery::engine::files::read_safetensors(&PathBuf::from(folder).join("model.safetensors"), &Device::Cpu).unwrap();
        let mut theirs: Vec<String> = raw.keys().cloned().collect();
        let mut ours: Vec<String> = config.tensor_shapes().into_iter().map(|(n, _)| config.hf_name(&n)).collect();
        theirs.sort();
        ours.sort();
        // transformers may store buffers (position ids) too; every tensor we write must be theirs.
        assert!(ours.iter().all(|n| theirs.contains(n)), "{folder}: ours {ours:?}\ntheirs {theirs:?}");
    }
}
