//! Counting the GPU kernels a piece of work launches, through cubecl's launch observer: the
//! measure fused kernels are judged by, on any adapter (software ones included), with or
//! without burn's fusion (then the fused kernels fusion generates are what is counted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cubecl::logging::{LaunchObservation, LaunchObserver};

/// Launches by kernel name.
#[derive(Default)]
struct Counter(Mutex<HashMap<&'static str, usize>>);

impl LaunchObserver for Counter {
    fn launched(&self, kernel: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(kernel).or_default() += 1;
    }
}

/// The kernels some work launched.
#[derive(Debug, Clone, Default)]
pub struct Launches {
    /// `(kernel name, launches)`, most launched first.
    pub by_kernel: Vec<(&'static str, usize)>,
}

impl Launches {
    /// All launches.
    pub fn total(&self) -> usize {
        self.by_kernel.iter().map(|(_, n)| n).sum()
    }
}

/// Runs `work` and counts the kernels every cubecl client of the process launches meanwhile
/// (issued launches: `work` should read a result back, so that lazy work, burn's fusion
/// included, is issued before it returns). Not reentrant: an inner count replaces the outer
/// one for its duration.
pub fn count<R>(work: impl FnOnce() -> R) -> (R, Launches) {
    let counter = Arc::new(Counter::default());
    let watching = LaunchObservation::new(counter.clone());
    let out = work();
    drop(watching);
    let counts = std::mem::take(&mut *counter.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let mut by_kernel: Vec<_> = counts.into_iter().collect();
    by_kernel.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    (out, Launches { by_kernel })
}
