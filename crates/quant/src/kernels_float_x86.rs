//! x86 SIMD twins of `kernels_float`: a tile of F16 weight rows against a few tokens,
//! each group of eight weights widened once (F16C) for all of them, in the scalar
//! twin's order (its lanes are the register's lanes), so results are bit-identical to it.

use crate::kernels_float::wide_at;
use core::arch::x86_64::*;

macro_rules! x86_float_kernels {
    ($module:ident, $features:literal) => {
        pub mod $module {
            use super::*;
            use crate::kernels_x86::$module::lane_tree;

            /// R F16 weight rows · T tokens: `out[t][r]`. R·T independent chains of
            /// fused multiply-adds (each product's order is fixed, so its lanes form
            /// one chain) keep both FMA units busy where one row alone would wait on
            /// each result.
            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn dot_f16_tile<const R: usize, const T: usize>(
                w: [&[u8]; R],
                x: [&[u8]; T],
            ) -> [[f32; R]; T] {
                let cols = w[0].len() / 2;
                let whole = cols / 8 * 8;
                let mut acc = [[_mm256_setzero_ps(); R]; T];
                for c in (0..whole).step_by(8) {
                    let mut wv = [_mm256_setzero_ps(); R];
                    for (wv, w) in wv.iter_mut().zip(w) {
                        let h = _mm_loadu_si128(w.as_ptr().add(2 * c) as *const __m128i);
                        *wv = _mm256_cvtph_ps(h);
                    }
                    for (acc, a) in acc.iter_mut().zip(x) {
                        let xv = _mm256_loadu_ps(a.as_ptr().add(4 * c) as *const f32);
                        for (acc, wv) in acc.iter_mut().zip(wv) {
                            *acc = _mm256_fmadd_ps(wv, xv, *acc);
                        }
                    }
                }
                let mut out = [[0.0f32; R]; T];
                for ((out, acc), a) in out.iter_mut().zip(acc).zip(x) {
                    for ((out, acc), w) in out.iter_mut().zip(acc).zip(w) {
                        *out = (whole..cols).fold(lane_tree(acc), |s, c| {
                            s + crate::f16_at(w, 2 * c) * wide_at(a, c)
                        });
                    }
                }
                out
            }
        }
    };
}

x86_float_kernels!(avx2, "avx2,fma,f16c");
x86_float_kernels!(avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
