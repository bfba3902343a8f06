//! The kernel sources, compiled by NVRTC at run time, and the functions each defines.

/// One `.cu` file: its source (with the shared prelude) and the kernels it defines.
pub struct KernelFile {
    pub name: &'static str,
    body: &'static str,
    functions: &'static [&'static str],
    /// Templates instantiated once per format of `formats` as `<template>_<format>`.
    per_format: &'static [&'static str],
    formats: &'static [&'static str],
}

const COMMON: &str = include_str!("kernels/common.cuh");

impl KernelFile {
    /// The full translation unit handed to NVRTC.
    pub fn source(&self) -> String {
        format!("{COMMON}\n{}", self.body)
    }

    /// Every kernel the file defines.
    pub fn functions(&self) -> Vec<String> {
        let per_format = self
            .per_format
            .iter()
            .flat_map(|t| self.formats.iter().map(move |f| format!("{t}_{f}")));
        self.functions
            .iter()
            .map(|f| f.to_string())
            .chain(per_format)
            .collect()
    }
}

/// Float weight formats, multiplied by f16 activations on the tensor cores.
pub const FLOAT_FORMATS: &[&str] = &["F32", "F16", "BF16"];
/// Quantized weight formats, multiplied by int8 activations (dp4a) in the planes of
/// `repack`.
pub const INT8_FORMATS: &[&str] = &[
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
];

pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "matmul_float.cu",
        body: include_str!("kernels/matmul_float.cu"),
        functions: &[],
        per_format: &["qgemv", "qgemm", "embed"],
        formats: FLOAT_FORMATS,
    },
    KernelFile {
        name: "matmul_int8.cu",
        body: include_str!("kernels/matmul_int8.cu"),
        functions: &["quantize_q8"],
        per_format: &["matvec1", "matvec8", "embed"],
        formats: INT8_FORMATS,
    },
    KernelFile {
        name: "ops.cu",
        body: include_str!("kernels/ops.cu"),
        functions: &[
            "rms_norm",
            "rms_norm_heads",
            "scale",
            "to_f16",
            "rope",
            "silu_mul",
            "gelu_mul",
            "add",
            "add_bias",
            "gather_rows",
        ],
        per_format: &[],
        formats: &[],
    },
    KernelFile {
        name: "attention.cu",
        body: include_str!("kernels/attention.cu"),
        functions: &["kv_store", "kv_copy_block", "attention"],
        per_format: &[],
        formats: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_format_is_instantiated() {
        for file in FILES {
            for f in file.formats {
                assert!(
                    file.body.contains(&format!("DEFINE_FORMAT({f})")),
                    "{f} in {}",
                    file.name
                );
            }
        }
    }

    /// A kernel defined but not listed could not be launched (`Gpu::function` would
    /// not find it).
    #[test]
    fn every_defined_kernel_is_loaded() {
        for file in FILES {
            let loaded = file.functions();
            for piece in file.body.split("extern \"C\" __global__ void ").skip(1) {
                let mut rest = piece.trim_start();
                if let Some(after) = rest.strip_prefix("__launch_bounds__") {
                    // Macro lines end in backslashes.
                    rest = after[after.find(')').unwrap() + 1..]
                        .trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
                }
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if rest[name.len()..].starts_with("##") {
                    continue; // a per-format template, checked above
                }
                assert!(
                    loaded.contains(&name),
                    "{name} of {} is not loaded",
                    file.name
                );
            }
        }
    }

    #[test]
    fn every_named_function_is_defined_in_its_file() {
        for file in FILES {
            for f in file.functions {
                assert!(
                    file.body.contains(&format!(" {f}(")),
                    "{f} not in {}",
                    file.name
                );
            }
        }
    }
}
