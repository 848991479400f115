//! Datasets: the built-in digits set, CSV files and IDX files (MNIST layout), split, limited and
//! standardised with statistics of the training split only.

pub mod root;
pub mod text;

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::engine::data::root::DataRoot;
use crate::engine::rng::{streams, Rng};
use crate::spec::{DatasetSource, DatasetSpec, SpecError};

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../data/digits/digits.csv.gz");

/// Features row-major (`n × features`) and class ids.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    fn select(&self, features: usize, indices: &[usize]) -> Split {
        let mut out = Split { x: Vec::with_capacity(indices.len() * features), y: Vec::new() };
        for &i in indices {
            out.x.extend_from_slice(&self.x[i * features..(i + 1) * features]);
            out.y.push(self.y[i]);
        }
        out
    }
}

/// Channels, height, width of image samples (stored row-major in that order, as PyTorch's NCHW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Per-feature statistics of the training split; exported so users can prepare inputs. Images
/// get one mean and deviation for all pixels, so a shifted image stays correctly scaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub features: usize,
    pub classes: usize,
    /// Original label names when labels were not integers.
    pub label_names: Option<Vec<String>>,
    /// The training samples: the first `labelled` have labels; the rest are the transfer set,
    /// whose label 0 is a placeholder no loss reads.
    pub train: Split,
    pub labelled: usize,
    /// The held-out samples the report is measured on.
    pub validation: Split,
    /// Samples held out of training for early stopping or the choice among repeated runs, so `validation` stays unseen.
    pub monitor: Option<Split>,
    pub normalization: Normalization,
    pub image: Option<ImageShape>,
}

impl Dataset {
    /// The split per-epoch validation metrics (and early stopping) are computed on.
    pub fn monitored(&self) -> &Split {
        self.monitor.as_ref().unwrap_or(&self.validation)
    }

    /// Training samples without labels (the transfer set).
    pub fn transfer(&self) -> usize {
        self.train.len() - self.labelled
    }

    /// The standardised value of a raw 0 pixel: what a shift uncovers.
    pub fn background(&self) -> f32 {
        (0.0 - self.normalization.mean[0]) / self.normalization.std[0]
    }
}

/// Raw samples as read from a source, before splitting.
pub(crate) struct Raw {
    image: Option<ImageShape>,
    features: usize,
    split: Split,
    label_names: Option<Vec<String>>,
    /// Features of the transfer file's samples (`dataset.transfer`), row-major.
    transfer: Vec<f32>,
}

/// Loads, splits and standardises the dataset a spec names; with `monitor`, also holds a
/// `validation_split` share of the training samples out for early stopping. Errors name the
/// spec field.
pub fn load(spec: &DatasetSpec, root: &DataRoot, seed: u64, monitor: bool) -> Result<Dataset, SpecError> {
    let (name, raw, test) = match spec.source {
        DatasetSource::BuiltinDigits => {
            let csv = gunzip_if_needed(DIGITS_CSV_GZ.to_vec(), u64::MAX, "dataset.source")?;
            ("digits".to_string(), read_csv_rows(&csv, None, false, "dataset.source")?, None)
        }
        DatasetSource::Csv => {
            let path = spec.path.as_deref().unwrap_or_default();
            let label = spec.label_column.as_deref().unwrap_or("label");
            let mut train = read_csv_file(root, path, label, "dataset.path")?;
            let test = match &spec.test_path {
                Some(p) => Some(read_csv_file(root, p, label, "dataset.test_path")?),
                None => None,
            };
            if let Some(transfer) = spec.transfer.as_ref().and_then(|t| t.path.as_deref()) {
                train.transfer = read_csv_transfer(root, transfer, label, train.features)?;
            }
            (path.to_string(), train, test)
        }
        DatasetSource::Idx => {
            let images = spec.images.as_deref().unwrap_or_default();
            let labels = spec.labels.as_deref().unwrap_or_default();
            let mut train = read_idx_pair(root, images, labels, "dataset.images", "dataset.labels")?;
            let test = match (&spec.test_images, &spec.test_labels) {
                (Some(i), Some(l)) => Some(read_idx_pair(root, i, l, "dataset.test_images", "dataset.test_labels")?),
                _ => None,
            };
            if let Some(transfer) = spec.transfer.as_ref().and_then(|t| t.images.as_deref()) {
                train.transfer = read_idx_transfer(root, transfer, &train)?;
            }
            (images.to_string(), train, test)
        }
        DatasetSource::Text | DatasetSource::Corpus => {
            return Err(SpecError::new("dataset.source", "texts load through the teacher's tokenizer"))
        }
    };
    assemble(spec, name, raw, test, seed, monitor)
}

