//! The device chosen at run time (`--device auto|cpu|cuda[:N]`): a `Backend` that is the
//! CPU backend or the CUDA backend, so one binary and one model type serve both.

use crate::backend::{AttentionSpec, Backend, KvShape, KvTypes, Rope, SeqRows};
use crate::cpu::{CpuBackend, CpuBuffer, CpuKvPool, CpuWeight};
use crate::cuda::{CudaBackend, CudaBuffer, CudaKvPool, CudaWeight};
use crate::error::Result;
use gguf::GgufFile;
use quant::TokenOrder;
use std::path::PathBuf;
use std::sync::Arc;

/// What `--device` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<DeviceChoice, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("--device {s:?} is not one of auto, cpu, cuda, cuda:N")),
        }
    }
}

pub enum Device {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

impl Device {
    /// Opens the chosen device. `auto` takes GPU 0 when a driver and a supported GPU are
    /// there, else the CPU, and logs why.
    pub fn open(choice: DeviceChoice, kernel_cache: Option<PathBuf>) -> Result<Device> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu(CpuBackend::new())),
            DeviceChoice::Cuda(n) => Ok(Device::Cuda(Box::new(CudaBackend::new(n, kernel_cache)?))),
            DeviceChoice::Auto => match auto_choice() {
                Ok(()) => match CudaBackend::new(0, kernel_cache) {
                    Ok(b) => {
                        tracing::info!("device auto: using {}", b.name());
                        Ok(Device::Cuda(Box::new(b)))
                    }
                    Err(e) => {
                        tracing::warn!("device auto: using the CPU, the GPU failed to start: {e}");
                        Ok(Device::Cpu(CpuBackend::new()))
                    }
                },
                Err(why) => {
                    tracing::info!("device auto: using the CPU ({why})");
                    Ok(Device::Cpu(CpuBackend::new()))
                }
            },
        }
    }
}

/// Whether `--device auto` would take GPU 0; if not, why.
pub fn auto_choice() -> std::result::Result<(), String> {
    let libs = cuda::libraries();
    if !libs.driver {
        return Err("no CUDA driver found".into());
    }
    if !libs.nvrtc {
        return Err("the CUDA driver is there but NVRTC (libnvrtc) is not".into());
    }
    let devices = cuda::list_devices().map_err(|e| format!("the CUDA driver failed: {e}"))?;
    match devices.first() {
        None => Err("the CUDA driver sees no GPU".into()),
        Some(d) if !d.supported() => Err(format!(
            "{} has compute capability {}.{}, below the 8.0 the kernels need",
            d.name, d.compute_capability.0, d.compute_capability.1
        )),
        Some(_) => Ok(()),
    }
}

fn mixed() -> ! {
    unreachable!("a value made by one device was given to another")
}

macro_rules! device_value {
    ($name:ident, $cpu:ty, $cuda:ty) => {
        pub enum $name {
            Cpu($cpu),
            Cuda($cuda),
        }

        impl $name {
            fn cpu(&self) -> &$cpu {
                match self {
                    $name::Cpu(v) => v,
                    $name::Cuda(_) => mixed(),
                }
            }
            fn cuda(&self) -> &$cuda {
                match self {
                    $name::Cuda(v) => v,
                    $name::Cpu(_) => mixed(),
                }
            }
        }
    };
    (mut $name:ident, $cpu:ty, $cuda:ty) => {
        device_value!($name, $cpu, $cuda);

        impl $name {
            fn cpu_mut(&mut self) -> &mut $cpu {
                match self {
                    $name::Cpu(v) => v,
                    $name::Cuda(_) => mixed(),
                }
            }
            fn cuda_mut(&mut self) -> &mut $cuda {
                match self {
                    $name::Cuda(v) => v,
                    $name::Cpu(_) => mixed(),
                }
            }
        }
    };
}

device_value!(mut DeviceBuffer, CpuBuffer, CudaBuffer);
device_value!(DeviceWeight, CpuWeight, CudaWeight);
device_value!(mut DeviceKvPool, CpuKvPool, CudaKvPool);

impl Backend for Device {
    type Buffer = DeviceBuffer;
    type Weight = DeviceWeight;
    type KvPool = DeviceKvPool;

