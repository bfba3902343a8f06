//! Rotary position embedding, rounded as llama.cpp's CPU backend rounds it.
//!
//! GGML does not compute pair i's angle as position · base^(-2i/d): it starts from the
//! position and multiplies by base^(-2/d) once per pair, in f32, so the angles carry that
//! product's rounding. Its C is compiled with floating-point contraction, so each
//! rotated value is one fused multiply-add over the other rounded product. Both
//! matter: a one-ulp change in a rotated key is enough to move a logit by tenths.

use crate::isa::isa_dispatch;

/// base^(-2/dims) as GGML computes it (f32 `powf`): the ratio of consecutive pairs'
/// angles.
pub fn rope_theta_scale(freq_base: f32, dims: usize) -> f32 {
    freq_base.powf(-2.0 / dims as f32)
}

/// YaRN's blend of each pair's interpolated angle (scaled by `freq_scale`) with its
/// extrapolated one (unscaled): pair i takes `ext_factor · ramp(i)` of the extrapolated
/// angle, where ramp falls from 1 at pair `low` to 0 at pair `high` — the fast-turning
/// pairs keep their angles, the slow ones are interpolated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnRamp {
    pub low: f32,
    pub high: f32,
    pub ext_factor: f32,
}

impl YarnRamp {
    /// GGML's correction range for `dims` rotated dimensions: the pairs that turn
    /// `beta_fast` times and `beta_slow` times over `original_context` positions.
    pub fn new(
        dims: usize,
        original_context: usize,
        freq_base: f32,
        [beta_fast, beta_slow]: [f32; 2],
        ext_factor: f32,
    ) -> YarnRamp {
        let pair_turning = |turns: f32| {
            let wavelengths = original_context as f32 / (turns * 2.0 * std::f32::consts::PI);
            dims as f32 * wavelengths.ln() / (2.0 * freq_base.ln())
        };
        YarnRamp {
            low: pair_turning(beta_fast).floor().max(0.0),
            high: pair_turning(beta_slow).ceil().min(dims as f32 - 1.0),
            ext_factor,
        }
    }

    /// The share of pair i's angle that is extrapolated.
    fn mix(&self, pair: usize) -> f32 {
        let y = (pair as f32 - self.low) / (self.high - self.low).max(0.001);
        (1.0 - y.clamp(0.0, 1.0)) * self.ext_factor
    }
}

/// The cosine and sine of every pair's angle at `position`: angle i is
/// freq_scale · θᵢ / factors[i], with θ₀ = position and θᵢ₊₁ = θᵢ · theta_scale, blended
/// with θᵢ / factors[i] by `yarn` when given.
pub fn rope_angles(
    position: usize,
    theta_scale: f32,
    factors: &[f32],
    freq_scale: f32,
    yarn: Option<&YarnRamp>,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let mut theta = position as f32;
    for (i, ((&factor, c), s)) in factors
        .iter()
        .zip(cos.iter_mut())
        .zip(sin.iter_mut())
        .enumerate()
    {
        let extrapolated = theta / factor;
        let interpolated = freq_scale * extrapolated;
        let angle = match yarn {
            Some(ramp) => {
                let mix = ramp.mix(i);
                interpolated * (1.0 - mix) + extrapolated * mix
            }
            None => interpolated,
        };
        *c = angle.cos();
        *s = angle.sin();
        theta *= theta_scale;
    }
}

#[inline(always)]
fn rotate_portable(head: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let pairs = cos.len();
    for i in 0..pairs {
        let (a, b) = if neox {
            (i, i + pairs)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
        head[b] = x0.mul_add(sin[i], x1 * cos[i]);
    }
}

isa_dispatch! {
    /// Rotates the pairs of one head by the angles of `rope_angles`: pairs (2i, 2i+1), or
    /// (i, i + pairs) in NeoX order; dimensions past the pairs are left alone.
    pub fn rope_rotate(head: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) => rotate_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yarn_extrapolates_fast_pairs_and_interpolates_slow_ones() {
        // 64 dimensions over 4,096 positions at base 10,000: the pair turning 32 times
        // is 64·ln(4096 / 64π) / (2 ln 10⁴) = 10.5, the one turning once 22.5.
        let ramp = YarnRamp::new(64, 4096, 10_000.0, [32.0, 1.0], 1.0);
        assert_eq!((ramp.low, ramp.high), (10.0, 23.0));
        let factors = [1.0; 32];
        let (mut cos, mut sin) = ([0.0; 32], [0.0; 32]);
        let (mut plain_cos, mut plain_sin) = ([0.0; 32], [0.0; 32]);
        let (mut scaled_cos, mut scaled_sin) = ([0.0; 32], [0.0; 32]);
        let scale = rope_theta_scale(10_000.0, 64);
        rope_angles(1000, scale, &factors, 0.25, Some(&ramp), &mut cos, &mut sin);
        rope_angles(
            1000,
            scale,
            &factors,
            1.0,
            None,
            &mut plain_cos,
            &mut plain_sin,
        );
        rope_angles(
            1000,
            scale,
            &factors,
            0.25,
            None,
            &mut scaled_cos,
            &mut scaled_sin,
        );
        assert_eq!(
            cos[..11],
            plain_cos[..11],
            "pairs up to low keep their angles"
        );
        assert_eq!(
            cos[23..],
            scaled_cos[23..],
            "pairs from high on are interpolated"
        );
        for i in 11..23 {
            assert!(
                cos[i] != plain_cos[i] && cos[i] != scaled_cos[i],
                "pair {i} blends"
            );
        }
        // A ramp that does not apply changes nothing.
        let off = YarnRamp {
            ext_factor: 0.0,
            ..ramp
        };
        rope_angles(1000, scale, &factors, 0.25, Some(&off), &mut cos, &mut sin);
        assert_eq!((cos, sin), (scaled_cos, scaled_sin));
    }

    #[test]
    fn angles_follow_the_running_product() {
        let factors = [1.0, 1.0, 2.0, 1.0];
        let (mut cos, mut sin) = ([0.0; 4], [0.0; 4]);
        let scale = rope_theta_scale(10_000.0, 8);
        assert_eq!(scale, 10_000f32.powf(-0.25));
        rope_angles(3, scale, &factors, 0.5, None, &mut cos, &mut sin);
        let mut theta = 3.0f32;
        for i in 0..4 {
            let angle = 0.5 * (theta / factors[i]);
            assert_eq!((cos[i], sin[i]), (angle.cos(), angle.sin()));
            // Close to the closed form, but not necessarily equal to it.
            let closed = 0.5 * 3.0 * 10_000f64.powf(-0.25 * i as f64) / factors[i] as f64;
            assert!((angle as f64 - closed).abs() < 1e-6);
            theta *= scale;
        }
    }

    #[test]
    fn rotation_preserves_length_and_matches_the_portable_twin() {
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..4)
            .map(|i| (i as f32 * 0.7).sin_cos())
            .map(|(s, c)| (c, s))
            .unzip();
        for neox in [false, true] {
            let head: Vec<f32> = (0..10).map(|i| (i as f32 * 1.3).cos() * 2.0).collect();
            let mut got = head.clone();
            rope_rotate(&mut got, &cos, &sin, neox);
            let mut twin = head.clone();
            rotate_portable(&mut twin, &cos, &sin, neox);
            assert_eq!(got, twin);
            assert_eq!(
                got[8..],
                head[8..],
                "dimensions past the pairs are untouched"
            );
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
            assert!((norm(&got) - norm(&head)).abs() < 1e-4);
        }
    }
}
