//! A seeded, portable random generator for sampling noise.
//!
//! Backend RNGs differ between CPU, wgpu and the browser; this one is computed on the host with
//! integer arithmetic (SplitMix64) and Box–Muller in f64, so the same seed gives bit-identical
//! noise everywhere, including wasm32.

use burn::tensor::{Device, Tensor, TensorData};

/// SplitMix64's increment: every draw adds it to the state.
const INCREMENT: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 stream with a Box–Muller normal sampler. Its whole state is one `u64`
/// ([`PortableRng::state`]), so training can save and resume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortableRng {
    state: u64,
}

impl PortableRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The current state (restore with [`PortableRng::new`]).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Next uniform `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(INCREMENT);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// `n` standard normal values (Box–Muller, both outputs used).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// Values `skip..skip + n` of the stream that [`PortableRng::normals`] draws, without drawing
    /// the first `skip`: each pair of normals takes two draws, so the counter moves past whole
    /// pairs at once, and an odd `skip` starts at the second value of a pair.
    pub fn normals_from(&mut self, skip: u64, n: usize) -> Vec<f32> {
        let pairs = skip / 2;
        self.state = self.state.wrapping_add(INCREMENT.wrapping_mul(pairs.wrapping_mul(2)));
        let odd = (skip % 2) as usize;
        let mut out = self.normals(n + odd);
        out.drain(..odd);
        out
    }

    /// A `[B, C, H, W]` tensor of `scale · N(0, 1)` noise.
    pub fn noise(&mut self, shape: [usize; 4], scale: f64, device: &Device) -> Tensor<4> {
        self.noise_from(0, shape, scale, device)
    }

    /// [`PortableRng::noise`] from value `skip` of the stream on ([`PortableRng::normals_from`]).
    pub fn noise_from(&mut self, skip: u64, shape: [usize; 4], scale: f64, device: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let data: Vec<f32> = self.normals_from(skip, n).into_iter().map(|v| v * scale as f32).collect();
        Tensor::from_data(TensorData::new(data, shape), device)
    }
}
