//! `dataset`: where the samples come from, and how they are split.

use serde::{Deserialize, Serialize};

use super::*;

/// Where a dataset's samples come from; on the wire, the strings `builtin:digits`, `csv`, `idx`,
/// `text` and `corpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatasetSource {
    /// The 8×8 handwritten digits compiled into the binary.
    BuiltinDigits,
    /// A CSV file of numeric features and a label column.
    Csv,
    /// IDX files (the MNIST layout), raw or gzipped.
    Idx,
    /// CSV, TSV or JSON Lines texts, tokenised by the teacher's tokenizer.
    Text,
    /// A causal language model's corpus: plain text (documents between blank lines or `%`
    /// lines) or JSON Lines (`text`, or `prompt` and `response`).
    Corpus,
}

impl DatasetSource {
    const ALL: [DatasetSource; 5] = [
        DatasetSource::BuiltinDigits,
        DatasetSource::Csv,
        DatasetSource::Idx,
        DatasetSource::Text,
        DatasetSource::Corpus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetSource::BuiltinDigits => "builtin:digits",
            DatasetSource::Csv => "csv",
            DatasetSource::Idx => "idx",
            DatasetSource::Text => "text",
            DatasetSource::Corpus => "corpus",
        }
    }
}

impl std::fmt::Display for DatasetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for DatasetSource {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        DatasetSource::ALL.into_iter().find(|source| source.as_str() == text).ok_or_else(|| {
            format!("unknown source `{text}`; expected `builtin:digits`, `csv`, `idx`, `text` or `corpus`")
        })
    }
}

impl From<DatasetSource> for String {
    fn from(source: DatasetSource) -> String {
        source.as_str().to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// `builtin:digits`, `csv`, `idx` or `text`.
    pub source: DatasetSource,
    /// CSV: the training file, relative to the data root's `datasets/` folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// CSV: an optional separate held-out file with the same columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_path: Option<String>,
    /// CSV: the name of the label column (default `label`). Text: the label column; without one
    /// the texts are unlabelled and only embedding distillation applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    /// Text: the column (CSV/TSV header or JSONL key) holding the text (default `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Text: a second text column for sentence-pair tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair_column: Option<String>,
    /// Text: tokens per sequence after truncation and padding (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// IDX: training images and labels files (raw or .gz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// IDX: optional held-out images and labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<String>,
    /// Fraction of the data held out for validation when there is no test file.
    #[serde(default = "default_validation_split")]
    pub validation_split: f64,
    /// Number of classes; by default the largest integer label + 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Use only the first N training samples (after the split), e.g. for quick trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Keep the labels of only the first N training samples (after the split and `limit`); the
    /// other training samples join the transfer set, unlabelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelled: Option<usize>,
    /// Extra samples without labels, in the labelled data's format: the distilled student
    /// learns from the teachers on them; the teachers and the baseline never see them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSpec>,
}

/// `dataset.transfer`: one file of unlabelled samples, with the labelled samples' features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSpec {
    /// CSV: the feature columns of the training file (a label column, if there, is ignored).
    /// Text: the training file's text (and pair) column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// IDX: an images file of the training images' shape, without a labels file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
}

impl TransferSpec {
    fn validate(&self, source: DatasetSource) -> Result<(), SpecError> {
        let (wanted, unused) = match source {
            DatasetSource::Idx => (("images", &self.images), ("path", &self.path)),
            DatasetSource::Csv | DatasetSource::Text => (("path", &self.path), ("images", &self.images)),
            DatasetSource::BuiltinDigits => {
                return Err(SpecError::new(
                    "dataset.transfer",
                    "the built-in digits have no transfer file; use `dataset.labelled` to unlabel a part of them",
                ))
            }
            DatasetSource::Corpus => {
                return Err(SpecError::new(
                    "dataset.transfer",
                    "a corpus has no labels to leave out: every document trains the student already",
                ))
            }
        };
        if unused.1.is_some() {
            return Err(SpecError::new(
                format!("dataset.transfer.{}", unused.0),
                format!("not used by source `{source}`; name the file in `dataset.transfer.{}`", wanted.0),
            ));
        }
        let field = format!("dataset.transfer.{}", wanted.0);
        let path =
            wanted.1.as_deref().ok_or_else(|| SpecError::new(&field, format!("required for source `{source}`")))?;
        validate_relative_path(path, &field)
    }
}