fn assemble(
    spec: &DatasetSpec,
    name: String,
    raw: Raw,
    test: Option<Raw>,
    seed: u64,
    monitor: bool,
) -> Result<Dataset, SpecError> {
    let features = raw.features;
    if raw.split.is_empty() {
        return Err(SpecError::new("dataset", "the dataset has no samples"));
    }
    if let Some(test) = &test {
        if test.features != features {
            return Err(SpecError::new(
                "dataset",
                format!("the test data has {} features, the training data {features}", test.features),
            ));
        }
        if test.label_names != raw.label_names {
            return Err(SpecError::new("dataset", "the test data's label names differ from the training data's"));
        }
    }
    let max_label = raw.split.y.iter().chain(test.iter().flat_map(|t| t.split.y.iter())).max().copied().unwrap_or(0);
    let classes = match spec.num_classes {
        Some(n) => {
            if max_label as usize >= n {
                return Err(SpecError::new(
                    "dataset.num_classes",
                    format!("label {max_label} is out of range for num_classes {n} (labels are 0..{n})"),
                ));
            }
            n
        }
        None => max_label as usize + 1,
    };
    if classes < 2 {
        return Err(SpecError::new("dataset", "the labels name fewer than 2 classes"));
    }
    let (mut train, validation) = match test {
        Some(test) => (raw.split, test.split),
        None => hold_out(raw.split, features, spec.validation_split, seed, streams::SPLIT)?,
    };
    if let Some(limit) = spec.limit {
        train.y.truncate(limit);
        train.x.truncate(limit * features);
    }
    let kept = spec.labelled.map_or(train.len(), |n| n.min(train.len()));
    let unlabelled = train.x.split_off(kept * features);
    train.y.truncate(kept);
    // The job's labels are the `limit` and `labelled` it asked for: its monitor split (early
    // stopping, repeats) comes out of those, never from samples it was told not to use.
    let (mut train, monitor) = match monitor {
        true => hold_out(train, features, spec.validation_split, seed, streams::MONITOR_SPLIT)
            .map(|(train, held)| (train, Some(held)))?,
        false => (train, None),
    };
    // Statistics of the labelled samples only: the baseline must not learn from the transfer set.
    let labelled = train.len();
    let normalization = statistics(&train, features, raw.image.is_some());
    train.x.extend(unlabelled.into_iter().chain(raw.transfer));
    train.y.resize(train.x.len() / features, 0);
    let mut dataset = Dataset {
        name,
        features,
        classes,
        label_names: raw.label_names,
        train,
        labelled,
        validation,
        monitor,
        normalization,
        image: raw.image,
    };
    for split in [&mut dataset.train, &mut dataset.validation].into_iter().chain(dataset.monitor.as_mut()) {
        standardise(split, &dataset.normalization);
    }
    Ok(dataset)
}

