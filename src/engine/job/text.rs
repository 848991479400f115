//! Text jobs: a Hugging Face teacher folder, its tokenizer, the student derived from it, and the
//! student exported as a Hugging Face folder that `transformers` and candle load again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::engine::data::root::DataRoot;
use crate::engine::data::text::{self as text_data, TextDataset, TextSplit};
use crate::engine::data::{Dataset, Normalization, Split};
use crate::engine::job::small_student;
use crate::engine::models::bert::{self, BertConfig, Trimmed};
use crate::engine::models::{Input, ModelError, Net};
use crate::engine::rng::Rng;
use crate::spec::{ArchSpec, JobSpec, SpecError, TransformerArch, TransformerInit, Vocabulary};

/// Files of a Hugging Face folder that travel with an exported student: the tokenizer, and
/// sentence-transformers' pooling settings, so an embedding student loads there too.
const COMPANION_FILES: [&str; 9] = [
    TOKENIZER,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];
const TOKENIZER: &str = "tokenizer.json";
pub use crate::layout::{HF_ARCHIVE, HF_FOLDER};

/// A Hugging Face folder as found on disk: the teacher's, or a pre-trained student's.
pub struct ModelFolder {
    /// The folder as the spec names it, relative to the data root.
    pub path: String,
    pub config: BertConfig,
    /// Our names; the head only when the folder has one.
    pub tensors: HashMap<String, Tensor>,
    /// Whether the weights hold a sequence-classification head.
    pub has_head: bool,
    /// The bytes of the folder's tokenizer and other [`COMPANION_FILES`] present, read (and
    /// checked) once, for the tokenizer and the export.
    pub companions: Vec<(&'static str, Vec<u8>)>,
}

/// What a text job knows beyond its `Dataset`.
pub struct TextSetup {
    pub teacher: ModelFolder,
    pub max_length: usize,
    pub truncated: usize,
    /// `student.vocabulary: trim`: the tokens the student keeps.
    pub trimmed: Option<Trimmed>,
    /// A pre-trained student's own folder (`student.arch.path`).
    pub student: Option<ModelFolder>,
    /// Whether that student's tokenizer differs from the teacher's: each row then packs the
    /// text twice, as each tokenises it.
    pub own_tokenizer: bool,
}

impl TextSetup {
    /// The folder whose tokenizer the student reads with: its own, or the teacher's.
    pub fn student_folder(&self) -> &ModelFolder {
        self.student.as_ref().unwrap_or(&self.teacher)
    }

