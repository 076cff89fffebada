//! Hostile `.pth` files through `import`: a deterministic mutation fuzzer over the golden
//! official checkpoints, and one regression test per resource bomb or bad shape that used to
//! panic, abort or take gigabytes.
//!
//! The importer is compiled into this test from its sources (the crate is a binary), so it runs
//! in-process: much faster than starting `jit-native` for each of the ~10^4 files. The fuzz loop
//! runs in a child process (this test binary again) under an address-space limit, so a stack
//! overflow or an abort fails the test instead of killing the harness, and a memory bomb hits
//! the limit instead of the machine; the child also checks its own peak RSS.
//!
//! Knobs: `JIT_FUZZ_ITERS` (default 12000), `JIT_FUZZ_SEED`, `JIT_FUZZ_THREADS`,
//! `JIT_FUZZ_TIMEOUT_S` (default 600), `JIT_GOLDEN_DIR`.

#[allow(dead_code)]
#[path = "../src/pth/convert.rs"]
mod convert;
#[allow(dead_code)]
#[path = "../src/pth/pickle.rs"]
mod pickle;
#[path = "../src/regular.rs"]
mod regular;

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convert::{ImportOptions, import};
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

// ---------------------------------------------------------------------------------------------
// Golden files
// ---------------------------------------------------------------------------------------------

#[path = "../../../tests/golden/dirs.rs"]
mod dirs;

/// The golden `.pth` files (`tests/golden` and `$JIT_GOLDEN_DIR`); a panic when there are none.
fn golden_pths() -> Vec<PathBuf> {
    dirs::golden_files(".pth")
}

/// `config.in_context_start` from `NAME.json` next to `NAME.checkpoint-last.pth`.
fn golden_ic_start(pth: &Path) -> Option<usize> {
    let name = pth.file_name()?.to_string_lossy().trim_end_matches(".checkpoint-last.pth").to_string();
    let text = std::fs::read_to_string(pth.with_file_name(format!("{name}.json"))).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["config"]["in_context_start"].as_u64().map(|v| v as usize)
}

fn unpickle(bytes: &[u8]) -> anyhow::Result<pickle::Py> {
    pickle::unpickle_with(bytes, &pickle::Limits::DEFAULT)
}

fn options(weights: &str, in_context_start: Option<usize>) -> ImportOptions {
    let weights = match weights {
        "ema2" => jit_core::checkpoint::WeightCopy::Ema2,
        "raw" | "net" => jit_core::checkpoint::WeightCopy::Net,
        _ => jit_core::checkpoint::WeightCopy::Ema1,
    };
    ImportOptions { weights, model: None, in_context_start, noise_scale: None }
}

// ---------------------------------------------------------------------------------------------
// Building files
// ---------------------------------------------------------------------------------------------

/// A zip of `(name, bytes, deflated)` entries.
fn zip_of(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes, deflated) in entries {
        let method = if *deflated { CompressionMethod::Deflated } else { CompressionMethod::Stored };
        w.start_file(*name, SimpleFileOptions::default().compression_method(method)).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A torch.save-style zip holding `data.pkl` and float32 storages `data/0`, `data/1`, ...
fn torch_zip(pkl: &[u8], storages: &[Vec<u8>]) -> Vec<u8> {
    let names: Vec<String> = (0..storages.len()).map(|i| format!("archive/data/{i}")).collect();
    let mut entries: Vec<(&str, &[u8], bool)> = vec![
        ("archive/data.pkl", pkl, false),
        ("archive/byteorder", b"little", false),
        ("archive/version", b"3\n", false),
    ];
    entries.extend(names.iter().zip(storages).map(|(n, s)| (n.as_str(), s.as_slice(), false)));
    zip_of(&entries)
}

/// A pickle writer (protocol 2 opcodes, as torch.save writes them).
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn mark(&mut self) -> &mut Self {
        self.op(b"(")
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.op(&[b'K', v as u8])
        } else if let Ok(v) = i32::try_from(v) {
            self.op(b"J").op(&v.to_le_bytes())
        } else {
            self.op(&[0x8a, 8]).op(&v.to_le_bytes())
        }
    }
    fn float(&mut self, v: f64) -> &mut Self {
        self.op(b"G").op(&v.to_be_bytes())
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.mark();
        for &x in v {
            self.int(x as i64);
        }
        self.op(b"t")
    }
    /// `torch._utils._rebuild_tensor_v2` of a float32 storage.
    fn tensor(
        &mut self,
        key: &str,
        storage_numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(storage_numel as i64)
            .op(b"tQ");
        self.int(offset as i64).ints(shape).ints(stride).op(&[0x89]);
        self.global("collections", "OrderedDict").op(b")R");
        self.op(b"tR")
    }
    fn stop(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.0)
    }
}

fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut stride = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    stride
}

/// An official-layout checkpoint (`model_ema1`, `epoch`, `args` Namespace) whose tensors
/// `net.NAME` have the given shapes, each in a storage of its own filled with small values.
fn checkpoint(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b"}").mark().str("model_ema1").op(b"}").mark();
    let mut storages = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let numel: usize = shape.iter().product();
        p.str(&format!("net.{name}")).tensor(&i.to_string(), numel, 0, shape, &contiguous(shape));
        storages.push((0..numel).flat_map(|j| (0.01 * (j % 7) as f32).to_le_bytes()).collect());
    }
    p.op(b"u").str("epoch").int(3).str("args").global("argparse", "Namespace").op(b")R}").mark();
    p.str("model").str("JiT-T/4").str("noise_scale").float(1.0).op(b"ub");
    let pkl = p.op(b"u").stop();
    torch_zip(&pkl, &storages)
}

/// The tensors of a tiny JiT (D 16, 4 heads of 4, bottleneck 4, 1 channel, patch 2, 2×2 patches,
/// 2 classes, depth 1, 2 in-context tokens), with PyTorch shapes.
fn tiny_jit() -> Vec<(&'static str, Vec<usize>)> {
    let (d, b, c, p, n, k, mlp) = (16, 4, 1, 2, 4, 2, 42);
    vec![
        ("x_embedder.proj1.weight", vec![b, c, p, p]),
        ("x_embedder.proj2.weight", vec![d, b, 1, 1]),
        ("x_embedder.proj2.bias", vec![d]),
        ("t_embedder.mlp.0.weight", vec![d, 256]),
        ("t_embedder.mlp.0.bias", vec![d]),
        ("t_embedder.mlp.2.weight", vec![d, d]),
        ("t_embedder.mlp.2.bias", vec![d]),
        ("y_embedder.embedding_table.weight", vec![k + 1, d]),
        ("pos_embed", vec![1, n, d]),
        ("in_context_posemb", vec![1, 2, d]),
        ("blocks.0.norm1.weight", vec![d]),
        ("blocks.0.attn.qkv.weight", vec![3 * d, d]),
        ("blocks.0.attn.qkv.bias", vec![3 * d]),
        ("blocks.0.attn.q_norm.weight", vec![4]),
        ("blocks.0.attn.k_norm.weight", vec![4]),
        ("blocks.0.attn.proj.weight", vec![d, d]),
        ("blocks.0.attn.proj.bias", vec![d]),
        ("blocks.0.norm2.weight", vec![d]),
        ("blocks.0.mlp.w12.weight", vec![2 * mlp, d]),
        ("blocks.0.mlp.w12.bias", vec![2 * mlp]),
        ("blocks.0.mlp.w3.weight", vec![d, mlp]),
        ("blocks.0.mlp.w3.bias", vec![d]),
        ("blocks.0.adaLN_modulation.1.weight", vec![6 * d, d]),
        ("blocks.0.adaLN_modulation.1.bias", vec![6 * d]),
        ("final_layer.norm_final.weight", vec![d]),
        ("final_layer.linear.weight", vec![p * p * c, d]),
        ("final_layer.linear.bias", vec![p * p * c]),
        ("final_layer.adaLN_modulation.1.weight", vec![2 * d, d]),
        ("final_layer.adaLN_modulation.1.bias", vec![2 * d]),
    ]
}

/// Writes `bytes` to a new file in `dir` and imports it.
fn import_bytes(dir: &Path, name: &str, bytes: &[u8], o: &ImportOptions) -> anyhow::Result<convert::Imported> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    import(&path, o)
}

