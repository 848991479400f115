//! Files the engine writes: always to a temporary name, synced, then renamed, so a crash leaves
//! either the old file or the new one, never half of one.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or_default()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Safetensors with a JSON metadata entry (`distillery`), written atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<&serde_json::Value>,
) -> std::io::Result<()> {
    let meta = metadata.map(|m| HashMap::from([("distillery".to_string(), m.to_string())]));
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = safetensors::serialize(views, meta).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, Option<serde_json::Value>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_safetensors(&bytes, device)
}

/// Safetensors bytes as tensors, with the `distillery` metadata entry when there is one.
pub fn parse_safetensors(
    bytes: &[u8],
    device: &Device,
) -> Result<(HashMap<String, Tensor>, Option<serde_json::Value>), String> {
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let metadata =
        header.metadata().as_ref().and_then(|m| m.get("distillery")).and_then(|m| serde_json::from_str(m).ok());
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| format!("not a safetensors file: {e}"))?;
    Ok((tensors, metadata))
}
