//! A causal LM's corpus: documents read from plain text or JSON Lines, tokenised, split into
//! training and held-out documents, and packed into fixed-length blocks with an end-of-sequence
//! token between documents. Each position of a block records whether the token after it is one
//! the loss covers: every token of plain text, only the response of a prompt/response pair.

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::engine::data::root::DataRoot;
use crate::engine::rng::Rng;
use crate::spec::{GenerationSpec, JobSpec, SpecError};

/// The most documents and tokens a corpus may hold.
pub const MAX_DOCUMENTS: usize = 1_000_000;
pub const MAX_TOKENS: usize = 20_000_000;

/// One document: a prompt the loss skips (empty for plain text) and the body it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub prompt: Vec<u32>,
    pub body: Vec<u32>,
}

#[derive(Debug)]
pub struct Corpus {
    pub train: Vec<Document>,
    pub held_out: Vec<Document>,
}

impl Corpus {
    pub fn tokens(&self) -> usize {
        self.train.iter().chain(&self.held_out).map(|d| d.prompt.len() + d.body.len()).sum()
    }
}

/// Reads `dataset.path` (and `dataset.test_path`, the held-out documents, when given).
pub fn read(spec: &JobSpec, root: &DataRoot, tokenizer: &Tokenizer) -> Result<Corpus, SpecError> {
    let path = spec.dataset.path.as_deref().ok_or_else(|| SpecError::new("dataset.path", "required"))?;
    let column = spec.dataset.text_column.as_deref().unwrap_or("text");
    let mut documents = read_file(root, path, "dataset.path", column, tokenizer)?;
    let held_out = match &spec.dataset.test_path {
        Some(test) => read_file(root, test, "dataset.test_path", column, tokenizer)?,
        None => {
            Rng::new(spec.training.seed).shuffle(&mut documents);
            let held = ((documents.len() as f64 * spec.dataset.validation_split).round() as usize).max(1);
            if held >= documents.len() {
                return Err(SpecError::new(
                    "dataset.path",
                    format!("{} document(s): too few to hold some out and train on the rest", documents.len()),
                ));
            }
            documents.split_off(documents.len() - held)
        }
    };
    Ok(Corpus { train: documents, held_out })
}

