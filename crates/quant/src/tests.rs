//! Round-trip accuracy, hand-computed blocks, and matmul against a plain reference.

use super::*;
use gguf::GgmlType::{self, *};
use rand::{Rng, SeedableRng};

/// Multiplies `x` (tokens in `orders`) by `m` with `isa`'s kernels and asserts that every
/// result has the bits of `want`'s (`what` names the case in the failure).
pub(crate) fn assert_matmul_bits(
    isa: Isa,
    m: QMatrix,
    x: &[f32],
    orders: &[TokenOrder],
    want: &[f32],
    what: &str,
) {
    let mut got = vec![0.0; want.len()];
    matmul_many_with(isa, &[m], x, &mut [&mut got], orders);
    let same = got
        .iter()
        .zip(want)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "{what} on {}", isa.name());
}

const ALL: [GgmlType; 19] = [
    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL,
    IQ4_XS, TQ1_0, TQ2_0,
];

fn relative_rms_error(ty: GgmlType, x: &[f32]) -> f32 {
    let bytes = quantize(ty, x).unwrap();
    let mut y = vec![0.0; x.len()];
    dequantize(ty, &bytes, &mut y).unwrap();
    let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
    let sig: f32 = x.iter().map(|a| a * a).sum();
    (err / sig).sqrt()
}

#[test]
fn round_trip_error_is_within_bounds_for_each_bit_width() {
    let smooth: Vec<f32> = (0..4096)
        .map(|i| 0.1 + 2.0 * (i as f32 * 0.05).cos())
        .collect();
    let bounds = [
        (F32, 0.0),
        (F16, 1e-3),
        (BF16, 4e-3),
        (Q8_0, 5e-3),
        (Q8_1, 5e-3),
        (Q8_K, 5e-3),
        (Q6_K, 0.02),
        (Q5_0, 0.04),
        (Q5_1, 0.03),
        (Q5_K, 0.04),
        (Q4_0, 0.08),
        (Q4_1, 0.06),
        (Q4_K, 0.08),
        (IQ4_NL, 0.08),
        (IQ4_XS, 0.08),
        (Q3_K, 0.2),
        (Q2_K, 0.3),
    ];
    for (ty, bound) in bounds {
        let e = relative_rms_error(ty, &smooth);
        assert!(e <= bound, "{ty}: relative RMS error {e} > {bound}");
    }
}

#[test]
fn random_data_round_trips_for_every_type() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for ty in ALL {
        let x: Vec<f32> = (0..1024).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let e = relative_rms_error(ty, &x);
        assert!(e < 0.5, "{ty}: {e}");
    }
    assert!(quantize(Q4_0, &[0.0; 33]).is_err());
    assert_eq!(
        quantize(GgmlType::IQ2_XS, &[0.0; 256]),
        Err(QuantError::NotWritable(GgmlType::IQ2_XS))
    );
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

fn decode(ty: GgmlType, block: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; ty.block_size()];
    dequantize(ty, block, &mut out).unwrap();
    out
}

