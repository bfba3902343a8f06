//! Manifests: a model name's digest, size, source and install time, as JSON.

use crate::error::{Result, StoreError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    /// Lower-case hex SHA-256 of the blob.
    pub digest: String,
    pub size: u64,
    pub source: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// Names become file names, so they are kept to a safe alphabet.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName { name: name.into() })
    }
}

impl Manifest {
    pub fn new(name: &str, digest: &str, size: u64, source: &str) -> Result<Manifest> {
        check_name(name)?;
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Manifest {
            name: name.into(),
            digest: digest.into(),
            size,
            source: source.into(),
            created_at,
        })
    }

    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadManifest {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// Writes to a temp file in `tmp_dir`, fsyncs, then renames over `path`.
    pub fn write_atomic(&self, path: &Path, tmp_dir: &Path) -> Result<()> {
        let mut tmp =
            tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| StoreError::io(tmp_dir, e))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| StoreError::BadManifest {
            path: path.into(),
            reason: e.to_string(),
        })?;
        tmp.write_all(&json)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| StoreError::io(tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| StoreError::io(path, e.error))?;
        Ok(())
    }
}