fn read_file(
    root: &DataRoot,
    path: &str,
    field: &str,
    column: &str,
    tokenizer: &Tokenizer,
) -> Result<Vec<Document>, SpecError> {
    let bytes = root.read(path, field)?;
    let text = String::from_utf8(bytes).map_err(|_| SpecError::new(field, format!("`{path}` is not UTF-8 text")))?;
    let raw = match root.format_name(path).ends_with(".jsonl") {
        true => json_lines(&text, column, field)?,
        false => plain_documents(&text).into_iter().map(|body| (None, body)).collect(),
    };
    if raw.is_empty() {
        return Err(SpecError::new(field, format!("`{path}` holds no documents")));
    }
    if raw.len() > MAX_DOCUMENTS {
        return Err(SpecError::new(field, format!("`{path}` holds {} documents; at most {MAX_DOCUMENTS}", raw.len())));
    }
    let encode = |text: &str| -> Result<Vec<u32>, SpecError> {
        let encoding =
            tokenizer.encode(text, false).map_err(|e| SpecError::new(field, format!("cannot tokenise: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    };
    let mut documents = Vec::with_capacity(raw.len());
    let mut tokens = 0usize;
    for (prompt, body) in raw {
        let document =
            Document { prompt: prompt.as_deref().map(encode).transpose()?.unwrap_or_default(), body: encode(&body)? };
        tokens += document.prompt.len() + document.body.len();
        if tokens > MAX_TOKENS {
            return Err(SpecError::new(field, format!("`{path}` holds more than {MAX_TOKENS} tokens")));
        }
        if !document.body.is_empty() {
            documents.push(document);
        }
    }
    Ok(documents)
}

/// Plain text: documents are separated by blank lines or by lines holding only `%` (the
/// `fortune` files' format); each keeps its line breaks.
pub fn plain_documents(text: &str) -> Vec<String> {
    let mut documents = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() || line.trim_end() == "%" {
            if !current.is_empty() {
                documents.push(current.join("\n"));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    documents
}

/// JSON Lines: `{"<column>": …}` (plain documents) or `{"prompt": …, "response": …}`.
fn json_lines(text: &str, column: &str, field: &str) -> Result<Vec<(Option<String>, String)>, SpecError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |m: &str| SpecError::new(field, format!("line {}: {m}", i + 1));
        let value: Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let string = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        match (string("prompt"), string("response"), string(column)) {
            (Some(prompt), Some(response), _) => out.push((Some(prompt), response)),
            (None, None, Some(body)) => out.push((None, body)),
            _ => return Err(bad(&format!("needs a string `{column}`, or `prompt` and `response`"))),
        }
    }
    Ok(out)
}

/// Fixed-length blocks of token ids; `trained[i]` says whether the loss covers predicting the
/// token after position `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    pub length: usize,
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl Blocks {
    pub fn count(&self) -> usize {
        self.ids.len() / self.length
    }

    pub fn block(&self, i: usize) -> (&[u32], &[bool]) {
        let span = i * self.length..(i + 1) * self.length;
        (&self.ids[span.clone()], &self.trained[span])
    }

    /// Positions whose next token the loss covers.
    pub fn targets(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

/// Packs the documents one after another, `eos` after each, into blocks of `length`; the last
/// block is filled with `eos` that the loss skips. At most `limit` blocks.
pub fn pack(documents: &[Document], length: usize, eos: u32, limit: Option<usize>) -> Blocks {
    // (token, whether it is a target: predicted by the position before it).
    let stream = documents.iter().flat_map(|d| {
        let prompt = d.prompt.iter().map(|&t| (t, false));
        prompt.chain(d.body.iter().map(|&t| (t, true))).chain(std::iter::once((eos, true)))
    });
    let mut ids = Vec::new();
    let mut is_target = Vec::new();
    for (token, target) in stream {
        ids.push(token);
        is_target.push(target);
        if limit.is_some_and(|l| ids.len() >= l * length) {
            break;
        }
    }
    let padded = ids.len().div_ceil(length) * length;
    ids.resize(padded, eos);
    is_target.resize(padded, false);
    // Position i predicts token i + 1 of the same block; a block's last position predicts nothing.
    let trained = (0..padded).map(|i| (i + 1) % length != 0 && is_target[i + 1]).collect();
    Blocks { length, ids, trained }
}

/// Up to `count` prompts from `documents`, each cut so that it and `max_new_tokens` more fit a
/// block of `block_length` (see [`prompt_of`]).
pub fn prompts(documents: &[Document], settings: &GenerationSpec, block_length: usize, count: usize) -> Vec<Vec<u32>> {
    let room = block_length - settings.max_new_tokens;
    documents.iter().filter_map(|d| prompt_of(d, settings.prompt_tokens, room)).take(count).collect()
}

/// A document's prompt for generation: its own prompt, or the first `prompt_tokens` tokens of
/// its body (`None` when the body is no longer than that), cut to the last `room` tokens.
pub fn prompt_of(document: &Document, prompt_tokens: usize, room: usize) -> Option<Vec<u32>> {
    let prompt = match document.prompt.is_empty() {
        false => document.prompt.clone(),
        true if document.body.len() > prompt_tokens => document.body[..prompt_tokens].to_vec(),
        true => return None,
    };
    Some(prompt[prompt.len().saturating_sub(room)..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_splits_at_blank_and_percent_lines() {
        let text = "one\nline two\n%\nthree\n\n\nfour\n%\n";
        assert_eq!(plain_documents(text), ["one\nline two", "three", "four"]);
    }

    #[test]
    fn packing_marks_only_response_targets_and_pads_the_tail() {
        let docs = [Document { prompt: vec![], body: vec![10, 11] }, Document { prompt: vec![20, 21], body: vec![22] }];
        let blocks = pack(&docs, 4, 0, None);
        // Stream: 10 11 0 | 20 21 22 0 → blocks [10 11 0 20] [21 22 0 0(pad)].
        assert_eq!(blocks.ids, [10, 11, 0, 20, 21, 22, 0, 0]);
        // Targets: 11 (after 10), 0 (after 11); 20 is a prompt token; the block's last position
        // predicts nothing; 22 and its eos are targets; the padding is not.
        assert_eq!(blocks.trained, [true, true, false, false, true, true, false, false]);
        assert_eq!(blocks.count(), 2);
        assert_eq!(pack(&docs, 4, 0, Some(1)).count(), 1);
    }

    #[test]
    fn json_lines_hold_texts_or_prompt_response_pairs() {
        let text = "{\"text\": \"plain\"}\n\n{\"prompt\": \"Q?\", \"response\": \"A.\"}\n";
        let parsed = json_lines(text, "text", "dataset.path").unwrap();
        assert_eq!(parsed, [(None, "plain".to_string()), (Some("Q?".to_string()), "A.".to_string())]);
        let missing = json_lines("{\"body\": \"x\"}\n", "text", "dataset.path").unwrap_err();
        assert!(missing.message.starts_with("line 1:"), "{}", missing.message);
        assert!(json_lines("not json\n", "text", "dataset.path").is_err());
    }

    #[test]
    fn prompts_come_from_the_prompt_or_the_body() {
        let plain = Document { prompt: vec![], body: vec![1, 2, 3, 4] };
        assert_eq!(prompt_of(&plain, 2, 8), Some(vec![1, 2]));
        assert_eq!(prompt_of(&plain, 4, 8), None);
        let paired = Document { prompt: vec![5, 6, 7], body: vec![8] };
        assert_eq!(prompt_of(&paired, 1, 2), Some(vec![6, 7]));
    }
}
