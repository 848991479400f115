//! A small seeded generator. candle's CPU generator cannot be seeded, so weights, data order and
//! dropout masks all come from here, which makes runs reproducible and resumable.

use rayon::prelude::*;

/// SplitMix64's increment: the state after n numbers is the seed plus n of these.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn to_unit(bits: u64) -> f32 {
    (bits >> 40) as f32 / (1u64 << 24) as f32
}

/// SplitMix64: tiny state, good statistical quality for initialisation and shuffling.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one named stream (e.g. the shuffle of epoch 3), independent of how many
    /// numbers other streams drew; resuming mid-run only needs the stream's coordinates.
    pub fn stream(seed: u64, coordinates: &[u64]) -> Self {
        let mut rng = Self::new(seed);
        for &c in coordinates {
            rng.state ^= c.wrapping_mul(0xA24B_AED4_963E_E407);
            rng.next_u64();
        }
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        to_unit(self.next_u64())
    }

    /// Uniform in [0, 1), with all 53 bits of an f64's mantissa.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `out` with the next `out.len()` numbers of `next_f32`, in parallel: SplitMix64's
    /// i-th number depends only on the state and i, so the chunks need not wait for each other
    /// (dropout draws millions a transformer step).
    pub fn fill_unit(&mut self, out: &mut [f32]) {
        const CHUNK: usize = 64 * 1024;
        let start = self.state;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, values)| {
            let mut state = start.wrapping_add(GAMMA.wrapping_mul((chunk * CHUNK) as u64));
            for v in values {
                state = state.wrapping_add(GAMMA);
                *v = to_unit(mix(state));
            }
        });
        self.state = start.wrapping_add(GAMMA.wrapping_mul(out.len() as u64));
    }

    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f32()
    }

    /// N(0, std²) by Box–Muller (one of the pair; initialisation needs no speed).
    pub fn normal(&mut self, std: f32) -> f32 {
        let u1 = 1.0 - self.next_f32();
        let u2 = self.next_f32();
        std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Names of the streams, so two uses never share numbers by accident.
pub mod streams {
    pub const SPLIT: u64 = 1;
    pub const TEACHER_INIT: u64 = 2;
    pub const STUDENT_INIT: u64 = 3;
    pub const SHUFFLE: u64 = 4;
    pub const DROPOUT: u64 = 5;
    pub const MONITOR_SPLIT: u64 = 6;
    pub const AUGMENT: u64 = 7;
    pub const PROJECTION_INIT: u64 = 8;
    pub const SWEEP: u64 = 9;
}

/// `n` dropout multipliers: 0 with probability `p`, else 1/(1 − p).
pub fn dropout_multipliers(n: usize, p: f32, rng: &mut Rng) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let mut mask = vec![0f32; n];
    rng.fill_unit(&mut mask);
    mask.iter_mut().for_each(|u| *u = if *u < p { 0.0 } else { keep });
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(7, &[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(7, &[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(7, &[1, 3]);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut r = Rng::new(1);
        let mut mean = 0.0;
        for _ in 0..10_000 {
            let u = r.next_f32();
            assert!((0.0..1.0).contains(&u));
            mean += u as f64 / 10_000.0;
            assert!(r.below(10) < 10);
        }
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn fill_unit_draws_what_next_f32_would() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        let mut filled = vec![0f32; 200_001];
        a.fill_unit(&mut filled);
        let drawn: Vec<f32> = (0..filled.len()).map(|_| b.next_f32()).collect();
        assert_eq!(filled, drawn);
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Rng::new(3).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
