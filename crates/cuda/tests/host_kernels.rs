//! The per-lane code of `matmul_int8.cu` run on the CPU: `host_kernels.cpp` compiles the
//! kernel file as C++ (its PTX helpers replaced by plain C++) and checks, for every
//! quantized format, the embedding's dequantization against the CPU backend's, each
//! unit's dot products against the dequantized weights, and that four rows and eight
//! tokens per warp (`matvec8`) give the sums of one row and one token (`matvec1`) bit for
//! bit. Needs a C++ compiler (`$CXX`, else `c++`); without one it is skipped, saying so.

use cuda::kernels::INT8_FORMATS;
use cuda::repack::split_planes;
use gguf::GgmlType;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;

const ROWS: usize = 8;
const COLS: usize = 1024;

fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn every_quantized_format_runs_on_the_host_as_the_cpu_computes_it() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        eprintln!("skipped: no C++ compiler ({cxx})");
        return;
    }
    let dir = std::env::temp_dir().join(format!("llama-gpu-host-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernels = dir.join("matmul_int8.cu");
    let source = include_str!("../src/kernels/matmul_int8.cu");
    std::fs::write(&kernels, source.replace("extern \"C\" ", "")).unwrap();
    let program = dir.join("host_kernels");
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/host_kernels.cpp");
    let built = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-Wno-unknown-pragmas"])
        .arg(format!("-DKERNELS=\"{}\"", kernels.display()))
        .arg(harness)
        .arg("-o")
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for name in INT8_FORMATS {
        let ty = GgmlType::from_name(name).unwrap();
        let weights: Vec<f32> = (0..ROWS * COLS).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let blocks = quant::quantize(ty, &weights).unwrap();
        let mut dequantized = vec![0.0; ROWS * COLS];
        quant::dequantize(ty, &blocks, &mut dequantized).unwrap();
        let planes = dir.join(format!("{name}.planes"));
        let values = dir.join(format!("{name}.f32"));
        std::fs::write(&planes, split_planes(ty, &blocks).unwrap()).unwrap();
        write_f32(&values, &dequantized);
        let run = Command::new(&program)
            .arg(name)
            .arg(&planes)
            .arg(&values)
            .arg(ROWS.to_string())
            .arg(COLS.to_string())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{out}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
