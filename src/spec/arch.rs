//! `arch`: the networks a teacher or student may be.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum ArchSpec {
    Mlp {
        hidden: Vec<usize>,
        #[serde(default)]
        dropout: f32,
    },
    /// Conv blocks over image data, then an MLP head (`hidden` may be empty).
    Conv {
        blocks: Vec<ConvBlock>,
        #[serde(default)]
        hidden: Vec<usize>,
        #[serde(default)]
        dropout: f32,
    },
    /// A BERT-family encoder. A teacher names a Hugging Face folder (`path`); a student derives
    /// from its teacher (the teacher layers it keeps, `layers`, or a smaller config), or is a
    /// separately pre-trained folder of its own (`path`), with its own tokenizer.
    Transformer(TransformerArch),
    /// A Llama-family causal language model (Llama, SmolLM, TinyLlama) over `corpus` data. A
    /// teacher names a Hugging Face folder or a `.gguf` file (`path`); a student derives from
    /// its teacher as a transformer student does, `num_kv_heads` among its sizes.
    Llama(TransformerArch),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerArch {
    /// A folder under the data root with `config.json`, `model.safetensors` and
    /// `tokenizer.json`: the teacher's, or a pre-trained student's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Student: the teacher layers it keeps, in order (DistilBERT's every other layer: [0, 2, 4]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// Student sizes; each defaults to the teacher's (layers: half of the teacher's, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// Llama student: key/value heads (grouped-query attention); they must divide `num_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_kv_heads: Option<usize>,
    /// Student: `teacher` copies every teacher tensor whose shape fits (layer `i` from the
    /// teacher layer it maps to); `random` starts from scratch.
    #[serde(default)]
    pub init: TransformerInit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformerInit {
    #[default]
    Teacher,
    Random,
}

impl ArchSpec {
    pub fn hidden(&self) -> &[usize] {
        match self {
            ArchSpec::Mlp { hidden, .. } | ArchSpec::Conv { hidden, .. } => hidden,
            ArchSpec::Transformer(_) | ArchSpec::Llama(_) => &[],
        }
    }

    pub fn blocks(&self) -> &[ConvBlock] {
        match self {
            ArchSpec::Conv { blocks, .. } => blocks,
            _ => &[],
        }
    }

    pub fn dropout(&self) -> f32 {
        match self {
            ArchSpec::Mlp { dropout, .. } | ArchSpec::Conv { dropout, .. } => *dropout,
            ArchSpec::Transformer(_) | ArchSpec::Llama(_) => 0.0,
        }
    }

    pub fn transformer(&self) -> Option<&TransformerArch> {
        match self {
            ArchSpec::Transformer(t) => Some(t),
            _ => None,
        }
    }

    pub fn llama(&self) -> Option<&TransformerArch> {
        match self {
            ArchSpec::Llama(t) => Some(t),
            _ => None,
        }
    }
}

/// conv (k×k, stride, zero padding) → batch norm (optional) → ReLU → pooling (optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvBlock {
    pub channels: usize,
    pub kernel: usize,
    #[serde(default = "default_one")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolKind>,
    /// Pooling window and stride.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    Avg,
}

