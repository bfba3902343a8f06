//! `llama-gpu quantize IN OUT TYPE`: rewrites a GGUF file with its weight matrices in
//! another block format (through f32), byte for byte as llama-quantize writes it
//! (docs/architecture.md, "Writing files"). Norms and other vectors stay as they are, and
//! a matrix whose rows are not whole blocks of the type falls back to a 32-value type as
//! llama-quantize does (`WeightMix::type_for_rows`).
//!
//! `llama-gpu quantize --synthetic SHAPE TYPE OUT` writes a model of a real model's shape
//! (`llama3-8b`, `llama3-1b`, `qwen2-7b`) with random weights, for benchmarks where the
//! real weights cannot be downloaded, or a tiny one of a family (`qwen3-tiny`,
//! `gemma3-tiny`, `gemma2-tiny`, `phi3-tiny`, `smollm3-tiny`) to compare with llama.cpp.

use super::{resolve_model, usage};
use anyhow::{Context, Result};
use engine::synthetic::{SyntheticModel, WeightMix, PRESETS};
use gguf::{GgmlType, GgufFile};
use std::path::Path;

#[derive(clap::Args)]
pub struct Args {
    /// `IN OUT TYPE` (input: a path, store name or digest prefix), or `TYPE OUT` with
    /// --synthetic. TYPE: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, Q3_K_M, Q4_K_M,
    /// Q5_K_M, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, F16, BF16, F32; with --synthetic also IQ1_S, IQ1_M,
    /// IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S (random codes). The bytes are
    /// llama-quantize's (without an importance matrix; a single type as with its --pure).
    #[arg(num_args = 2..=3, value_name = "ARGS", required = true)]
    args: Vec<String>,
    /// Write random weights in this model's shape instead of converting a file.
    #[arg(long, value_name = "SHAPE")]
    synthetic: Option<String>,
}

/// The mix `name` stands for, if quantize can write it: a conversion quantizes, so it
/// takes only types we quantize; random weights also take the codebook i-quants
/// (IQ1_S … IQ3_S), written as random codes.
fn weight_mix(name: &str, synthetic: bool) -> Result<WeightMix> {
    let mix = WeightMix::parse(name)
        .filter(|mix| match mix {
            WeightMix::Uniform(t) => {
                quant::is_supported(*t) && *t != GgmlType::Q8_1 && *t != GgmlType::Q8_K
            }
            _ => true,
        })
        .ok_or_else(|| usage(format!("{name:?} is not a type quantize can write")))?;
    match mix {
        WeightMix::Uniform(t) if !synthetic && !quant::can_quantize(t) => Err(usage(format!(
            "{t} can be read but not written here: its quantizer (a search over the \
             format's codebook, which llama-quantize runs with an importance matrix) is \
             not implemented; --synthetic writes random {t} weights"
        ))),
        mix => Ok(mix),
    }
}

pub fn run(args: Args) -> Result<()> {
    match (&args.synthetic, args.args.as_slice()) {
        (Some(shape), [ty, output]) => synthetic(shape, weight_mix(ty, true)?, Path::new(output)),
        (None, [input, output, ty]) => convert(input, Path::new(output), weight_mix(ty, false)?),
        (Some(_), _) => Err(usage("quantize --synthetic SHAPE takes TYPE OUT")),
        (None, _) => Err(usage("quantize takes IN OUT TYPE")),
    }
}

fn synthetic(shape: &str, mix: WeightMix, output: &Path) -> Result<()> {
    let spec = SyntheticModel::preset(shape, mix).ok_or_else(|| {
        usage(format!(
            "--synthetic {shape:?} is not one of {}",
            PRESETS.join(", ")
        ))
    })?;
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!(
        "writing random {shape} weights to {}",
        output.display()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spec.write(output)
        .with_context(|| format!("writing {}", output.display()))?;
    spinner.finish_and_clear();
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "{}: synthetic {shape}, {:.2} GB",
        output.display(),
        size as f64 / 1e9
    );
    Ok(())
}

fn convert(input: &str, output: &Path, mix: WeightMix) -> Result<()> {
    let path = resolve_model(input)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let bar = indicatif::ProgressBar::new(file.gguf.tensors.len() as u64);
    let done = engine::requantize::requantize(&file, mix, || bar.inc(1))
        .with_context(|| format!("converting {}", path.display()))?;
    bar.finish_and_clear();
    done.writer
        .write_file(output)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "{}: {} tensors converted to {mix} ({} of them to a 32-value type, their rows not \
         being whole {mix} blocks), {} kept",
        output.display(),
        done.converted,
        done.fell_back,
        done.kept
    );
    Ok(())
}