#[test]
fn hand_computed_legacy_blocks() {
    // Q4_0: d = 0.5; byte j holds value j (low nibble) and 15 - j (high nibble).
    let mut b = f16(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = decode(Q4_0, &b);
    assert_eq!((y[0], y[3], y[16], y[31]), (-4.0, -2.5, 3.5, -4.0));

    // Q4_1: d = 2, m = -1.
    let mut b = [f16(2.0), f16(-1.0)].concat();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = decode(Q4_1, &b);
    assert_eq!((y[0], y[5], y[16], y[31]), (-1.0, 9.0, 29.0, -1.0));

    // Q5_0: d = 1; fifth bit set for value 1 and value 17 only.
    let mut b = f16(1.0).to_vec();
    b.extend(((1u32 << 1) | (1 << 17)).to_le_bytes());
    b.extend([0x21u8; 16]);
    let y = decode(Q5_0, &b);
    assert_eq!(
        (y[0], y[1], y[16], y[17]),
        (1.0 - 16.0, 17.0 - 16.0, 2.0 - 16.0, 18.0 - 16.0)
    );

    // Q5_1: d = 0.5, m = 1, same codes.
    let mut b = [f16(0.5), f16(1.0)].concat();
    b.extend(((1u32 << 1) | (1 << 17)).to_le_bytes());
    b.extend([0x21u8; 16]);
    let y = decode(Q5_1, &b);
    assert_eq!((y[0], y[1], y[16], y[17]), (1.5, 9.5, 2.0, 10.0));

    // Q8_0 / Q8_1: d = 0.25, codes -16..16.
    let codes: Vec<u8> = (0..32).map(|i| (i as i8 - 16) as u8).collect();
    let y = decode(Q8_0, &[f16(0.25).to_vec(), codes.clone()].concat());
    assert_eq!((y[0], y[31]), (-4.0, 3.75));
    let y = decode(
        Q8_1,
        &[f16(0.25).to_vec(), f16(0.0).to_vec(), codes].concat(),
    );
    assert_eq!((y[0], y[20]), (-4.0, 1.0));
}

#[test]
fn hand_computed_k_blocks() {
    // Q2_K: sub-block 0 scale 3 / min 1, sub-block 1 scale 2 / min 0; d = 1, dmin = 0.5.
    let mut b = vec![0u8; 84];
    b[0] = 3 | (1 << 4);
    b[1] = 2;
    b[16] = 0b11; // value 0 has code 3 (shift 0)
    b[16 + 16] = 0b10; // value 16 has code 2
    b[16 + 1] = 0b01 << 2; // value 33 (second 32-group, shift 2) has code 1
    b[80..82].copy_from_slice(&f16(1.0));
    b[82..84].copy_from_slice(&f16(0.5));
    let y = decode(Q2_K, &b);
    assert_eq!((y[0], y[1], y[16], y[17]), (9.0 - 0.5, -0.5, 4.0, 0.0));
    assert_eq!(y[33], b[2] as f32 * 0.0 + 0.0); // sub-block 2: scale 0, min 0

    // Q3_K: all 16 scales code 33 (= +1); value 0 code low 3 with high bit → 3, value 1 → -4.
    let mut b = vec![0u8; 110];
    for i in 0..4 {
        b[96 + i] = 0x11; // low nibbles of codes = 1
        b[100 + i] = 0x11;
        b[104 + i] = 0b10_10_10_10; // high bits = 2 → code 33
    }
    b[0] = 1; // hmask bit for value 0
    b[32] = 3;
    b[108..110].copy_from_slice(&f16(0.5));
    let y = decode(Q3_K, &b);
    assert_eq!((y[0], y[1]), (1.5, -2.0));

    // Q4_K: sub-block 0 scale 2 min 1, sub-block 4 scale 17 (needs high bits) min 0.
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&f16(1.0));
    b[2..4].copy_from_slice(&f16(0.25));
    let (ls, lm) = ([2u8, 0, 0, 0, 17, 0, 0, 0], [1u8, 0, 0, 0, 0, 0, 0, 0]);
    super::kquants_test_pack(&ls, &lm, &mut b[4..16]);
    b[16] = 0x05; // value 0 code 5
    b[16 + 64] = 0x03; // value 128 (sub-block 4) code 3
    let y = decode(Q4_K, &b);
    assert_eq!((y[0], y[1], y[128]), (10.0 - 0.25, -0.25, 51.0));

    // Q6_K: scale[0] = -2, d = 0.5; value 0 code 40 (→ 8), value 64 code 0 (→ -32).
    let mut b = vec![0u8; 210];
    b[0] = 40 & 0xf;
    b[128] = 40 >> 4;
    b[192] = (-2i8) as u8;
    b[196] = 1; // scale of values 64..80
    b[208..210].copy_from_slice(&f16(0.5));
    let y = decode(Q6_K, &b);
    assert_eq!((y[0], y[64]), (-8.0, -16.0));

    // Q8_K: d = 0.5 (f32), code i8 -3 at value 7.
    let mut b = vec![0u8; 292];
    b[0..4].copy_from_slice(&0.5f32.to_le_bytes());
    b[4 + 7] = (-3i8) as u8;
    assert_eq!(decode(Q8_K, &b)[7], -1.5);
}

