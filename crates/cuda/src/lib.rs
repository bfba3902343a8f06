//! CUDA for llama-gpu, loaded at run time: the driver, NVRTC and cuBLAS are found with
//! `dlopen` (cudarc's dynamic loading), so a binary built without CUDA runs everywhere and
//! uses a GPU where one exists. Kernel sources are the `.cu` files in `src/kernels`,
//! compiled by NVRTC for the device at first use and cached on disk (`compile`). `Gpu`
//! owns a device's context and stream and launches the kernels (`ops`).

mod compile;
mod device;
mod gpu;
pub mod kernels;
mod ops;
pub mod repack;

pub use compile::{compile_ptx, nvrtc_version, KernelCache};
pub use cudarc::driver::{CudaSlice, DeviceRepr};
pub use device::{driver_version, libraries, list_devices, DeviceInfo, Libraries};
pub use gpu::Gpu;
pub use ops::{
    format_supported, ActivationRounding, AttentionRows, DeviceActivations, DeviceWeight,
};

/// What can go wrong talking to a GPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("{0} was not found (is the NVIDIA driver / CUDA runtime installed and on the library path?)")]
    MissingLibrary(&'static str),
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("NVRTC could not compile {file} for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("CUDA device {ordinal} does not exist ({count} found)")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("{name} has compute capability {major}.{minor}; llama-gpu's kernels need 8.0 or newer (Ampere)")]
    TooOld {
        name: String,
        major: i32,
        minor: i32,
    },
    #[error("out of GPU memory for {what}: {needed} bytes needed, {free} free")]
    OutOfMemory {
        what: String,
        needed: usize,
        free: usize,
    },
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, CudaError>;