pub(super) fn validate_arch(arch: &ArchSpec, field: &str) -> Result<(), SpecError> {
    match arch {
        ArchSpec::Mlp { hidden, dropout } => {
            if hidden.is_empty() {
                return Err(SpecError::new(format!("{field}.hidden"), "an MLP needs at least one hidden layer"));
            }
            if hidden.len() > MAX_LAYERS {
                return Err(SpecError::new(format!("{field}.hidden"), format!("at most {MAX_LAYERS} hidden layers")));
            }
            if let Some(i) = hidden.iter().position(|&w| w == 0 || w > MAX_LAYER_WIDTH) {
                return Err(SpecError::new(
                    format!("{field}.hidden[{i}]"),
                    format!("layer width must be within [1, {MAX_LAYER_WIDTH}]"),
                ));
            }
            validate_dropout(*dropout, field)?;
        }
        ArchSpec::Conv { blocks, hidden, dropout } => {
            if blocks.is_empty() || blocks.len() > MAX_LAYERS {
                return Err(SpecError::new(format!("{field}.blocks"), format!("give 1 to {MAX_LAYERS} conv blocks")));
            }
            for (i, b) in blocks.iter().enumerate() {
                let f = format!("{field}.blocks[{i}]");
                if b.channels == 0 || b.channels > MAX_LAYER_WIDTH {
                    return Err(SpecError::new(
                        format!("{f}.channels"),
                        format!("must be within [1, {MAX_LAYER_WIDTH}]"),
                    ));
                }
                if b.kernel == 0 || b.kernel > 15 {
                    return Err(SpecError::new(format!("{f}.kernel"), "must be within [1, 15]"));
                }
                if b.stride == 0 || b.stride > b.kernel.max(1) {
                    return Err(SpecError::new(format!("{f}.stride"), "must be within [1, kernel]"));
                }
                if b.padding >= b.kernel {
                    return Err(SpecError::new(format!("{f}.padding"), "must be smaller than the kernel"));
                }
                if !(2..=8).contains(&b.pool_size) {
                    return Err(SpecError::new(format!("{f}.pool_size"), "must be within [2, 8]"));
                }
            }
            if hidden.len() > MAX_LAYERS {
                return Err(SpecError::new(format!("{field}.hidden"), format!("at most {MAX_LAYERS} hidden layers")));
            }
            if let Some(i) = hidden.iter().position(|&w| w == 0 || w > MAX_LAYER_WIDTH) {
                return Err(SpecError::new(
                    format!("{field}.hidden[{i}]"),
                    format!("layer width must be within [1, {MAX_LAYER_WIDTH}]"),
                ));
            }
            validate_dropout(*dropout, field)?;
        }
        ArchSpec::Transformer(t) | ArchSpec::Llama(t) => {
            if t.num_kv_heads.is_some() && matches!(arch, ArchSpec::Transformer(_)) {
                return Err(SpecError::new(
                    format!("{field}.num_kv_heads"),
                    "applies to `llama` models (grouped-query attention) only",
                ));
            }
            if let Some(path) = &t.path {
                validate_relative_path(path, &format!("{field}.path"))?;
            }
            if let Some(layers) = &t.layers {
                if layers.is_empty() || layers.len() > MAX_LAYERS {
                    return Err(SpecError::new(format!("{field}.layers"), format!("keep 1 to {MAX_LAYERS} layers")));
                }
                if t.num_layers.is_some_and(|n| n != layers.len()) {
                    return Err(SpecError::new(
                        format!("{field}.num_layers"),
                        "must equal the number of `layers` kept (or be left out)",
                    ));
                }
            }
            let sizes = [
                ("num_layers", t.num_layers),
                ("hidden_size", t.hidden_size),
                ("num_heads", t.num_heads),
                ("intermediate_size", t.intermediate_size),
                ("num_kv_heads", t.num_kv_heads),
            ];
            for (name, value) in sizes {
                if value.is_some_and(|v| v == 0 || v > MAX_LAYER_WIDTH) {
                    return Err(SpecError::new(
                        format!("{field}.{name}"),
                        format!("must be within [1, {MAX_LAYER_WIDTH}]"),
                    ));
                }
            }
        }
    }
    Ok(())
}

pub(super) fn validate_dropout(dropout: f32, field: &str) -> Result<(), SpecError> {
    if !(dropout.is_finite() && (0.0..1.0).contains(&dropout)) {
        return Err(SpecError::new(format!("{field}.dropout"), format!("must be within [0, 1), got {dropout}")));
    }
    Ok(())
}

pub(super) fn default_one() -> usize {
    1
}
pub(super) fn default_pool_size() -> usize {
    2
}
