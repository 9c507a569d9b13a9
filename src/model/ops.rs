//! Element-wise and per-row f32 operations of the forward pass: RMS norm, RoPE, GELU, softcap.
//! Each follows ggml's order of operations where that order changes the rounding, so our logits
//! track llama.cpp's closely.

use half::f16;

/// `x = x / sqrt(mean(x²) + eps) * w`, computed like ggml: squares summed in f64, the scale
/// applied first and the weight second.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), w.len());
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, &wi) in x.iter_mut().zip(w) {
        *v = (*v * scale) * wi;
    }
}

/// Fills `cos`/`sin` (each `n_rot / 2`) for position `pos`: θ_i = pos · scale · base^(−2i/n_rot),
/// with base^(−2/n_rot) multiplied in step by step as ggml does.
pub fn rope_angles(
    pos: usize,
    base: f32,
    freq_scale: f32,
    n_rot: usize,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta = pos as f32;
    for i in 0..n_rot / 2 {
        let t = freq_scale * theta;
        cos[i] = t.cos();
        sin[i] = t.sin();
        theta *= theta_scale;
    }
}

/// NEOX RoPE on one head: rotates the pairs (x[i], x[i + n_rot/2]).
pub fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = a * sin[i] + b * cos[i];
    }
}

/// GELU (tanh form) through an f16 table, as ggml's CPU backend computes it: the input is
/// rounded to f16, and the table holds GELU of each f16 value rounded to f16.
pub struct GeluTable {
    table: Vec<f32>,
}

impl Default for GeluTable {
    fn default() -> Self {
        Self::new()
    }
}

impl GeluTable {
    pub fn new() -> GeluTable {
        let table = (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())).to_f32())
            .collect();
        GeluTable { table }
    }

    /// `gate[i] = gelu(gate[i]) * up[i]`.
    pub fn geglu(&self, gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            let x = *g;
            *g = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                self.table[f16::from_f32(x).to_bits() as usize] * u
            };
        }
    }
}

/// GELU, tanh approximation.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF * x * x)).tanh())
}

/// `x = c · tanh(x / c)`.
pub fn softcap(x: &mut [f32], c: f32) {
    for v in x {
        *v = c * (*v / c).tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_weight_gives_unit_rms() {
        let mut x = vec![1.0, -2.0, 3.0, -4.0];
        rms_norm(&mut x, &[1.0; 4], 0.0);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_keeps_norm() {
        let (mut c, mut s) = (vec![0.0; 4], vec![0.0; 4]);
        rope_angles(0, 10_000.0, 1.0, 8, &mut c, &mut s);
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let orig = x.clone();
        rope_neox(&mut x, &c, &s);
        assert_eq!(x, orig);
        rope_angles(17, 10_000.0, 1.0, 8, &mut c, &mut s);
        rope_neox(&mut x, &c, &s);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-3);
    }

    #[test]
    fn gelu_table_tracks_exact_gelu() {
        let t = GeluTable::new();
        for x in [-3.0f32, -0.5, 0.0, 0.3, 1.0, 2.5, 9.0] {
            let mut g = [x];
            t.geglu(&mut g, &[1.0]);
            assert!(
                (g[0] - gelu_tanh(x)).abs() <= 2e-3 * (1.0 + x.abs()),
                "{x}: {}",
                g[0]
            );
        }
    }
}
