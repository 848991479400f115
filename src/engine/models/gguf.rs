//! Llama-family models from GGUF files (llama.cpp's format): every tensor dequantised to f32 at
//! load (candle's quantised matmuls are many times slower than f32 on a CPU, and refuse
//! k-quants for widths such as SmolLM2's 576), renamed to Hugging Face's names, with the
//! query/key row permutation llama.cpp's converter applies undone, so the weights are exactly
//! those of the Hugging Face checkpoint the file was made from. The tokenizer is rebuilt from
//! the file's metadata (byte-level BPE, `tokenizer.ggml.model = gpt2`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::llama::{Llama, LlamaConfig};
use super::ModelError;

/// A GGUF file's header: its model's sizes and its tokenizer, the tensors not yet read.
pub struct Header {
    file: std::fs::File,
    content: Content,
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
}

/// Reads the header of the GGUF file at `path`; refuses a model other than a Llama.
pub fn read_header(path: &Path) -> Result<Header, ModelError> {
    let unreadable = |e: &dyn std::fmt::Display| ModelError::Format(format!("not a readable GGUF file: {e}"));
    let mut file = std::fs::File::open(path).map_err(|e| unreadable(&e))?;
    let content = Content::read(&mut file).map_err(|e| unreadable(&e))?;
    let metadata = Metadata(&content.metadata);
    let architecture = metadata.string("general.architecture")?;
    if architecture != "llama" {
        return Err(ModelError::Architecture(format!(
            "the GGUF file holds a `{architecture}` model; Distillery reads `llama` (Llama, SmolLM, TinyLlama)"
        )));
    }
    let tokenizer = tokenizer(&metadata)?;
    let config = config(&metadata, &content, tokenizer.get_vocab_size(true))?;
    Ok(Header { file, content, config, tokenizer })
}

/// A GGUF file's model and tokenizer.
pub fn load(path: &Path, device: &Device) -> Result<(Llama, Tokenizer), ModelError> {
    let Header { mut file, content, config, tokenizer } = read_header(path)?;
    let mut tensors = HashMap::new();
    for (name, info) in &content.tensor_infos {
        let Some(hf) = hf_name(name) else {
            return Err(ModelError::UnknownTensor(format!("{name} (GGUF)")));
        };
        let dequantised = info
            .read(&mut file, content.tensor_data_offset, device)
            .and_then(|q| q.dequantize(device))
            .map_err(|e| ModelError::Format(format!("GGUF tensor `{name}`: {e}")))?;
        let weight = match hf.rsplit('.').nth(1) {
            Some("q_proj") => unpermute(&dequantised, config.num_heads)?,
            Some("k_proj") => unpermute(&dequantised, config.num_kv_heads)?,
            _ => dequantised,
        };
        tensors.insert(hf, weight);
    }
    Ok((Llama::new(config, tensors)?, tokenizer))
}

/// llama.cpp's converter reorders each head's query/key rows from Hugging Face's halves
/// (first half, second half) to interleaved pairs; this puts them back.
fn unpermute(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = weight.dims2()?;
    weight.reshape((heads, rows / heads / 2, 2, columns))?.transpose(1, 2)?.reshape((rows, columns))
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

struct Metadata<'a>(&'a HashMap<String, Value>);

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&Value, ModelError> {
        self.0.get(key).ok_or_else(|| ModelError::Format(format!("GGUF metadata `{key}` is missing")))
    }

    fn wrong(key: &str, e: candle_core::Error) -> ModelError {
        ModelError::Format(format!("GGUF metadata `{key}`: {e}"))
    }

    fn string(&self, key: &str) -> Result<String, ModelError> {
        self.get(key)?.to_string().cloned().map_err(|e| Self::wrong(key, e))
    }

    fn size(&self, key: &str) -> Result<usize, ModelError> {
        let value = self.get(key)?;
        value.to_u64().or_else(|_| value.to_u32().map(u64::from)).map(|v| v as usize).map_err(|e| Self::wrong(key, e))
    }

    /// GGUF stores f32; the shortest decimal that reads back as it is the value the model's
    /// config had (1e-5, not 9.99999974e-6).
    fn float(&self, key: &str) -> Result<Option<f64>, ModelError> {
        let shortest = |v: f32| v.to_string().parse::<f64>().unwrap_or(f64::from(v));
        self.0.get(key).map(|v| v.to_f32().map(shortest).map_err(|e| Self::wrong(key, e))).transpose()
    }

    fn token(&self, key: &str) -> Result<Option<u32>, ModelError> {
        self.0.get(key).map(|_| self.size(key).map(|v| v as u32)).transpose()
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ModelError> {
        let list = self.get(key)?.to_vec().map_err(|e| Self::wrong(key, e))?;
        list.iter().map(|v| v.to_string().cloned().map_err(|e| Self::wrong(key, e))).collect()
    }
}

