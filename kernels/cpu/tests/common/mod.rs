//! Helpers shared by the kernel test suites: a small seeded generator for reproducible data.
#![allow(dead_code)] // each suite uses a different subset

/// xorshift64*: small, seeded, reproducible, with no dev-dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, mean 0, deviation `s`.
    pub fn normal(&mut self, s: f32) -> f32 {
        let u: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        u * s * 1.7
    }
    pub fn fill_bytes(&mut self, b: &mut [u8]) {
        for v in b {
            *v = self.next_u64() as u8;
        }
    }
    /// A finite f16 bit pattern: random sign and mantissa, exponent field 1..=17 (about 6e-5 to 8).
    pub fn sane_f16(&mut self) -> u16 {
        let sign = (self.next_u64() as u16 & 1) << 15;
        let exp = (1 + self.below(17) as u16) << 10;
        let mant = self.next_u64() as u16 & 0x3FF;
        sign | exp | mant
    }
}