/// A seeded `fraction` of `split` (at least one sample, never all) and the rest.
fn hold_out(split: Split, features: usize, fraction: f64, seed: u64, stream: u64) -> Result<(Split, Split), SpecError> {
    let n = split.len();
    if n < 2 {
        return Err(SpecError::new("dataset", "at least 2 samples are needed to hold some out"));
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::stream(seed, &[stream]).shuffle(&mut order);
    let held_out = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let (held_idx, kept_idx) = order.split_at(held_out);
    Ok((split.select(features, kept_idx), split.select(features, held_idx)))
}

/// Copies the batch's samples; with `shift`, each image moves by its own seeded offset of up
/// to `shift` pixels along each axis, the uncovered border filled with `background`.
pub fn gather(
    split: &Split,
    features: usize,
    batch: &[usize],
    shift: Option<(usize, ImageShape, f32, &mut Rng)>,
) -> (Vec<f32>, Vec<u32>) {
    let mut x = Vec::with_capacity(batch.len() * features);
    let mut y = Vec::with_capacity(batch.len());
    match shift {
        None => {
            for &i in batch {
                x.extend_from_slice(&split.x[i * features..(i + 1) * features]);
            }
        }
        Some((max, shape, background, rng)) => {
            let span = 2 * max as u64 + 1;
            let (h, w) = (shape.height as isize, shape.width as isize);
            for &i in batch {
                let dy = (rng.next_u64() % span) as isize - max as isize;
                let dx = (rng.next_u64() % span) as isize - max as isize;
                let sample = &split.x[i * features..(i + 1) * features];
                for plane in sample.chunks_exact((h * w) as usize) {
                    for row in 0..h {
                        for col in 0..w {
                            let (sr, sc) = (row - dy, col - dx);
                            let inside = (0..h).contains(&sr) && (0..w).contains(&sc);
                            x.push(if inside { plane[(sr * w + sc) as usize] } else { background });
                        }
                    }
                }
            }
        }
    }
    y.extend(batch.iter().map(|&i| split.y[i]));
    (x, y)
}

fn statistics(split: &Split, features: usize, image: bool) -> Normalization {
    if image {
        let n = split.x.len().max(1) as f64;
        let mean = split.x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = split.x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let std = if var < 1e-12 { 1.0 } else { var.sqrt() as f32 };
        return Normalization { mean: vec![mean as f32; features], std: vec![std; features] };
    }
    let n = split.len().max(1) as f64;
    let mut mean = vec![0f64; features];
    let mut sq = vec![0f64; features];
    for row in split.x.chunks_exact(features) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| {
            let var = (s / n - m * m).max(0.0);
            // A constant feature carries no information; leave it centred, unscaled.
            if var < 1e-12 {
                1.0
            } else {
                var.sqrt() as f32
            }
        })
        .collect();
    Normalization { mean: mean.into_iter().map(|m| m as f32).collect(), std }
}

fn standardise(split: &mut Split, norm: &Normalization) {
    let features = norm.mean.len();
    for row in split.x.chunks_exact_mut(features) {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - norm.mean[j]) / norm.std[j];
        }
    }
}

/// A file's bytes, gunzipped when it is gzip (by its magic bytes, whatever its name).
fn open_maybe_gz(root: &DataRoot, relative: &str, field: &str) -> Result<Vec<u8>, SpecError> {
    let bytes = root.read(relative, field)?;
    gunzip_if_needed(bytes, root.max_file_bytes(), field)
        .map_err(|e| SpecError::new(field, format!("`{relative}`: {}", e.message)))
}

/// Gunzips `bytes` when they are gzip, refusing more than `limit` bytes of output: a few
/// megabytes of gzip can expand to gigabytes, so the cap is checked while inflating.
pub fn gunzip_if_needed(bytes: Vec<u8>, limit: u64, field: &str) -> Result<Vec<u8>, SpecError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| SpecError::new(field, format!("not a valid gzip file: {e}")))?;
    if out.len() as u64 > limit {
        return Err(SpecError::new(field, format!("expands to more than {limit} bytes, the limit (--max-job-memory)")));
    }
    Ok(out)
}

fn read_csv_file(root: &DataRoot, relative: &str, label_column: &str, field: &str) -> Result<Raw, SpecError> {
    let bytes = open_maybe_gz(root, relative, field)?;
    read_csv_rows(&bytes, Some(label_column), true, field)
}

