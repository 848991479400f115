//! Text datasets for BERT-family models: CSV, TSV or JSON Lines files with a text column, an
//! optional second text column (sentence pairs) and an optional label column, tokenised by a
//! Hugging Face tokenizer into fixed-length rows. Splits, the early-stopping hold-out, `limit`
//! and label ids follow the tabular datasets of [`crate::engine::data`].

use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;
use tokenizers::{
    Encoding, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::engine::data::root::DataRoot;
use crate::engine::rng::{streams, Rng};
use crate::spec::{DatasetSpec, SpecError, DEFAULT_MAX_LENGTH};

/// Tokenised rows, each `max_length` long, row-major.
#[derive(Debug, Clone, Default)]
pub struct TextSplit {
    pub input_ids: Vec<u32>,
    /// 0 for the first segment (and padding), 1 for a pair's second.
    pub type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Class ids; empty when the data is unlabelled.
    pub labels: Vec<u32>,
    /// The raw texts (first column only), for reports and examples.
    pub texts: Vec<String>,
}

impl TextSplit {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct TextDataset {
    /// The file name of the training file.
    pub name: String,
    pub max_length: usize,
    /// 0 when unlabelled.
    pub classes: usize,
    /// Id → name when the labels were not integers.
    pub label_names: Option<Vec<String>>,
    pub train: TextSplit,
    /// The held-out rows the report is measured on.
    pub validation: TextSplit,
    /// Rows held out of training for early stopping or the choice among repeated runs, so `validation` stays unseen.
    pub monitor: Option<TextSplit>,
    /// Training rows without labels (`dataset.labelled`, `dataset.transfer`); `labels` empty.
    pub transfer: TextSplit,
    /// Texts (all splits) longer than `max_length` tokens, cut to fit.
    pub truncated: usize,
}

impl TextDataset {
    pub fn labelled(&self) -> bool {
        self.classes > 0
    }
}

/// Reads a Hugging Face fast tokenizer file (`tokenizer.json`); errors name `field`.
pub fn load_tokenizer(json: &[u8], field: &str) -> Result<Tokenizer, SpecError> {
    // The tokenizers crate panics on some malformed files (found by `engine::fuzz`); a user's
    // file must get an error, not take a request down.
    let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(json))
        .unwrap_or_else(|_| Err("the file is malformed (the tokenizers library gave up on it)".into()));
    let tokenizer =
        parsed.map_err(|e| SpecError::new(field, format!("cannot read the tokenizer (tokenizer.json): {e}")))?;
    pad_token(&tokenizer, field)?;
    Ok(tokenizer)
}

/// Batches are padded to a fixed length, so the tokenizer must name its padding token.
fn pad_token(tokenizer: &Tokenizer, field: &str) -> Result<(&'static str, u32), SpecError> {
    ["[PAD]", "<pad>"]
        .into_iter()
        .find_map(|token| tokenizer.token_to_id(token).map(|id| (token, id)))
        .ok_or_else(|| SpecError::new(field, "the tokenizer has no `[PAD]` or `<pad>` token"))
}

/// Loads, splits and tokenises the text dataset a spec names; with `monitor`, also holds a
/// `validation_split` share of the training rows out for early stopping. Errors name the spec
/// field.
pub fn load_text(
    spec: &DatasetSpec,
    root: &DataRoot,
    tokenizer: &Tokenizer,
    seed: u64,
    monitor: bool,
) -> Result<TextDataset, SpecError> {
    let path = spec.path.as_deref().unwrap_or_default();
    let columns = [
        Some(spec.text_column.as_deref().unwrap_or("text")),
        spec.text_pair_column.as_deref(),
        spec.label_column.as_deref(),
    ];
    let mut files = vec![read_file(root, path, "dataset.path", &columns)?];
    if let Some(test) = &spec.test_path {
        files.push(read_file(root, test, "dataset.test_path", &columns)?);
    }
    let (labels, label_names, classes) = match spec.label_column {
        Some(_) => {
            let (labels, names) = label_ids(&files)?;
            let classes = class_count(spec, &labels)?;
            (labels, names, classes)
        }
        None if spec.num_classes.is_some() => {
            return Err(SpecError::new("dataset.num_classes", "unlabelled texts have no classes; set `label_column`"))
        }
        None => (vec![Vec::new(); files.len()], None, 0),
    };
    let mut rows = files.into_iter().zip(labels).map(|(file, labels)| Rows::new(file, labels));
    let all = rows.next().expect("the training file is always read");
    let (train, validation) = match rows.next() {
        Some(test) => (all, test),
        None => hold_out(all, spec.validation_split, seed, streams::SPLIT)?,
    };
    let (mut train, monitor) = match monitor {
        true => {
            let (train, monitor) = hold_out(train, spec.validation_split, seed, streams::MONITOR_SPLIT)?;
            (train, Some(monitor))
        }
        false => (train, None),
    };
    if let Some(limit) = spec.limit {
        train.truncate(limit);
    }
    let mut transfer = train.unlabel_from(spec.labelled.map_or(train.len(), |n| n.min(train.len())));
    if let Some(path) = spec.transfer.as_ref().and_then(|t| t.path.as_deref()) {
        // The transfer file needs the text columns only; its errors name it, not the columns.
        let field = "dataset.transfer.path";
        let file = read_file(root, path, field, &[columns[TEXT], columns[PAIR], None])
            .map_err(|e| SpecError::new(field, e.message))?;
        transfer.append(Rows::new(file, Vec::new()));
    }

    let max_length = spec.max_length.unwrap_or(DEFAULT_MAX_LENGTH);
    let encoder = Encoder::new(tokenizer, max_length)?;
    let mut truncated = 0;
    let mut encode = |rows: Rows| -> Result<TextSplit, SpecError> {
        let (split, cut) = encoder.encode(rows)?;
        truncated += cut;
        Ok(split)
    };
    let train = encode(train)?;
    let validation = encode(validation)?;
    let monitor = monitor.map(&mut encode).transpose()?;
    let transfer = encode(transfer)?;
    Ok(TextDataset {
        name: Path::new(path).file_name().map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned()),
        max_length,
        classes,
        label_names,
        train,
        validation,
        monitor,
        transfer,
        truncated,
    })
}

