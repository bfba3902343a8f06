//! A GGUF file opened through a read-only memory map, with zero-copy tensor views.

use crate::error::{GgufError, Result};
use crate::reader::{Gguf, TensorInfo};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An open GGUF file. The parsed header is `gguf`; tensor bytes are borrowed from the map.
pub struct GgufFile {
    pub path: PathBuf,
    pub gguf: Gguf,
    map: memmap2::Mmap,
}

/// One tensor's description and its bytes, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and lives as long as `GgufFile`. Model files
        // are not expected to be modified while in use; if one is truncated under
        // us the process may fault, the same contract every mmap-based loader has.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let gguf = Gguf::parse(&map)?;
        Ok(GgufFile { path, gguf, map })
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The data section: tensor offsets are relative to its start.
    pub fn tensor_bytes(&self) -> &[u8] {
        &self.map[(self.gguf.data_offset as usize).min(self.map.len())..]
    }

    pub fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // Ranges were validated against the file length by `Gguf::parse`.
        let start = (self.gguf.data_offset + info.offset) as usize;
        TensorView {
            info,
            data: &self.map[start..start + info.size as usize],
        }
    }

    /// The named tensor, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .gguf
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor { name: name.into() })?;
        Ok(self.view(info))
    }

    /// Drops this process's pages of `info`'s bytes once they have been copied elsewhere:
    /// they leave the resident set, and come back from the page cache if read again.
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            let start = (self.gguf.data_offset + info.offset) as usize;
            // SAFETY: a read-only shared file mapping holds no changes to lose; a page
            // read again is faulted back in from the file.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    info.size as usize,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }

    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.gguf.tensors.iter().map(|t| self.view(t))
    }
}
