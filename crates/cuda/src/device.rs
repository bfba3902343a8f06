//! What the machine has: which CUDA libraries load, the driver's version, and the GPUs.

use crate::{CudaError, Result};
use cudarc::driver::{result, sys, CudaContext};

/// Whether each CUDA library can be loaded.
#[derive(Clone, Debug)]
pub struct Libraries {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
}

pub fn libraries() -> Libraries {
    // SAFETY: these only try to dlopen the library by its usual names.
    unsafe {
        Libraries {
            driver: sys::is_culib_present(),
            nvrtc: cudarc::nvrtc::sys::is_culib_present(),
            cublas: cudarc::cublas::sys::is_culib_present(),
        }
    }
}

/// The driver's CUDA version as (major, minor), e.g. (13, 0).
pub fn driver_version() -> Result<(i32, i32)> {
    if !libraries().driver {
        return Err(CudaError::MissingLibrary("the CUDA driver (libcuda)"));
    }
    result::init()?;
    let mut v = 0;
    let status = unsafe { sys::cuDriverGetVersion(&mut v) };
    status.result()?;
    Ok((v / 1000, (v % 1000) / 10))
}

#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: usize,
    pub free_bytes: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

impl DeviceInfo {
    /// Whether llama-gpu's kernels run on it (tensor-core `mma` with f16 needs sm_80).
    pub fn supported(&self) -> bool {
        self.compute_capability.0 >= 8
    }

    pub(crate) fn of(ctx: &CudaContext) -> Result<DeviceInfo> {
        let (free_bytes, total_bytes) = ctx.mem_get_info()?;
        Ok(DeviceInfo {
            ordinal: ctx.ordinal(),
            name: ctx.name()?,
            total_bytes,
            free_bytes,
            compute_capability: ctx.compute_capability()?,
            multiprocessors: ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        })
    }
}

/// Every GPU the driver sees; empty (not an error) when there is no driver.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    if !libraries().driver {
        return Ok(Vec::new());
    }
    result::init()?;
    let count = CudaContext::device_count()? as usize;
    (0..count)
        .map(|i| DeviceInfo::of(&*CudaContext::new(i)?))
        .collect()
}
