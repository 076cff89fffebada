//! FID and Inception Score as torch-fidelity computes them (the official JiT evaluation calls
//! `torch_fidelity.calculate_metrics(isc=True, fid=True, fid_statistics_file=…)`):
//!
//! - statistics of a set of Inception `pool3` features: their mean and covariance (`np.cov`,
//!   N − 1 in the denominator), in f64;
//! - FID between two statistics: `‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁ Σ₂)^½`;
//! - Inception Score of logits: the rows shuffled by NumPy's `RandomState(2020).permutation`,
//!   cut into 10 splits, `exp(mean KL(p(y|x) ‖ p(y)))` per split, their mean and standard
//!   deviation.

use anyhow::{Result, bail};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::refuse;
use crate::science::npz::{self, Array, Values};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone)]
pub struct Statistics {
    /// `[D]`.
    pub mu: DVector<f64>,
    /// `[D, D]`, symmetric positive semi-definite.
    pub sigma: DMatrix<f64>,
}

impl Statistics {
    /// The statistics of `n` feature vectors of `d` values each (row-major).
    pub fn of(features: &[f32], n: usize, d: usize) -> Self {
        assert_eq!(features.len(), n * d, "{n} features of {d} values");
        let m = DMatrix::from_fn(n, d, |i, j| features[i * d + j] as f64);
        let mu: DVector<f64> = m.row_mean().transpose();
        let centered = DMatrix::from_fn(n, d, |i, j| m[(i, j)] - mu[j]);
        let sigma = centered.transpose() * &centered / (n as f64 - 1.0).max(1.0);
        Self { mu, sigma }
    }

    /// Reads `mu` and `sigma` from a `.npz` (the format of the official `jit_in256_stats.npz`
    /// and of torch-fidelity's statistics files), checking shapes and values.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let arrays = npz::read(path, 1 << 30)?;
        let get = |k: &str| -> Result<&Array> {
            match arrays.get(k) {
                Some(a) => Ok(a),
                None => refuse!("{} has no '{k}': FID statistics hold 'mu' and 'sigma'", path.display()),
            }
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = match mu.shape[..] {
            [d] if d > 0 => d,
            _ => refuse!("'mu' in {} has shape {:?}, expected [D]", path.display(), mu.shape),
        };
        if sigma.shape != [d, d] {
            refuse!("'sigma' in {} has shape {:?}, expected [{d}, {d}] for a 'mu' of {d}", path.display(), sigma.shape);
        }
        let (Some(mu), Some(sigma)) = (mu.to_f64(), sigma.to_f64()) else {
            refuse!("'mu' and 'sigma' in {} must be float arrays", path.display());
        };
        if !mu.iter().chain(&sigma).all(|v| v.is_finite()) {
            refuse!("{} holds NaN or infinite statistics", path.display());
        }
        let sigma = DMatrix::from_row_slice(d, d, &sigma);
        let asym = (&sigma - sigma.transpose()).abs().max();
        if asym > 1e-6 * sigma.abs().max().max(1.0) {
            refuse!("'sigma' in {} is not symmetric (not a covariance matrix)", path.display());
        }
        Ok(Self { mu: DVector::from_vec(mu), sigma })
    }

    /// Writes `mu` and `sigma` (f64) as a `.npz` that [`Self::read`] and NumPy read.
    pub fn to_npz(&self) -> Result<Vec<u8>> {
        let d = self.mu.len();
        let mu = Array { shape: vec![d], values: Values::F64(self.mu.iter().copied().collect()) };
        // nalgebra is column-major; .npy is C order (the matrix is symmetric either way).
        let sigma = Array { shape: vec![d, d], values: Values::F64(self.sigma.transpose().iter().copied().collect()) };
        Ok(npz::write(std::io::Cursor::new(Vec::new()), &[("mu", &mu), ("sigma", &sigma)])?.into_inner())
    }
}