/// Imports `bytes`, which must fail fast with a one-line error containing `needle`.
fn refused(name: &str, bytes: &[u8], o: &ImportOptions, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let result = import_bytes(tmp.path(), name, bytes, o);
    let elapsed = start.elapsed();
    let err = match result {
        Ok(_) => panic!("{name}: imported, expected an error mentioning '{needle}'"),
        Err(e) => format!("{e:#}"),
    };
    println!("{name}: {:.3} s: {err}", elapsed.as_secs_f64());
    assert!(!err.contains('\n'), "{name}: error is not one line: {err}");
    assert!(err.contains(needle), "{name}: error should mention '{needle}': {err}");
    assert!(err.contains(name), "{name}: error should name the file: {err}");
    assert!(elapsed < Duration::from_secs(10), "{name}: took {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// Regression tests
// ---------------------------------------------------------------------------------------------

#[test]
fn synthetic_tiny_checkpoint_imports() {
    // The base of the bad-shape tests below must itself be accepted.
    let tmp = tempfile::tempdir().unwrap();
    let imported = import_bytes(tmp.path(), "tiny.pth", &checkpoint(&tiny_jit()), &options("ema1", Some(0)))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let c = &imported.meta.network;
    assert_eq!((c.hidden_size, c.depth, c.num_heads, c.in_context_len, c.num_classes), (16, 1, 4, 2, 2));
    assert_eq!(imported.epoch, 3);
    assert_eq!(imported.meta.extra["imported_from"]["model"], "JiT-T/4");
}

#[test]
fn memo_doubling_bomb_is_refused_early() {
    // [] memoized, then 60 times: memo[0] = (memo[0], memo[0]): 2^60 values from 380 bytes.
    let mut p = Pickle::new();
    p.op(b"]q\x00");
    for _ in 0..60 {
        p.op(b"h\x00h\x00\x86q\x00");
    }
    let pkl = p.stop();
    assert!(pkl.len() < 600);
    let start = Instant::now();
    let err = unpickle(&pkl).unwrap_err().to_string();
    assert!(err.contains("memo bomb"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    refused("memo_bomb.pth", &torch_zip(&pkl, &[]), &options("ema1", None), "memo bomb");

    // The same through DUP, and a list-repeat bomb through APPENDS of memo copies.
    let mut p = Pickle::new();
    p.op(b"]");
    for _ in 0..60 {
        p.op(b"2\x86");
    }
    let err = unpickle(&p.stop()).unwrap_err().to_string();
    assert!(err.contains("memo bomb"), "{err}");
    let mut p = Pickle::new();
    p.op(b"]q\x00");
    for _ in 0..60 {
        p.op(b"(h\x00h\x00h\x00h\x00lq\x00");
    }
    let err = unpickle(&p.stop()).unwrap_err().to_string();
    assert!(err.contains("memo bomb"), "{err}");
}

#[test]
fn many_values_are_refused() {
    // A million empty lists, under a cap of 100 000 values (the default cap is 4 M; this keeps
    // the test light).
    let mut pkl = vec![0x80, 2];
    pkl.resize(2 + 1_000_000, b']');
    pkl.push(b'.');
    let lim = pickle::Limits { max_nodes: 100_000, ..pickle::Limits::DEFAULT };
    let err = pickle::unpickle_with(&pkl, &lim).unwrap_err().to_string();
    assert!(err.contains("100000 values"), "{err}");
    // A pickle above the size cap is refused before it is parsed.
    let lim = pickle::Limits { max_pickle_bytes: 1000, ..pickle::Limits::DEFAULT };
    let err = pickle::unpickle_with(&pkl, &lim).unwrap_err().to_string();
    assert!(err.contains("byte limit"), "{err}");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    const N: usize = 1_000_000;
    // Lists appended into lists.
    let mut pkl = vec![0x80, 2];
    pkl.extend(std::iter::repeat_n(b']', N));
    pkl.extend(std::iter::repeat_n(b'a', N - 1));
    pkl.push(b'.');
    let err = unpickle(&pkl).unwrap_err().to_string();
    assert!(err.contains("nesting"), "{err}");
    refused("nested_lists.pth", &torch_zip(&pkl, &[]), &options("ema1", None), "nesting");
    // One-tuples of one-tuples.
    let mut pkl = vec![0x80, 2, b'N'];
    pkl.extend(std::iter::repeat_n(0x85, N));
    pkl.push(b'.');
    let err = unpickle(&pkl).unwrap_err().to_string();
    assert!(err.contains("nesting"), "{err}");
    // Dicts in dicts: N times `{} 'k'`, then None and N SETITEMs.
    let mut pkl = vec![0x80, 2];
    for _ in 0..N {
        pkl.extend_from_slice(b"}X\x01\x00\x00\x00k");
    }
    pkl.push(b'N');
    pkl.extend(std::iter::repeat_n(b's', N));
    pkl.push(b'.');
    let err = unpickle(&pkl).unwrap_err().to_string();
    assert!(err.contains("nesting"), "{err}");
    // Marks opened a million times: `((((...N l l l ...`.
    let mut pkl = vec![0x80, 2];
    pkl.extend(std::iter::repeat_n(b'(', N));
    pkl.push(b'N');
    pkl.extend(std::iter::repeat_n(b'l', N));
    pkl.push(b'.');
    let err = unpickle(&pkl).unwrap_err().to_string();
    assert!(err.contains("nesting"), "{err}");
}

#[test]
fn deflate_bomb_is_refused_before_inflating() {
    // 256 MiB of zeros deflate to ~256 KB.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("archive/data.pkl", SimpleFileOptions::default().compression_method(CompressionMethod::Deflated))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        w.write_all(&zeros).unwrap();
    }
    let honest = w.finish().unwrap().into_inner();
    assert!(honest.len() < 2 << 20, "{}", honest.len());
    refused("deflate_bomb.pth", &honest, &options("ema1", None), "byte limit");

    // The same entry with headers that claim 1000 bytes: the read limit catches it.
    let mut lying = honest.clone();
    let size = (256u32 << 20).to_le_bytes();
    let mut patched = 0;
    for sig_at in 0..lying.len().saturating_sub(4) {
        let sig = u32::from_le_bytes(lying[sig_at..sig_at + 4].try_into().unwrap());
        let field = match sig {
            0x04034b50 => sig_at + 22, // local header: uncompressed size
            0x02014b50 => sig_at + 24, // central directory: uncompressed size
            _ => continue,
        };
        if lying[field..field + 4] == size {
            lying[field..field + 4].copy_from_slice(&1000u32.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "expected to patch the local and central headers");
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let err = import_bytes(tmp.path(), "lying_bomb.pth", &lying, &options("ema1", None)).err().expect("must fail");
    println!("lying_bomb.pth: {:?}: {err:#}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn stride_zero_tensors_are_refused_before_reading() {
    // Two 2^28-element (1 GiB) views of a single float: 2 GiB declared by a file of ~1 KB.
    let n = 1usize << 28;
    let mut p = Pickle::new();
    p.op(b"}").mark().str("model_ema1").op(b"}").mark();
    p.str("net.a").tensor("0", 1, 0, &[n], &[0]);
    p.str("net.b").tensor("0", 1, 0, &[n], &[0]);
    p.op(b"u").str("epoch").int(1);
    let pkl = p.op(b"u").stop();
    let file = torch_zip(&pkl, &[vec![0u8; 4]]);
    refused("stride0.pth", &file, &options("ema1", None), "stride-0");

    // The same in an otherwise valid checkpoint: the extra names are not even looked at first.
    let mut tensors = tiny_jit();
    tensors.push(("zzz", vec![1]));
    let ok = checkpoint(&tensors);
    let tmp = tempfile::tempdir().unwrap();
    let err = import_bytes(tmp.path(), "extra.pth", &ok, &options("ema1", Some(0))).err().expect("extra tensor");
    assert!(format!("{err:#}").contains("net.zzz"), "{err:#}");
}

#[test]
fn bad_shapes_are_errors_naming_the_tensor() {
    let cases: &[(&str, &str, Vec<usize>)] = &[
        ("qnorm_empty", "blocks.0.attn.q_norm.weight", vec![0]),
        ("qnorm_scalar", "blocks.0.attn.q_norm.weight", vec![]),
        ("qnorm_not_dividing", "blocks.0.attn.q_norm.weight", vec![5]),
        ("ic_1d", "in_context_posemb", vec![2]),
        ("ic_empty", "in_context_posemb", vec![1, 0, 16]),
        ("w12_scalar", "blocks.0.mlp.w12.weight", vec![]),
        ("w12_odd", "blocks.0.mlp.w12.weight", vec![83, 16]),
        ("proj1_2d", "x_embedder.proj1.weight", vec![4, 1]),
        ("proj1_zero", "x_embedder.proj1.weight", vec![4, 1, 0, 0]),
        ("proj2_wrong", "x_embedder.proj2.weight", vec![16, 3, 1, 1]),
        ("pos_not_square", "pos_embed", vec![1, 5, 16]),
        ("pos_scalar", "pos_embed", vec![]),
        ("table_one_row", "y_embedder.embedding_table.weight", vec![1, 16]),
        ("table_1d", "y_embedder.embedding_table.weight", vec![3]),
        ("qkv_wrong", "blocks.0.attn.qkv.weight", vec![47, 16]),
        ("final_scalar", "final_layer.linear.bias", vec![]),
    ];
    for (case, tensor, shape) in cases {
        let mut tensors = tiny_jit();
        tensors.iter_mut().find(|(n, _)| n == tensor).unwrap().1 = shape.clone();
        refused(&format!("{case}.pth"), &checkpoint(&tensors), &options("ema1", Some(0)), &format!("net.{tensor}"));
    }
    // A missing tensor, and a second block missing its tensors.
    let mut tensors = tiny_jit();
    tensors.retain(|(n, _)| *n != "blocks.0.attn.k_norm.weight");
    refused("missing.pth", &checkpoint(&tensors), &options("ema1", Some(0)), "net.blocks.0.attn.k_norm.weight");
    let mut tensors = tiny_jit();
    tensors.push(("blocks.1.norm1.weight", vec![16]));
    refused("half_block.pth", &checkpoint(&tensors), &options("ema1", Some(0)), "net.blocks.1.");
    // A huge network declared by small tensors: refused before it is built, by the size bounds
    // past 256 blocks and by the missing tensors below them.
    for (depth, needle) in [(5000, "depth = 5000 is over the limit"), (200, "lacks tensor 'net.blocks.1.")] {
        let mut tensors = tiny_jit();
        for i in 1..depth {
            tensors.push((Box::leak(format!("blocks.{i}.norm1.weight").into_boxed_str()), vec![16]));
        }
        refused(&format!("deep{depth}.pth"), &checkpoint(&tensors), &options("ema1", Some(0)), needle);
    }
}

#[test]
fn infer_config_checks_every_shape_it_reads() {
    let base: std::collections::HashMap<String, Vec<usize>> =
        tiny_jit().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert!(convert::infer_config(&base, Some(0)).is_ok());
    for key in [
        "x_embedder.proj1.weight",
        "x_embedder.proj2.weight",
        "pos_embed",
        "y_embedder.embedding_table.weight",
        "blocks.0.attn.q_norm.weight",
        "blocks.0.mlp.w12.weight",
        "in_context_posemb",
    ] {
        for shape in [vec![], vec![0], vec![1], vec![0, 0, 0], vec![1, 1, 1, 1, 1], vec![usize::MAX, 2], vec![3, 0, 16]]
        {
            let mut shapes = base.clone();
            shapes.insert(key.to_string(), shape.clone());
            let r = std::panic::catch_unwind(|| convert::infer_config(&shapes, Some(0)));
            match r {
                Ok(Ok(c)) => panic!("{key} {shape:?}: accepted as {c:?}"),
                Ok(Err(e)) => assert!(!e.to_string().contains('\n')),
                Err(_) => panic!("{key} {shape:?}: panicked"),
            }
        }
    }
}

#[test]
fn cli_reports_hostile_files_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Pickle::new();
    p.op(b"]q\x00");
    for _ in 0..60 {
        p.op(b"h\x00h\x00\x86q\x00");
    }
    let bomb = torch_zip(&p.stop(), &[]);
    let mut tensors = tiny_jit();
    tensors.iter_mut().find(|(n, _)| *n == "blocks.0.attn.q_norm.weight").unwrap().1 = vec![];
    for (name, bytes, needle) in [("bomb.pth", bomb, "memo bomb"), ("scalar.pth", checkpoint(&tensors), "q_norm")] {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jit-native"))
            .args(["import", path.to_str().unwrap(), "--in-context-start", "0", "--out"])
            .arg(tmp.path().join("out.safetensors"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(lines[0].starts_with("error: cannot import ") && lines[0].contains(needle), "{name}: {stderr}");
        assert!(!tmp.path().join("out.safetensors").exists());
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzer
// ---------------------------------------------------------------------------------------------

/// Deterministic choices from the engine's own portable generator (SplitMix64).
struct Rng(jit_core::rng::PortableRng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Values that tend to break size and offset arithmetic.
const INTERESTING_U32: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    1 << 24,
    1 << 28,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

/// Pickle fragments to splice in: opcodes that build, copy, nest and pop values.
const PICKLE_SNIPPETS: &[&[u8]] = &[
    b"(",
    b")",
    b"]",
    b"}",
    b"N",
    b"t",
    b"l",
    b"d",
    b"a",
    b"e",
    b"s",
    b"u",
    b"0",
    b"1",
    b"2",
    b"R",
    b"b",
    b"Q",
    b"\x85",
    b"\x86",
    b"\x87",
    b"\x94",
    b"h\x00",
    b"h\x01",
    b"h\xff",
    b"q\x00",
    b"j\xff\xff\xff\xff",
    b"K\x00",
    b"K\xff",
    b"J\xff\xff\xff\xff",
    b"J\x00\x00\x00\x80",
    b"J\x00\x00\x00\x10",
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"X\xff\xff\xff\xff",
    b"\x89",
    b"\x88",
    b"G\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"ctorch\nFloatStorage\n",
];

/// One random mutation of `b`; offsets are drawn from `focus` most of the time.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, focus: &[std::ops::Range<usize>], pickle: bool) {
    let pos = |rng: &mut Rng, len: usize| -> usize {
        if let Some(r) = (!focus.is_empty() && rng.chance(70)).then(|| focus[rng.below(focus.len())].clone()) {
            (r.start + rng.below(r.len().max(1))).min(len.saturating_sub(1))
        } else {
            rng.below(len)
        }
    };
    if b.is_empty() {
        b.push(rng.next() as u8);
        return;
    }
    let len = b.len();
    // In a pickle, a third of the mutations rewrite an int (shapes, strides, offsets, sizes):
    // those get past the parser to the checks behind it.
    let kind = if pickle && rng.chance(35) { 7 } else { rng.below(if pickle { 9 } else { 7 }) };
    match kind {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = pos(rng, len);
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let i = pos(rng, len);
            b[i] = [0u8, 1, 0x7f, 0x80, 0xff, b'.', b'(', b'h'][rng.below(8)];
        }
        2 => {
            let i = pos(rng, len);
            let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())].to_le_bytes();
            let n = [1, 2, 4][rng.below(3)].min(len - i);
            b[i..i + n].copy_from_slice(&v[..n]);
        }
        3 => {
            let keep = if rng.chance(50) { pos(rng, len) } else { rng.below(len) };
            b.truncate(keep);
        }
        4 => {
            let a = pos(rng, len);
            let max = if rng.chance(80) { 64 } else { 4096 };
            let n = 1 + rng.below(max);
            let chunk: Vec<u8> = b[a..(a + n).min(len)].to_vec();
            let at = pos(rng, len);
            let times = if rng.chance(90) { 1 } else { 1 + rng.below(64) };
            for _ in 0..times {
                b.splice(at..at, chunk.iter().copied());
            }
        }
        5 => {
            let a = pos(rng, len);
            let max = if rng.chance(80) { 16 } else { 1024 };
            let n = 1 + rng.below(max);
            b.drain(a..(a + n).min(len));
        }
        6 => {
            let i = pos(rng, len);
            b[i] = rng.next() as u8;
        }
        7 => {
            // Pickle ints: the argument of a BININT1 / BININT (shapes, strides, offsets, sizes).
            let ks: Vec<usize> = (0..len.saturating_sub(1)).filter(|&i| b[i] == b'K' || b[i] == b'J').collect();
            if let Some(&i) = ks.get(rng.below(ks.len())) {
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())].to_le_bytes();
                let n = if b[i] == b'K' { 1 } else { 4 };
                let n = n.min(len - i - 1);
                b[i + 1..i + 1 + n].copy_from_slice(&v[..n]);
            }
        }
        _ => {
            let at = pos(rng, len);
            let s = PICKLE_SNIPPETS[rng.below(PICKLE_SNIPPETS.len())];
            let times = if rng.chance(90) { 1 } else { 1 + rng.below(256) };
            for _ in 0..times {
                b.splice(at..at, s.iter().copied());
            }
        }
    }
}

/// A golden checkpoint, split for mutation.
struct Golden {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Where zip headers and the central directory are (raw mutations aim there).
    structure: Vec<std::ops::Range<usize>>,
    /// Entries in order; `data.pkl` is mutated and everything re-zipped.
    entries: Vec<(String, Vec<u8>)>,
    pkl_index: usize,
    ic_start: Option<usize>,
}

fn load_golden(path: &Path) -> Golden {
    let bytes = std::fs::read(path).unwrap();
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes.clone())).unwrap();
    let mut entries = Vec::new();
    let mut structure = Vec::new();
    let mut cd_start = bytes.len();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let start = f.header_start() as usize;
        let data = f.data_start().unwrap() as usize;
        structure.push(start..data);
        cd_start = cd_start.min(f.central_header_start() as usize);
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        entries.push((name, buf));
    }
    structure.push(cd_start..bytes.len());
    let pkl_index = entries.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
    let (name, pkl) = &entries[pkl_index];
    let _ = name;
    let pkl_start = zip.by_index(pkl_index).unwrap().data_start().unwrap() as usize;
    structure.push(pkl_start..pkl_start + pkl.len());
    Golden { ic_start: golden_ic_start(path), path: path.to_path_buf(), bytes, structure, entries, pkl_index }
}

/// The `i`-th fuzz case: a mutated file and import options.
fn fuzz_case(seed: u64, i: u64, goldens: &[Golden]) -> (Vec<u8>, ImportOptions, &'static str) {
    let mut rng = Rng(jit_core::rng::PortableRng::new(seed ^ i.wrapping_mul(0xd134_2543_de82_ef95)));
    let g = &goldens[rng.below(goldens.len())];
    let weights = ["ema1", "ema1", "ema2", "raw"][rng.below(4)];
    let ic = if rng.chance(85) { g.ic_start } else { None };
    let o = options(weights, ic);
    let max_rounds = if rng.chance(70) { 2 } else { 8 };
    let rounds = 1 + rng.below(max_rounds);
    if rng.chance(30) {
        let mut b = g.bytes.clone();
        for _ in 0..rounds {
            mutate(&mut rng, &mut b, &g.structure, false);
        }
        (b, o, "raw")
    } else {
        let mut pkl = g.entries[g.pkl_index].1.clone();
        for _ in 0..rounds {
            mutate(&mut rng, &mut pkl, &[], true);
        }
        let deflate_pkl = rng.chance(10);
        let entries: Vec<(&str, &[u8], bool)> = g
            .entries
            .iter()
            .enumerate()
            .map(|(j, (n, d))| {
                if j == g.pkl_index {
                    (n.as_str(), pkl.as_slice(), deflate_pkl)
                } else {
                    (n.as_str(), d.as_slice(), false)
                }
            })
            .collect();
        (zip_of(&entries), o, "pickle")
    }
}

/// An error message without the file names and numbers, to group errors by kind.
fn error_kind(msg: &str) -> String {
    let rest = msg.split_once(".pth: ").map_or(msg, |(_, rest)| rest);
    let rest = rest.split_once("data.pkl: ").map_or(rest, |(_, rest)| rest);
    rest.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).take(72).collect()
}