    /// Which packed input of a row the teacher (`false`) or the student (`true`) reads.
    fn slot(&self, student: bool) -> (usize, usize) {
        match self.own_tokenizer {
            true => (usize::from(student), 2),
            false => (0, 1),
        }
    }
}

fn folder_field(spec: &JobSpec) -> String {
    format!("{}.arch.path", spec.teacher_field(0))
}

/// Reads the teacher's folder.
pub fn read_teacher(spec: &JobSpec, root: &DataRoot, device: &Device) -> Result<ModelFolder, SpecError> {
    let field = folder_field(spec);
    let teacher = spec.teacher_specs()[0];
    let relative =
        teacher.arch.transformer().and_then(|t| t.path.as_deref()).ok_or_else(|| SpecError::new(&field, "required"))?;
    read_folder(relative, &field, root, device)
}

/// Reads a Hugging Face folder: config.json, model.safetensors (names normalised), the
/// tokenizer, and whether a classification head is there.
fn read_folder(relative: &str, field: &str, root: &DataRoot, device: &Device) -> Result<ModelFolder, SpecError> {
    let field = field.to_string();
    let file = |name: &str| format!("{relative}/{name}");
    let config_json = root.read(&file("config.json"), &field)?;
    let weights = root
        .read(&file("model.safetensors"), &field)
        .map_err(|e| SpecError::new(&field, format!("{} (weights must be in model.safetensors)", e.message)))?;
    // The tokenizer is required (a missing one is an error here); the others travel if present.
    let mut companions = Vec::new();
    for name in COMPANION_FILES.into_iter().filter(|name| *name == TOKENIZER || root.exists(&file(name))) {
        companions.push((name, root.read(&file(name), &field)?));
    }
    let (config, tensors) =
        bert::from_files(&config_json, &weights, device).map_err(|m| SpecError::new(&field, m.to_string()))?;
    let has_head = config.num_labels > 0;
    Ok(ModelFolder { path: relative.to_string(), config, tensors, has_head, companions })
}

impl ModelFolder {
    fn tokenizer_json(&self) -> &[u8] {
        let (_, bytes) =
            self.companions.iter().find(|(name, _)| *name == TOKENIZER).expect("read_teacher requires the tokenizer");
        bytes
    }
}

/// Tokenises the dataset with the teacher's tokenizer and packs it as network input.
pub fn load(
    spec: &JobSpec,
    root: &DataRoot,
    monitor: bool,
    device: &Device,
) -> Result<(Dataset, TextSetup), SpecError> {
    let teacher = read_teacher(spec, root, device)?;
    let text = tokenised(spec, root, &teacher, &folder_field(spec), monitor)?;
    let student = match spec.student.arch.transformer().and_then(|t| t.path.as_deref()) {
        Some(path) => Some(read_folder(path, STUDENT_FIELD, root, device)?),
        None => None,
    };
    let own_tokenizer = student.as_ref().is_some_and(|s| s.tokenizer_json() != teacher.tokenizer_json());
    let student_text = match (&student, own_tokenizer) {
        (Some(folder), true) => Some(tokenised(spec, root, folder, STUDENT_FIELD, monitor)?),
        (Some(folder), false) => {
            fits_positions(folder, text.max_length, STUDENT_FIELD)?;
            None
        }
        (None, _) => None,
    };
    let trimmed = match spec.student.vocabulary {
        Vocabulary::Trim => Some(small_student::trimmed(teacher.tokenizer_json(), &text, teacher.config.vocab_size)?),
        Vocabulary::Full => None,
    };
    let dataset = as_dataset(&text, student_text.as_ref());
    let setup =
        TextSetup { teacher, max_length: text.max_length, truncated: text.truncated, trimmed, student, own_tokenizer };
    Ok((dataset, setup))
}

const STUDENT_FIELD: &str = "student.arch.path";

/// The dataset as `folder`'s tokenizer reads it; its model must have positions for it.
fn tokenised(
    spec: &JobSpec,
    root: &DataRoot,
    folder: &ModelFolder,
    field: &str,
    monitor: bool,
) -> Result<TextDataset, SpecError> {
    let tokenizer = text_data::load_tokenizer(folder.tokenizer_json(), field)?;
    let text = text_data::load_text(&spec.dataset, root, &tokenizer, spec.training.seed, monitor)?;
    fits_positions(folder, text.max_length, field)?;
    Ok(text)
}

/// Whether `folder`'s model has positions for texts of `length` tokens.
fn fits_positions(folder: &ModelFolder, length: usize, field: &str) -> Result<(), SpecError> {
    let needed = folder.config.positions_needed(length);
    if needed <= folder.config.max_positions {
        return Ok(());
    }
    let whose = if field == STUDENT_FIELD { "student" } else { "teacher" };
    Err(SpecError::new(
        "dataset.max_length",
        format!(
            "the {whose} has {} positions; at most {} tokens fit",
            folder.config.max_positions,
            length + folder.config.max_positions - needed
        ),
    ))
}

/// The texts as network input: each row the teacher's tokens packed, then the student's when it
/// tokenises with its own tokenizer (`student`, the same rows).
fn as_dataset(text: &TextDataset, student: Option<&TextDataset>) -> Dataset {
    let length = text.max_length;
    // Unlabelled texts get class 0 throughout; `classes` = 0 tells every phase to ignore it.
    let labels = |s: &TextSplit| if text.labelled() { s.labels.clone() } else { vec![0; s.len()] };
    let pack = |s: &TextSplit| bert::pack(&s.input_ids, &s.type_ids, &s.attention_mask, length);
    let both = |teacher: &TextSplit, student: Option<&TextSplit>| match student {
        None => pack(teacher),
        Some(theirs) => {
            let (ours, theirs) = (pack(teacher), pack(theirs));
            ours.chunks(3 * length)
                .zip(theirs.chunks(3 * length))
                .flat_map(|(a, b)| a.iter().chain(b))
                .copied()
                .collect()
        }
    };
    let split = |pick: fn(&TextDataset) -> &TextSplit| {
        let teacher = pick(text);
        Split { x: both(teacher, student.map(pick)), y: labels(teacher) }
    };
    let mut train = split(|t| &t.train);
    train.x.extend(split(|t| &t.transfer).x);
    // Transfer rows get the placeholder label 0, which no loss reads.
    train.y.resize(text.train.len() + text.transfer.len(), 0);
    Dataset {
        name: text.name.clone(),
        features: 3 * length * if student.is_some() { 2 } else { 1 },
        classes: text.classes,
        label_names: text.label_names.clone(),
        train,
        labelled: text.train.len(),
        validation: split(|t| &t.validation),
        monitor: text.monitor.as_ref().map(|_| split(|t| t.monitor.as_ref().expect("both hold the same splits"))),
        normalization: Normalization { mean: Vec::new(), std: Vec::new() },
        image: None,
    }
}

/// The teacher's config for this job: its head sized for the dataset's classes.
pub fn teacher_config(setup: &TextSetup, classes: usize) -> BertConfig {
    BertConfig { num_labels: classes, input_slot: setup.slot(false), ..setup.teacher.config.clone() }
}

/// A pre-trained student's config for this job: its own folder's, its head sized for the
/// dataset's classes.
pub fn pretrained_config(setup: &TextSetup, classes: usize) -> Option<BertConfig> {
    let folder = setup.student.as_ref()?;
    Some(BertConfig { num_labels: classes, input_slot: setup.slot(true), ..folder.config.clone() })
}

/// The teacher as the job starts it: the folder's weights, with a fresh head where the folder
/// has none (or one for another number of classes), which only a fine-tuning phase may add.
pub fn teacher_net(
    spec: &JobSpec,
    setup: &TextSetup,
    data: &Dataset,
    rng: &mut Rng,
    device: &Device,
) -> Result<Net, SpecError> {
    let field = folder_field(spec);
    let config = teacher_config(setup, data.classes);
    let fits = data.classes == 0 || (setup.teacher.has_head && setup.teacher.config.num_labels == data.classes);
    let trains = spec.teacher_specs()[0].train.is_some();
    if !fits && !trains {
        let what = match setup.teacher.has_head {
            true => format!(
                "its classification head has {} classes, the dataset {}",
                setup.teacher.config.num_labels, data.classes
            ),
            false => "it has no sequence-classification head".to_string(),
        };
        return Err(SpecError::new(
            format!("{}.train", spec.teacher_field(0)),
            format!("the teacher needs fine-tuning: {what}; add `train` (e.g. {{\"epochs\": 3}})"),
        ));
    }
    let named = folder_weights(&setup.teacher, &config, fits, rng, device).map_err(|m| SpecError::new(&field, m))?;
    let input = Input { features: data.features, image: None };
    Net::transformer(&spec.teacher_specs()[0].arch, config, input, named, device)
        .map_err(|m| SpecError::new(&field, m.to_string()))
}

/// A folder's tensors for `config`; a head it lacks, or one for other classes (unless `fits`),
/// starts fresh from `rng`.
fn folder_weights(
    folder: &ModelFolder,
    config: &BertConfig,
    fits: bool,
    rng: &mut Rng,
    device: &Device,
) -> Result<HashMap<String, Tensor>, String> {
    let fresh = config.init(rng, device).map_err(|e| e.to_string())?;
    let mut named = HashMap::new();
    for (name, _) in config.tensor_shapes() {
        let tensor = match folder.tensors.get(&name) {
            Some(t) if fits || !bert::is_classifier(&name) => t.clone(),
            // A head the folder lacks (BERT's pooler included) starts fresh.
            _ if config.is_head(&name) => fresh[&name].clone(),
            _ => return Err(format!("model.safetensors lacks `{}`", config.hf_name(&name))),
        };
        named.insert(name, tensor);
    }
    Ok(named)
}

/// A pre-trained student as the job starts it: its folder's weights, with a fresh head where
/// the folder has none for the dataset's classes.
pub fn pretrained_student(
    setup: &TextSetup,
    config: &BertConfig,
    arch: &ArchSpec,
    input: Input,
    rng: &mut Rng,
    device: &Device,
) -> Result<Net, SpecError> {
    let folder = setup.student.as_ref().expect("a pretrained student has a folder");
    let fits = folder.has_head && folder.config.num_labels == config.num_labels;
    let named = folder_weights(folder, config, fits, rng, device).map_err(|m| SpecError::new(STUDENT_FIELD, m))?;
    Net::transformer(arch, config.clone(), input, named, device)
        .map_err(|m| SpecError::new(STUDENT_FIELD, m.to_string()))
}

/// The student's config (its vocabulary `trimmed`, or the teacher's) and, for each of its
/// layers, the teacher layer it maps to.
pub fn student_config(
    teacher: &BertConfig,
    arch: &TransformerArch,
    trimmed: Option<&Trimmed>,
) -> Result<(BertConfig, Vec<usize>), SpecError> {
    let layers = match &arch.layers {
        Some(layers) => {
            if let Some(&bad) = layers.iter().find(|&&l| l >= teacher.num_layers) {
                return Err(SpecError::new(
                    "student.arch.layers",
                    format!("the teacher has layers 0..{}; {bad} is not one of them", teacher.num_layers - 1),
                ));
            }
            if layers.windows(2).any(|w| w[0] >= w[1]) {
                return Err(SpecError::new(
                    "student.arch.layers",
                    "list teacher layers in increasing order, each once",
                ));
            }
            layers.clone()
        }
        None => {
            let count = arch.num_layers.unwrap_or(teacher.num_layers.div_ceil(2));
            if count > teacher.num_layers && arch.init == TransformerInit::Teacher {
                return Err(SpecError::new(
                    "student.arch.num_layers",
                    format!(
                        "the teacher has {} layers; a deeper student cannot copy them (use `init: random`)",
                        teacher.num_layers
                    ),
                ));
            }
            evenly_spaced(count, teacher.num_layers)
        }
    };
    let config = BertConfig {
        num_layers: layers.len(),
        hidden_size: arch.hidden_size.unwrap_or(teacher.hidden_size),
        num_heads: arch.num_heads.unwrap_or(teacher.num_heads),
        intermediate_size: arch.intermediate_size.unwrap_or(teacher.intermediate_size),
        vocab_size: trimmed.map_or(teacher.vocab_size, |t| t.kept.len()),
        pad_token_id: trimmed.map_or(teacher.pad_token_id, |t| t.map[teacher.pad_token_id as usize]),
        trimmed: trimmed.cloned(),
        ..teacher.clone()
    };
    config.check().map_err(|m| SpecError::new("student.arch", m.to_string()))?;
    Ok((config, layers))
}

/// The student's first weights: fresh, then with `init: teacher`, every teacher tensor whose
/// shape fits (student layer `i` from teacher layer `layers[i]`), and the embeddings fitted
/// to a trimmed vocabulary or a narrower width. Returns the count copied.
pub fn student_init(
    config: &BertConfig,
    layers: &[usize],
    arch: &ArchSpec,
    teacher: &Net,
    input: Input,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Net, usize), ModelError> {
    let mut named = config.init(rng, device)?;
    let mut copied = 0;
    let copies = arch.transformer().is_some_and(|t| t.init == TransformerInit::Teacher);
    if copies {
        let source: HashMap<String, Tensor> = teacher.named().into_iter().collect();
        let teacher_config = teacher
            .transformer_config()
            .ok_or_else(|| ModelError::Architecture("the teacher is not a transformer".into()))?;
        let mut renames: HashMap<String, String> = HashMap::new();
        for (i, &from) in layers.iter().enumerate() {
            for (ours, theirs) in config.layer_names(i).into_iter().zip(teacher_config.layer_names(from)) {
                renames.insert(ours, theirs);
            }
        }
        for (name, tensor) in named.iter_mut() {
            let from = renames.get(name).unwrap_or(name);
            if let Some(t) = source.get(from).filter(|t| t.dims() == tensor.dims()) {
                *tensor = t.copy()?;
                copied += 1;
            }
        }
        copied += small_student::fit_embeddings(config, teacher_config, &source, &mut named)?;
    }
    Ok((Net::transformer(arch, config.clone(), input, named, device)?, copied))
}

/// Writes the student as a Hugging Face folder (config.json with sizes and labels,
/// model.safetensors with Hugging Face names, the teacher's tokenizer files) and a tar of it.
pub fn export(student: &Net, label_names: &[String], teacher: &ModelFolder, job_dir: &Path) -> std::io::Result<()> {
    let config =
        student.transformer_config().ok_or_else(|| std::io::Error::other("the student is not a transformer"))?;
    let dir = job_dir.join(HF_FOLDER);
    std::fs::create_dir_all(&dir)?;
    let mut files = vec![dir.join("config.json")];
    std::fs::write(&files[0], serde_json::to_vec_pretty(&config.to_hf(label_names))?)?;
    let named: Vec<(String, Tensor)> = student.named().into_iter().map(|(n, t)| (config.hf_name(&n), t)).collect();
    let weights = dir.join("model.safetensors");
    // transformers reads the format key to know the file holds PyTorch tensors.
    let meta = serde_json::json!({"format": "pt"});
    crate::engine::files::write_safetensors(&weights, &named, Some(&meta))?;
    files.push(weights);
    for (name, bytes) in &teacher.companions {
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().expect("inside the folder"))?;
        // A trimmed student's tokenizer numbers the tokens as its rows.
        let bytes = match (&config.trimmed, *name) {
            (Some(trimmed), TOKENIZER) => small_student::cut_tokenizer(bytes, trimmed)?,
            (Some(trimmed), "vocab.txt") => small_student::cut_vocab_txt(bytes, trimmed),
            _ => bytes.clone(),
        };
        std::fs::write(&to, bytes)?;
        files.push(to);
    }
    write_tar(&job_dir.join(HF_ARCHIVE), &files, job_dir)
}

/// A ustar archive of `files`, named relative to `base`, written atomically; every entry gets
/// mode 0644 and time 0, so the same folder always gives the same bytes.
pub(crate) fn write_tar(path: &Path, files: &[PathBuf], base: &Path) -> std::io::Result<()> {
    let temporary = path.with_extension("tar.partial");
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&temporary)?));
    for file in files {
        let name = file.strip_prefix(base).map_err(std::io::Error::other)?;
        let contents = std::fs::File::open(file)?;
        let mut header = tar::Header::new_ustar();
        header.set_size(contents.metadata()?.len());
        header.set_mode(0o644);
        header.set_mtime(0);
        builder.append_data(&mut header, name, contents)?;
    }
    builder.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// `count` student layers spread evenly over a teacher's `layers`: student layer i maps to
/// teacher layer ⌊i·layers/count⌋.
pub fn evenly_spaced(count: usize, layers: usize) -> Vec<usize> {
    (0..count).map(|i| i * layers / count.max(1)).collect()
}
