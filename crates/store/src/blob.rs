//! Writing a blob: stream into a temp file while hashing, with a progress bar.

use crate::error::{Result, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub fn progress_bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}

pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    bar: ProgressBar,
}

impl BlobWriter {
    pub fn create(tmp_dir: &Path, expected_len: u64, what: &str) -> Result<BlobWriter> {
        let file =
            tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| StoreError::io(tmp_dir, e))?;
        let short = what.rsplit('/').next().unwrap_or(what);
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            size: 0,
            bar: progress_bar(expected_len, short),
        })
    }

    pub fn copy_from(&mut self, mut reader: impl Read) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io(self.file.path(), e)),
            };
            self.hasher.update(&buf[..n]);
            self.file
                .write_all(&buf[..n])
                .map_err(|e| StoreError::io(self.file.path(), e))?;
            self.size += n as u64;
            self.bar.inc(n as u64);
        }
    }

    /// Flushes and fsyncs; returns the kept temp file's path, the hex digest and the size.
    pub fn finish(self) -> Result<(PathBuf, String, u64)> {
        self.bar.finish_and_clear();
        self.file
            .as_file()
            .sync_all()
            .map_err(|e| StoreError::io(self.file.path(), e))?;
        let (_, path) = self
            .file
            .keep()
            .map_err(|e| StoreError::io(Path::new("temp file"), e.error))?;
        Ok((path, hex::encode(self.hasher.finalize()), self.size))
    }
}

pub fn hash_reader(mut reader: impl Read, path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::io(path, e)),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn hash_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    hash_reader(file, path)
}