impl DatasetSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        let allowed: &[&str] = match self.source {
            DatasetSource::BuiltinDigits => &[],
            DatasetSource::Csv => &["path", "test_path", "label_column"],
            DatasetSource::Idx => &["images", "labels", "test_images", "test_labels"],
            DatasetSource::Text => {
                &["path", "test_path", "label_column", "text_column", "text_pair_column", "max_length"]
            }
            DatasetSource::Corpus => &["path", "test_path", "text_column", "max_length"],
        };
        let given = [
            ("path", &self.path),
            ("test_path", &self.test_path),
            ("label_column", &self.label_column),
            ("images", &self.images),
            ("labels", &self.labels),
            ("test_images", &self.test_images),
            ("test_labels", &self.test_labels),
            ("text_column", &self.text_column),
            ("text_pair_column", &self.text_pair_column),
        ];
        if self.max_length.is_some() && !allowed.contains(&"max_length") {
            return Err(SpecError::new("dataset.max_length", format!("not used by source `{}`", self.source)));
        }
        if let Some(length) = self.max_length {
            if !(4..=MAX_SEQUENCE_LENGTH).contains(&length) {
                return Err(SpecError::new("dataset.max_length", format!("must be within [4, {MAX_SEQUENCE_LENGTH}]")));
            }
        }
        for (name, value) in given {
            if value.is_some() && !allowed.contains(&name) {
                return Err(SpecError::new(format!("dataset.{name}"), format!("not used by source `{}`", self.source)));
            }
        }
        let required: &[(&str, &Option<String>)] = match self.source {
            DatasetSource::Csv | DatasetSource::Text | DatasetSource::Corpus => &[("path", &self.path)],
            DatasetSource::Idx => &[("images", &self.images), ("labels", &self.labels)],
            DatasetSource::BuiltinDigits => &[],
        };
        for (name, value) in required {
            if value.is_none() {
                return Err(SpecError::new(
                    format!("dataset.{name}"),
                    format!("required for source `{}`", self.source),
                ));
            }
        }
        if self.test_images.is_some() != self.test_labels.is_some() {
            return Err(SpecError::new("dataset.test_labels", "`test_images` and `test_labels` go together"));
        }
        let columns = ["label_column", "text_column", "text_pair_column"];
        for (name, value) in given.iter().filter(|(name, _)| !columns.contains(name)) {
            if let Some(path) = value {
                validate_relative_path(path, &format!("dataset.{name}"))?;
            }
        }
        let split = self.validation_split;
        if !(split.is_finite() && split > 0.0 && split < 1.0) {
            return Err(SpecError::new("dataset.validation_split", format!("must be within (0, 1), got {split}")));
        }
        if let Some(classes) = self.num_classes {
            if !(2..=100_000).contains(&classes) {
                return Err(SpecError::new("dataset.num_classes", "must be within [2, 100000]"));
            }
        }
        if self.limit == Some(0) {
            return Err(SpecError::new("dataset.limit", "must be at least 1"));
        }
        if self.labelled == Some(0) {
            return Err(SpecError::new("dataset.labelled", "must be at least 1"));
        }
        if let Some(transfer) = &self.transfer {
            transfer.validate(self.source)?;
        }
        Ok(())
    }

    pub fn has_test_file(&self) -> bool {
        self.test_path.is_some() || self.test_images.is_some()
    }
}

/// Tokens a text (or a corpus's block) holds without `max_length`.
pub const DEFAULT_MAX_LENGTH: usize = 128;

pub(super) fn default_validation_split() -> f64 {
    0.2
}

/// How a spec names an uploaded file: `file:<id>`, or `file:<id>/<path inside its archive>`.
pub const FILE_SCHEME: &str = "file:";

/// The id of `file:<id>`: a UUID in its hyphenated form (any letter case), the only form the
/// service gives out, so a text search of stored specs finds every use of a file.
pub fn file_id(text: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(text).ok().filter(|id| id.to_string().eq_ignore_ascii_case(text))
}

/// Paths in a spec are relative to the data root, or name an upload (`file:<id>[/<path>]`);
/// refuse anything that could leave either.
pub(super) fn validate_relative_path(path: &str, field: &str) -> Result<(), SpecError> {
    if let Some(rest) = path.strip_prefix(FILE_SCHEME) {
        let (id, inner) = rest.split_once('/').map_or((rest, None), |(id, inner)| (id, Some(inner)));
        if file_id(id).is_none() || inner.is_some_and(|inner| !is_plain_relative(inner)) {
            return Err(SpecError::new(
                field,
                format!("`{path}` must be `file:<id>` or `file:<id>/<path inside it>`, without `..`"),
            ));
        }
        return Ok(());
    }
    if !is_plain_relative(path) {
        return Err(SpecError::new(
            field,
            format!("`{path}` must be a relative path inside the data root, without `..`"),
        ));
    }
    Ok(())
}

/// Not empty, not absolute, and only plain names between the slashes.
fn is_plain_relative(path: &str) -> bool {
    let p = std::path::Path::new(path);
    !(p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) || path.is_empty())
}