/// Reads numeric feature columns and a label column. Without a header (the digits file) the
/// label is the last column. Integer labels are class ids; any other labels are names, mapped
/// to ids in sorted order.
pub(crate) fn read_csv_rows(
    bytes: &[u8],
    label_column: Option<&str>,
    has_header: bool,
    field: &str,
) -> Result<Raw, SpecError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SpecError::new(field, "the CSV file is not UTF-8 text"))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (label_idx, columns) = if has_header {
        let (_, header) = lines.next().ok_or_else(|| SpecError::new(field, "the CSV file is empty"))?;
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let label = label_column.unwrap_or("label");
        let idx = names.iter().position(|n| *n == label).ok_or_else(|| {
            SpecError::new(
                "dataset.label_column",
                format!("no column named `{label}` in the header ({})", names.join(", ")),
            )
        })?;
        (Some(idx), names.len())
    } else {
        (None, 0)
    };
    let mut x = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let mut width = if has_header { columns } else { 0 };
    for (number, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if width == 0 {
            width = cells.len();
        }
        if cells.len() != width || width < 2 {
            return Err(SpecError::new(
                field,
                format!(
                    "line {}: {} columns, expected {width} (at least one feature and the label)",
                    number + 1,
                    cells.len()
                ),
            ));
        }
        let label_at = label_idx.unwrap_or(width - 1);
        for (j, cell) in cells.iter().enumerate() {
            if j == label_at {
                labels.push(cell.to_string());
            } else {
                x.push(parse_number(cell, number, j, field)?);
            }
        }
    }
    if labels.is_empty() {
        return Err(SpecError::new(field, "the CSV file has no data rows"));
    }
    let (y, label_names) = label_ids(&labels, field)?;
    Ok(Raw { image: None, features: width - 1, split: Split { x, y }, label_names, transfer: Vec::new() })
}

fn parse_number(cell: &str, line: usize, column: usize, field: &str) -> Result<f32, SpecError> {
    cell.parse().ok().filter(|v: &f32| v.is_finite()).ok_or_else(|| {
        SpecError::new(field, format!("line {}, column {}: `{cell}` is not a finite number", line + 1, column + 1))
    })
}

/// A transfer CSV: a header, then the training file's feature columns; its label column, if
/// there, is ignored. Returns the features, row-major.
fn read_csv_transfer(
    root: &DataRoot,
    relative: &str,
    label_column: &str,
    features: usize,
) -> Result<Vec<f32>, SpecError> {
    let field = "dataset.transfer.path";
    let bytes = open_maybe_gz(root, relative, field)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| SpecError::new(field, "the CSV file is not UTF-8 text"))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| SpecError::new(field, "the CSV file is empty"))?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let label = names.iter().position(|n| *n == label_column);
    let width = names.len() - usize::from(label.is_some());
    if width != features {
        return Err(SpecError::new(
            field,
            format!("`{relative}` has {width} feature columns, the training data {features}"),
        ));
    }
    let mut x = Vec::new();
    for (number, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != names.len() {
            return Err(SpecError::new(
                field,
                format!("line {}: {} columns, expected {}", number + 1, cells.len(), names.len()),
            ));
        }
        for (j, cell) in cells.iter().enumerate().filter(|(j, _)| Some(*j) != label) {
            x.push(parse_number(cell, number, j, field)?);
        }
    }
    if x.is_empty() {
        return Err(SpecError::new(field, "the CSV file has no data rows"));
    }
    Ok(x)
}

fn label_ids(labels: &[String], field: &str) -> Result<(Vec<u32>, Option<Vec<String>>), SpecError> {
    let as_ints: Option<Vec<i64>> = labels.iter().map(|l| l.parse::<i64>().ok()).collect();
    match as_ints {
        Some(ints) => {
            if let Some((row, bad)) = ints.iter().enumerate().find(|(_, &v)| !(0..=u32::MAX as i64 / 2).contains(&v)) {
                return Err(SpecError::new(
                    field,
                    format!("data row {}: label {bad} is out of range (class ids are 0, 1, 2, …)", row + 1),
                ));
            }
            Ok((ints.into_iter().map(|v| v as u32).collect(), None))
        }
        None => {
            let mut names: Vec<String> = labels.to_vec();
            names.sort();
            names.dedup();
            let y = labels.iter().map(|l| names.binary_search(l).unwrap_or_default() as u32).collect();
            Ok((y, Some(names)))
        }
    }
}

fn read_idx_pair(
    root: &DataRoot,
    images: &str,
    labels: &str,
    images_field: &str,
    labels_field: &str,
) -> Result<Raw, SpecError> {
    let mut raw = read_idx_images(root, images, images_field)?;
    let count = raw.split.x.len() / raw.features;
    let (label_dims, label_bytes) = read_idx(&open_maybe_gz(root, labels, labels_field)?, labels_field)?;
    if label_dims.len() != 1 {
        return Err(SpecError::new(
            labels_field,
            format!("expected a labels file (1 dimension), got {}", label_dims.len()),
        ));
    }
    if label_dims[0] != count {
        return Err(SpecError::new(labels_field, format!("{} labels for {count} images", label_dims[0])));
    }
    raw.split.y = label_bytes.into_iter().map(u32::from).collect();
    Ok(raw)
}

