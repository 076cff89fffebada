//! Data-parallel network evaluation on the CPU.
//!
//! Flex splits every tensor operation over all cores and joins them again before the next one.
//! A sampling step of JiT-S/4 is a few hundred such operations on mid-sized tensors, so the
//! cores spend much of it waiting for each other and for the calling thread. [`Lanes`] instead
//! splits the *batch*: each core evaluates its own part of the images from start to end on a
//! single-thread pool, where every operation runs without forking. No operation of the network
//! mixes images, so the output is the whole batch's (docs/cpu.md has the timings).

use burn::tensor::{Device, Int, Tensor};
use jit_core::{JitError, Network};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// A [`Network`] evaluated as one part of the batch per CPU core.
pub struct Lanes<'a, N> {
    net: &'a N,
    /// One single-thread pool per lane; empty when the batch is not split.
    pools: Vec<ThreadPool>,
}

impl<'a, N: Network + Sync> Lanes<'a, N> {
    /// One lane per thread of rayon's pool on the CPU backend (Flex); on a GPU the network is
    /// called as it is (one device, one queue: nothing to gain).
    pub fn new(net: &'a N, device: &Device) -> Self {
        let lanes = if *device == Device::flex() { rayon::current_num_threads() } else { 1 };
        Self::with_lanes(net, lanes)
    }

    /// Up to `lanes` lanes (fewer when the operating system refuses threads).
    pub fn with_lanes(net: &'a N, lanes: usize) -> Self {
        let pools: Vec<ThreadPool> = if lanes < 2 {
            Vec::new()
        } else {
            (0..lanes)
                .map_while(|i| ThreadPoolBuilder::new().num_threads(1).thread_name(move |_| format!("jit-lane-{i}")).build().ok())
                .collect()
        };
        Self { net, pools }
    }

    /// How many parts a batch of `batch` images is split into.
    pub fn lanes_for(&self, batch: usize) -> usize {
        self.pools.len().min(batch).max(1)
    }
}

impl<N: Network + Sync> Network for Lanes<'_, N> {
    fn predict(&self, z: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        let batch = z.dims()[0];
        let lanes = self.lanes_for(batch);
        if lanes < 2 {
            return self.net.predict(z, t, y);
        }
        let sizes: Vec<usize> = (0..lanes).map(|i| batch / lanes + usize::from(i < batch % lanes)).collect();
        let parts = z
            .split_with_sizes(sizes.clone(), 0)
            .into_iter()
            .zip(t.split_with_sizes(sizes.clone(), 0))
            .zip(y.split_with_sizes(sizes, 0));
        let net = self.net;
        let outs: Vec<Tensor<4>> = std::thread::scope(|scope| {
            let running: Vec<_> = self
                .pools
                .iter()
                .zip(parts)
                .map(|(pool, ((z, t), y))| scope.spawn(move || pool.install(|| net.predict(z, t, y))))
                .collect();
            running.into_iter().map(|lane| lane.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        Tensor::cat(outs, 0)
    }

    fn null_class(&self) -> usize {
        self.net.null_class()
    }

    fn check_inputs(&self, z: &Tensor<4>, t: &Tensor<1>, y: &Tensor<1, Int>) -> Result<(), JitError> {
        self.net.check_inputs(z, t, y)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use jit_core::host::{HostTensor, labels, read_f32};
    use jit_core::rng::PortableRng;
    use jit_core::{Jit, JitConfig, state_dict};

    use super::*;

    /// JiT-T/4 on 16² with every parameter drawn at random (a fresh model's zero-initialised
    /// output layers would hide a mix-up of images).
    fn random_model(device: &Device) -> Jit {
        let config = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
        let net = Jit::new(&config, device).unwrap();
        let mut rng = PortableRng::new(3);
        let values: HashMap<_, _> = state_dict::expected_shapes(&net)
            .into_iter()
            .map(|(key, shape)| {
                let data = rng.normals(shape.iter().product()).into_iter().map(|v| v * 0.3).collect();
                (key, HostTensor { shape, data })
            })
            .collect();
        state_dict::load(net, |key| values.get(key).cloned()).unwrap()
    }

    #[test]
    fn every_image_comes_out_as_the_whole_batch_computes_it() {
        let device = Device::flex();
        let net = random_model(&device);
        let batch = 5;
        let z = PortableRng::new(1).noise([batch, 3, 16, 16], 1.0, &device);
        let t = Tensor::<1>::from_floats([0.1, 0.3, 0.5, 0.7, 0.9], &device);
        let y = labels(&[0, 3, 10, 7, 1], &device);
        let whole = read_f32(net.predict(z.clone(), t.clone(), y.clone())).unwrap();
        // Products over fewer rows may take other kernels of `gemm`, which round differently.
        let tolerance = 4e-6 * whole.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for lanes in [2, 3, 8] {
            let split = Lanes::with_lanes(&net, lanes);
            assert_eq!(split.lanes_for(batch), lanes.min(batch));
            let parts = read_f32(split.predict(z.clone(), t.clone(), y.clone())).unwrap();
            assert_eq!(parts.len(), whole.len());
            let worst = whole.iter().zip(&parts).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= tolerance, "{lanes} lanes: images differ from the whole batch's by {worst} (tolerance {tolerance})");
        }
        // The check is meaningful: images differ from each other, so a mix-up would show.
        let image = whole.len() / batch;
        assert!(whole[..image].iter().zip(&whole[image..2 * image]).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
