//! Hostile and broken model files: the validation gate (bounded, overflow-checked sizes and a
//! memory estimate checked before anything is allocated), non-finite weights, and a
//! deterministic mutation fuzzer over checkpoint bytes that asserts only "Ok or a typed error,
//! never a panic", within a memory cap.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::module::Module;
use burn::tensor::Device;
use jit_core::checkpoint::{self, CheckpointMeta, StoreDtype};
use jit_core::config::{BOUNDS, DEFAULT_MEMORY_LIMIT};
use jit_core::optim::OptimConfig;
use jit_core::rng::PortableRng;
use jit_core::{DiffusionConfig, Jit, JitConfig, JitError, MemoryLimit, SamplerConfig, TrainState};

fn tiny() -> JitConfig {
    JitConfig {
        input_size: 8,
        patch_size: 4,
        in_channels: 3,
        hidden_size: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4.0,
        num_classes: 3,
        bottleneck_dim: 8,
        in_context_len: 2,
        in_context_start: 1,
        attn_drop: 0.0,
        proj_drop: 0.0,
    }
}

fn tiny_file() -> Vec<u8> {
    let device = Device::flex();
    let net = Jit::new(&tiny(), &device).unwrap();
    let meta = CheckpointMeta::new(tiny(), DiffusionConfig::default(), SamplerConfig::default());
    checkpoint::save(&meta, &[("", &net)], StoreDtype::F16).unwrap()
}

