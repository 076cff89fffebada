//! Data-parallel processes: every process (a rank) trains the same model on its part of each
//! global batch, and one all-reduce per step sums their gradients. The processes are started by
//! `mpirun`/`srun` and talk through MPI (the `mpi` feature, [`mpi`]); a process started alone is
//! a world of one ([`Single`]). The rest of the runner sees only [`Collective`], so another
//! transport (NCCL inside a node) can take MPI's place.

#[cfg(feature = "mpi")]
mod mpi;

use anyhow::Result;

use crate::refuse;

/// The operations data-parallel training needs from its processes. Every method is collective:
/// all ranks call it, in the same order.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// This process's rank among those on its machine (picks its GPU).
    fn local_rank(&self) -> usize;
    /// Replaces `buf` by its element-wise sum over all ranks.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// `value` of every rank, in rank order.
    fn all_gather(&self, value: u64) -> Result<Vec<u64>>;
    /// Rank 0's `bytes` on every rank.
    fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<()>;
    /// Every rank's `bytes`, in rank order, on rank 0 (an empty list elsewhere).
    fn gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>>;
    /// Ends every rank at once with exit code `code` (after an error on this one, which the
    /// others would otherwise wait for in their next collective).
    fn abort(&self, code: i32) -> !;
}

/// A process started alone.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn broadcast(&self, _bytes: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The number of processes a launcher (`mpirun`, `srun`) says this one is part of, if any.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
}

/// This process's rank on its machine as the launcher gives it (`OMPI_COMM_WORLD_LOCAL_RANK`,
/// `SLURM_LOCALID`, `MPI_LOCALRANKID`, `PMI_LOCAL_RANK`).
#[cfg(feature = "mpi")]
pub fn launched_local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
}

/// The processes of this run: MPI's world when a launcher started several processes (and
/// this build has MPI), else [`Single`].
pub fn world() -> Result<Box<dyn Collective>> {
    let launched = launched_size().unwrap_or(1);
    #[cfg(feature = "mpi")]
    if launched > 1 {
        return Ok(Box::new(mpi::Mpi::init()?));
    }
    if launched > 1 {
        refuse!(
            "this process was launched as one of {launched} (mpirun/srun) but this build has no MPI; build with `cargo build --release -p jit-native --features mpi`"
        );
    }
    Ok(Box::new(Single))
}

/// Runs a command's body on every process of this run ([`world`]); an error on one rank ends
/// every rank (which would otherwise wait for it), except a stop by a signal that all ranks
/// agreed on.
pub fn run_on_every_rank(body: impl FnOnce(&dyn Collective) -> Result<()>) -> Result<()> {
    let world = world()?;
    let result = body(world.as_ref());
    if let Err(e) = &result
        && world.size() > 1
        && e.downcast_ref::<crate::exit::Interrupted>().is_none()
    {
        eprintln!("error: rank {}: {e:#}", world.rank());
        world.abort(crate::exit::code(e));
    }
    result
}

/// A hash of `parts` (settings as JSON, the binary's version), equal on every rank started the
/// same way; [`check_same`] compares them.
pub fn settings_hash(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, p| {
        p.iter().chain(&[0xff]).fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
    })
}

/// Refuses to go on when the ranks' `value`s (of `what`) differ, naming the first rank that
/// differs from rank 0.
pub fn check_same(world: &dyn Collective, value: u64, what: &str) -> Result<()> {
    let all = world.all_gather(value)?;
    if let Some(r) = all.iter().position(|v| *v != all[0]) {
        refuse!("rank {r} {what} than rank 0; start every rank with the same binary, flags and files");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_reduces_to_itself() {
        let w = Single;
        let mut buf = vec![1.0, 2.0];
        w.all_reduce_sum(&mut buf).unwrap();
        assert_eq!(buf, [1.0, 2.0]);
        assert_eq!(w.gather(vec![7]).unwrap(), vec![vec![7]]);
        check_same(&w, 3, "was started with other settings").unwrap();
        assert_ne!(settings_hash(&[b"a", b"bc"]), settings_hash(&[b"ab", b"c"]));
    }
}