/// A `Vm...:` field of /proc/self/status in KiB (`VmHWM`: peak RSS, `VmPeak`: peak address space).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const PEAK_RSS_LIMIT_KIB: u64 = 1536 * 1024;
/// The child's address-space limit: a safety net so that a bomb fails the test instead of
/// exhausting the machine (the worker peaks near 300 MiB of address space on 2 cores; thread
/// stacks and malloc arenas grow with the core count).
fn address_space_limit() -> u64 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    (4 << 30) + cores * (128 << 20)
}

/// Runs the fuzz loop in a child process (this binary, `fuzz_worker`) under an address-space
/// limit and a timeout, and fails on a panic, an abort, a timeout or too much memory.
#[test]
fn fuzz_mutated_golden_checkpoints() {
    golden_pths();
    let timeout = Duration::from_secs(env_or("JIT_FUZZ_TIMEOUT_S", 600));
    let exe = std::env::current_exe().unwrap();
    let args = ["fuzz_worker", "--exact", "--ignored", "--nocapture", "--test-threads", "1"];
    let mut cmd = if Path::new("/usr/bin/prlimit").exists() || Path::new("/bin/prlimit").exists() {
        let mut c = Command::new("prlimit");
        c.arg(format!("--as={}", address_space_limit())).arg("--").arg(&exe).args(args);
        c
    } else {
        eprintln!("note: no prlimit; the fuzz worker runs without an address-space limit (peak RSS is still checked)");
        let mut c = Command::new(&exe);
        c.args(args);
        c
    };
    let start = Instant::now();
    let mut child = cmd.env("JIT_FUZZ_WORKER", "1").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = (out_t.join().unwrap(), err_t.join().unwrap());
    let tail = |s: &str| s.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    println!("{}", tail(&stdout));
    let Some(status) = status else {
        panic!("fuzz worker timed out after {timeout:?}\n{}\n{}", tail(&stdout), tail(&stderr))
    };
    assert!(
        status.success(),
        "fuzz worker failed ({status}) after {:?}\nstdout:\n{}\nstderr:\n{}",
        start.elapsed(),
        tail(&stdout),
        tail(&stderr)
    );
    assert!(stdout.contains("FUZZ OK"), "the worker did not run:\n{}\n{}", tail(&stdout), tail(&stderr));
}

