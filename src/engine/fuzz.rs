//! Property tests of the readers that take a user's bytes (IDX, CSV, gzip, text tables, JSON
//! Lines, safetensors, a Hugging Face config.json, a tokenizer): random bytes and mutations of
//! real files must come back as `Ok` or as an error, never as a panic. Deterministic (seeded);
//! `DISTILLERY_FUZZ_CASES` sets the cases per reader (CI runs more).

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::Device;

use crate::engine::data::text as text_data;
use crate::engine::models::bert::BertConfig;
use crate::engine::rng::Rng;
use crate::engine::{data, files};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn cases() -> u64 {
    std::env::var("DISTILLERY_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1500)
}

/// Integers that break size arithmetic, written where a mutation lands.
const EXTREMES: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x0001_0000];

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.next_u64() % 4 {
        let at = if bytes.is_empty() { 0 } else { (rng.next_u64() as usize) % bytes.len() };
        match rng.next_u64() % 7 {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << (rng.next_u64() % 8),
            1 if !bytes.is_empty() => bytes[at] = rng.next_u64() as u8,
            2 => bytes.insert(at, rng.next_u64() as u8),
            3 if !bytes.is_empty() => drop(bytes.remove(at)),
            4 => bytes.truncate(at),
            5 => {
                let extreme = EXTREMES[(rng.next_u64() as usize) % EXTREMES.len()].to_be_bytes();
                for (i, b) in extreme.into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
            _ => {
                let end = (at + 1 + (rng.next_u64() as usize) % 64).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
        }
    }
    bytes
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    (0..rng.next_u64() % 96).map(|_| rng.next_u64() as u8).collect()
}

/// Feeds `reader` random bytes and mutations of each seed; a panic fails with the input.
fn never_panics(name: &str, seeds: &[Vec<u8>], cases: u64, reader: impl Fn(&[u8])) {
    let mut rng = Rng::new(0x5eed ^ name.len() as u64);
    for case in 0..cases {
        let input = match case % (seeds.len() as u64 + 1) {
            0 => random_bytes(&mut rng),
            k => mutate(&seeds[k as usize - 1], &mut rng),
        };
        if catch_unwind(AssertUnwindSafe(|| reader(&input))).is_err() {
            let shown: Vec<String> = input.iter().take(256).map(|b| format!("{b:02x}")).collect();
            panic!("{name}: case {case} panicked on {} bytes: {}", input.len(), shown.join(""));
        }
    }
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{path}")).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn idx_and_gzip_readers_never_panic() {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
    images.extend(0..12u8);
    let labels = vec![0, 0, 8, 1, 0, 0, 0, 3, 0, 1, 2];
    let seeds = [images.clone(), labels.clone(), gzip(&images), gzip(&labels)];
    never_panics("idx", &seeds, cases(), |bytes| {
        if let Ok(inflated) = data::gunzip_if_needed(bytes.to_vec(), 1 << 20, "dataset.images") {
            let _ = data::read_idx(&inflated, "dataset.images");
        }
    });
}

#[test]
fn csv_reader_never_panics() {
    let seeds = [b"a,b,label\n1,2,0\n3.5,-4e3,1\n5,6,cat\n".to_vec(), b"0,1,2,3\n4,5,6,7\n".to_vec()];
    never_panics("csv", &seeds, cases(), |bytes| {
        let _ = data::read_csv_rows(bytes, Some("label"), true, "dataset.path");
        let _ = data::read_csv_rows(bytes, None, false, "dataset.path");
    });
}

#[test]
fn text_table_and_json_lines_readers_never_panic() {
    let columns = [Some("text"), Some("pair"), Some("label")];
    let seeds = [
        b"text,pair,label\n\"a \"\"quoted\"\" movie\",b,pos\nc,d,neg\n".to_vec(),
        b"text\tpair\tlabel\nx\ty\t1\n".to_vec(),
        b"{\"text\": \"a\", \"pair\": \"b\", \"label\": 1}\n{\"text\": \"c\", \"label\": \"neg\"}\n".to_vec(),
    ];
    never_panics("text", &seeds, cases(), |bytes| {
        let _ = text_data::read_delimited(bytes, b',', &columns, "t.csv", "dataset.path");
        let _ = text_data::read_delimited(bytes, b'\t', &columns, "t.tsv", "dataset.path");
        let _ = text_data::read_jsonl(bytes, &columns, "t.jsonl", "dataset.path");
    });
}

#[test]
fn safetensors_reader_never_panics() {
    let weights = fixture("tiny-bert/model.safetensors");
    let header_end = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    // Mutations land in the header (where the sizes are) far more often than in a copy of it all.
    let header_only = weights[..header_end.min(weights.len())].to_vec();
    never_panics("safetensors", &[weights, header_only], cases() / 4, |bytes| {
        let _ = files::parse_safetensors(bytes, &Device::Cpu);
    });
}

#[test]
fn hugging_face_config_reader_never_panics() {
    let config = fixture("tiny-bert/config.json");
    never_panics("config.json", &[config], cases(), |bytes| {
        if let Ok(raw) = serde_json::from_slice(bytes) {
            if let Ok(config) = BertConfig::from_hf(&raw) {
                if config.check().is_ok() {
                    let _ = config.tensor_shapes();
                    let _ = config.outputs(8);
                }
            }
        }
    });
}

#[test]
fn config_json_with_extreme_sizes_never_panics() {
    let base: serde_json::Value = serde_json::from_slice(&fixture("tiny-bert/config.json")).unwrap();
    let mut rng = Rng::new(7);
    let keys = [
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
    ];
    for case in 0..cases() {
        let mut raw = base.clone();
        let key = keys[(rng.next_u64() as usize) % keys.len()];
        let value: serde_json::Value = match rng.next_u64() % 4 {
            0 => serde_json::json!(EXTREMES[(rng.next_u64() as usize) % EXTREMES.len()]),
            1 => serde_json::json!(u64::MAX),
            2 => serde_json::json!(-1),
            _ => serde_json::json!(rng.next_u64() % 100_000),
        };
        raw[key] = value.clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Ok(config) = BertConfig::from_hf(&raw) {
                if config.check().is_ok() {
                    let _ = config.tensor_shapes();
                    let _ = config.outputs(512);
                }
            }
        }));
        assert!(outcome.is_ok(), "case {case}: {key} = {value} panicked");
    }
}

#[test]
fn tokenizer_reader_never_panics() {
    never_panics("tokenizer.json", &[fixture("tiny-bert/tokenizer.json")], cases() / 10, |bytes| {
        let _ = text_data::load_tokenizer(bytes, "teacher.arch.path");
    });
}