#[test]
fn hand_computed_iq4_blocks() {
    // IQ4_NL: d = 0.5; byte j holds code j (low nibble, value j) and 15 − j (value j + 16).
    let mut b = f16(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = decode(IQ4_NL, &b);
    assert_eq!((y[0], y[8], y[15], y[16]), (-63.5, 0.5, 56.5, 56.5));

    // IQ4_XS: d = 0.25; sub-block 0 scale code 33 (+1), sub-block 5 code 2 + 16·2 = 34
    // (+2), sub-block 7 code 0 (−32); every code 15 (level 113) but value 1's, which is 0.
    let mut b = vec![0u8; 136];
    b[0..2].copy_from_slice(&f16(0.25));
    let high: u16 = 2 | (2 << (2 * 5));
    b[2..4].copy_from_slice(&high.to_le_bytes());
    b[4] = 1; // sub-blocks 0 (low nibble 1) and 1 (0)
    b[6] = 2 << 4; // sub-block 5
    b[8..].fill(0xff);
    b[9] = 0xf0;
    let y = decode(IQ4_XS, &b);
    assert_eq!(
        (y[0], y[1], y[17]),
        (113.0 * 0.25, -127.0 * 0.25, 113.0 * 0.25)
    );
    assert_eq!(y[5 * 32], 113.0 * 0.5);
    assert_eq!(y[7 * 32], 113.0 * -8.0);
    assert_eq!(y[32], 113.0 * 0.25 * -32.0); // sub-block 1: code 0, step −32·d
}

#[test]
fn iq4_quantizers_pick_levels_of_the_table() {
    // Values that are exactly d · level for one step d come back exactly.
    let levels = iquants::IQ4_LEVELS;
    let x: Vec<f32> = (0..256)
        .map(|i| 0.01 * levels[(i * 7) % 16] as f32)
        .collect();
    for ty in [IQ4_NL, IQ4_XS] {
        let y = decode(ty, &quantize(ty, &x).unwrap()[..ty.type_size()]);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 2e-3 * a.abs().max(0.1), "{ty}: {a} vs {b}");
        }
    }
}

#[test]
fn q5_k_high_bits() {
    let mut x = vec![0.0f32; 256];
    for (i, v) in x.iter_mut().enumerate() {
        *v = (i % 32) as f32;
    }
    let bytes = quantize(Q5_K, &x).unwrap();
    let y = decode(Q5_K, &bytes);
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() < 0.6, "{a} vs {b}");
    }
}

/// f64 dot products of the decoded weights with the activations as the kernels see
/// them (quantized to the weight type's partner format).
fn reference_matmul(w: &QMatrix, x: &[f32]) -> Vec<f32> {
    let n = x.len() / w.cols;
    let act = activation_type(w.ty);
    let mut xq = vec![0.0; x.len()];
    dequantize(act, &quantize(act, x).unwrap(), &mut xq).unwrap();
    let x = &xq;
    let mut row = vec![0.0; w.cols];
    let mut out = vec![0.0; n * w.rows];
    for r in 0..w.rows {
        w.dequantize_row(r, &mut row);
        for t in 0..n {
            let s: f64 = row
                .iter()
                .zip(&x[t * w.cols..])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            out[t * w.rows + r] = s as f32;
        }
    }
    out
}

