//! The kernel sources, compiled by NVRTC at run time, and the functions each defines.

/// One `.cu` file: its source (with the shared prelude) and the kernels it defines.
pub struct KernelFile {
    pub name: &'static str,
    body: &'static str,
    functions: &'static [&'static str],
    /// Templates instantiated once per weight format as `<template>_<format>`.
    per_format: &'static [&'static str],
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
            .flat_map(|t| WEIGHT_FORMATS.iter().map(move |f| format!("{t}_{f}")));
        self.functions
            .iter()
            .map(|f| f.to_string())
            .chain(per_format)
            .collect()
    }
}

/// Weight formats the quantized kernels read, by their GGML names.
pub const WEIGHT_FORMATS: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
];

pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "quant.cu",
        body: include_str!("kernels/quant.cu"),
        functions: &[],
        per_format: &["qgemv", "qgemm", "embed"],
    },
    KernelFile {
        name: "ops.cu",
        body: include_str!("kernels/ops.cu"),
        functions: &[
            "rms_norm",
            "to_f16",
            "to_f16_q8",
            "rope",
            "silu_mul",
            "add",
            "add_bias",
            "gather_rows",
        ],
        per_format: &[],
    },
    KernelFile {
        name: "attention.cu",
        body: include_str!("kernels/attention.cu"),
        functions: &["kv_store", "kv_copy_block", "attention"],
        per_format: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_format_is_instantiated() {
        for f in WEIGHT_FORMATS {
            assert!(
                FILES[0].body.contains(&format!("DEFINE_FORMAT({f})")),
                "{f}"
            );
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