/// Index of the text, pair and label column in `Record::values` and in the column names.
const TEXT: usize = 0;
const PAIR: usize = 1;
const LABEL: usize = 2;
const COLUMN_FIELDS: [&str; 3] = ["dataset.text_column", "dataset.text_pair_column", "dataset.label_column"];

/// One data row as read: the file line it starts on and the text, pair and label cells (each
/// present when its column was asked for).
pub(crate) struct Record {
    line: usize,
    values: [Option<String>; 3],
}

/// A file's rows, with what errors about them need: the spec field that names the file and
/// the file as the spec wrote it.
struct File {
    records: Vec<Record>,
    field: &'static str,
    shown: String,
}

/// Reads a file by its extension (an upload's: the name it was uploaded under) and checks every row has a text (and a label when asked for).
fn read_file(
    root: &DataRoot,
    relative: &str,
    field: &'static str,
    columns: &[Option<&str>; 3],
) -> Result<File, SpecError> {
    let named = root.format_name(relative);
    let delimiter = match Path::new(&named).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref()
    {
        Some("csv") => Some(b','),
        Some("tsv") => Some(b'\t'),
        Some("jsonl") => None,
        _ => {
            return Err(SpecError::new(
                field,
                format!("`{relative}`: unsupported file type; expected a .csv, .tsv or .jsonl file"),
            ))
        }
    };
    let bytes = root.read(relative, field)?;
    let records = match delimiter {
        Some(delimiter) => read_delimited(&bytes, delimiter, columns, relative, field)?,
        None => read_jsonl(&bytes, columns, relative, field)?,
    };
    if records.is_empty() {
        return Err(SpecError::new(field, format!("`{relative}` has no data rows")));
    }
    for record in &records {
        for k in [TEXT, PAIR, LABEL] {
            if record.values[k].as_deref().is_some_and(|v| v.trim().is_empty()) {
                let what = if k == LABEL { "label" } else { "text" };
                let column = columns[k].unwrap_or_default();
                return Err(SpecError::new(
                    field,
                    format!("`{relative}` line {}: empty {what} in `{column}`", record.line),
                ));
            }
        }
    }
    Ok(File { records, field, shown: relative.to_string() })
}

/// The error for a column (or JSON key) that is not there, naming those that are.
fn missing(k: usize, name: &str, place: &str, noun: &str, present: &[&str]) -> SpecError {
    SpecError::new(COLUMN_FIELDS[k], format!("{place} has no {noun} `{name}`; its {noun}s are {}", present.join(", ")))
}

