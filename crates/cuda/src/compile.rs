//! NVRTC compilation of the kernel files, cached on disk: a compiled file is keyed by the
//! SHA-256 of its source, the NVRTC version and the target architecture, so a new source,
//! compiler or GPU compiles afresh and everything else loads in milliseconds.

use crate::{CudaError, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The loaded NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::MissingLibrary("NVRTC (libnvrtc)"));
    }
    let (mut major, mut minor) = (0, 0);
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Nvrtc(format!("nvrtcVersion failed: {status:?}")));
    }
    Ok((major, minor))
}

/// Compiles one translation unit to PTX for `arch` (e.g. `sm_90`).
pub fn compile_ptx(name: &str, source: &str, arch: &str) -> Result<String> {
    nvrtc_version()?;
    let opts = CompileOptions {
        name: Some(name.to_string()),
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-default-device".into(),
        ],
        ..Default::default()
    };
    match compile_ptx_with_opts(source, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(CudaError::Compile {
            file: name.into(),
            arch: arch.into(),
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => Err(CudaError::Nvrtc(format!("{name}: {e}"))),
    }
}

/// Where compiled kernels are kept; `None` compiles every time.
pub struct KernelCache {
    pub dir: Option<PathBuf>,
}

impl KernelCache {
    /// PTX for `source`, from the cache or freshly compiled (and then stored).
    pub fn ptx(&self, name: &str, source: &str, arch: &str) -> Result<String> {
        let (major, minor) = nvrtc_version()?;
        let mut hash = Sha256::new();
        hash.update(source.as_bytes());
        hash.update(format!("\0nvrtc {major}.{minor}\0{arch}").as_bytes());
        let key: String = hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{}-{arch}-{key}.ptx", name.trim_end_matches(".cu"))));
        if let Some(ptx) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            tracing::debug!("kernel cache hit: {name} for {arch}");
            return Ok(ptx);
        }
        let started = std::time::Instant::now();
        let ptx = compile_ptx(name, source, arch)?;
        tracing::info!(
            "compiled {name} for {arch} with NVRTC {major}.{minor} in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        if let Some(path) = path {
            // A cache that cannot be written only costs a recompile next time.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let stored = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| std::fs::write(&tmp, &ptx))
                .and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = stored {
                tracing::warn!("could not cache {}: {e}", path.display());
            }
        }
        Ok(ptx)
    }
}
