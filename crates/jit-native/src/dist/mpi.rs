//! [`Collective`] on MPI (Open MPI, MPICH, …) through the `mpi` crate. MPI is called from the
//! main thread only (`MPI_THREAD_FUNNELED`). Counts are capped at 2^30 elements per call
//! (MPI's are `int`), so buffers of any size go in chunks.

use anyhow::{Result, bail};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::{Threading, Universe};
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};

use super::Collective;

const CHUNK: usize = 1 << 30;

/// MPI's world communicator; MPI is finalised when this is dropped.
pub struct Mpi {
    _universe: Universe,
    world: SimpleCommunicator,
    local_rank: usize,
}

impl Mpi {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        let local_rank = super::launched_local_rank().unwrap_or(0);
        Ok(Self { _universe: universe, world, local_rank })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let mut sum = vec![0f32; buf.len().min(CHUNK)];
        for chunk in buf.chunks_mut(CHUNK) {
            let sum = &mut sum[..chunk.len()];
            self.world.all_reduce_into(&*chunk, sum, SystemOperation::sum());
            chunk.copy_from_slice(sum);
        }
        Ok(())
    }
    fn all_gather(&self, value: u64) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }
    fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for chunk in bytes.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        if self.rank() != 0 {
            let root = self.world.process_at_rank(0);
            root.send(&(bytes.len() as u64));
            for chunk in bytes.chunks(CHUNK) {
                root.send(chunk);
            }
            return Ok(Vec::new());
        }
        let mut all = vec![bytes];
        for r in 1..self.size() as i32 {
            let from = self.world.process_at_rank(r);
            let (len, _) = from.receive::<u64>();
            let mut part = Vec::with_capacity(len as usize);
            while (part.len() as u64) < len {
                let (chunk, _) = from.receive_vec::<u8>();
                part.extend_from_slice(&chunk);
            }
            all.push(part);
        }
        Ok(all)
    }
}
