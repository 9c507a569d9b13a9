//! Token sampling from logits: logit bias, repetition/frequency/presence penalties, then greedy
//! or top-k → top-p → min-p → temperature → a seeded random draw (llama.cpp's default order).
//!
//! A [`Sampler`] belongs to one request. It allocates its scratch (a copy of the logits, the
//! candidate list, penalty counters, the top-N log-prob buffer) once in [`Sampler::new`];
//! [`Sampler::sample`] then works without heap allocation. Greedy decoding is a single pass;
//! top-k uses partial selection instead of sorting the whole vocabulary.
//!
//! Determinism: the random stream is xoshiro256** seeded from `seed` through splitmix64, and
//! candidate order never depends on anything but the logits, so the same parameters, seed and
//! logits give the same tokens.
//!
//! Log-probabilities are those of the model's distribution after bias and penalties, before
//! temperature and truncation (what OpenAI-style `logprobs` report).

use crate::kernels::argmax::argmax;
use std::cmp::Ordering;

/// Most top log-probs a request may ask for per token.
pub const LOGPROBS_MAX: usize = 100;
/// Most logit-bias entries per request.
pub const LOGIT_BIAS_MAX: usize = 4096;

/// Errors in sampling parameters or inputs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("invalid sampling parameter {name}: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("logit bias for token {id}, but the vocabulary has {n_vocab} tokens")]
    BiasToken { id: u32, n_vocab: usize },
    #[error("expected {expected} logits, got {got}")]
    LogitsLen { expected: usize, got: usize },
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("every token has probability zero (all logits are -inf or NaN after bias)")]
    NoCandidates,
}

fn bad(name: &'static str, reason: impl Into<String>) -> SamplerError {
    SamplerError::InvalidParam {
        name,
        reason: reason.into(),
    }
}

