//! A GGUF file rewritten with its weight matrices in other block formats (through f32):
//! what `llama-gpu quantize IN OUT TYPE` writes, and how tests make a second
//! quantization of a real model (a draft model for speculative decoding). Norms and
//! other vectors stay as they are, and a matrix whose rows are not whole blocks of the
//! type falls back to a 32-value type as llama-quantize does
//! (`WeightMix::type_for_rows`).

use crate::config::Config;
use crate::error::Result;
use crate::synthetic::WeightMix;
use gguf::{GgufFile, GgufWriter, Value};

/// The rewritten file, ready to write, and what happened to its tensors.
pub struct Requantized {
    pub writer: GgufWriter,
    /// Matrices converted, of them those that fell back to a 32-value type, and tensors
    /// kept as they were.
    pub converted: usize,
    pub fell_back: usize,
    pub kept: usize,
}

/// `file` with its matrices in `mix`'s types; `on_tensor` is called after each tensor
/// (progress).
pub fn requantize(
    file: &GgufFile,
    mix: WeightMix,
    mut on_tensor: impl FnMut(),
) -> Result<Requantized> {
    let layers = Config::from_metadata(&file.gguf.metadata)
        .map(|c| c.n_layers)
        .unwrap_or(0);
    let tied = !file.gguf.tensors.iter().any(|t| t.name == "output.weight");
    let mut writer = GgufWriter::new();
    for (key, value) in file.gguf.metadata.iter() {
        writer.add_metadata(key, value.clone());
    }
    writer.add_metadata("general.quantized_by", Value::String("llama-gpu".into()));
    let (mut converted, mut kept, mut fell_back) = (0, 0, 0);
    for view in file.tensors() {
        let info = view.info;
        let target = mix.type_for_rows(&info.name, layers, tied, info.row_len() as usize);
        let matrix = info.dims.len() >= 2 && quant::is_supported(info.ty);
        let (ty, data) = if matrix && info.ty != target {
            if target != mix.type_for(&info.name, layers, tied) {
                fell_back += 1;
            }
            let mut values = vec![0.0f32; info.n_elements() as usize];
            quant::dequantize(info.ty, view.data, &mut values)?;
            converted += 1;
            (target, quant::quantize_weights(target, &values)?)
        } else {
            kept += 1;
            (info.ty, view.data.to_vec())
        };
        writer.add_tensor(info.name.clone(), &info.dims, ty, data)?;
        on_tensor();
    }
    Ok(Requantized {
        writer,
        converted,
        fell_back,
        kept,
    })
}
