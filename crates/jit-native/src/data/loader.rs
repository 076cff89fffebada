//! Batches on a background thread, so decoding never starves the trainer. The order is a pure
//! function of (seed, step): each epoch is a seeded permutation, so a resumed run sees exactly the
//! batches an uninterrupted one would.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use jit_core::rng::PortableRng;
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

use super::{Dataset, Sample};

/// One batch: images `[B, C, H, W]` flattened, labels `[B]`.
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
}

/// Prefetching loader; dropping it stops the thread.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    _worker: JoinHandle<()>,
}

fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = PortableRng::new(seed ^ 0xE90C_0000_0000_0000 ^ epoch.wrapping_mul(0x9E37_79B9));
    let mut p: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Images `part` of the global batch (of `batch` images) of optimizer step `step`: a
/// data-parallel rank reads only its part, and the parts of all ranks are the one batch a single
/// process would read. The images are decoded on `pool`'s threads; each one's position, and so
/// its augmentation, depends only on (seed, step, index).
pub fn make_batch(
    data: &dyn Dataset,
    batch: usize,
    part: Range<usize>,
    seed: u64,
    step: u64,
    pool: &ThreadPool,
) -> Result<Batch> {
    let len = data.len() as u64;
    let positions: Vec<u64> = part.map(|i| step * batch as u64 + i as u64).collect();
    // At most two epochs meet in one batch: their permutations are made once.
    let mut perms: Vec<(u64, Vec<usize>)> = Vec::new();
    for epoch in positions.iter().map(|p| p / len) {
        if !perms.iter().any(|(e, _)| *e == epoch) {
            perms.push((epoch, permutation(len as usize, seed, epoch)));
        }
    }
    let index = |pos: u64| {
        let perm = &perms.iter().find(|(e, _)| *e == pos / len).expect("made above").1;
        perm[(pos % len) as usize]
    };
    let samples: Vec<Result<Sample>> = pool.install(|| {
        positions
            .par_iter()
            .map(|&pos| data.get(index(pos), &mut PortableRng::new(seed.wrapping_mul(31).wrapping_add(pos))))
            .collect()
    });
    let mut images = Vec::with_capacity(positions.len() * data.channels() * data.size() * data.size());
    let mut labels = Vec::with_capacity(positions.len());
    for sample in samples {
        let sample = sample?;
        images.extend_from_slice(&sample.pixels);
        labels.push(sample.label as i64);
    }
    Ok(Batch { images, labels })
}

impl Loader {
    /// Starts producing images `part` of the global batches (of `batch` images) of steps
    /// `start_step..`, decoded on `threads` threads, with `prefetch` batches in flight.
    pub fn spawn(
        data: Arc<dyn Dataset>,
        batch: usize,
        part: Range<usize>,
        seed: u64,
        start_step: u64,
        prefetch: usize,
        threads: usize,
    ) -> Result<Self> {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("jit-loader-{i}"))
            .build()
            .context("cannot start the data loader's threads")?;
        let (tx, rx): (SyncSender<Result<Batch>>, _) = sync_channel(prefetch.max(1));
        let worker = std::thread::spawn(move || {
            for step in start_step.. {
                if tx.send(make_batch(data.as_ref(), batch, part.clone(), seed, step, &pool)).is_err() {
                    break;
                }
            }
        });
        Ok(Self { rx, _worker: worker })
    }

    /// The next batch (blocks until the worker has it).
    pub fn next(&self) -> Result<Batch> {
        self.rx.recv().map_err(|_| anyhow::anyhow!("data loader stopped"))?
    }
}