/// Sampling parameters of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// <= 0: greedy (argmax, ties to the lowest id).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches top_p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens; 1 = off.
    pub repetition_penalty: f32,
    /// Subtract frequency_penalty × count of each recent token.
    pub frequency_penalty: f32,
    /// Subtract presence_penalty from each token seen recently.
    pub presence_penalty: f32,
    /// How many of the last history tokens the penalties look at; 0 = penalties off.
    pub penalty_last_n: usize,
    /// Added to the logits of these tokens first (-inf bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
    /// How many most likely tokens to report with their log-probs (0 = none).
    pub n_logprobs: usize,
    /// Compute the chosen token's log-prob even when `n_logprobs` is 0. Off, and with
    /// `n_logprobs` 0, [`Sampled::logprob`] is NaN: the softmax normaliser over the whole
    /// vocabulary (an `exp` per entry, 262,144 for Gemma 3, per token) is skipped.
    pub logprob: bool,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: 0,
            n_logprobs: 0,
            logprob: false,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding, no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Check ranges; NaN is rejected everywhere.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad(
                "temperature",
                format!("{} (must be finite and >= 0)", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", format!("{} (must be in (0, 1])", self.top_p)));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", format!("{} (must be in [0, 1])", self.min_p)));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(bad(
                "repetition_penalty",
                format!("{} (must be finite and > 0)", self.repetition_penalty),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(bad("frequency_penalty", "must be finite"));
        }
        if !self.presence_penalty.is_finite() {
            return Err(bad("presence_penalty", "must be finite"));
        }
        if self.n_logprobs > LOGPROBS_MAX {
            return Err(bad(
                "n_logprobs",
                format!("{} (at most {LOGPROBS_MAX})", self.n_logprobs),
            ));
        }
        if self.logit_bias.len() > LOGIT_BIAS_MAX {
            return Err(bad(
                "logit_bias",
                format!(
                    "{} entries (at most {LOGIT_BIAS_MAX})",
                    self.logit_bias.len()
                ),
            ));
        }
        for &(id, b) in &self.logit_bias {
            // -inf is allowed: it bans the token.
            if b.is_nan() || b == f32::INFINITY {
                return Err(bad("logit_bias", format!("{b} for token {id}")));
            }
        }
        Ok(())
    }

    fn penalties_on(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// A token with its log-probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// The result of one sampling step.
#[derive(Debug, PartialEq)]
pub struct Sampled<'a> {
    pub token: u32,
    /// Log-probability of `token` under the model's (biased, penalized) distribution.
    pub logprob: f32,
    /// The `n_logprobs` most likely tokens, most likely first (ties: lower id first).
    pub top_logprobs: &'a [TokenLogprob],
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Descending by logit, ties by ascending id: a total, deterministic order.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64 as its authors recommend.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Per-request sampler with preallocated scratch.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    n_vocab: usize,
    /// Logits after bias and penalties.
    adjusted: Vec<f32>,
    cand: Vec<Candidate>,
    /// Occurrences of each token in the penalty window; all zero between calls.
    counts: Vec<u32>,
    top: Vec<TokenLogprob>,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, n_vocab: usize) -> Result<Sampler, SamplerError> {
        params.validate()?;
        if n_vocab == 0 {
            return Err(SamplerError::EmptyVocab);
        }
        if let Some(&(id, _)) = params
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= n_vocab)
        {
            return Err(SamplerError::BiasToken { id, n_vocab });
        }
        let sampling = params.temperature > 0.0;
        Ok(Sampler {
            n_vocab,
            adjusted: vec![0.0; n_vocab],
            cand: Vec::with_capacity(if sampling { n_vocab } else { 0 }),
            counts: if params.penalties_on() {
                vec![0; n_vocab]
            } else {
                Vec::new()
            },
            top: Vec::with_capacity(params.n_logprobs),
            rng: Rng::new(params.seed),
            params,
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Restart the random stream (e.g. to replay a request).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Pick the next token. `history` is the sequence so far (prompt and generated tokens);
    /// the penalties look at its last `penalty_last_n` entries.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<Sampled<'_>, SamplerError> {
        if logits.len() != self.n_vocab {
            return Err(SamplerError::LogitsLen {
                expected: self.n_vocab,
                got: logits.len(),
            });
        }
        if let Some(token) = self.plain_greedy(logits) {
            return Ok(Sampled {
                token,
                logprob: f32::NAN,
                top_logprobs: &self.top,
            });
        }
        for (a, &l) in self.adjusted.iter_mut().zip(logits) {
            // NaN would poison every comparison below; treat it as impossible.
            *a = if l.is_nan() { f32::NEG_INFINITY } else { l };
        }
        for &(id, b) in &self.params.logit_bias {
            self.adjusted[id as usize] += b;
        }
        if self.params.penalties_on() {
            self.apply_penalties(history);
        }
        let (best, mut max) = argmax(&self.adjusted);
        if max == f32::NEG_INFINITY {
            return Err(SamplerError::NoCandidates);
        }
        // +inf (a huge bias overflowing) would make every probability NaN; clamp it.
        if max == f32::INFINITY {
            for l in &mut self.adjusted {
                if *l == f32::INFINITY {
                    *l = f32::MAX;
                }
            }
            max = f32::MAX;
        }
        let log_z = if self.wants_logprobs() {
            max + self
                .adjusted
                .iter()
                .map(|&l| (l - max).exp())
                .sum::<f32>()
                .ln()
        } else {
            f32::NAN
        };

        let token = if self.params.temperature <= 0.0 || self.params.top_k == 1 {
            best as u32
        } else {
            self.sample_random(max)
        };

        self.fill_top(log_z);
        Ok(Sampled {
            token,
            logprob: self.adjusted[token as usize] - log_z,
            top_logprobs: &self.top,
        })
    }

    fn wants_logprobs(&self) -> bool {
        self.params.logprob || self.params.n_logprobs > 0
    }

    /// Greedy with nothing that changes the logits and no log-probs wanted: the argmax of
    /// the raw logits, read in place (no copy of the vocabulary-sized row). The same token as
    /// the general path: NaN never wins either way, and the first +inf wins in both. `None`
    /// when the general path must run (it also reports a row with no candidate).
    fn plain_greedy(&self, logits: &[f32]) -> Option<u32> {
        let plain = self.params.is_greedy()
            && self.params.logit_bias.is_empty()
            && !self.params.penalties_on()
            && !self.wants_logprobs();
        if !plain {
            return None;
        }
        let (best, max) = argmax(logits);
        (max > f32::NEG_INFINITY).then_some(best as u32)
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        let p = &self.params;
        let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
        for &id in window {
            if let Some(c) = self.counts.get_mut(id as usize) {
                *c += 1;
            }
        }
        for &id in window {
            let Some(c) = self.counts.get_mut(id as usize) else {
                continue;
            };
            if *c == 0 {
                continue; // already applied for this token
            }
            let count = *c as f32;
            *c = 0;
            let l = &mut self.adjusted[id as usize];
            if *l <= 0.0 {
                *l *= p.repetition_penalty;
            } else {
                *l /= p.repetition_penalty;
            }
            *l -= count * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// top-k → top-p → min-p → temperature → draw. `max` is the largest adjusted logit.
    fn sample_random(&mut self, max: f32) -> u32 {
        let p = &self.params;
        self.cand.clear();
        self.cand.extend(
            self.adjusted
                .iter()
                .enumerate()
                .filter(|(_, &l)| l > f32::NEG_INFINITY)
                .map(|(i, &logit)| Candidate {
                    id: i as u32,
                    logit,
                }),
        );
        let mut sorted = false;
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.cand.truncate(p.top_k);
            self.cand.sort_unstable_by(by_logit_desc);
            sorted = true;
        }
        // Normaliser of the distribution after top-k, at temperature 1 (what top-p uses).
        let z: f32 = self.cand.iter().map(|c| (c.logit - max).exp()).sum();
        // min-p keeps a prefix of the sorted order and so does top-p, and top-p's cumulative
        // sums over that prefix do not depend on the tokens min-p removes (they all come
        // later). So filtering by min-p first (cheap, no sort) selects the same set as
        // llama.cpp's top-p-then-min-p, and leaves fewer candidates to sort.
        if p.min_p > 0.0 {
            let threshold = max + p.min_p.ln();
            self.cand.retain(|c| c.logit >= threshold);
        }
        if p.top_p < 1.0 {
            if !sorted {
                self.cand.sort_unstable_by(by_logit_desc);
            }
            let mut cum = 0.0f32;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += (c.logit - max).exp() / z;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        // The max-logit token survives every filter, so the list is never empty.
        let inv_t = 1.0 / p.temperature;
        // A tiny temperature makes inv_t infinite: 0 × inf would be NaN for the best token.
        let weight = |logit: f32| {
            let d = logit - max;
            if d == 0.0 {
                1.0
            } else {
                f64::from((d * inv_t).exp())
            }
        };
        let total: f64 = self.cand.iter().map(|c| weight(c.logit)).sum();
        let mut u = self.rng.next_f64() * total;
        for c in &self.cand {
            let w = weight(c.logit);
            if u < w {
                return c.id;
            }
            u -= w;
        }
        // Rounding left u just above the last weight: take the last candidate.
        self.cand.last().map_or(0, |c| c.id)
    }

    /// The `n_logprobs` best tokens by adjusted logit, in one pass with insertion into a small
    /// sorted buffer (N is tiny next to the vocabulary).
    fn fill_top(&mut self, log_z: f32) {
        let n = self.params.n_logprobs;
        self.top.clear();
        if n == 0 {
            return;
        }
        for (i, &l) in self.adjusted.iter().enumerate() {
            if self.top.len() == n {
                // Strictly better only: on ties the earlier (lower) id stays.
                if self.top.last().is_some_and(|t| l <= t.logprob) {
                    continue;
                }
                self.top.pop();
            }
            let pos = self.top.partition_point(|t| t.logprob >= l);
            self.top.insert(
                pos,
                TokenLogprob {
                    token: i as u32,
                    logprob: l,
                },
            );
        }
        for t in &mut self.top {
            t.logprob -= log_z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln_probs(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    fn sampler(params: SamplingParams, n: usize) -> Sampler {
        Sampler::new(params, n).expect("valid params")
    }

    /// Deterministic pseudo-random logits.
    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| (r.next_f64() * 20.0 - 10.0) as f32)
            .collect()
    }

    /// The in-place greedy path (no log-probs asked) picks what the general path picks, on
    /// ordinary rows and on rows with NaN, +inf and ties; and it reports no log-prob.
    #[test]
    fn plain_greedy_matches_the_general_path() {
        let mut rows = vec![
            logits(1000, 3),
            vec![f32::NAN, 2.0, f32::INFINITY, 1.0, f32::INFINITY],
            vec![f32::NAN, -1.0, -1.0, f32::NAN],
            vec![0.5; 7],
        ];
        rows[0][417] = f32::NAN;
        for l in &rows {
            let mut fast = sampler(SamplingParams::greedy(), l.len());
            let general = SamplingParams {
                logprob: true,
                ..SamplingParams::greedy()
            };
            let mut slow = sampler(general, l.len());
            let a = fast.sample(l, &[]).expect("sample");
            assert!(a.logprob.is_nan(), "no log-prob was asked");
            let b = slow.sample(l, &[]).expect("sample");
            assert!(b.logprob <= 0.0, "log-prob asked: {}", b.logprob);
            assert_eq!(a.token, b.token, "{l:?}");
        }
        let all_nan = [f32::NAN; 3];
        let mut s = sampler(SamplingParams::greedy(), 3);
        assert!(s.sample(&all_nan, &[]).is_err(), "no candidate is an error");
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = sampler(SamplingParams::greedy(), 5);
        let out = s.sample(&[1.0, 3.0, -2.0, 3.0, 0.5], &[]).expect("sample");
        assert_eq!(out.token, 1);
        assert!(out.top_logprobs.is_empty());
        let l = logits(1000, 7);
        let argmax = (0..1000)
            .max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a)))
            .expect("non-empty") as u32;
        let mut s = sampler(SamplingParams::greedy(), 1000);
        assert_eq!(s.sample(&l, &[]).expect("sample").token, argmax);
    }

    #[test]
    fn same_seed_same_tokens() {
        let l = logits(5000, 1);
        let run = |seed: u64| -> Vec<u32> {
            let params = SamplingParams {
                seed,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.5,
                ..SamplingParams::default()
            };
            let mut s = sampler(params, 5000);
            (0..64)
                .map(|_| s.sample(&l, &[]).expect("sample").token)
                .collect()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_k_one_equals_greedy() {
        for seed in 0..5 {
            let l = logits(3000, seed);
            let mut g = sampler(SamplingParams::greedy(), 3000);
            let mut k1 = sampler(
                SamplingParams {
                    top_k: 1,
                    seed,
                    ..SamplingParams::default()
                },
                3000,
            );
            let mut k1s = sampler(
                SamplingParams {
                    top_k: 1,
                    top_p: 0.5,
                    seed,
                    ..SamplingParams::default()
                },
                3000,
            );
            let want = g.sample(&l, &[]).expect("sample").token;
            assert_eq!(k1.sample(&l, &[]).expect("sample").token, want);
            assert_eq!(k1s.sample(&l, &[]).expect("sample").token, want);
        }
    }

    #[test]
    fn logit_bias_forces_and_bans() {
        let l = logits(100, 3);
        let mut s = sampler(
            SamplingParams {
                logit_bias: vec![(17, 100.0)],
                ..SamplingParams::default()
            },
            100,
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&l, &[]).expect("sample").token, 17);
        }
        let mut g = sampler(
            SamplingParams {
                logit_bias: vec![(1, f32::NEG_INFINITY)],
                ..SamplingParams::greedy()
            },
            3,
        );
        assert_eq!(g.sample(&[0.0, 5.0, 1.0], &[]).expect("sample").token, 2);
        assert!(Sampler::new(
            SamplingParams {
                logit_bias: vec![(3, 1.0)],
                ..SamplingParams::greedy()
            },
            3
        )
        .is_err());
    }

    #[test]
    fn repetition_penalty_and_frequency() {
        let rep = SamplingParams {
            repetition_penalty: 1.5,
            ..SamplingParams::greedy()
        };
        let mut s = sampler(rep.clone(), 3);
        // 2.0 / 1.5 = 1.33 < 1.9: the repeated token loses.
        assert_eq!(s.sample(&[2.0, 1.9, 0.0], &[0]).expect("sample").token, 1);
        assert_eq!(s.sample(&[2.0, 1.9, 0.0], &[]).expect("sample").token, 0);
        // Negative logits are multiplied: -1 * 1.5 = -1.5 < -1.2.
        assert_eq!(
            s.sample(&[-1.0, -1.2, -9.0], &[0]).expect("sample").token,
            1
        );
        // Outside the window: no effect.
        let mut w = sampler(
            SamplingParams {
                penalty_last_n: 2,
                ..rep
            },
            3,
        );
        assert_eq!(
            w.sample(&[2.0, 1.9, 0.0], &[0, 2, 2])
                .expect("sample")
                .token,
            0
        );
        // frequency × count + presence.
        let mut f = sampler(
            SamplingParams {
                frequency_penalty: 0.5,
                presence_penalty: 0.1,
                n_logprobs: 3,
                ..SamplingParams::greedy()
            },
            3,
        );
        let out = f.sample(&[3.0, 2.0, 0.0], &[0, 0, 1]).expect("sample");
        // token 0: 3 - 1.0 - 0.1 = 1.9; token 1: 2 - 0.5 - 0.1 = 1.4.
        assert_eq!(out.token, 0);
        let d = out.top_logprobs[0].logprob - out.top_logprobs[1].logprob;
        assert!((d - 0.5).abs() < 1e-5, "{d}");
    }

    /// Draw many tokens and count them.
    fn histogram(params: SamplingParams, l: &[f32], draws: usize) -> Vec<usize> {
        let mut s = sampler(params, l.len());
        let mut h = vec![0; l.len()];
        for _ in 0..draws {
            h[s.sample(l, &[]).expect("sample").token as usize] += 1;
        }
        h
    }

    #[test]
    fn top_p_and_min_p_cut_offs() {
        let l = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
        let base = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 9,
            ..SamplingParams::default()
        };
        // top_p 0.7: {0.5, 0.3} reaches 0.8 >= 0.7.
        let h = histogram(
            SamplingParams {
                top_p: 0.7,
                ..base.clone()
            },
            &l,
            4000,
        );
        assert_eq!(h[2] + h[3], 0, "{h:?}");
        let share = h[0] as f64 / 4000.0;
        assert!((share - 0.625).abs() < 0.04, "{share}");
        // top_p 0.8 boundary is reached exactly by the first two (within rounding) or three.
        // min_p 0.2: threshold 0.1 keeps 0.5, 0.3, 0.15.
        let h = histogram(
            SamplingParams {
                min_p: 0.2,
                ..base.clone()
            },
            &l,
            4000,
        );
        assert_eq!(h[3], 0, "{h:?}");
        assert!(h[2] > 0, "{h:?}");
        // Both: top-p 0.9 would keep three, min-p 0.5 keeps {0.5, 0.3}.
        let h = histogram(
            SamplingParams {
                min_p: 0.5,
                top_p: 0.9,
                ..base.clone()
            },
            &l,
            4000,
        );
        assert_eq!(h[2] + h[3], 0, "{h:?}");
        // No truncation: all four appear with roughly their probabilities.
        let h = histogram(base, &l, 20_000);
        for (i, p) in [0.5, 0.3, 0.15, 0.05].iter().enumerate() {
            let share = h[i] as f64 / 20_000.0;
            assert!((share - p).abs() < 0.02, "token {i}: {share} vs {p}");
        }
    }

    #[test]
    fn low_temperature_sharpens() {
        let l = ln_probs(&[0.4, 0.35, 0.25]);
        let h = histogram(
            SamplingParams {
                temperature: 0.05,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..SamplingParams::default()
            },
            &l,
            2000,
        );
        // p ∝ p^(1/T): 1 : 0.875^20 (0.069) : 0.625^20 (0.00008) → token 0 gets 93.5%.
        let share = h[0] as f64 / 2000.0;
        assert!((share - 0.935).abs() < 0.02, "{h:?}");
        assert!(h[2] <= 2, "{h:?}");
    }

    #[test]
    fn tiny_temperature_is_greedy() {
        let l = logits(1000, 4);
        let mut g = sampler(SamplingParams::greedy(), 1000);
        let want = g.sample(&l, &[]).expect("sample").token;
        let mut s = sampler(
            SamplingParams {
                temperature: 1e-40,
                ..SamplingParams::default()
            },
            1000,
        );
        for _ in 0..10 {
            assert_eq!(s.sample(&l, &[]).expect("sample").token, want);
        }
    }

    #[test]
    fn logprobs_are_a_distribution() {
        let l = logits(50, 11);
        let mut s = sampler(
            SamplingParams {
                n_logprobs: 50,
                ..SamplingParams::greedy()
            },
            50,
        );
        let out = s.sample(&l, &[]).expect("sample");
        let sum: f32 = out.top_logprobs.iter().map(|t| t.logprob.exp()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert_eq!(out.top_logprobs[0].token, out.token);
        assert_eq!(out.top_logprobs[0].logprob, out.logprob);
        assert!(out
            .top_logprobs
            .windows(2)
            .all(|w| w[0].logprob >= w[1].logprob));
        // Temperature does not change reported log-probs.
        let mut hot = sampler(
            SamplingParams {
                n_logprobs: 2,
                temperature: 2.0,
                ..SamplingParams::default()
            },
            50,
        );
        let out2 = hot.sample(&l, &[]).expect("sample");
        assert!((out2.top_logprobs[0].logprob - out.top_logprobs[0].logprob).abs() < 1e-6);
        assert!(out2.logprob <= 0.0);
    }

    #[test]
    fn invalid_params_and_inputs() {
        let bad_params = [
            SamplingParams {
                temperature: f32::NAN,
                ..SamplingParams::default()
            },
            SamplingParams {
                temperature: -1.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: f32::NAN,
                ..SamplingParams::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                n_logprobs: LOGPROBS_MAX + 1,
                ..SamplingParams::default()
            },
            SamplingParams {
                logit_bias: vec![(0, f32::NAN)],
                ..SamplingParams::default()
            },
        ];
        for p in bad_params {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
        let mut s = sampler(SamplingParams::default(), 3);
        assert_eq!(
            s.sample(&[0.0; 4], &[]),
            Err(SamplerError::LogitsLen {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(
            s.sample(&[f32::NAN, f32::NEG_INFINITY, f32::NAN], &[]),
            Err(SamplerError::NoCandidates)
        );
        // NaN logits are skipped, history ids out of range are ignored.
        let mut g = sampler(
            SamplingParams {
                repetition_penalty: 2.0,
                ..SamplingParams::default()
            },
            3,
        );
        assert_eq!(
            g.sample(&[f32::NAN, 1.0, f32::NEG_INFINITY], &[u32::MAX, 7])
                .expect("sample")
                .token,
            1
        );
    }

    #[test]
    fn large_vocab_top_k_is_fast() {
        let n = 262_144;
        let l = logits(n, 5);
        let mut s = sampler(SamplingParams::default(), n);
        let start = std::time::Instant::now();
        for _ in 0..20 {
            s.sample(&l, &[1, 2, 3]).expect("sample");
        }
        let per = start.elapsed().as_secs_f64() / 20.0;
        assert!(per < 0.05, "{per} s per sample");
    }
}