/// CSV or TSV with a header row; quoted cells may hold delimiters and newlines.
pub(crate) fn read_delimited(
    bytes: &[u8],
    delimiter: u8,
    columns: &[Option<&str>; 3],
    shown: &str,
    field: &str,
) -> Result<Vec<Record>, SpecError> {
    let bad = |e: csv::Error| SpecError::new(field, format!("`{shown}`: {e}"));
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).trim(csv::Trim::Headers).from_reader(bytes);
    let header = reader.headers().map_err(bad)?.clone();
    if header.iter().all(str::is_empty) {
        return Err(SpecError::new(field, format!("`{shown}` is empty")));
    }
    let names: Vec<&str> = header.iter().collect();
    let mut at = [None; 3];
    for (k, name) in columns.iter().enumerate() {
        if let Some(name) = name {
            let place = format!("`{shown}`");
            at[k] =
                Some(names.iter().position(|n| n == name).ok_or_else(|| missing(k, name, &place, "column", &names))?);
        }
    }
    reader
        .records()
        .map(|record| {
            let record = record.map_err(bad)?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            Ok(Record { line, values: at.map(|i| i.map(|i| record[i].to_string())) })
        })
        .collect()
}

/// One JSON object a line; texts are strings, labels strings or integers.
pub(crate) fn read_jsonl(
    bytes: &[u8],
    columns: &[Option<&str>; 3],
    shown: &str,
    field: &str,
) -> Result<Vec<Record>, SpecError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SpecError::new(field, format!("`{shown}` is not UTF-8 text")))?;
    // Editors on Windows may start the file with a byte-order mark; the csv crate skips it too.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let place = format!("`{shown}` line {}", index + 1);
        let object = match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(SpecError::new(field, format!("{place}: not a JSON object"))),
            Err(e) => return Err(SpecError::new(field, format!("{place}: {e}"))),
        };
        let mut values = [None, None, None];
        for (k, name) in columns.iter().enumerate() {
            let Some(name) = name else { continue };
            let keys = || object.keys().map(String::as_str).collect::<Vec<_>>();
            values[k] = Some(match object.get(*name).ok_or_else(|| missing(k, name, &place, "key", &keys()))? {
                Value::String(s) => s.clone(),
                Value::Number(n) if k == LABEL && (n.is_i64() || n.is_u64()) => n.to_string(),
                _ if k == LABEL => {
                    return Err(SpecError::new(field, format!("{place}: `{name}` is not a string or an integer")))
                }
                _ => return Err(SpecError::new(field, format!("{place}: `{name}` is not a string"))),
            });
        }
        records.push(Record { line: index + 1, values });
    }
    Ok(records)
}

/// Each file's class ids, and id → name when the labels were names.
type LabelIds = (Vec<Vec<u32>>, Option<Vec<String>>);