/// FID between two statistics of the same width. `Tr (Σ₁ Σ₂)^½` is computed as the sum of the
/// square roots of the eigenvalues of the symmetric `Σ₁^½ Σ₂ Σ₁^½`, which has the same
/// eigenvalues as `Σ₁ Σ₂`.
pub fn fid(a: &Statistics, b: &Statistics) -> Result<f64> {
    if a.mu.len() != b.mu.len() {
        bail!("statistics of {} and {} features cannot be compared", a.mu.len(), b.mu.len());
    }
    let sqrt_psd = |m: &DMatrix<f64>| {
        let e = SymmetricEigen::new(m.clone());
        let d = DMatrix::from_diagonal(&e.eigenvalues.map(|v| v.max(0.0).sqrt()));
        &e.eigenvectors * d * e.eigenvectors.transpose()
    };
    let s1h = sqrt_psd(&a.sigma);
    let inner = &s1h * &b.sigma * &s1h;
    let inner = (&inner + inner.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(inner).eigenvalues.iter().map(|v| v.max(0.0).sqrt()).sum();
    Ok((&a.mu - &b.mu).norm_squared() + a.sigma.trace() + b.sigma.trace() - 2.0 * tr_sqrt)
}

/// Inception Score of `n` logit rows of `classes` values: mean and standard deviation over
/// `splits` splits, as torch-fidelity (rows shuffled with NumPy's `RandomState(2020)`).
pub fn inception_score(logits: &[f32], n: usize, classes: usize, splits: usize) -> Result<(f64, f64)> {
    if logits.len() != n * classes || n < splits || splits == 0 {
        bail!("an Inception Score of {splits} splits needs at least {splits} images (got {n})");
    }
    let order = numpy_permutation(n, 2020);
    let mut scores = Vec::with_capacity(splits);
    for s in 0..splits {
        let rows = &order[s * n / splits..(s + 1) * n / splits];
        let (p, log_p): (Vec<Vec<f64>>, Vec<Vec<f64>>) = rows
            .iter()
            .map(|&r| {
                let row = &logits[r * classes..(r + 1) * classes];
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                let log_p: Vec<f64> = row.iter().map(|&v| v as f64 - lse).collect();
                (log_p.iter().map(|l| l.exp()).collect(), log_p)
            })
            .unzip();
        let q: Vec<f64> = (0..classes).map(|c| p.iter().map(|row| row[c]).sum::<f64>() / rows.len() as f64).collect();
        let kl: f64 = p
            .iter()
            .zip(&log_p)
            .map(|(p, lp)| p.iter().zip(lp).zip(&q).map(|((p, lp), q)| p * (lp - q.ln())).sum::<f64>())
            .sum::<f64>()
            / rows.len() as f64;
        scores.push(kl.exp());
    }
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / splits as f64).sqrt();
    Ok((mean, std))
}

/// `numpy.random.RandomState(seed).permutation(n)`: the Mersenne Twister seeded by
/// `init_genrand(seed)`, and NumPy's Fisher–Yates shuffle, which draws each swap index below
/// `i + 1` by masked rejection sampling on 32-bit outputs.
pub fn numpy_permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut mt = Mt19937::new(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let max = i as u32;
        let mask = u32::MAX >> max.leading_zeros();
        let j = loop {
            let v = mt.next_u32() & mask;
            if v <= max {
                break v;
            }
        };
        p.swap(i, j as usize);
    }
    p
}

