"""Golden vectors for FID/IS against torch-fidelity's 'inception-v3-compat' extractor.

Run through `bash scripts/fid-golden.sh` (sets up the venv). Writes tests/golden/fid/{golden.npz,keys.json}
and a formula-weights .pth outside the repo (${FID_WEIGHTS:-~/.cache/jit-fid/inception-formula.pth}).
Formulas are documented in tests/golden/fid/README.md and below.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "fid"
WEIGHTS = Path(os.environ.get("FID_WEIGHTS", Path.home() / ".cache" / "jit-fid" / "inception-formula.pth"))
U64 = np.uint64


def fnv1a64(key: str) -> int:
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def formula_r(key: str, n: int) -> np.ndarray:
    """r_i = splitmix64(fnv1a64(key) + i) mapped to [-1, 1) as float64, i in 0..n (all u64 ops wrap)."""
    x = U64(fnv1a64(key)) + np.arange(n, dtype=U64)
    x = x + U64(0x9E3779B97F4A7C15)
    z = (x ^ (x >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    z = z ^ (z >> U64(31))
    return (z >> U64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0


def formula_value(key: str, shape) -> np.ndarray:
    r = formula_r(key, int(np.prod(shape))).reshape(shape)
    if key.endswith(".conv.weight") or len(shape) == 4 or key == "fc.weight":
        return r * np.sqrt(3.0 / np.prod(shape[1:]))
    if key.endswith(".bn.weight"):
        return 1.0 + 0.1 * r
    if key.endswith(".bn.running_var"):
        return 1.0 + 0.25 * (r + 1.0)
    if key.endswith((".bn.bias", ".bn.running_mean", "fc.bias")):
        return 0.1 * r
    print(f"note: unexpected float key {key} {tuple(shape)}: using 0.1 r", file=sys.stderr)
    return 0.1 * r


def make_image(k: int, size: int) -> np.ndarray:
    """HWC uint8. Even k: (37x + 91y + 53c + 17k) % 256; odd k: ((x*x + 3*y*y) // 7 + 101c + 29k) % 256."""
    y, x, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    if k % 2 == 0:
        v = 37 * x + 91 * y + 53 * c + 17 * k
    else:
        v = (x * x + 3 * y * y) // 7 + 101 * c + 29 * k
    return (v % 256).astype(np.uint8)


def write_weights():
    # Build the module's state_dict structure without any weights: load an empty dict non-strictly.
    orig = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, sd: orig(self, sd, strict=False)
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, WEIGHTS)
    try:
        skeleton = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=WEIGHTS)
    finally:
        FeatureExtractorInceptionV3.load_state_dict = orig
    sd, keys, samples = {}, [], {}
    for key, t in skeleton.state_dict().items():
        keys.append([key, list(t.shape), str(t.dtype).replace("torch.", "")])
        if t.is_floating_point():
            v = np.ascontiguousarray(formula_value(key, tuple(t.shape)), dtype=np.float32)
            sd[key] = torch.from_numpy(v)
            samples[key] = [float(v.flat[0]), float(v.flat[-1]), float(v.astype(np.float64).sum())]
        else:
            sd[key] = torch.zeros_like(t)  # num_batches_tracked: unused in eval
    torch.save(sd, WEIGHTS)
    eps = sorted({m.eps for m in skeleton.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    rows = ",\n".join(json.dumps(k) for k in keys)
    checks = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in samples.items())
    text = f'{{"batchnorm_eps": {json.dumps(eps)},\n"state_dict": [\n{rows}\n],\n'
    text += f'"samples_first_last_sum": {{\n{checks}\n}}}}\n'
    (OUT / "keys.json").write_text(text)
    return sd


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    sd = write_weights()
    feats = ["2048", "logits_unbiased", "logits"]
    fe = FeatureExtractorInceptionV3("inception-v3-compat", feats, feature_extractor_weights_path=WEIGHTS)
    assert all(torch.equal(fe.state_dict()[k], v) for k, v in sd.items())
    g = {}
    k = 0
    for size in (64, 256, 299):
        imgs = np.stack([make_image(k + j, size) for j in range(2)])  # NHWC
        k += 2
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()  # NCHW uint8, as torch-fidelity's loader gives
        with torch.no_grad():
            out = fe.convert_features_tuple_to_dict(fe(x))
            # The forward's first two steps, reproduced for debugging (first image only, to keep files small).
            pre = interpolate_bilinear_2d_like_tensorflow1x(x[:1].float(), size=(299, 299), align_corners=False)
            pre = (pre - 128) / 128
        g[f"images_{size}"] = imgs
        if size != 299:
            g[f"preprocessed_{size}"] = pre.numpy()
        for name, key in (("features", "2048"), ("logits_unbiased", "logits_unbiased"), ("logits", "logits")):
            g[f"{name}_{size}"] = out[key].numpy()

    # FID on synthetic statistics (float64), via torch-fidelity's own function.
    for i in (1, 2):
        a = formula_r(f"fid.a{i}", 64 * 64).reshape(64, 64)
        g[f"fid_mu{i}"] = formula_r(f"fid.mu{i}", 64)
        g[f"fid_sigma{i}"] = a @ a.T / 64 + 0.5 * np.eye(64)
    s1 = {"mu": g["fid_mu1"], "sigma": g["fid_sigma1"]}
    s2 = {"mu": g["fid_mu2"], "sigma": g["fid_sigma2"]}
    g["fid_value"] = np.float64(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])

    # Inception Score: 20 x 1008 float32 logits, 10 splits, torch-fidelity defaults (shuffle with seed 2020).
    logits = (3.0 * formula_r("isc.logits", 20 * 1008).reshape(20, 1008)).astype(np.float32)
    g["isc_logits"] = logits
    g["isc_perm"] = np.random.RandomState(2020).permutation(20)
    isc = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    g["isc_mean"], g["isc_std"] = np.float64(isc["inception_score_mean"]), np.float64(isc["inception_score_std"])
    isc = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    g["isc_mean_noshuffle"] = np.float64(isc["inception_score_mean"])
    g["isc_std_noshuffle"] = np.float64(isc["inception_score_std"])

    # Statistics of the 6 images' '2048' features, by torch-fidelity's own function.
    f6 = np.concatenate([g["features_64"], g["features_256"], g["features_299"]])
    st = fid_features_to_statistics(torch.from_numpy(f6))
    g["stats_mu"] = st["mu"]  # float32 (np.mean of float32)
    sigma = st["sigma"]  # float64 2048x2048 (32 MB): store a block and summaries only
    g["stats_sigma_block"] = sigma[:256, :256]
    g["stats_sigma_diag"] = np.diag(sigma).copy()
    g["stats_sigma_rowsum"] = sigma.sum(axis=1)
    np.savez(OUT / "golden.npz", **g)

    print(f"torch {torch.__version__}, torch-fidelity {torch_fidelity.__version__}, numpy {np.__version__}")
    for name, v in g.items():
        print(f"  {name}: {v.dtype} {list(v.shape)}" + (f" = {v.item()!r}" if v.ndim == 0 else ""))
    print(f"'2048' features: max |f| {np.abs(f6).max():.4g}, max |f - mean over images| {np.abs(f6 - f6.mean(0)).max():.3g}")
    # float32 rounding noise, against the same forward in float64. (torch-fidelity's own
    # feature_extractor_internal_dtype='float64' is a no-op: helpers.text_to_dtype maps "float64" to torch.float32.)
    fe.double()
    fe.feature_extractor_internal_dtype = torch.float64
    for size in (64, 256, 299):
        with torch.no_grad():
            ref = fe(torch.from_numpy(g[f"images_{size}"]).permute(0, 3, 1, 2).contiguous())
        d = [np.abs(g[f"{n}_{size}"] - r.numpy()).max() for n, r in zip(("features", "logits_unbiased", "logits"), ref)]
        print(f"  {size}: float32 vs float64 forward, max abs diff: 2048 {d[0]:.2g}, logits_unbiased {d[1]:.2g}, logits {d[2]:.2g}")


if __name__ == "__main__":
    main()
