//! The runner against hostile and broken input, and against crashes: absurd model files,
//! run folders that must protect themselves, odd images and datasets, and kill -9 at random
//! moments. Every failure must be one `error:` line, never a panic, and nothing saved is lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jit_core::JitConfig;
use jit_core::checkpoint;
use jit_core::rng::PortableRng;

mod common;
use common::{fails, losses, ok, stderr};

const TINY: &[&str] = &[
    "train",
    "--backend",
    "cpu",
    "--model",
    "JiT-T/4",
    "--image-size",
    "16",
    "--depth",
    "2",
    "--hidden-size",
    "32",
    "--num-heads",
    "2",
    "--in-context-len",
    "2",
    "--in-context-start",
    "1",
    "--batch-size",
    "6",
    "--sample-every",
    "0",
    "--sample-steps",
    "2",
    "--grid-images",
    "4",
    "--lr",
    "1e-3",
];

fn train(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    args.extend(["--out".to_string(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn small(channels: usize) -> JitConfig {
    common::small_config(channels)
}

fn write_model(path: &Path, config: &JitConfig) {
    common::write_model(path, config, Vec::new());
}

/// The file with its JiT metadata's network field `field` set to `value` (raw JSON).
fn with_network_field(bytes: &[u8], field: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(header["__metadata__"]["jit"].as_str().unwrap()).unwrap();
    meta["network"][field] = serde_json::from_str(value).unwrap();
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
fn absurd_configs_in_a_model_file_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.safetensors");
    write_model(&good, &small(3));
    let bytes = std::fs::read(&good).unwrap();
    for (field, value, needle) in [
        ("depth", "1000000000", "depth"),
        ("input_size", "4294967296", "input_size"),
        ("in_context_len", "4611686018427387904", "in_context_len"),
        ("hidden_size", "1099511627776", "hidden_size"),
        ("num_classes", "18446744073709551615", "num_classes"),
        ("depth", "0", "positive"),
        ("depth", "200", "memory limit"),
    ] {
        let mut evil = with_network_field(&bytes, field, value);
        if needle == "memory limit" {
            evil = with_network_field(&evil, "hidden_size", "8192");
            evil = with_network_field(&evil, "num_heads", "64");
        }
        let path = tmp.path().join("evil.safetensors");
        std::fs::write(&path, &evil).unwrap();
        let p = path.to_str().unwrap();
        fails(&["sample", p, "--backend", "cpu", "--out", tmp.path().join("s").to_str().unwrap()], needle);
        fails(&["info", p], needle);
        fails(&["export", p, "--out", tmp.path().join("e.safetensors").to_str().unwrap()], needle);
    }
    // The flag raises the limit: a model over a tiny limit is refused, then accepted.
    let g = good.to_str().unwrap();
    fails(&["info", g, "--max-memory", "0.000001"], "memory limit");
    ok(&["info", g, "--max-memory", "1"]);
    // Sampling batches count too.
    fails(
        &[
            "sample",
            g,
            "--backend",
            "cpu",
            "--count",
            "100000",
            "--max-memory",
            "0.01",
            "--out",
            tmp.path().join("s").to_str().unwrap(),
        ],
        "memory limit",
    );
}

#[test]
fn every_channel_count_samples_to_png() {
    let tmp = tempfile::tempdir().unwrap();
    for c in 1..=4 {
        let model = tmp.path().join(format!("c{c}.safetensors"));
        write_model(&model, &small(c));
        let out = tmp.path().join(format!("out{c}"));
        ok(&["sample", model.to_str().unwrap(), "--backend", "cpu", "--steps", "2", "--out", out.to_str().unwrap()]);
        let img = image::open(out.join("sample-000-class0.png")).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8));
    }
    let five = JitConfig { in_channels: 5, ..small(3) };
    assert!(five.validate().unwrap_err().to_string().contains("in_channels"));
}

#[test]
fn run_folders_protect_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    ok(&refs(&train(&run, &["--steps", "4", "--checkpoint-every", "2", "--keep", "5"])));
    let before: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
    let settings_before = std::fs::read(run.join("settings.json")).unwrap();

    // Another run into the same folder is refused and changes nothing.
    fails(&refs(&train(&run, &["--steps", "2"])), "already holds a training run");
    assert_eq!(std::fs::read(run.join("settings.json")).unwrap(), settings_before);
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), before.len());

    // Resume: schedule flags apply and are recorded; the run's definition is fixed.
    fails(&["train", "--backend", "cpu", "--resume", r, "--hidden-size", "64"], "--hidden-size cannot change");
    let out = ok(&["train", "--backend", "cpu", "--resume", r, "--steps", "6", "--lr", "5e-4", "--keep", "2"]);
    assert!(stderr(&out).contains("lr 5.00e-4"), "{}", stderr(&out));
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("settings.json")).unwrap()).unwrap();
    assert_eq!(
        (settings["lr"].as_f64(), settings["steps"].as_u64(), settings["keep"].as_u64()),
        (Some(5e-4), Some(6), Some(2))
    );
    let lrs: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs.last(), Some(&5e-4));
    let ckpts: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    assert_eq!(ckpts.len(), 2, "keep 2 applies: {ckpts:?}");

    // Stale temp files of a crashed writer are swept; a truncated newest checkpoint is set aside
    // (renamed, not deleted) and the previous intact one resumes.
    let stale = run.join(".ckpt-00000008.safetensors.tmp-999999999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let newest = run.join("ckpt-00000006.safetensors");
    let full = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &full[..full.len() - 1000]).unwrap();
    let out = ok(&["train", "--backend", "cpu", "--resume", r, "--steps", "7"]);
    let log = stderr(&out);
    assert!(!stale.exists(), "stale temp file removed");
    assert!(log.contains("is unusable") && log.contains("resuming from") && log.contains("(step 4)"), "{log}");
    assert!(run.join("ckpt-00000006.safetensors.unusable").is_file(), "the damaged file is kept aside");
    assert!(run.join("ckpt-00000007.safetensors").is_file());

    // Checkpoints are ordered by the step in their metadata, not by file name.
    std::fs::copy(run.join("ckpt-00000006.safetensors"), run.join("ckpt-99999999.safetensors")).unwrap();
    let out = ok(&["train", "--backend", "cpu", "--resume", r, "--steps", "8"]);
    assert!(stderr(&out).contains("(step 7)"), "{}", stderr(&out));
}

