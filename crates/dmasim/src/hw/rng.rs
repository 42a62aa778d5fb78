//! The run's one source of randomness: a ChaCha8 stream seeded from `--seed`.
//!
//! Every nondeterministic choice of the model (cache victims, noise) draws from it in
//! program order, so one `(script, seed)` pair gives the same run on any host.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Seeded random stream.
pub struct SimRng {
    inner: ChaCha8Rng,
}

impl SimRng {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A uniform integer in `0..n` (`n` ≥ 1), by multiply-shift (no division).
    #[inline(always)]
    pub fn below(&mut self, n: usize) -> usize {
        ((u64::from(self.inner.next_u32()) * n as u64) >> 32) as usize
    }

    /// True with probability `p` (0.0..=1.0). Draws nothing when `p` is 0.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let x = self.inner.next_u32() as f64 / 4_294_967_296.0;
        x < p
    }

    /// A raw 64-bit draw.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (SimRng::new(7), SimRng::new(7));
        for _ in 0..100 {
            assert_eq!(a.below(1000), b.below(1000));
        }
        let mut c = SimRng::new(8);
        let xs: Vec<usize> = (0..20).map(|_| a.below(1 << 20)).collect();
        let ys: Vec<usize> = (0..20).map(|_| c.below(1 << 20)).collect();
        assert_ne!(xs, ys);
    }

    #[test]
    fn below_stays_in_range_and_chance_respects_zero() {
        let mut r = SimRng::new(1);
        assert!((0..10_000).all(|_| r.below(3) < 3));
        assert!((0..1000).all(|_| !r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
    }
}
