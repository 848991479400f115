//! Causal language-model jobs: a `llama` teacher and student over a `corpus`. They share the
//! job's API, training settings and report with the classifiers, and refuse what does not apply
//! to them (yet): ensembles, layer pairs, sweeps, repeats, augmentation.

use super::*;

/// Teacher logits kept per token without `distill.cache.top_k`.
pub const DEFAULT_TOP_K: usize = 32;

impl JobSpec {
    /// Whether this is a causal language-model job.
    pub fn is_language_model(&self) -> bool {
        self.dataset.source == DatasetSource::Corpus
    }

    /// The corpus's block length (`dataset.max_length`).
    pub fn block_length(&self) -> usize {
        self.dataset.max_length.unwrap_or(DEFAULT_MAX_LENGTH)
    }

    /// Teacher logits kept per token (`None`: every logit, the teacher run at every step).
    pub fn language_top_k(&self) -> Option<usize> {
        self.distill.cache.enabled.then(|| self.distill.cache.top_k.unwrap_or(DEFAULT_TOP_K))
    }

    pub fn generation(&self) -> GenerationSpec {
        self.distill.generation.unwrap_or_default()
    }

    /// Llama models, corpus data and each other: all or none; then what a language-model job
    /// cannot use.
    pub(super) fn validate_language_model(&self) -> Result<(), SpecError> {
        let corpus = self.is_language_model();
        let llama_teachers = self.teacher_specs().iter().filter(|t| t.arch.llama().is_some()).count();
        let student = self.student.arch.llama();
        if !corpus {
            if llama_teachers > 0 || student.is_some() {
                let field = if student.is_some() { "student.arch.kind" } else { "teacher.arch.kind" };
                return Err(SpecError::new(field, "`llama` models learn from `corpus` data (dataset.source)"));
            }
            if self.distill.mode != DistillMode::Token || self.distill.generation.is_some() {
                return Err(SpecError::new(
                    "distill.mode",
                    "sequence-level distillation needs a `corpus` and `llama` models",
                ));
            }
            return Ok(());
        }
        if self.teacher.is_none() || llama_teachers != 1 {
            return Err(SpecError::new("teacher.arch.kind", "a corpus is distilled from one `llama` teacher"));
        }
        let Some(student) = student else {
            return Err(SpecError::new(
                "student.arch.kind",
                "must be `llama`: a corpus trains a causal language model",
            ));
        };
        if student.path.is_some() {
            return Err(SpecError::new(
                "student.arch.path",
                "a llama student derives from its teacher (`layers` or sizes); pre-trained llama students are not supported yet",
            ));
        }
        self.refuse_unsupported_language_parts()?;
        if self.distill.loss == LogitLossKind::Mse {
            return Err(SpecError::new(
                "distill.loss",
                "a causal LM distils distributions: `kl`, `reverse_kl` or `js` (mse would need every logit of 49k-token vocabularies)",
            ));
        }
        if self.language_top_k().is_some() && !self.distill.temperature.is_constant() {
            return Err(SpecError::new(
                "distill.temperature",
                "the teacher's top-k cache needs a constant temperature (or `distill.cache.enabled: false`)",
            ));
        }
        if self.distill.mode == DistillMode::Sequence && self.distill.cache.top_k.is_some() {
            return Err(SpecError::new(
                "distill.cache.top_k",
                "sequence-level distillation trains on the teacher's continuations, not its logits",
            ));
        }
        self.generation().validate(self.block_length())
    }

    fn refuse_unsupported_language_parts(&self) -> Result<(), SpecError> {
        let refusals = [
            (
                self.teacher_specs().iter().any(|t| t.train.is_some()),
                "teacher.train",
                "a llama teacher is used as its file has it",
            ),
            (
                !self.distill.intermediate.is_empty(),
                "distill.intermediate",
                "layer pairs are not distilled for causal LMs yet; the token-level loss is",
            ),
            (
                !self.student.init_from_teacher.is_empty(),
                "student.init_from_teacher",
                "a llama student copies teacher layers through `student.arch.layers` and `init`",
            ),
            (
                self.student.vocabulary == Vocabulary::Trim,
                "student.vocabulary",
                "a causal LM predicts over its whole vocabulary; `trim` does not apply",
            ),
            (self.sweep.is_some(), "sweep", "sweeps are not supported for causal LMs yet"),
            (self.training.repeated(), "training.repeats", "repeated seeds are not supported for causal LMs yet"),
            (self.training.augment.is_some(), "training.augment", "shifts augment images only"),
            (
                self.training.early_stopping.is_some(),
                "training.early_stopping",
                "not supported for causal LMs yet; the report measures held-out perplexity after the last epoch",
            ),
            (self.teachers.is_some(), "teachers", "a causal LM learns from one teacher"),
        ];
        match refusals.into_iter().find(|(refused, _, _)| *refused) {
            Some((_, field, why)) => Err(SpecError::new(field, why)),
            None => Ok(()),
        }
    }
}