/// The fuzz loop itself; run by [`fuzz_mutated_golden_checkpoints`] in a child process.
#[test]
#[ignore = "run by fuzz_mutated_golden_checkpoints in a child process"]
fn fuzz_worker() {
    if std::env::var_os("JIT_FUZZ_WORKER").is_none() {
        eprintln!("fuzz_worker runs inside fuzz_mutated_golden_checkpoints");
        return;
    }
    let pths = golden_pths();
    let goldens: Vec<Golden> = pths.iter().map(|p| load_golden(p)).collect();
    let iters: u64 = env_or("JIT_FUZZ_ITERS", 12_000);
    let seed: u64 = env_or("JIT_FUZZ_SEED", 0x6a69_745f_6675_7a7a);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let threads: u64 = env_or("JIT_FUZZ_THREADS", cores.min(4)).max(1);
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "fuzzing {iters} files from {} golden checkpoints, seed {seed:#x}, {threads} threads, files in {}",
        goldens.len(),
        tmp.path().display()
    );

    // Unmutated golden files must import (and are the baseline the mutations start from).
    for g in &goldens {
        let r = import(&g.path, &options("ema1", g.ic_start));
        assert!(r.is_ok(), "{}: {:#}", g.path.display(), r.err().unwrap());
    }

    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
    }));
    let start = Instant::now();
    let results: Vec<Stats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (goldens, dir) = (&goldens, tmp.path());
                s.spawn(move || {
                    let mut st = Stats::default();
                    let path = dir.join(format!("case-{t}.pth"));
                    let mut i = t;
                    while i < iters {
                        let (bytes, o, mode) = fuzz_case(seed, i, goldens);
                        std::fs::write(&path, &bytes).unwrap();
                        let t0 = Instant::now();
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| import(&path, &o)));
                        let dt = t0.elapsed();
                        if dt > st.slowest.0 {
                            st.slowest = (dt, i);
                        }
                        match r {
                            Ok(Ok(_)) => st.ok += 1,
                            Ok(Err(e)) => {
                                let msg = format!("{e:#}");
                                if msg.contains('\n') {
                                    st.failures.push(format!("case {i} ({mode}): multi-line error: {msg}"));
                                }
                                let kind = error_kind(&msg);
                                *st.kinds.entry(kind).or_default() += 1;
                                st.err += 1;
                            }
                            Err(_) => {
                                let msg = LAST_PANIC.with(|p| p.borrow().clone());
                                let keep = dir.join(format!("panic-{i}.pth"));
                                let _ = std::fs::copy(&path, &keep);
                                st.failures
                                    .push(format!("case {i} ({mode}): panic: {msg} (file kept at {})", keep.display()));
                            }
                        }
                        *st.modes.entry(mode).or_default() += 1;
                        i += threads;
                    }
                    st
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("fuzz thread")).collect()
    });
    let elapsed = start.elapsed();
    let _ = std::panic::take_hook();

    let mut total = Stats::default();
    for r in results {
        total.ok += r.ok;
        total.err += r.err;
        total.failures.extend(r.failures);
        for (k, v) in r.kinds {
            *total.kinds.entry(k).or_default() += v;
        }
        for (k, v) in r.modes {
            *total.modes.entry(k).or_default() += v;
        }
        if r.slowest.0 > total.slowest.0 {
            total.slowest = r.slowest;
        }
    }
    let peak = proc_status_kib("VmHWM:");
    let peak_vm = proc_status_kib("VmPeak:");
    let mut kinds: Vec<_> = total.kinds.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1));
    println!("most common errors:");
    let shown = if std::env::var_os("JIT_FUZZ_VERBOSE").is_some() { kinds.len() } else { 30 };
    for (k, v) in kinds.iter().take(shown) {
        println!("  {v:>6}  {k}");
    }
    println!("({} kinds of error in all; JIT_FUZZ_VERBOSE=1 lists them all)", kinds.len());
    println!(
        "{} files ({:?}) in {:.1} s ({:.2} ms/file): {} imported, {} typed errors, {} failures; slowest case {} took {:?}; peak RSS {} MiB, peak address space {} MiB",
        total.ok + total.err + total.failures.len() as u64,
        total.modes,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / iters.max(1) as f64,
        total.ok,
        total.err,
        total.failures.len(),
        total.slowest.1,
        total.slowest.0,
        peak.map_or("?".into(), |k| (k / 1024).to_string()),
        peak_vm.map_or("?".into(), |k| (k / 1024).to_string()),
    );
    for f in total.failures.iter().take(20) {
        println!("FAIL {f}");
    }
    assert!(total.failures.is_empty(), "{} fuzz cases panicked or gave multi-line errors", total.failures.len());
    assert!(iters == 0 || total.ok + total.err == iters);
    if let Some(peak) = peak {
        assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {} MiB is above {} MiB", peak / 1024, PEAK_RSS_LIMIT_KIB / 1024);
    }
    println!("FUZZ OK");
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[derive(Default)]
struct Stats {
    ok: u64,
    err: u64,
    failures: Vec<String>,
    kinds: std::collections::HashMap<String, u64>,
    modes: std::collections::BTreeMap<&'static str, u64>,
    slowest: (Duration, u64),
}