/// MT19937, as NumPy's legacy `RandomState` runs it.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/golden/fid/golden.npz` (made by `scripts/fid-golden.sh` with torch-fidelity).
    fn golden() -> std::collections::HashMap<String, Array> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/fid/golden.npz");
        npz::read(&path, 1 << 30).unwrap()
    }

    fn f64s(g: &std::collections::HashMap<String, Array>, k: &str) -> Vec<f64> {
        g[k].to_f64().unwrap_or_else(|| panic!("{k} is not a float array"))
    }

    fn close(ours: f64, theirs: f64, what: &str) {
        assert!((ours - theirs).abs() <= 1e-3 * theirs.abs().max(1e-9), "{what}: {ours} vs torch-fidelity's {theirs}");
    }

    #[test]
    fn fid_and_is_are_torch_fidelitys() {
        let g = golden();
        let stats = |mu: &str, sigma: &str| {
            let mu = f64s(&g, mu);
            let d = mu.len();
            Statistics { sigma: DMatrix::from_row_slice(d, d, &f64s(&g, sigma)), mu: DVector::from_vec(mu) }
        };
        let ours = fid(&stats("fid_mu1", "fid_sigma1"), &stats("fid_mu2", "fid_sigma2")).unwrap();
        close(ours, f64s(&g, "fid_value")[0], "FID");
        let Values::I64(perm) = &g["isc_perm"].values else { panic!("int64 permutation") };
        let want: Vec<usize> = perm.iter().map(|&i| i as usize).collect();
        assert_eq!(numpy_permutation(want.len(), 2020), want, "NumPy's RandomState(2020).permutation");
        let Values::F32(logits) = &g["isc_logits"].values else { panic!("f32 logits") };
        let (n, k) = (g["isc_logits"].shape[0], g["isc_logits"].shape[1]);
        let (mean, std) = inception_score(logits, n, k, 10).unwrap();
        close(mean, f64s(&g, "isc_mean")[0], "IS mean");
        close(std, f64s(&g, "isc_std")[0], "IS std");
    }

    #[test]
    fn statistics_are_numpys_mean_and_cov() {
        let g = golden();
        let mut features = Vec::new();
        for size in [64, 256, 299] {
            features.extend(f64s(&g, &format!("features_{size}")).iter().map(|&v| v as f32));
        }
        let d = 2048;
        let s = Statistics::of(&features, features.len() / d, d);
        let (mu, diag) = (f64s(&g, "stats_mu"), f64s(&g, "stats_sigma_diag"));
        for j in 0..d {
            assert!((s.mu[j] - mu[j]).abs() <= 1e-6 * mu[j].abs().max(1e-3), "mu[{j}]");
            assert!((s.sigma[(j, j)] - diag[j]).abs() <= 1e-4 * diag[j].abs().max(1e-6), "sigma[{j},{j}]");
        }
        let block = f64s(&g, "stats_sigma_block");
        let b = (block.len() as f64).sqrt() as usize;
        for i in 0..b {
            for j in 0..b {
                let want = block[i * b + j];
                assert!((s.sigma[(i, j)] - want).abs() <= 1e-4 * want.abs().max(1e-6), "sigma[{i},{j}]");
            }
        }
        // And through a .npz, as --make-stats writes it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.npz");
        std::fs::write(&path, s.to_npz().unwrap()).unwrap();
        let back = Statistics::read(&path).unwrap();
        assert_eq!(back.mu, s.mu);
        assert_eq!(back.sigma, s.sigma);
        assert!(fid(&back, &s).unwrap().abs() < 1e-6);
    }

    #[test]
    fn statistics_files_with_wrong_shapes_or_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, arrays: &[(&str, &Array)]| {
            let path = dir.path().join(name);
            std::fs::write(&path, npz::write(std::io::Cursor::new(Vec::new()), arrays).unwrap().into_inner()).unwrap();
            path
        };
        let mu = Array { shape: vec![2], values: Values::F64(vec![0.0, 1.0]) };
        let sigma = |v: Vec<f64>, shape: Vec<usize>| Array { shape, values: Values::F64(v) };
        for (name, arrays, needle) in [
            ("nosigma.npz", vec![("mu", mu.clone())], "no 'sigma'"),
            ("shape.npz", vec![("mu", mu.clone()), ("sigma", sigma(vec![1.0; 9], vec![3, 3]))], "expected [2, 2]"),
            (
                "nan.npz",
                vec![("mu", mu.clone()), ("sigma", sigma(vec![1.0, f64::NAN, f64::NAN, 1.0], vec![2, 2]))],
                "NaN",
            ),
            (
                "asym.npz",
                vec![("mu", mu.clone()), ("sigma", sigma(vec![1.0, 0.5, 0.0, 1.0], vec![2, 2]))],
                "not symmetric",
            ),
        ] {
            let refs: Vec<(&str, &Array)> = arrays.iter().map(|(k, a)| (*k, a)).collect();
            let e = Statistics::read(&write(name, &refs)).unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
        let not_zip = dir.path().join("x.npz");
        std::fs::write(&not_zip, b"not a zip").unwrap();
        assert!(Statistics::read(&not_zip).unwrap_err().to_string().contains("not a .npz"));
    }

    #[test]
    fn the_twister_and_the_shuffle_are_numpys() {
        // MT19937's reference output for init_genrand(5489): 3499211612, 581869302, …
        let mut mt = Mt19937::new(5489);
        assert_eq!([mt.next_u32(), mt.next_u32(), mt.next_u32()], [3_499_211_612, 581_869_302, 3_890_346_734]);
        let p = numpy_permutation(10, 2020);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn fid_of_a_set_against_itself_is_zero_and_of_gaussians_the_closed_form() {
        let d = 4;
        let features: Vec<f32> =
            (0..200 * d).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * (1 + i % d) as f32).collect();
        let s = Statistics::of(&features, 200, d);
        assert!(fid(&s, &s).unwrap().abs() < 1e-9);
        // Diagonal covariances: FID = ‖Δμ‖² + Σ (√σ₁ − √σ₂)².
        let a = Statistics {
            mu: DVector::from_vec(vec![0.0, 1.0]),
            sigma: DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0])),
        };
        let b = Statistics {
            mu: DVector::from_vec(vec![1.0, 1.0]),
            sigma: DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 9.0])),
        };
        let want = 1.0 + (2.0f64 - 1.0).powi(2) + (1.0f64 - 3.0).powi(2);
        assert!((fid(&a, &b).unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn a_uniform_classifier_scores_one_and_a_confident_diverse_one_scores_the_classes() {
        let (n, k) = (40, 4);
        let flat = vec![0f32; n * k];
        let (mean, std) = inception_score(&flat, n, k, 10).unwrap();
        assert!((mean - 1.0).abs() < 1e-9 && std < 1e-9);
        // Each image sure of one class, classes balanced within each split: IS = k.
        let order = numpy_permutation(n, 2020);
        let mut sure = vec![-50f32; n * k];
        for (pos, &row) in order.iter().enumerate() {
            sure[row * k + pos % k] = 50.0;
        }
        let (mean, _) = inception_score(&sure, n, k, 10).unwrap();
        assert!((mean - k as f64).abs() < 1e-6, "{mean}");
    }
}
