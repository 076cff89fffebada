//! The Fréchet distance between two sets of feature vectors (FID's formula, for any features).

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Fréchet distance between two feature sets (rows are samples):
/// `‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁^½ Σ₂ Σ₁^½)^½`.
pub fn frechet_distance(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let stats = |m: &DMatrix<f64>| {
        let n = m.nrows() as f64;
        let mu: DVector<f64> = m.row_mean().transpose();
        let centered = DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] - mu[j]);
        let cov = centered.transpose() * &centered / (n - 1.0).max(1.0);
        (mu, cov)
    };
    let (mu1, s1) = stats(a);
    let (mu2, s2) = stats(b);
    let sqrt_psd = |m: DMatrix<f64>| {
        let e = SymmetricEigen::new(m);
        let d = DMatrix::from_diagonal(&e.eigenvalues.map(|v| v.max(0.0).sqrt()));
        &e.eigenvectors * d * e.eigenvectors.transpose()
    };
    let s1h = sqrt_psd(s1.clone());
    let inner = &s1h * &s2 * &s1h;
    let inner = (&inner + inner.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(inner).eigenvalues.iter().map(|v| v.max(0.0).sqrt()).sum();
    ((mu1 - mu2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_sqrt).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jit_core::rng::PortableRng;

    #[test]
    fn frechet_distance_is_zero_for_identical_sets_and_grows_with_shift_and_spread() {
        let mut rng = PortableRng::new(4);
        let a = DMatrix::from_fn(400, 6, |_, _| rng.normals(1)[0] as f64);
        assert!(frechet_distance(&a, &a) < 1e-6);
        let shifted = a.map(|v| v + 1.0);
        // ‖μ₁ − μ₂‖² = 6 for a unit shift in 6 dimensions
        assert!((frechet_distance(&shifted, &a) - 6.0).abs() < 1e-6);
        let wide = a.map(|v| 3.0 * v);
        // same mean, σ 3 vs 1 per dimension: Σ (3 − 1)² ≈ 6·4 = 24
        let fd = frechet_distance(&wide, &a);
        assert!((fd - 24.0).abs() < 3.0, "{fd}");
    }
}