/// Rewrites the JiT metadata of a checkpoint with `edit` applied to its JSON.
fn with_meta(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(header["__metadata__"]["jit"].as_str().unwrap()).unwrap();
    edit(&mut meta);
    header["__metadata__"]["jit"] = serde_json::Value::String(meta.to_string());
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn param_count_matches_the_built_network() {
    let device = Device::flex();
    for config in [
        tiny(),
        JitConfig { in_context_len: 0, in_channels: 1, ..tiny() },
        JitConfig::preset("JiT-S/4", 32, 3, 10).unwrap(),
    ] {
        let built = Jit::new(&config, &device).unwrap().num_params() as u64;
        assert_eq!(config.param_count(), built, "{config:?}");
    }
}

#[test]
fn absurd_sizes_are_refused_by_name_and_never_overflow() {
    type Absurd = (&'static str, fn(&mut JitConfig));
    let absurd: &[Absurd] = &[
        ("depth", |c| c.depth = 1_000_000_000),
        ("input_size", |c| c.input_size = 1 << 32),
        ("hidden_size", |c| c.hidden_size = 1 << 40),
        ("num_classes", |c| c.num_classes = usize::MAX),
        ("in_context_len", |c| c.in_context_len = 1 << 62),
        ("tokens", |c| {
            c.input_size = 4096;
            c.patch_size = 1;
        }),
        ("mlp_ratio", |c| c.mlp_ratio = f64::INFINITY),
        ("attn_drop", |c| c.attn_drop = 1.5),
    ];
    for (field, edit) in absurd {
        let mut c = tiny();
        edit(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    // Largest allowed sizes: the estimates saturate instead of wrapping.
    let big = JitConfig {
        input_size: BOUNDS.input_size,
        patch_size: 32,
        hidden_size: BOUNDS.hidden_size,
        depth: BOUNDS.depth,
        num_heads: 64,
        num_classes: BOUNDS.num_classes,
        bottleneck_dim: BOUNDS.hidden_size,
        in_context_len: 0,
        ..tiny()
    };
    big.validate().unwrap();
    assert!(big.forward_bytes(usize::MAX) >= big.forward_bytes(1));
    let err = DEFAULT_MEMORY_LIMIT.check(&big, 1).unwrap_err();
    assert!(matches!(err, JitError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("memory limit"), "{err}");
}

#[test]
fn the_memory_gate_applies_before_loading_and_can_be_raised() {
    let file = tiny_file();
    let device = Device::flex();
    let err = checkpoint::load_limited(&file, "", &device, MemoryLimit(1000)).unwrap_err();
    assert!(matches!(err, JitError::TooLarge { .. }), "{err}");
    checkpoint::load_limited(&file, "", &device, MemoryLimit(1 << 30)).unwrap();
    // A 640-byte-style file whose metadata asks for a huge network fails before allocating.
    let huge = with_meta(&file, |m| m["network"]["depth"] = 200.into());
    let huge = with_meta(&huge, |m| m["network"]["hidden_size"] = 8192.into());
    let huge = with_meta(&huge, |m| m["network"]["num_heads"] = 64.into());
    let err = checkpoint::load(&huge, "", &device).unwrap_err();
    assert!(matches!(err, JitError::TooLarge { .. }), "{err}");
}

#[test]
fn absurd_sampler_and_diffusion_settings_in_a_file_are_refused() {
    let file = tiny_file();
    let cases: &[(&str, &str, &str)] = &[
        ("sampler", "steps", "4611686018427387904"),
        ("sampler", "steps", "0"),
        ("sampler", "cfg", "1e400"),
        ("diffusion", "t_eps", "0.0"),
        ("diffusion", "noise_scale", "-1.0"),
        ("diffusion", "label_drop_prob", "2.0"),
    ];
    for (section, field, value) in cases {
        let bad =
            with_meta(&file, |m| m[*section][*field] = serde_json::from_str(value).unwrap_or(serde_json::Value::Null));
        let err = checkpoint::read_meta(&bad).unwrap_err().to_string();
        assert!(err.contains(field) || err.contains("metadata"), "{section}.{field} = {value}: {err}");
        assert!(checkpoint::load(&bad, "", &Device::flex()).is_err());
    }
}

#[test]
fn non_finite_weights_are_refused_on_save_and_on_load() {
    let device = Device::flex();
    let mut state = TrainState::new(Jit::new(&tiny(), &device).unwrap(), OptimConfig::default(), 0);
    let meta = CheckpointMeta::new(tiny(), DiffusionConfig::default(), SamplerConfig::default());
    let good = state.to_checkpoint(&meta).unwrap();
    // Poison one EMA: saving refuses it, naming the copy.
    state.ema2.model = state.ema2.model.clone().map(&mut Poison);
    let err = state.to_checkpoint(&meta).unwrap_err();
    assert!(matches!(&err, JitError::NonFinite(name) if name.starts_with("ema2.")), "{err}");
    // A file with a NaN in it (written by something else) is refused on load.
    let net = Jit::new(&tiny(), &device).unwrap().map(&mut Poison);
    let bad = unchecked_save(&meta, &net);
    let err = checkpoint::load(&bad, "", &device).unwrap_err();
    assert!(matches!(err, JitError::NonFinite(_)), "{err}");
    // And the good training file restores.
    let (restored, _) =
        TrainState::from_checkpoint(&good, OptimConfig::default(), 0, &device, MemoryLimit::default()).unwrap();
    assert_eq!(restored.step, 0);
}

/// Sets the first element of every parameter to NaN.
struct Poison;

impl burn::module::ModuleMapper for Poison {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        param.map(|t| {
            let shape = t.dims();
            let flat = t.reshape([-1]);
            let nan = burn::tensor::Tensor::<1>::full([1], f32::NAN, &flat.device());
            flat.slice_assign(0..1, nan).reshape(shape)
        })
    }
}

/// A checkpoint file written without the finiteness check, as a foreign tool might.
fn unchecked_save(meta: &CheckpointMeta, net: &Jit) -> Vec<u8> {
    let tensors = jit_core::state_dict::export(net).unwrap();
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(k, t)| (k, t.shape, t.data.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = encoded
        .iter()
        .map(|(k, s, b)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let mut meta = meta.clone();
    meta.copies = vec![String::new()];
    let info = std::collections::HashMap::from([("jit".to_string(), serde_json::to_string(&meta).unwrap())]);
    safetensors::serialize(views, Some(info)).unwrap()
}

/// Reproducible mutation choices.
struct Rng(PortableRng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[i128] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    255,
    256,
    4095,
    4096,
    65535,
    65536,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    (1 << 32) + 4,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX as i128,
    -1,
    -(1 << 31),
];

fn mutate(rng: &mut Rng, good: &[u8]) -> Vec<u8> {
    match rng.below(6) {
        // A numeric field of the metadata set to an interesting value (the dangerous kind).
        0 | 1 => with_meta(good, |m| {
            let fields: Vec<String> = m["network"].as_object().unwrap().keys().cloned().collect();
            let field = &fields[rng.below(fields.len())];
            let v = INTERESTING[rng.below(INTERESTING.len())];
            m["network"][field] = serde_json::from_str(&v.to_string()).unwrap();
            if rng.below(4) == 0 {
                m["sampler"]["steps"] =
                    serde_json::from_str(&INTERESTING[rng.below(INTERESTING.len())].to_string()).unwrap();
            }
        }),
        // Bit flips anywhere.
        2 => {
            let mut b = good.to_vec();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            b
        }
        // Overwrite in the header (offsets, shapes, dtypes, JSON syntax).
        3 => {
            let mut b = good.to_vec();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let i = 8 + rng.below(n);
            b[i] = [b'0', b'9', b'"', b',', b'[', b']', b'-', b'e', 0xFF][rng.below(9)];
            b
        }
        // Truncation.
        4 => good[..rng.below(good.len())].to_vec(),
        // A header length that lies.
        _ => {
            let mut b = good.to_vec();
            let v = INTERESTING[rng.below(INTERESTING.len())] as u64;
            b[..8].copy_from_slice(&v.to_le_bytes());
            b
        }
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn fuzzed_checkpoints_load_or_fail_cleanly() {
    let good = tiny_file();
    let device = Device::flex();
    let mut rng = Rng(PortableRng::new(2026));
    let (mut ok, mut typed) = (0, 0);
    let iterations = 10_000;
    for i in 0..iterations {
        let bytes = mutate(&mut rng, &good);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let meta = checkpoint::read_meta(&bytes);
            let model = checkpoint::load_limited(&bytes, "", &device, MemoryLimit(256 << 20));
            (meta.is_ok(), model.map(|(m, _)| m.num_params()))
        }));
        match outcome {
            Ok((_, Ok(_))) => ok += 1,
            Ok((_, Err(_))) => typed += 1,
            Err(_) => panic!("iteration {i}: a mutated checkpoint panicked the loader"),
        }
    }
    eprintln!("{iterations} mutated checkpoints: {ok} loaded, {typed} refused with a typed error");
    assert!(typed > iterations / 2, "the mutations should mostly break the file ({typed} refused)");
    if let Some(kib) = peak_rss_kib() {
        assert!(kib < 2 << 20, "peak memory {kib} KiB over 2 GiB");
    }
}
