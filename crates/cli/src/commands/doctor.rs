//! `llama-gpu doctor`: what this machine offers llama-gpu — the CPU and its SIMD
//! features, the GPUs and CUDA libraries, the cloud instance type — and which device
//! `--device auto` would pick, and why.

use anyhow::Result;
use serde::Serialize;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    cpu: Cpu,
    cuda: Cuda,
    /// The AWS instance type, when running on EC2.
    cloud_instance_type: Option<String>,
    auto_device: String,
    auto_reason: String,
}

#[derive(Serialize)]
struct Cpu {
    model: String,
    threads: usize,
    memory_bytes: u64,
    features: Vec<&'static str>,
    kernels: &'static str,
}

#[derive(Serialize)]
struct Cuda {
    driver_library: bool,
    nvrtc_library: bool,
    cublas_library: bool,
    driver_cuda_version: Option<String>,
    nvrtc_version: Option<String>,
    gpus: Vec<Gpu>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Gpu {
    index: usize,
    name: String,
    memory_bytes: usize,
    free_bytes: usize,
    compute_capability: String,
    multiprocessors: i32,
    supported: bool,
}

fn proc_field(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($f:tt),*) => { $( if std::is_x86_feature_detected!($f) { found.push($f); } )* };
        }
        check!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! check {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { found.push($f); } )* };
        }
        check!("neon", "dotprod", "fp16", "i8mm", "sve");
    }
    found
}

fn cuda() -> Cuda {
    let libs = cuda::libraries();
    let mut report = Cuda {
        driver_library: libs.driver,
        nvrtc_library: libs.nvrtc,
        cublas_library: libs.cublas,
        driver_cuda_version: None,
        nvrtc_version: cuda::nvrtc_version().ok().map(|(a, b)| format!("{a}.{b}")),
        gpus: Vec::new(),
        error: None,
    };
    if !libs.driver {
        return report;
    }
    match cuda::driver_version() {
        Ok((a, b)) => report.driver_cuda_version = Some(format!("{a}.{b}")),
        Err(e) => report.error = Some(e.to_string()),
    }
    match cuda::list_devices() {
        Ok(devices) => {
            report.gpus = devices
                .into_iter()
                .map(|d| Gpu {
                    index: d.ordinal,
                    supported: d.supported(),
                    name: d.name,
                    memory_bytes: d.total_bytes,
                    free_bytes: d.free_bytes,
                    compute_capability: format!(
                        "{}.{}",
                        d.compute_capability.0, d.compute_capability.1
                    ),
                    multiprocessors: d.multiprocessors,
                })
                .collect()
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

/// The EC2 instance type through IMDSv2; `None` off AWS (each request gives up after
/// 200 ms, so this never hangs elsewhere).
fn aws_instance_type() -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(200)))
        .build()
        .into();
    let token = agent
        .put("http://169.254.169.254/latest/api/token")
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send_empty()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    agent
        .get("http://169.254.169.254/latest/meta-data/instance-type")
        .header("X-aws-ec2-metadata-token", &token)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
        .filter(|t| !t.is_empty() && t.len() < 64)
}

pub fn run(args: Args) -> Result<()> {
    let cpu = Cpu {
        model: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: proc_field("/proc/meminfo", "MemTotal")
            .and_then(|v| v.trim_end_matches(" kB").parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024),
        features: cpu_features(),
        kernels: quant::selected_isa().name(),
    };
    let (auto_device, auto_reason) = match engine::device::auto_choice() {
        Ok(()) => (
            "cuda:0".to_string(),
            "a supported GPU and driver were found".to_string(),
        ),
        Err(why) => ("cpu".to_string(), why),
    };
    let report = Report {
        cpu,
        cuda: cuda(),
        cloud_instance_type: aws_instance_type(),
        auto_device,
        auto_reason,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let c = &report.cpu;
    println!("CPU           {} ({} threads)", c.model, c.threads);
    println!(
        "memory        {:.1} GiB",
        c.memory_bytes as f64 / (1u64 << 30) as f64
    );
    println!(
        "SIMD          {} (kernels: {})",
        c.features.join(" "),
        c.kernels
    );
    let g = &report.cuda;
    let yes = |b: bool| if b { "found" } else { "not found" };
    println!(
        "CUDA driver   {}{}",
        yes(g.driver_library),
        g.driver_cuda_version
            .as_ref()
            .map_or(String::new(), |v| format!(" (CUDA {v})"))
    );
    println!(
        "NVRTC         {}{}",
        yes(g.nvrtc_library),
        g.nvrtc_version
            .as_ref()
            .map_or(String::new(), |v| format!(" ({v})"))
    );
    println!("cuBLAS        {}", yes(g.cublas_library));
    for gpu in &g.gpus {
        println!(
            "GPU {}         {}, {:.1} GiB ({:.1} free), compute {}, {} SMs{}",
            gpu.index,
            gpu.name,
            gpu.memory_bytes as f64 / (1u64 << 30) as f64,
            gpu.free_bytes as f64 / (1u64 << 30) as f64,
            gpu.compute_capability,
            gpu.multiprocessors,
            if gpu.supported {
                ""
            } else {
                " (too old: needs 8.0)"
            }
        );
    }
    if let Some(e) = &g.error {
        println!("CUDA error    {e}");
    }
    println!(
        "cloud         {}",
        report
            .cloud_instance_type
            .as_deref()
            .unwrap_or("not on AWS (no instance metadata)")
    );
    println!(
        "--device auto {} ({})",
        report.auto_device, report.auto_reason
    );
    Ok(())
}
