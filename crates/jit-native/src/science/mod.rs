//! Science tools with their own tests: the paper's toy manifold experiment, and the classifier
//! and Fréchet distance behind `eval`.

pub mod classifier;
pub mod frechet;
pub mod toy;