fn config(metadata: &Metadata, content: &Content, vocab_size: usize) -> Result<LlamaConfig, ModelError> {
    if metadata.0.contains_key("llama.rope.scaling.type") || content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(ModelError::Architecture(
            "the GGUF model scales its rotary positions (Llama 3.1's long context); that is not supported".into(),
        ));
    }
    let num_heads = metadata.size("llama.attention.head_count")?;
    let config = LlamaConfig {
        vocab_size,
        hidden_size: metadata.size("llama.embedding_length")?,
        intermediate_size: metadata.size("llama.feed_forward_length")?,
        num_layers: metadata.size("llama.block_count")?,
        num_heads,
        num_kv_heads: metadata.size("llama.attention.head_count_kv").unwrap_or(num_heads),
        rms_norm_eps: metadata.float("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: metadata.float("llama.rope.freq_base")?.unwrap_or(10_000.0),
        max_position_embeddings: metadata.size("llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        bos_token_id: metadata.token("tokenizer.ggml.bos_token_id")?,
        eos_token_id: metadata.token("tokenizer.ggml.eos_token_id")?,
    };
    config.check()?;
    Ok(config)
}

/// GGUF's token type of a control (special) token.
const CONTROL_TOKEN: i32 = 3;

/// The byte-level BPE tokenizer the metadata describes, with its control tokens special.
fn tokenizer(metadata: &Metadata) -> Result<Tokenizer, ModelError> {
    let model = metadata.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::Architecture(format!(
            "the GGUF tokenizer is `{model}`; Distillery rebuilds byte-level BPE (`gpt2`) tokenizers"
        )));
    }
    let tokens = metadata.strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = metadata
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Format(format!("GGUF merge `{m}` is not two tokens")))
        })
        .collect::<Result<_, _>>()?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Format(format!("GGUF tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = metadata.0.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        // SmolLM's tokenizer.json splits digits one by one before the byte-level split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "" | "default" | "gpt2" => byte_level.into(),
        // Llama 3's, Qwen's and others' split with regexes of their own; rebuilt as GPT-2's they
        // would tokenise some texts differently, silently.
        other => {
            return Err(ModelError::Architecture(format!(
                "the GGUF tokenizer's pre-tokenizer `{other}` is not one Distillery rebuilds (`smollm`, `gpt2`); give the model as a Hugging Face folder with its tokenizer.json"
            )))
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(byte_level));
    let types = match metadata.0.get("tokenizer.ggml.token_type") {
        Some(list) => list
            .to_vec()
            .map_err(|e| Metadata::wrong("tokenizer.ggml.token_type", e))?
            .iter()
            .map(|v| v.to_i32().unwrap_or(1))
            .collect(),
        None => Vec::new(),
    };
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &kind)| kind == CONTROL_TOKEN)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| ModelError::Format(format!("GGUF tokenizer: {e}")))?;
    Ok(tokenizer)
}