/// An IDX images file, its pixels as C×H×W floats, without labels yet.
fn read_idx_images(root: &DataRoot, images: &str, field: &str) -> Result<Raw, SpecError> {
    let (dims, pixels) = read_idx(&open_maybe_gz(root, images, field)?, field)?;
    if dims.len() < 2 {
        return Err(SpecError::new(
            field,
            format!("expected an images file (2 or more dimensions), got {} dimension(s)", dims.len()),
        ));
    }
    let features: usize = dims[1..].iter().product();
    let (image, x) = match dims[1..] {
        [height, width] => {
            (Some(ImageShape { channels: 1, height, width }), pixels.into_iter().map(f32::from).collect())
        }
        [height, width, channels] => {
            // IDX stores H×W×C; the engine (and PyTorch) want C×H×W.
            let mut x = Vec::with_capacity(pixels.len());
            for sample in pixels.chunks_exact(features) {
                for c in 0..channels {
                    x.extend((0..height * width).map(|p| f32::from(sample[p * channels + c])));
                }
            }
            (Some(ImageShape { channels, height, width }), x)
        }
        _ => (None, pixels.into_iter().map(f32::from).collect()),
    };
    Ok(Raw { image, features, split: Split { x, y: Vec::new() }, label_names: None, transfer: Vec::new() })
}

/// A transfer IDX file: images of the training images' shape, without labels.
fn read_idx_transfer(root: &DataRoot, images: &str, train: &Raw) -> Result<Vec<f32>, SpecError> {
    let field = "dataset.transfer.images";
    let transfer = read_idx_images(root, images, field)?;
    let describe = |raw: &Raw| match raw.image {
        Some(i) => format!("{}×{}×{} images", i.channels, i.height, i.width),
        None => format!("samples of {} values", raw.features),
    };
    if transfer.image != train.image || transfer.features != train.features {
        return Err(SpecError::new(
            field,
            format!("`{images}` holds {}, the training data {}", describe(&transfer), describe(train)),
        ));
    }
    Ok(transfer.split.x)
}

