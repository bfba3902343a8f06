//! The codebook i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) and the
//! ternary types (TQ1_0, TQ2_0) decode exactly as llama.cpp decodes them: random blocks against the values llama.cpp's
//! `dequantize_row_*` gave for the same bytes (`tests/data/refs/iquants/`, written by
//! `scripts/iquant-refs.py`).

#[path = "../../../tests/refs.rs"]
mod refs;

use gguf::GgmlType;

#[test]
fn random_blocks_dequantize_as_llama_cpp_bit_for_bit() {
    use GgmlType::*;
    for ty in [
        IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0,
    ] {
        let name = ty.to_string().to_lowercase();
        let blocks = std::fs::read(refs::refs(&format!("iquants/{name}.blocks"))).unwrap();
        let want = refs::f32_file(&format!("iquants/{name}.f32"));
        assert_eq!(blocks.len() / ty.type_size() * 256, want.len(), "{ty}");
        let mut got = vec![0.0f32; want.len()];
        quant::dequantize(ty, &blocks, &mut got).unwrap();
        let differing: Vec<usize> = (0..want.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .collect();
        assert!(
            differing.is_empty(),
            "{ty}: {} of {} values differ, first at {} ({} vs {})",
            differing.len(),
            want.len(),
            differing[0],
            got[differing[0]],
            want[differing[0]]
        );
    }
}
