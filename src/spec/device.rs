//! `device`: where a job runs.

/// A device the job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(text: &str) -> Result<DeviceSpec, String> {
    if text == "cpu" {
        return Ok(DeviceSpec::Cpu);
    }
    let ordinal = text.strip_prefix("cuda:").or(if text == "cuda" { Some("0") } else { None });
    match ordinal.map(str::parse::<usize>) {
        Some(Ok(n)) if cfg!(feature = "cuda") => Ok(DeviceSpec::Cuda(n)),
        Some(Ok(_)) => Err(format!("`{text}` needs a build with the `cuda` feature; this build runs on `cpu` only")),
        _ => Err(format!("unknown device `{text}`; expected `cpu` or `cuda:N`")),
    }
}