#[test]
fn odd_datasets_work_or_fail_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = ["--steps", "1"];
    // IDX files: 3 channels (grey repeated) train; zero or wrapping dimensions are refused.
    let idx = tmp.path().join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    let write_idx = |n: u32, h: u32, w: u32, pixels: usize| {
        let mut img = vec![0, 0, 8, 3];
        for d in [n, h, w] {
            img.extend(d.to_be_bytes());
        }
        img.extend(vec![128u8; pixels]);
        std::fs::write(idx.join("train-images-idx3-ubyte"), img).unwrap();
        let mut lbl = vec![0, 0, 8, 1];
        lbl.extend(n.to_be_bytes());
        lbl.extend((0..n).map(|i| (i % 2) as u8));
        std::fs::write(idx.join("train-labels-idx1-ubyte"), lbl).unwrap();
    };
    let spec = format!("idx:{}", idx.display());
    write_idx(4, 8, 8, 4 * 64);
    let run = tmp.path().join("idx3");
    let mut args = train(&run, &tiny);
    args.extend(["--data".into(), spec.clone(), "--channels".into(), "3".into()]);
    ok(&refs(&args));
    let meta = checkpoint::read_meta(&std::fs::read(run.join("ckpt-00000001.safetensors")).unwrap()).unwrap();
    assert_eq!(meta.network.in_channels, 3);
    for (n, h, w, needle) in [(4, 0, 8, "sides must be"), (65536, 65536, 65536, "truncated or corrupt")] {
        write_idx(n, h, w, 64);
        let mut args = train(&tmp.path().join(format!("bad{h}")), &tiny);
        args.extend(["--data".into(), spec.clone()]);
        fails(&refs(&args), needle);
    }
    let mut args = train(&tmp.path().join("c2"), &tiny);
    args.extend(["--data".into(), spec, "--channels".into(), "2".into()]);
    fails(&refs(&args), "1 channel or 3");

    // An image folder with one corrupt file trains, skipping it with a warning.
    let data = tmp.path().join("folder");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..2u8 {
            image::RgbImage::from_pixel(12, 12, image::Rgb([i * 100, 50, 50]))
                .save(data.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(data.join("a/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let run = tmp.path().join("folder-run");
    let mut args = train(&run, &["--steps", "3"]);
    args.extend(["--data".into(), format!("folder:{}", data.display())]);
    let out = ok(&refs(&args));
    let log = stderr(&out);
    assert!(log.contains("warning: skipping") && log.contains("broken.png"), "{log}");
    assert!(run.join("ckpt-00000003.safetensors").is_file());
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_the_uninterrupted_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = ["--steps", "24", "--checkpoint-every", "1", "--keep", "2"];
    let reference = tmp.path().join("reference");
    let started = std::time::Instant::now();
    ok(&refs(&train(&reference, &steps)));
    // Kill times are fractions of an uninterrupted run on this machine.
    let whole = started.elapsed().as_millis() as u64;
    let expected: std::collections::HashMap<u64, f64> = losses(&reference).into_iter().collect();
    assert_eq!(expected.len(), 24);

    let run = tmp.path().join("killed");
    let first = train(&run, &steps);
    let resume: Vec<String> =
        ["train", "--backend", "cpu", "--resume", run.to_str().unwrap()].map(String::from).to_vec();
    let mut rng = PortableRng::new(9);
    let mut kills = 0;
    let mut finished = false;
    for attempt in 0..12 {
        let args = if attempt == 0 || !run.join("settings.json").exists() { &first } else { &resume };
        let mut child = Command::new(env!("CARGO_BIN_EXE_jit-native"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(whole * (15 + rng.next_u64() % 25) / 100);
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() && kills < 6 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            continue;
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "a resumed run failed");
        finished = true;
        break;
    }
    assert!(finished, "the run never finished");
    assert!(kills >= 2, "only {kills} kills landed: too fast a machine for this test's timings");
    let seen = losses(&run);
    let steps_seen: std::collections::BTreeSet<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps_seen.len(), 24, "every step was logged at least once");
    for (step, loss) in seen {
        let want = expected[&step];
        assert!((loss - want).abs() <= 1e-6 * want.abs().max(1.0), "step {step}: {loss} vs uninterrupted {want}");
    }
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files swept: {leftovers:?}");
}

#[test]
fn sigterm_saves_the_step_in_flight_and_the_run_resumes_from_it() {
    // As `timeout` does: SIGTERM to the process, then again to its group at once. That is one
    // request: the step in flight finishes, is saved although no checkpoint was due, and the
    // resumed run logs the same losses as an uninterrupted one.
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("stopped");
    let child = Command::new(env!("CARGO_BIN_EXE_jit-native"))
        .args(refs(&train(&run, &["--steps", "100000", "--checkpoint-every", "100000", "--warmup-steps", "2"])))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while losses(&run).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..2 {
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Saved, and the exit code tells a scheduler the run was interrupted (128 + SIGTERM).
    assert_eq!(out.status.code(), Some(143), "stopped cleanly:\n{err}");
    let saved = losses(&run).last().unwrap().0;
    assert!(err.contains(&format!("interrupted: saved step {saved}; continue with")), "{err}");
    let ckpt = run.join(format!("ckpt-{saved:08}.safetensors"));
    assert!(ckpt.exists(), "{} written", ckpt.display());

    let total = (saved + 3).to_string();
    ok(&["train", "--backend", "cpu", "--resume", run.to_str().unwrap(), "--steps", &total]);
    let reference = tmp.path().join("reference");
    // (Warm-up fixed in steps: by default it is a fraction of the run's length.)
    ok(&refs(&train(&reference, &["--steps", &total, "--checkpoint-every", "100000", "--warmup-steps", "2"])));
    let want: std::collections::HashMap<u64, f64> = losses(&reference).into_iter().collect();
    let got = losses(&run);
    assert_eq!(got.last().unwrap().0, saved + 3);
    for (step, loss) in got {
        assert!(
            (loss - want[&step]).abs() <= 1e-6 * want[&step].abs().max(1.0),
            "step {step}: {loss} vs {}",
            want[&step]
        );
    }
}
