//! `llama-gpu quantize IN OUT TYPE`: rewrites a GGUF file with its weight matrices in
//! another block format (through f32). Norms and other vectors stay as they are, and a
//! matrix whose rows do not fit the type's block size keeps its type (as llama.cpp's
//! quantizer falls back).

use super::{resolve_model, usage};
use anyhow::{Context, Result};
use gguf::{GgmlType, GgufFile, GgufWriter, Value};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Input model (path, store name or digest prefix).
    input: String,
    /// Output GGUF path.
    output: PathBuf,
    /// Target type: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, F16, BF16, F32.
    #[arg(value_name = "TYPE")]
    ty: String,
}

pub fn run(args: Args) -> Result<()> {
    let target = GgmlType::from_name(&args.ty)
        .filter(|t| quant::is_supported(*t) && *t != GgmlType::Q8_1 && *t != GgmlType::Q8_K)
        .ok_or_else(|| usage(format!("{:?} is not a type quantize can write", args.ty)))?;
    let path = resolve_model(&args.input)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut writer = GgufWriter::new();
    for (key, value) in file.gguf.metadata.iter() {
        writer.add_metadata(key, value.clone());
    }
    writer.add_metadata("general.quantized_by", Value::String("llama-gpu".into()));
    let bar = indicatif::ProgressBar::new(file.gguf.tensors.len() as u64);
    let (mut converted, mut kept) = (0, 0);
    for view in file.tensors() {
        let info = view.info;
        let cols = info.row_len() as usize;
        let fits = info.dims.len() >= 2
            && cols.is_multiple_of(target.block_size())
            && quant::is_supported(info.ty);
        let (ty, data) = if fits && info.ty != target {
            let mut values = vec![0.0f32; info.n_elements() as usize];
            quant::dequantize(info.ty, view.data, &mut values)
                .with_context(|| format!("decoding {}", info.name))?;
            converted += 1;
            (target, quant::quantize(target, &values)?)
        } else {
            kept += 1;
            (info.ty, view.data.to_vec())
        };
        writer
            .add_tensor(info.name.clone(), &info.dims, ty, data)
            .with_context(|| format!("writing {}", info.name))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer
        .write_file(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "{}: {converted} tensors converted to {target}, {kept} kept",
        args.output.display()
    );
    Ok(())
}