#[test]
fn matmul_matches_reference_and_is_batch_invariant() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for ty in ALL {
        let cols = ty
            .block_size()
            .max(activation_type(ty).block_size())
            .max(32)
            * 3;
        // Enough rows that a lone token group's tasks take more than 16 (`tile_rows`),
        // and not a multiple of 16.
        let rows = 301;
        let wf: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let bytes = quantize(ty, &wf).unwrap();
        let w = QMatrix::new(ty, &bytes, rows, cols).unwrap();
        let n = 15; // token groups of 8 and 7; every group size below
        let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = vec![0.0; n * rows];
        matmul(&w, &x, &mut out);
        // Each group size alone (the first m tokens) gives the same rows as all n.
        let check_group_sizes = |isa: Isa, m: &QMatrix, what: &str| {
            for tokens in 1..=8 {
                let mut part = vec![0.0; tokens * rows];
                matmul_with(isa, m, &x[..tokens * cols], &mut part);
                assert!(
                    part == out[..tokens * rows],
                    "{ty}: {what}{tokens} tokens on {}",
                    isa.name()
                );
            }
        };
        let reference = reference_matmul(&w, &x);
        for (a, b) in out.iter().zip(&reference) {
            // Q8_1 carries its block sum s = d·Σq rounded to f16, as GGML does; the
            // reference uses the exact sum, so those types get a looser bound.
            let tol = if activation_type(ty) == Q8_1 {
                1e-2
            } else {
                2e-3
            };
            assert!((a - b).abs() < tol * b.abs().max(1.0), "{ty}: {a} vs {b}");
        }
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if isa.is_available() {
                let mut other = vec![0.0; n * rows];
                matmul_with(isa, &w, &x, &mut other);
                assert!(
                    other == out,
                    "{ty}: {} kernels differ from the default",
                    isa.name()
                );
                check_group_sizes(isa, &w, "");
            }
        }
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !packable(ty, isa) || !isa.is_available() {
                continue;
            }
            let packed_bytes = pack(ty, &bytes, rows, cols);
            let p = QMatrix::packed(ty, &packed_bytes, rows, cols).unwrap();
            let mut packed_out = vec![0.0; n * rows];
            matmul_with(isa, &p, &x, &mut packed_out);
            assert!(
                packed_out == out,
                "{ty}: packed {} kernels differ",
                isa.name()
            );
            for t in [0, 5, n - 1] {
                let mut one = vec![0.0; rows];
                matmul_with(isa, &p, &x[t * cols..(t + 1) * cols], &mut one);
                assert_eq!(one, out[t * rows..(t + 1) * rows], "{ty}: packed token {t}");
            }
            check_group_sizes(isa, &p, "packed, ");
            let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
            for r in 0..rows {
                w.dequantize_row(r, &mut a);
                p.dequantize_row(r, &mut b);
                assert_eq!(a, b, "{ty}: packed row {r} decodes differently");
            }
        }
        for t in 0..n {
            let mut one = vec![0.0; rows];
            matmul(&w, &x[t * cols..(t + 1) * cols], &mut one);
            assert_eq!(
                one,
                out[t * rows..(t + 1) * rows],
                "{ty}: token {t} alone differs"
            );
        }
    }
    assert!(QMatrix::new(Q4_0, &[0u8; 10], 1, 32).is_err());
}

#[test]
fn matmul_many_equals_separate_matmuls() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let cols = 64;
    let x: Vec<f32> = (0..3 * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let shapes = [(Q4_1, 20), (Q8_0, 33), (Q4_K, 5)];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(ty, rows)| {
            let cols = if ty == Q4_K { 256 } else { cols };
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            quantize(ty, &w).unwrap()
        })
        .collect();
    // Q4_K needs 256-wide rows, so it gets its own activations below.
    let ms: Vec<QMatrix> = shapes[..2]
        .iter()
        .zip(&data)
        .map(|(&(ty, rows), d)| QMatrix::new(ty, d, rows, cols).unwrap())
        .collect();
    let mut a = vec![0.0; 3 * 20];
    let mut b = vec![0.0; 3 * 33];
    matmul_many(&ms, &x, &mut [&mut a, &mut b], &[]);
    let (mut a1, mut b1) = (vec![0.0; 3 * 20], vec![0.0; 3 * 33]);
    matmul(&ms[0], &x, &mut a1);
    matmul(&ms[1], &x, &mut b1);
    assert_eq!(a, a1);
    assert_eq!(b, b1);
    let k = QMatrix::new(Q4_K, &data[2], 5, 256).unwrap();
    let xk: Vec<f32> = (0..256).map(|i| i as f32 / 256.0).collect();
    let (mut one, mut many) = (vec![0.0; 5], vec![0.0; 5]);
    matmul(&k, &xk, &mut one);
    matmul_many(&[k], &xk, &mut [&mut many], &[]);
    assert_eq!(one, many);
}