/// IDX: two zero bytes, a type byte (0x08: unsigned bytes), the number of dimensions, then each
/// dimension as a big-endian u32, then the data.
pub(crate) fn read_idx(bytes: &[u8], field: &str) -> Result<(Vec<usize>, Vec<u8>), SpecError> {
    let bad = |m: String| SpecError::new(field, format!("not a valid IDX file: {m}"));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic number".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x}; only unsigned bytes (0x08) are supported", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    if dims.contains(&0) {
        return Err(bad(format!("a dimension of size 0 in {dims:?}")));
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} are too large")))?;
    if bytes.len() - header != expected {
        return Err(bad(format!("header promises {expected} bytes of data, file has {}", bytes.len() - header)));
    }
    Ok((dims, bytes[header..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TransferSpec;

    fn spec(source: &str) -> DatasetSpec {
        serde_json::from_value(serde_json::json!({"source": source})).unwrap()
    }

    #[test]
    fn digits_loads_and_is_standardised_on_the_training_split() {
        let d = load(&spec("builtin:digits"), &DataRoot::new("/nonexistent"), 42, false).unwrap();
        assert_eq!(d.features, 64);
        assert_eq!(d.classes, 10);
        assert_eq!(d.train.len() + d.validation.len(), 1797);
        assert_eq!(d.validation.len(), 359);
        let n = d.train.len() as f32;
        let mean_of_feature_20: f32 = d.train.x.iter().skip(20).step_by(64).sum::<f32>() / n;
        assert!(mean_of_feature_20.abs() < 1e-4, "{mean_of_feature_20}");
        let again = load(&spec("builtin:digits"), &DataRoot::new("/nonexistent"), 42, false).unwrap();
        assert_eq!(d.validation.y, again.validation.y);
        let other = load(&spec("builtin:digits"), &DataRoot::new("/nonexistent"), 43, false).unwrap();
        assert_ne!(d.validation.y, other.validation.y);
    }

    #[test]
    fn csv_with_named_labels_and_errors_that_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.csv"), "a,b,species\n1,2,cat\n3,4,dog\n5,6,cat\n").unwrap();
        let mut s = spec("csv");
        s.path = Some("ok.csv".into());
        s.label_column = Some("species".into());
        let d = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap();
        assert_eq!(d.features, 2);
        assert_eq!(d.label_names, Some(vec!["cat".into(), "dog".into()]));

        std::fs::write(dir.path().join("bad.csv"), "a,label\n1,0\nx,1\n").unwrap();
        s.path = Some("bad.csv".into());
        s.label_column = None;
        let err = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err();
        assert_eq!(err.field, "dataset.path");
        assert!(err.message.contains("line 3"), "{}", err.message);

        std::fs::write(dir.path().join("neg.csv"), "a,label\n1,0\n2,-1\n").unwrap();
        s.path = Some("neg.csv".into());
        assert!(load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err().message.contains("out of range"));
    }

    #[test]
    fn idx_files_raw_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 2];
        images.extend((0..16u8).map(|v| v * 10));
        let labels = vec![0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 2, 1];
        std::fs::write(dir.path().join("img"), &images).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &labels).unwrap();
        std::fs::write(dir.path().join("lab.gz"), gz.finish().unwrap()).unwrap();
        let mut s = spec("idx");
        s.images = Some("img".into());
        s.labels = Some("lab.gz".into());
        s.validation_split = 0.25;
        let d = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap();
        assert_eq!((d.features, d.classes, d.train.len(), d.validation.len()), (4, 3, 3, 1));

        std::fs::write(dir.path().join("short"), &images[..20]).unwrap();
        s.images = Some("short".into());
        assert_eq!(load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err().field, "dataset.images");
    }

    #[test]
    fn labelled_keeps_the_first_labels_and_standardises_on_them_alone() {
        let mut s = spec("builtin:digits");
        let all = load(&s, &DataRoot::new("/nonexistent"), 42, false).unwrap();
        s.labelled = Some(100);
        let d = load(&s, &DataRoot::new("/nonexistent"), 42, false).unwrap();
        assert_eq!((d.labelled, d.transfer(), d.train.len()), (100, all.train.len() - 100, all.train.len()));
        assert_eq!(d.train.y[..100], all.train.y[..100]);
        assert!(d.train.y[100..].iter().all(|&y| y == 0), "transfer samples carry the placeholder label");
        assert_eq!(d.validation.y, all.validation.y);
        let mean_of_feature_20: f32 = d.train.x[..100 * 64].iter().skip(20).step_by(64).sum::<f32>() / 100.0;
        assert!(mean_of_feature_20.abs() < 1e-4, "{mean_of_feature_20}");

        // A monitor split (early stopping, repeats) comes out of the 100 labels, not the rest.
        let monitored = load(&s, &DataRoot::new("/nonexistent"), 42, true).unwrap();
        let held = monitored.monitor.as_ref().map_or(0, Split::len);
        assert!(held > 0 && held + monitored.labelled == 100, "{held} + {}", monitored.labelled);
        assert_eq!(monitored.train.len(), all.train.len() - held);

        // So does `limit: N`'s: the job uses N training samples in all.
        s.labelled = None;
        s.limit = Some(300);
        let limited = load(&s, &DataRoot::new("/nonexistent"), 42, true).unwrap();
        let held = limited.monitor.as_ref().map_or(0, Split::len);
        assert!(held > 0 && held + limited.train.len() == 300, "{held} + {}", limited.train.len());
    }

    #[test]
    fn transfer_files_join_the_training_samples_unlabelled_and_must_fit_their_shape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.csv"), "a,b,label\n1,2,0\n3,4,1\n5,6,1\n").unwrap();
        std::fs::write(dir.path().join("more.csv"), "label,a,b\n9,7,8\n9,9,10\n").unwrap();
        std::fs::write(dir.path().join("wide.csv"), "a,b,c\n1,2,3\n").unwrap();
        let mut s = spec("csv");
        s.path = Some("train.csv".into());
        s.test_path = Some("train.csv".into());
        s.transfer = Some(TransferSpec { path: Some("more.csv".into()), images: None });
        let d = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap();
        assert_eq!((d.labelled, d.transfer(), d.train.y.clone()), (3, 2, vec![0, 1, 1, 0, 0]));
        let raw_feature_a: Vec<f32> =
            d.train.x.iter().step_by(2).map(|v| v * d.normalization.std[0] + d.normalization.mean[0]).collect();
        assert!(
            raw_feature_a.iter().zip([1.0, 3.0, 5.0, 7.0, 9.0]).all(|(a, b)| (a - b).abs() < 1e-4),
            "{raw_feature_a:?}"
        );
        s.transfer = Some(TransferSpec { path: Some("wide.csv".into()), images: None });
        let error = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err();
        assert_eq!(error.field, "dataset.transfer.path");
        assert!(error.message.contains("3 feature columns, the training data 2"), "{}", error.message);

        let idx = |n: u8, h: u8| {
            [vec![0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, h, 0, 0, 0, 2], vec![7; (n * h * 2) as usize]].concat()
        };
        std::fs::write(dir.path().join("img"), idx(2, 2)).unwrap();
        std::fs::write(dir.path().join("lab"), [0, 0, 8, 1, 0, 0, 0, 2, 0, 1]).unwrap();
        std::fs::write(dir.path().join("unlabelled"), idx(3, 2)).unwrap();
        std::fs::write(dir.path().join("taller"), idx(3, 3)).unwrap();
        let mut s = spec("idx");
        (s.images, s.labels, s.test_images, s.test_labels) =
            (Some("img".into()), Some("lab".into()), Some("img".into()), Some("lab".into()));
        s.transfer = Some(TransferSpec { path: None, images: Some("unlabelled".into()) });
        let d = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap();
        assert_eq!((d.labelled, d.transfer(), d.train.x.len()), (2, 3, 5 * 4));
        s.transfer = Some(TransferSpec { path: None, images: Some("taller".into()) });
        let error = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err();
        assert_eq!(error.field, "dataset.transfer.images");
        assert!(error.message.contains("1×3×2 images, the training data 1×2×2 images"), "{}", error.message);
        s.transfer = Some(TransferSpec { path: None, images: Some("missing".into()) });
        assert_eq!(load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err().field, "dataset.transfer.images");
    }

    #[test]
    fn files_outside_the_root_are_refused_even_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.csv"), "a,label\n1,0\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.csv"), root.path().join("link.csv")).unwrap();
        let err = DataRoot::new(root.path()).resolve("link.csv", "dataset.path").unwrap_err();
        assert!(err.message.contains("outside"), "{}", err.message);
        assert!(DataRoot::new(root.path()).resolve("missing.csv", "dataset.path").is_err());
    }

    #[test]
    fn an_idx_file_with_a_zero_dimension_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("img"), [0, 0, 8, 4, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]).unwrap();
        std::fs::write(dir.path().join("lab"), [0, 0, 8, 1, 0, 0, 0, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        let mut s = spec("idx");
        s.images = Some("img".into());
        s.labels = Some("lab".into());
        let error = load(&s, &DataRoot::new(dir.path()), 1, false).unwrap_err();
        assert_eq!(error.field, "dataset.images");
        assert!(error.message.contains("dimension of size 0"), "{}", error.message);
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_cap_without_inflating_it_all() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros compress to about 64 KiB; many members, as the reported bomb had.
        let mut bomb = Vec::new();
        for _ in 0..8 {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut gz, &vec![b'0'; 8 << 20]).unwrap();
            bomb.extend(gz.finish().unwrap());
        }
        std::fs::write(dir.path().join("bomb.csv.gz"), &bomb).unwrap();
        let mut s = spec("csv");
        s.path = Some("bomb.csv.gz".into());
        let root = DataRoot::new(dir.path()).with_max_file_bytes(16 << 20);
        let error = load(&s, &root, 1, false).unwrap_err();
        assert_eq!(error.field, "dataset.path");
        assert!(error.message.contains("expands to more than 16777216 bytes"), "{}", error.message);
    }
}
