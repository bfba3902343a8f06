//! The quantizers write the bytes llama.cpp writes (without an importance matrix, as
//! `llama-quantize` runs): 49 blocks of values chosen to cover real weights and the
//! searches' corner cases, against llama.cpp's output for them (`tests/data/refs/quantize/`,
//! written by `scripts/quantize-refs.py`).

#[path = "../../../tests/refs.rs"]
mod refs;

use gguf::GgmlType;

#[test]
fn quantizers_write_llama_cpp_bytes() {
    use GgmlType::*;
    let input = refs::f32_file("quantize/input.f32");
    let mut mismatched = Vec::new();
    for ty in [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0,
    ] {
        let name = ty.to_string().to_lowercase();
        let want = std::fs::read(refs::refs(&format!("quantize/{name}.blocks"))).unwrap();
        let got = quant::quantize_weights(ty, &input).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}");
        let per_256 = want.len() / (input.len() / 256);
        let differing: Vec<usize> = (0..input.len() / 256)
            .filter(|&b| got[b * per_256..][..per_256] != want[b * per_256..][..per_256])
            .collect();
        if !differing.is_empty() {
            mismatched.push(format!("{ty}: blocks {differing:?} of 256 values differ"));
        }
    }
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}

/// Why weights have a quantizer of their own: on values that fall on exact halves (the
/// input's block of them), Q8_0 as activations are quantized is not what llama-quantize
/// writes.
#[test]
fn q8_0_activation_quantizer_is_not_the_files() {
    let input = refs::f32_file("quantize/input.f32");
    let want = std::fs::read(refs::refs("quantize/q8_0.blocks")).unwrap();
    assert_ne!(quant::quantize(GgmlType::Q8_0, &input).unwrap(), want);
}
