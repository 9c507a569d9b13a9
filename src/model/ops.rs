//! Element-wise and per-row f32 operations of the forward pass: RMS norm, RoPE, GELU, SiLU,
//! softcap.
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

/// Fills `cos`/`sin` (each `n_rot / 2`) for position `pos`:
/// θ_i = pos · scale · base^(−2i/n_rot) / factors[i], with base^(−2/n_rot) multiplied in step by
/// step and the factor dividing before the scale, as ggml does.
pub fn rope_angles(
    pos: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
    n_rot: usize,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta = pos as f32;
    for i in 0..n_rot / 2 {
        let t = match factors {
            Some(f) => freq_scale * (theta / f[i]),
            None => freq_scale * theta,
        };
        cos[i] = t.cos();
        sin[i] = t.sin();
        theta *= theta_scale;
    }
}

/// "Normal" RoPE on one head (llama.cpp's Llama pairing): rotates the adjacent pairs
/// (x[2i], x[2i + 1]).
pub fn rope_normal(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, pair) in x.chunks_exact_mut(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos[i] - b * sin[i];
        pair[1] = a * sin[i] + b * cos[i];
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

/// `gate[i] = silu(gate[i]) * up[i]`, rounded as ggml's AVX2 `swiglu`: groups of eight through
/// its vectorized exp ([`exp_ggml`]), the remainder through the C library's `expf`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked just above).
            unsafe { swiglu_fma(gate, up) };
            return;
        }
    }
    swiglu_portable(gate, up);
}

/// [`swiglu`] compiled with FMA instructions; the same results as the portable version
/// (`mul_add` is a fused multiply-add either way), only faster.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    swiglu_portable(gate, up)
}

#[inline(always)]
fn swiglu_portable(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    let n_vec = gate.len() / 8 * 8;
    let (gv, gt) = gate.split_at_mut(n_vec);
    let (uv, ut) = up.split_at(n_vec);
    for (g, &u) in gv.iter_mut().zip(uv) {
        let x = *g;
        *g = (x / (1.0 + exp_ggml(0.0 - x))) * u;
    }
    for (g, &u) in gt.iter_mut().zip(ut) {
        let x = *g;
        *g = (x / (1.0 + (-x).exp())) * u;
    }
}

/// e^x as ggml's vectorized `expf` computes it, one lane at a time (its maximum error is about
/// 1.5 ulp; the C library's is under 1): x = n·ln2 + b with n rounded to an integer, a degree-5
/// polynomial for e^b, and 2^n put into the exponent bits; |n| > 126 takes a slower path that
/// splits the scale in two so results near overflow and underflow stay right.
#[inline(always)]
pub fn exp_ggml(x: f32) -> f32 {
    let c = |bits: u32| f32::from_bits(bits);
    let shift = c(0x4b40_0000); // 0x1.8p23: adding it rounds to an integer
    let z = x.mul_add(c(0x3fb8_aa3b), shift); // x·log2(e) + shift
    let n = z - shift;
    // b = x − n·ln2, with ln2 split into a high and a low part.
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let p_hi = c(0x3c07_2010).mul_add(b, c(0x3d2b_9f17));
    let p_lo = c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb));
    let j = p_hi.mul_add(u, p_lo).mul_add(u, c(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 {
        return k.mul_add(j, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
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
        rope_angles(0, 10_000.0, 1.0, None, 8, &mut c, &mut s);
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let orig = x.clone();
        rope_neox(&mut x, &c, &s);
        assert_eq!(x, orig);
        rope_angles(17, 10_000.0, 1.0, None, 8, &mut c, &mut s);
        rope_neox(&mut x, &c, &s);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-3);
        let mut y = orig.clone();
        rope_normal(&mut y, &c, &s);
        assert!((n(&y) - n(&orig)).abs() < 1e-3);
        // Normal pairs (0, 1): the first pair turns by θ_0 = 17 rad.
        let (c0, s0) = (17f32.cos(), 17f32.sin());
        assert_eq!(y[0], orig[0] * c0 - orig[1] * s0);
        assert_eq!(y[1], orig[0] * s0 + orig[1] * c0);
    }

    #[test]
    fn rope_factors_divide_theta_and_scale_multiplies_it() {
        let (mut c, mut s) = (vec![0.0; 4], vec![0.0; 4]);
        let (mut c2, mut s2) = (vec![0.0; 4], vec![0.0; 4]);
        rope_angles(9, 10_000.0, 0.25, None, 8, &mut c, &mut s);
        rope_angles(9, 10_000.0, 1.0, Some(&[4.0; 4]), 8, &mut c2, &mut s2);
        for i in 0..4 {
            assert!((c[i] - c2[i]).abs() < 1e-6 && (s[i] - s2[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn ggml_exp_tracks_libm_exp() {
        let mut x = -103.0f32;
        while x < 88.0 {
            let (got, want) = (exp_ggml(x), x.exp());
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "{x}: {got} vs {want} ({ulps} ulps)");
            x += 0.0137;
        }
        assert_eq!(exp_ggml(0.0), 1.0);
        assert_eq!(exp_ggml(-200.0), 0.0);
        assert_eq!(exp_ggml(100.0), f32::INFINITY);
    }

    #[test]
    fn swiglu_is_silu_gate_times_up() {
        let mut g: Vec<f32> = (0..11).map(|i| i as f32 - 5.0).collect();
        let want: Vec<f32> = g.iter().map(|&x| x / (1.0 + (-x).exp()) * 2.0).collect();
        swiglu(&mut g, &[2.0; 11]);
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
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