    fn name(&self) -> &str {
        match self {
            Device::Cpu(b) => b.name(),
            Device::Cuda(b) => b.name(),
        }
    }

    fn upload_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<DeviceWeight> {
        Ok(match self {
            Device::Cpu(b) => DeviceWeight::Cpu(b.upload_weight(file, name)?),
            Device::Cuda(b) => DeviceWeight::Cuda(b.upload_weight(file, name)?),
        })
    }

    fn upload_weight_rows(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<DeviceWeight> {
        Ok(match self {
            Device::Cpu(b) => DeviceWeight::Cpu(b.upload_weight_rows(file, name, rows)?),
            Device::Cuda(b) => DeviceWeight::Cuda(b.upload_weight_rows(file, name, rows)?),
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<DeviceBuffer> {
        Ok(match self {
            Device::Cpu(b) => DeviceBuffer::Cpu(b.alloc(rows, cols)?),
            Device::Cuda(b) => DeviceBuffer::Cuda(b.alloc(rows, cols)?),
        })
    }

    fn new_kv_pool(&self, shape: KvShape, blocks: usize, types: KvTypes) -> Result<DeviceKvPool> {
        Ok(match self {
            Device::Cpu(b) => DeviceKvPool::Cpu(b.new_kv_pool(shape, blocks, types)?),
            Device::Cuda(b) => DeviceKvPool::Cuda(b.new_kv_pool(shape, blocks, types)?),
        })
    }

    fn kv_copy_block(&self, pool: &mut DeviceKvPool, src: u32, dst: u32) {
        match self {
            Device::Cpu(b) => b.kv_copy_block(pool.cpu_mut(), src, dst),
            Device::Cuda(b) => b.kv_copy_block(pool.cuda_mut(), src, dst),
        }
    }

    fn commit_kv_pool(&self, pool: &mut DeviceKvPool) {
        match self {
            Device::Cpu(b) => b.commit_kv_pool(pool.cpu_mut()),
            Device::Cuda(b) => b.commit_kv_pool(pool.cuda_mut()),
        }
    }

    fn embed(&self, table: &DeviceWeight, tokens: &[u32], out: &mut DeviceBuffer) -> Result<()> {
        match self {
            Device::Cpu(b) => b.embed(table.cpu(), tokens, out.cpu_mut()),
            Device::Cuda(b) => b.embed(table.cuda(), tokens, out.cuda_mut()),
        }
    }

    fn rms_norm(&self, x: &DeviceBuffer, weight: &DeviceWeight, eps: f32, out: &mut DeviceBuffer) {
        match self {
            Device::Cpu(b) => b.rms_norm(x.cpu(), weight.cpu(), eps, out.cpu_mut()),
            Device::Cuda(b) => b.rms_norm(x.cuda(), weight.cuda(), eps, out.cuda_mut()),
        }
    }

    fn rms_norm_heads(&self, x: &mut DeviceBuffer, weight: &DeviceWeight, eps: f32) {
        match self {
            Device::Cpu(b) => b.rms_norm_heads(x.cpu_mut(), weight.cpu(), eps),
            Device::Cuda(b) => b.rms_norm_heads(x.cuda_mut(), weight.cuda(), eps),
        }
    }

    fn scale(&self, x: &mut DeviceBuffer, factor: f32) {
        match self {
            Device::Cpu(b) => b.scale(x.cpu_mut(), factor),
            Device::Cuda(b) => b.scale(x.cuda_mut(), factor),
        }
    }

    fn matmul(
        &self,
        w: &DeviceWeight,
        x: &DeviceBuffer,
        out: &mut DeviceBuffer,
        orders: &[TokenOrder],
    ) {
        match self {
            Device::Cpu(b) => b.matmul(w.cpu(), x.cpu(), out.cpu_mut(), orders),
            Device::Cuda(b) => b.matmul(w.cuda(), x.cuda(), out.cuda_mut(), orders),
        }
    }

    fn matmul_many(
        &self,
        ws: &[&DeviceWeight],
        x: &DeviceBuffer,
        outs: &mut [&mut DeviceBuffer],
        orders: &[TokenOrder],
    ) {
        match self {
            Device::Cpu(b) => {
                let ws: Vec<_> = ws.iter().map(|w| w.cpu()).collect();
                let mut outs: Vec<_> = outs.iter_mut().map(|o| o.cpu_mut()).collect();
                b.matmul_many(&ws, x.cpu(), &mut outs, orders)
            }
            Device::Cuda(b) => {
                let ws: Vec<_> = ws.iter().map(|w| w.cuda()).collect();
                let mut outs: Vec<_> = outs.iter_mut().map(|o| o.cuda_mut()).collect();
                b.matmul_many(&ws, x.cuda(), &mut outs, orders)
            }
        }
    }

    fn add_bias(&self, x: &mut DeviceBuffer, bias: &DeviceWeight) {
        match self {
            Device::Cpu(b) => b.add_bias(x.cpu_mut(), bias.cpu()),
            Device::Cuda(b) => b.add_bias(x.cuda_mut(), bias.cuda()),
        }
    }

    fn rope(&self, x: &mut DeviceBuffer, positions: &[usize], rope: &Rope) {
        match self {
            Device::Cpu(b) => b.rope(x.cpu_mut(), positions, rope),
            Device::Cuda(b) => b.rope(x.cuda_mut(), positions, rope),
        }
    }

    fn kv_store(
        &self,
        pool: &mut DeviceKvPool,
        layer: usize,
        k: &DeviceBuffer,
        v: &DeviceBuffer,
        slots: &[usize],
    ) {
        match self {
            Device::Cpu(b) => b.kv_store(pool.cpu_mut(), layer, k.cpu(), v.cpu(), slots),
            Device::Cuda(b) => b.kv_store(pool.cuda_mut(), layer, k.cuda(), v.cuda(), slots),
        }
    }

    fn attention(
        &self,
        q: &DeviceBuffer,
        pool: &DeviceKvPool,
        layer: usize,
        seqs: &[SeqRows],
        spec: &AttentionSpec,
        out: &mut DeviceBuffer,
    ) {
        match self {
            Device::Cpu(b) => b.attention(q.cpu(), pool.cpu(), layer, seqs, spec, out.cpu_mut()),
            Device::Cuda(b) => {
                b.attention(q.cuda(), pool.cuda(), layer, seqs, spec, out.cuda_mut())
            }
        }
    }

    fn silu_mul(&self, gate: &mut DeviceBuffer, up: &DeviceBuffer) {
        match self {
            Device::Cpu(b) => b.silu_mul(gate.cpu_mut(), up.cpu()),
            Device::Cuda(b) => b.silu_mul(gate.cuda_mut(), up.cuda()),
        }
    }

    fn gelu_mul(&self, gate: &mut DeviceBuffer, up: &DeviceBuffer) {
        match self {
            Device::Cpu(b) => b.gelu_mul(gate.cpu_mut(), up.cpu()),
            Device::Cuda(b) => b.gelu_mul(gate.cuda_mut(), up.cuda()),
        }
    }

    fn add(&self, x: &mut DeviceBuffer, y: &DeviceBuffer) {
        match self {
            Device::Cpu(b) => b.add(x.cpu_mut(), y.cpu()),
            Device::Cuda(b) => b.add(x.cuda_mut(), y.cuda()),
        }
    }

    fn gather_rows(&self, x: &DeviceBuffer, rows: &[usize]) -> Result<DeviceBuffer> {
        Ok(match self {
            Device::Cpu(b) => DeviceBuffer::Cpu(b.gather_rows(x.cpu(), rows)?),
            Device::Cuda(b) => DeviceBuffer::Cuda(b.gather_rows(x.cuda(), rows)?),
        })
    }

    fn to_host(&self, x: &DeviceBuffer, rows: std::ops::Range<usize>) -> Vec<f32> {
        match self {
            Device::Cpu(b) => b.to_host(x.cpu(), rows),
            Device::Cuda(b) => b.to_host(x.cuda(), rows),
        }
    }

    fn begin_pass(&self) -> Option<quant::PollingWorkers> {
        match self {
            Device::Cpu(b) => b.begin_pass(),
            Device::Cuda(b) => b.begin_pass(),
        }
    }

    fn finish(&self) -> Result<()> {
        match self {
            Device::Cpu(b) => b.finish(),
            Device::Cuda(b) => b.finish(),
        }
    }
}
