//! One GPU in use: its context, the stream every operation is queued on, and the
//! compiled kernels.

use crate::compile::KernelCache;
use crate::device::{libraries, DeviceInfo};
use crate::kernels::FILES;
use crate::{CudaError, Result};
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Gpu {
    pub(crate) stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    pub info: DeviceInfo,
}

impl Gpu {
    /// Opens device `ordinal` and loads every kernel, compiled for its architecture.
    pub fn new(ordinal: usize, cache: &KernelCache) -> Result<Gpu> {
        if !libraries().driver {
            return Err(CudaError::MissingLibrary("the CUDA driver (libcuda)"));
        }
        result::init()?;
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            return Err(CudaError::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        let info = DeviceInfo::of(&ctx)?;
        let (major, minor) = info.compute_capability;
        if !info.supported() {
            return Err(CudaError::TooOld {
                name: info.name,
                major,
                minor,
            });
        }
        // One stream orders every operation, so cudarc's cross-stream events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let arch = format!("sm_{major}{minor}");
        let mut functions = HashMap::new();
        for file in FILES {
            let ptx = cache.ptx(file.name, &file.source(), &arch)?;
            let module = ctx.load_module(Ptx::from_src(ptx))?;
            for name in file.functions() {
                let f = module.load_function(&name)?;
                functions.insert(name, f);
            }
        }
        Ok(Gpu {
            stream,
            functions,
            info,
        })
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| CudaError::Unsupported(format!("no kernel named {name}")))
    }

    /// Bytes free on the device now.
    pub fn free_bytes(&self) -> Result<usize> {
        Ok(self.stream.context().mem_get_info()?.0)
    }

    /// A zeroed device array of `n` values; a clear error when the device is full.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n)
            .map_err(|e| self.explain_alloc(e, n * std::mem::size_of::<T>(), what))
    }

    /// A device array of `n` values for a kernel to overwrite entirely (not zeroed,
    /// which saves a memset launch).
    pub fn alloc_for_overwrite<T: DeviceRepr>(&self, n: usize, what: &str) -> Result<CudaSlice<T>> {
        // SAFETY: callers only pass it to kernels that write every value before any read.
        unsafe { self.stream.alloc::<T>(n) }
            .map_err(|e| self.explain_alloc(e, n * std::mem::size_of::<T>(), what))
    }

    /// Copies `data` to a new device array.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .map_err(|e| self.explain_alloc(e, std::mem::size_of_val(data), what))
    }

    /// Copies `n` values of `x` starting at `start` to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        x: &CudaSlice<T>,
        start: usize,
        n: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        self.stream
            .memcpy_dtoh(&x.slice(start..start + n), &mut out)?;
        Ok(out)
    }

    /// Waits until every queued operation has run; reports the first failure.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// Device memory bandwidth: bytes read plus bytes written per second by a large
    /// device-to-device copy (the ceiling for reading weights).
    pub fn copy_bandwidth(&self) -> Result<f64> {
        const BYTES: usize = 1 << 30;
        let src = self.alloc_zeros::<u8>(BYTES, "bandwidth test")?;
        let mut dst = self.alloc_zeros::<u8>(BYTES, "bandwidth test")?;
        self.stream.memcpy_dtod(&src, &mut dst)?;
        self.synchronize()?;
        let passes = 10;
        let start = std::time::Instant::now();
        for _ in 0..passes {
            self.stream.memcpy_dtod(&src, &mut dst)?;
        }
        self.synchronize()?;
        Ok((2 * BYTES * passes) as f64 / start.elapsed().as_secs_f64())
    }

    fn explain_alloc(
        &self,
        e: cudarc::driver::DriverError,
        needed: usize,
        what: &str,
    ) -> CudaError {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            CudaError::OutOfMemory {
                what: what.into(),
                needed,
                free: self.free_bytes().unwrap_or(0),
            }
        } else {
            CudaError::Driver(e)
        }
    }
}
