//! Science tools with their own tests: the paper's toy manifold experiment, the classifier and
//! Fréchet distance behind `eval` for small datasets, and the paper's own measures (FID and
//! Inception Score with torch-fidelity's Inception, statistics in NumPy's .npz).

pub mod channels_last;
pub mod classifier;
pub mod fid;
pub mod frechet;
pub mod inception;
pub mod npz;
pub mod toy;