/// Class ids for the labels of all files together, so a test file numbers classes as the
/// training file does: integer labels are the ids; otherwise labels are names, numbered in
/// sorted order.
fn label_ids(files: &[File]) -> Result<LabelIds, SpecError> {
    let label = |r: &Record| r.values[LABEL].as_deref().map_or("", str::trim).to_string();
    let all = || files.iter().flat_map(|f| f.records.iter().map(label));
    if all().all(|l| l.parse::<i64>().is_ok()) {
        let ids = files
            .iter()
            .map(|f| {
                f.records
                    .iter()
                    .map(|r| {
                        let value: i64 = label(r).parse().expect("checked above");
                        u32::try_from(value).ok().filter(|&v| v <= u32::MAX / 2).ok_or_else(|| {
                            SpecError::new(
                                f.field,
                                format!(
                                    "`{}` line {}: label {value} is out of range (class ids are 0, 1, 2, …)",
                                    f.shown, r.line
                                ),
                            )
                        })
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        return Ok((ids, None));
    }
    let mut names: Vec<String> = all().collect();
    names.sort();
    names.dedup();
    let ids = files
        .iter()
        .map(|f| {
            f.records.iter().map(|r| names.binary_search(&label(r)).expect("every label is named") as u32).collect()
        })
        .collect();
    Ok((ids, Some(names)))
}

fn class_count(spec: &DatasetSpec, labels: &[Vec<u32>]) -> Result<usize, SpecError> {
    let max_label = labels.iter().flatten().max().copied().unwrap_or(0) as usize;
    let classes = match spec.num_classes {
        Some(n) if max_label >= n => {
            return Err(SpecError::new(
                "dataset.num_classes",
                format!("label {max_label} is out of range for num_classes {n} (labels are 0..{n})"),
            ))
        }
        Some(n) => n,
        None => max_label + 1,
    };
    if classes < 2 {
        return Err(SpecError::new("dataset", "the labels name fewer than 2 classes"));
    }
    Ok(classes)
}

/// Rows before tokenising; `pairs` is empty without a pair column, `labels` without labels.
struct Rows {
    texts: Vec<String>,
    pairs: Vec<String>,
    labels: Vec<u32>,
}

impl Rows {
    fn new(file: File, labels: Vec<u32>) -> Rows {
        let mut rows = Rows { texts: Vec::with_capacity(file.records.len()), pairs: Vec::new(), labels };
        for record in file.records {
            let [text, pair, _] = record.values;
            rows.texts.push(text.expect("the text column is always read"));
            rows.pairs.extend(pair);
        }
        rows
    }

    fn len(&self) -> usize {
        self.texts.len()
    }

    fn select(&self, indices: &[usize]) -> Rows {
        fn pick<T: Clone>(values: &[T], indices: &[usize]) -> Vec<T> {
            match values.is_empty() {
                true => Vec::new(),
                false => indices.iter().map(|&i| values[i].clone()).collect(),
            }
        }
        Rows {
            texts: pick(&self.texts, indices),
            pairs: pick(&self.pairs, indices),
            labels: pick(&self.labels, indices),
        }
    }

    /// Moves the rows from `n` on out, without their labels.
    fn unlabel_from(&mut self, n: usize) -> Rows {
        self.labels.truncate(n);
        let pairs = if self.pairs.is_empty() { Vec::new() } else { self.pairs.split_off(n) };
        Rows { texts: self.texts.split_off(n), pairs, labels: Vec::new() }
    }

    fn append(&mut self, other: Rows) {
        self.texts.extend(other.texts);
        self.pairs.extend(other.pairs);
    }

    fn truncate(&mut self, n: usize) {
        self.texts.truncate(n);
        self.pairs.truncate(n);
        self.labels.truncate(n);
    }
}

/// A seeded `fraction` of `rows` (at least one, never all) and the rest, as the tabular data.
fn hold_out(rows: Rows, fraction: f64, seed: u64, stream: u64) -> Result<(Rows, Rows), SpecError> {
    let n = rows.len();
    if n < 2 {
        return Err(SpecError::new("dataset", "at least 2 samples are needed to hold some out"));
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::stream(seed, &[stream]).shuffle(&mut order);
    let held_out = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let (held, kept) = order.split_at(held_out);
    Ok((rows.select(kept), rows.select(held)))
}

/// Tokenises rows to exactly `max_length` ids. Each text is tokenised whole (`whole`) and only
/// then cut and padded (`fit`): with truncation set, tokenizers 0.23.2 stops tokenising each
/// text at `max_length` tokens, so for a pair of long texts LongestFirst sees wrong lengths and
/// splits the budget differently from Python's tokenizers, and from the teacher's training.
struct Encoder {
    whole: Tokenizer,
    fit: Tokenizer,
    max_length: usize,
}

impl Encoder {
    fn new(tokenizer: &Tokenizer, max_length: usize) -> Result<Encoder, SpecError> {
        let (pad_token, pad_id) = pad_token(tokenizer, "dataset")?;
        let mut whole = tokenizer.clone();
        whole.with_truncation(None).expect("removing truncation cannot fail").with_padding(None);
        let mut fit = tokenizer.clone();
        fit.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| SpecError::new("dataset.max_length", e.to_string()))?;
        fit.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.to_string(),
        }));
        Ok(Encoder { whole, fit, max_length })
    }

    /// Like `Tokenizer::encode(input, true)` on `fit`, without its early stop.
    fn encode_one(&self, text: &str, pair: Option<&str>) -> tokenizers::Result<Encoding> {
        let first = self.whole.encode(text, false)?;
        let second = match pair {
            Some(pair) => {
                let mut second = self.whole.encode(pair, false)?;
                second.set_type_ids(vec![1; second.len()]);
                Some(second)
            }
            None => None,
        };
        self.fit.post_process(first, second, true)
    }

    /// Tokenises `rows` (special tokens included); returns the split and how many texts were cut.
    fn encode(&self, rows: Rows) -> Result<(TextSplit, usize), SpecError> {
        let size = rows.len() * self.max_length;
        let mut split = TextSplit {
            input_ids: vec![0; size],
            type_ids: vec![0; size],
            attention_mask: vec![0; size],
            ..TextSplit::default()
        };
        let truncated = split
            .input_ids
            .par_chunks_mut(self.max_length)
            .zip(split.type_ids.par_chunks_mut(self.max_length))
            .zip(split.attention_mask.par_chunks_mut(self.max_length))
            .enumerate()
            .map(|(i, ((ids, types), mask))| {
                let encoding = self.encode_one(&rows.texts[i], rows.pairs.get(i).map(String::as_str))?;
                ids.copy_from_slice(encoding.get_ids());
                types.copy_from_slice(encoding.get_type_ids());
                mask.copy_from_slice(encoding.get_attention_mask());
                // With stride 0, truncation moves whatever did not fit into `overflowing`.
                Ok(usize::from(!encoding.get_overflowing().is_empty()))
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))
            .map_err(|e: tokenizers::Error| SpecError::new("dataset", format!("cannot tokenise the texts: {e}")))?;
        split.labels = rows.labels;
        split.texts = rows.texts;
        Ok((split, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn tokenizer() -> Tokenizer {
        load_tokenizer(
            &std::fs::read(Path::new(FIXTURES).join("tiny-bert/tokenizer.json")).unwrap(),
            "teacher.tokenizer",
        )
        .unwrap()
    }

    fn spec(path: &str, extra: Value) -> DatasetSpec {
        let mut spec = serde_json::json!({"source": "text", "path": path});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(spec).unwrap()
    }

    fn root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    fn load(files: &[(&str, &str)], spec: &DatasetSpec, monitor: bool) -> Result<TextDataset, SpecError> {
        load_text(spec, &DataRoot::new(root(files).path()), &tokenizer(), 7, monitor)
    }

    /// Row `i` of `split` as (ids, type ids, mask).
    fn row(split: &TextSplit, i: usize, max_length: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let cut = |v: &[u32]| v[i * max_length..(i + 1) * max_length].to_vec();
        (cut(&split.input_ids), cut(&split.type_ids), cut(&split.attention_mask))
    }

    /// What the untouched tokenizer gives for a text that fits, padded by hand.
    fn expected(text: &str, pair: Option<&str>, max_length: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let t = tokenizer();
        let e = match pair {
            Some(pair) => t.encode((text, pair), true).unwrap(),
            None => t.encode(text, true).unwrap(),
        };
        let pad = max_length - e.len();
        let padded = |v: &[u32], fill: u32| v.iter().copied().chain(std::iter::repeat_n(fill, pad)).collect();
        (
            padded(e.get_ids(), t.token_to_id("[PAD]").unwrap()),
            padded(e.get_type_ids(), 0),
            padded(&vec![1; e.len()], 0),
        )
    }

    #[test]
    fn ids_agree_with_python_tokenizers() {
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURES).join("bert.json")).unwrap()).unwrap();
        let fixture = &fixture["tokenizer"];
        let max_length = fixture["max_length"].as_u64().unwrap() as usize;
        let cases = fixture["cases"].as_array().unwrap();
        let (pairs, singles): (Vec<&Value>, Vec<&Value>) = cases.iter().partition(|c| c["pair"].is_string());
        assert!(!pairs.is_empty() && !singles.is_empty());
        let t = tokenizer();
        for (file, cases) in [("singles.jsonl", &singles), ("pairs.jsonl", &pairs)] {
            let lines: String = cases
                .iter()
                .map(|c| serde_json::json!({"text": c["text"], "other": c["pair"]}).to_string() + "\n")
                .collect();
            let pair_column = if file == "pairs.jsonl" { Some("other") } else { None };
            // The file is its own test file, so the rows keep their order.
            let s = spec(
                file,
                serde_json::json!({"test_path": file, "text_pair_column": pair_column, "max_length": max_length}),
            );
            let d = load(&[(file, &lines)], &s, false).unwrap();
            let mut too_long = 0;
            for (i, case) in cases.iter().enumerate() {
                let want = |key: &str| serde_json::from_value::<Vec<u32>>(case[key].clone()).unwrap();
                assert_eq!(
                    row(&d.train, i, max_length),
                    (want("ids"), want("type_ids"), want("attention_mask")),
                    "{case}"
                );
                let full = match case["pair"].as_str() {
                    Some(pair) => t.encode((case["text"].as_str().unwrap(), pair), true),
                    None => t.encode(case["text"].as_str().unwrap(), true),
                };
                too_long += usize::from(full.unwrap().len() > max_length);
            }
            assert!(too_long > 0, "the fixture has texts to cut");
            assert_eq!(d.truncated, 2 * too_long, "{file}: train and test each count");
        }
    }

    #[test]
    fn csv_with_quoted_cells_and_named_labels_sorted() {
        let files = [
            ("train.csv", "text,label\n\"hello, world\",pos\n\"two\nlines\",neg\nplain words,pos\n"),
            ("test.csv", "text,label\nthe end,neutral\n"),
        ];
        let s =
            spec("train.csv", serde_json::json!({"test_path": "test.csv", "label_column": "label", "max_length": 12}));
        let d = load(&files, &s, false).unwrap();
        assert_eq!(d.name, "train.csv");
        assert_eq!(d.label_names, Some(vec!["neg".into(), "neutral".into(), "pos".into()]));
        assert_eq!((d.classes, d.truncated), (3, 0));
        // Padding is the tokenizer's [PAD]: "plain words" is 4 tokens of 12.
        assert_eq!(&d.train.input_ids[2 * 12 + 4..3 * 12], &[tokenizer().token_to_id("[PAD]").unwrap(); 8]);
        assert_eq!(d.train.texts, ["hello, world", "two\nlines", "plain words"]);
        assert_eq!(d.train.labels, [2, 0, 2]);
        assert_eq!(d.validation.labels, [1]);
        assert!(d.labelled());
        for (i, text) in d.train.texts.iter().enumerate() {
            assert_eq!(row(&d.train, i, 12), expected(text, None, 12), "{text}");
        }
        let (_, _, mask) = row(&d.train, 0, 12);
        assert!(mask.contains(&0), "short texts are padded: {mask:?}");
    }

    #[test]
    fn tsv_and_jsonl_with_integer_and_string_labels() {
        let files = [
            ("a.tsv", "\u{feff}label\ttext\n1\t\"quoted\ttab\"\n0\tplain\n"),
            ("ints.jsonl", "\u{feff}{\"text\": \"first\", \"label\": 0}\n\n{\"text\": \"second\", \"label\": 2}\n{\"text\": \"third\", \"label\": \"1\"}\n"),
            ("names.jsonl", "{\"text\": \"x\", \"y\": \"spam\"}\n{\"text\": \"y\", \"y\": \"ham\"}\n"),
        ];
        let split =
            |path: &str, label: &str| spec(path, serde_json::json!({"label_column": label, "validation_split": 0.5}));
        let tsv = load(&files, &split("a.tsv", "label"), false).unwrap();
        let mut texts = [tsv.train.texts.clone(), tsv.validation.texts.clone()].concat();
        texts.sort();
        assert_eq!(texts, ["plain", "quoted\ttab"]);
        assert_eq!((tsv.classes, tsv.label_names), (2, None));

        let ints = load(&files, &split("ints.jsonl", "label"), false).unwrap();
        assert_eq!((ints.classes, ints.label_names, ints.train.len() + ints.validation.len()), (3, None, 3));
        let names = load(&files, &split("names.jsonl", "y"), false).unwrap();
        assert_eq!(names.label_names, Some(vec!["ham".into(), "spam".into()]));
        for split in [&names.train, &names.validation] {
            assert_eq!(split.labels, [if split.texts[0] == "x" { 1 } else { 0 }]);
        }
    }

    #[test]
    fn pairs_mark_the_second_segment_with_type_id_1() {
        let files = [("p.csv", "premise,hypothesis,label\na cat sat,it sat,0\nthe dog ran,nobody ran,1\n")];
        let s = spec(
            "p.csv",
            serde_json::json!({"text_pair_column": "hypothesis", "label_column": "label", "max_length": 16}),
        );
        let d = load(&files, &s, false).unwrap_err();
        assert_eq!(d.field, "dataset.text_column", "the default text column is `text`");
        let mut s = s;
        s.text_column = Some("premise".into());
        s.test_path = Some("p.csv".into());
        let d = load(&files, &s, false).unwrap();
        let sep = tokenizer().token_to_id("[SEP]").unwrap();
        for (i, (a, b)) in [("a cat sat", "it sat"), ("the dog ran", "nobody ran")].into_iter().enumerate() {
            let (ids, types, mask) = row(&d.train, i, 16);
            assert_eq!((ids.clone(), types.clone(), mask.clone()), expected(a, Some(b), 16));
            let first_sep = ids.iter().position(|&id| id == sep).unwrap();
            let real = mask.iter().sum::<u32>() as usize;
            assert!(types[..=first_sep].iter().all(|&t| t == 0), "{types:?}");
            assert!(types[first_sep + 1..real].iter().all(|&t| t == 1), "{types:?}");
            assert!(types[real..].iter().all(|&t| t == 0), "{types:?}");
            assert_eq!(ids[real - 1], sep);
        }
        assert_eq!(d.train.texts, ["a cat sat", "the dog ran"], "texts keep the first column only");
    }

    #[test]
    fn long_texts_are_cut_and_counted_across_splits() {
        let long = "one two three four five six seven eight nine ten";
        let files = [
            ("train.jsonl", format!("{{\"text\": \"{long}\"}}\n{{\"text\": \"short\"}}\n")),
            ("test.jsonl", format!("{{\"text\": \"{long}\", \"other\": \"tiny\"}}\n")),
        ];
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let s = spec("train.jsonl", serde_json::json!({"test_path": "test.jsonl", "max_length": 6}));
        let d = load(&files, &s, false).unwrap();
        assert_eq!(d.truncated, 2);
        let t = tokenizer();
        let (ids, _, mask) = row(&d.train, 0, 6);
        assert_eq!(mask, [1; 6]);
        assert_eq!((ids[0], ids[5]), (t.token_to_id("[CLS]").unwrap(), t.token_to_id("[SEP]").unwrap()));
        assert_eq!(&ids[..5], &t.encode(long, true).unwrap().get_ids()[..5]);
        assert_eq!(d.train.input_ids.len(), 2 * 6);

        let mut s = spec(
            "test.jsonl",
            serde_json::json!({"text_pair_column": "other", "max_length": 6, "test_path": "test.jsonl"}),
        );
        assert_eq!(load(&files, &s, false).unwrap().truncated, 2, "a pair that does not fit is cut too");
        s.max_length = Some(64);
        assert_eq!(load(&files, &s, false).unwrap().truncated, 0);
    }

    #[test]
    fn unlabelled_texts_have_no_classes() {
        let files = [("u.csv", "text\nalpha\nbeta\ngamma\n")];
        let mut s = spec("u.csv", serde_json::json!({}));
        let d = load(&files, &s, false).unwrap();
        assert!(!d.labelled());
        assert_eq!((d.classes, d.label_names.clone(), d.max_length), (0, None, 128));
        assert!(d.train.labels.is_empty() && d.validation.labels.is_empty());
        assert_eq!(d.train.input_ids.len(), d.train.len() * 128);
        s.num_classes = Some(3);
        assert_eq!(load(&files, &s, false).unwrap_err().field, "dataset.num_classes");
    }

    #[test]
    fn transfer_texts_come_from_unlabelled_rows_and_a_file_without_labels() {
        let files = [
            ("l.csv", "text,label\nhello world,1\nplain words,0\ntwo lines,1\n"),
            ("more.jsonl", "{\"text\": \"a cat sat\"}\n{\"text\": \"the dog ran\", \"label\": 5}\n"),
            ("bad.jsonl", "{\"body\": \"a cat sat\"}\n"),
        ];
        let extra = serde_json::json!({"label_column": "label", "test_path": "l.csv", "labelled": 2, "transfer": {"path": "more.jsonl"}});
        let mut s = spec("l.csv", extra);
        let d = load(&files, &s, false).unwrap();
        assert_eq!(
            (d.train.texts.clone(), d.train.labels.clone()),
            (vec!["hello world".into(), "plain words".into()], vec![1, 0])
        );
        assert_eq!(d.transfer.texts, ["two lines", "a cat sat", "the dog ran"]);
        assert!(d.transfer.labels.is_empty());
        assert_eq!(d.transfer.input_ids.len(), 3 * 128);
        s.transfer = Some(crate::spec::TransferSpec { path: Some("bad.jsonl".into()), images: None });
        let error = load(&files, &s, false).unwrap_err();
        assert_eq!(error.field, "dataset.transfer.path");
        assert!(error.message.contains("no key `text`"), "{}", error.message);
    }

    #[test]
    fn tokenizers_need_a_padding_token() {
        let dir = root(&[]);
        let json = std::fs::read_to_string(Path::new(FIXTURES).join("tiny-bert/tokenizer.json")).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json.replace("[PAD]", "[BLANK]")).unwrap();
        let e = load_tokenizer(&std::fs::read(dir.path().join("tokenizer.json")).unwrap(), "teacher.tokenizer")
            .unwrap_err();
        assert_eq!(e.field, "teacher.tokenizer");
        assert!(e.message.contains("[PAD]"), "{}", e.message);
        assert_eq!(load_tokenizer(b"not json", "student.tokenizer").unwrap_err().field, "student.tokenizer");
    }

    #[test]
    fn errors_name_the_field_and_the_row() {
        let files = [
            ("h.csv", "sentence,label\nhi,0\n"),
            ("gap.csv", "text,label\n\"two\nlines\",0\n\"  \",1\n"),
            ("blank.jsonl", "{\"text\": \"fine\", \"label\": 0}\n{\"text\": \"\", \"label\": 1}\n"),
            ("keys.jsonl", "{\"text\": \"fine\", \"label\": 1}\n{\"body\": \"x\", \"label\": 0}\n"),
            ("float.jsonl", "{\"text\": \"a\", \"label\": 1.5}\n"),
            ("broken.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"text\": \n"),
            ("neg.csv", "text,label\na,0\nb,-1\n"),
            ("empty.csv", ""),
            ("header.tsv", "text\tlabel\n"),
            ("empty.jsonl", "\n\n"),
            ("ragged.csv", "text,label\na,0\nb\n"),
            ("notes.txt", "text\nhi\n"),
            ("ok.csv", "text,label\na,0\nb,1\n"),
            ("one.csv", "text,label\na,0\n"),
        ];
        let fails = |path: &str, extra: Value| load(&files, &spec(path, extra), false).unwrap_err();
        let label = serde_json::json!({"label_column": "label"});

        let e = fails("h.csv", label.clone());
        assert_eq!(e.field, "dataset.text_column");
        assert!(e.message.contains("sentence, label"), "{}", e.message);
        let e = fails("ok.csv", serde_json::json!({"label_column": "y"}));
        assert_eq!(e.field, "dataset.label_column");
        assert!(e.message.contains("`y`") && e.message.contains("text, label"), "{}", e.message);
        assert_eq!(fails("ok.csv", serde_json::json!({"text_pair_column": "b"})).field, "dataset.text_pair_column");
        let e = fails("keys.jsonl", label.clone());
        assert_eq!(e.field, "dataset.text_column");
        assert!(e.message.contains("line 2") && e.message.contains("body, label"), "{}", e.message);

        for (path, needle) in [
            ("gap.csv", "line 4: empty text"),
            ("blank.jsonl", "line 2: empty text"),
            ("float.jsonl", "line 1: `label` is not a string or an integer"),
            ("broken.jsonl", "line 2"),
            ("neg.csv", "line 3: label -1 is out of range"),
            ("empty.csv", "is empty"),
            ("header.tsv", "no data rows"),
            ("empty.jsonl", "no data rows"),
            ("ragged.csv", "line: 3"),
            ("notes.txt", ".csv, .tsv or .jsonl"),
        ] {
            let e = fails(path, label.clone());
            assert_eq!(e.field, "dataset.path", "{path}: {}", e.message);
            assert!(e.message.contains(needle), "{path}: {}", e.message);
        }
        let e = fails("ok.csv", serde_json::json!({"label_column": "label", "test_path": "gap.csv"}));
        assert_eq!(e.field, "dataset.test_path");
        assert_eq!(fails("missing.csv", label.clone()).field, "dataset.path");
        assert!(fails("one.csv", label.clone()).message.contains("fewer than 2 classes"));
        assert_eq!(
            fails("ok.csv", serde_json::json!({"label_column": "label", "num_classes": 1})).field,
            "dataset.num_classes"
        );
    }

    #[test]
    fn held_out_splits_follow_the_tabular_data() {
        let rows: String = (0..10).map(|i| format!("row {i},{}\n", i % 2)).collect();
        let train = format!("text,label\n{rows}");
        let files = [("d.csv", train.as_str()), ("t.csv", "text,label\ntest a,0\ntest b,1\ntest c,1\n")];
        let s = spec("d.csv", serde_json::json!({"label_column": "label", "validation_split": 0.2}));
        let d = load(&files, &s, false).unwrap();
        assert_eq!((d.train.len(), d.validation.len(), d.monitor.is_none()), (8, 2, true));
        let m = load(&files, &s, true).unwrap();
        let monitor = m.monitor.as_ref().unwrap();
        assert_eq!((m.train.len(), monitor.len(), m.validation.len()), (6, 2, 2));
        assert_eq!(m.validation.texts, d.validation.texts, "the monitor comes out of training only");
        let mut all = [m.train.texts.clone(), monitor.texts.clone(), m.validation.texts.clone()].concat();
        all.sort();
        let mut expected: Vec<String> = (0..10).map(|i| format!("row {i}")).collect();
        expected.sort();
        assert_eq!(all, expected);
        for (split, i) in [(&m.train, 0), (monitor, 1)] {
            let n: usize = split.texts[i]["row ".len()..].parse().unwrap();
            assert_eq!(split.labels[i], n as u32 % 2, "labels travel with their rows");
        }
        let other_seed = load_text(&s, &DataRoot::new(root(&files).path()), &tokenizer(), 8, false).unwrap();
        assert_ne!(other_seed.validation.texts, d.validation.texts);

        let mut s = s;
        s.test_path = Some("t.csv".into());
        s.limit = Some(5);
        let d = load(&files, &s, true).unwrap();
        assert_eq!((d.train.len(), d.monitor.as_ref().unwrap().len(), d.validation.len()), (5, 2, 3));
        assert_eq!(d.validation.texts, ["test a", "test b", "test c"]);
    }
}
