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

/// The cosine and sine of every pair's angle at `position`: angle i is
/// freq_scale · θᵢ / factors[i], with θ₀ = position and θᵢ₊₁ = θᵢ · theta_scale.
pub fn rope_angles(
    position: usize,
    theta_scale: f32,
    factors: &[f32],
    freq_scale: f32,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let mut theta = position as f32;
    for ((&factor, c), s) in factors.iter().zip(cos.iter_mut()).zip(sin.iter_mut()) {
        let angle = freq_scale * (theta / factor);
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
    fn angles_follow_the_running_product() {
        let factors = [1.0, 1.0, 2.0, 1.0];
        let (mut cos, mut sin) = ([0.0; 4], [0.0; 4]);
        let scale = rope_theta_scale(10_000.0, 8);
        assert_eq!(scale, 10_000f32.powf(-0.25));
        rope_angles(3, scale, &factors, 0.5, &mut cos, &mut sin);
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
