//! Helpers shared by the runner's end-to-end tests: run the binary, expect success or a
//! one-line error, read a run's losses.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `jit-native` with `args` (stderr is echoed when it fails).
pub fn jit(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_jit-native"))
        .args(args)
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .output()
        .expect("run jit-native");
    if !out.status.success() {
        eprintln!("jit-native {args:?} stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// Runs a command that must succeed; returns its output.
pub fn ok(args: &[&str]) -> Output {
    let out = jit(args);
    assert!(out.status.success(), "jit-native {args:?} failed");
    out
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must fail with exit code 1 and one `error:` line containing `needle`,
/// and no panic.
pub fn fails(args: &[&str], needle: &str) {
    let out = jit(args);
    let stderr = stderr(&out);
    assert!(!out.status.success(), "jit-native {args:?} should fail");
    assert!(matches!(out.status.code(), Some(1 | 2)), "exit code 1, or 2 for a usage error (not a crash):\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected, got:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic instead of an error:\n{stderr}");
    assert!(errors[0].contains(needle), "error should mention '{needle}':\n{stderr}");
}

/// `(step, loss)` of every whole training line of a run's `metrics.jsonl` (none when it does
/// not exist).
/// A run that is still writing may have its last line half written: that one is left out.
pub fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text[..text.rfind('\n').map_or(0, |i| i + 1)]
        .lines()
        .filter_map(|l| {
            // (lines of the online evaluation carry FID and IS instead of a loss)
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64().unwrap(), v.get("loss")?.as_f64().unwrap()))
        })
        .collect()
}

/// Runs a command that must be refused: exit code 2 (nothing was done) and one `error:` line
/// containing `needle`.
pub fn refused(args: &[&str], needle: &str) {
    let out = jit(args);
    assert_eq!(out.status.code(), Some(2), "jit-native {args:?} should be refused:\n{}", stderr(&out));
    fails(args, needle);
}

/// A tiny training run on the CPU (16² images, one block of width 16, `batch` images per
/// process), written to `out`, then `extra`.
pub fn tiny_train_args(out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = "train --backend cpu --image-size 16 --depth 1 --hidden-size 16 --num-heads 1 \
         --in-context-len 0 --sample-every 0 --sample-steps 2 --grid-images 2"
        .split_whitespace()
        .map(String::from)
        .collect();
    args.extend(["--batch-size".into(), batch.to_string(), "--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `args` as the `&str`s `jit` takes.
pub fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A model small enough to build in milliseconds: 8² images of `channels` channels, 2 classes.
pub fn small_config(channels: usize) -> jit_core::JitConfig {
    jit_core::JitConfig {
        input_size: 8,
        patch_size: 4,
        in_channels: channels,
        hidden_size: 16,
        depth: 1,
        num_heads: 1,
        mlp_ratio: 4.0,
        num_classes: 2,
        bottleneck_dim: 8,
        in_context_len: 0,
        in_context_start: 0,
        attn_drop: 0.0,
        proj_drop: 0.0,
    }
}

/// Writes a freshly initialised model of `config` with `class_names` to `path` (an export).
pub fn write_model(path: &Path, config: &jit_core::JitConfig, class_names: Vec<String>) {
    use jit_core::checkpoint::{self, CheckpointMeta, StoreDtype};
    let net = jit_core::Jit::new(config, &burn::tensor::Device::flex()).unwrap();
    let mut meta = CheckpointMeta::new(config.clone(), Default::default(), Default::default());
    meta.class_names = class_names;
    std::fs::write(path, checkpoint::save(&meta, &[("", &net)], StoreDtype::F32).unwrap()).unwrap();
}
