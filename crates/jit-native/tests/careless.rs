//! The runner against careless use: two processes on one run folder, output paths that would
//! replace a run's files or the command's own input, numbers that must not pass silently
//! (NaN, infinities, out-of-range decays), files that are not what they claim, and a run in a
//! log file or stopped by a scheduler. Every refusal is one `error:` line and exit code 2.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{losses, ok, refs, refused, stderr, stdout, tiny_train_args};

/// A tiny run of 4 images per step: `train … --out DIR` plus `extra`.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    tiny_train_args(out, 4, extra)
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jit-native"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jit-native")
}

/// Waits (at most 60 s) until `path` exists with content.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        assert!(start.elapsed() < Duration::from_secs(60), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_run_one_writer_and_a_signal_ends_it_non_zero_after_saving() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let first = spawn(&train_args(&run, &["--steps", "100000", "--checkpoint-every", "100000"]));
    wait_for(&run.join("metrics.jsonl"));
    let pid = first.id().to_string();
    // A second run into the same folder, and a resume of it, are refused while it trains.
    let holder = format!("in use by process {pid}");
    refused(&refs(&train_args(&run, &["--steps", "3"])), &holder);
    refused(&["train", "--backend", "cpu", "--resume", r, "--steps", "3"], &holder);
    // SIGTERM (a scheduler's preemption): the step in flight is saved, the exit code is 143.
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let out = first.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{log}");
    assert!(log.contains("interrupted: saved step"), "{log}");
    let steps: Vec<u64> = losses(&run).iter().map(|(s, _)| *s).collect();
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "one writer, no repeated steps: {steps:?}");
    let saved = *steps.last().unwrap();
    assert!(run.join(format!("ckpt-{saved:08}.safetensors")).is_file(), "{log}");
    // The lock went with the process: the run resumes where it stopped.
    let out = ok(&["train", "--backend", "cpu", "--resume", r, "--steps", &(saved + 1).to_string()]);
    assert!(stderr(&out).contains(&format!("(step {saved})")), "{}", stderr(&out));
}

#[test]
fn outputs_never_replace_a_runs_files_or_their_input_and_others_need_force() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&refs(&train_args(&run, &["--steps", "2", "--checkpoint-every", "2"])));
    let ckpt = run.join("ckpt-00000002.safetensors");
    let c = ckpt.to_str().unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    for target in ["ckpt-00000002.safetensors", "ckpt-00000009.safetensors", "settings.json", "metrics.jsonl"] {
        let out = run.join(target);
        refused(&["export", c, "--force", "--out", out.to_str().unwrap()], "file of the training run");
    }
    refused(&["sample", c, "--backend", "cpu", "--steps", "1", "--save-tensor", c, "--force"], "training run");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the checkpoint is untouched");
    // Other files: refused when they exist, replaced with --force; never the input itself.
    let web = tmp.path().join("web.safetensors");
    let w = web.to_str().unwrap();
    ok(&["export", c, "--out", w]);
    refused(&["export", c, "--out", w], "--force");
    ok(&["export", c, "--out", w, "--force"]);
    refused(&["export", w, "--out", w, "--force"], "input");
    let samples = tmp.path().join("samples");
    let s = samples.to_str().unwrap();
    ok(&["sample", w, "--backend", "cpu", "--steps", "1", "--out", s]);
    refused(&["sample", w, "--backend", "cpu", "--steps", "1", "--out", s], "--force");
    ok(&["sample", w, "--backend", "cpu", "--steps", "1", "--out", s, "--force"]);
    // A smaller sample into the same folder would leave images of the larger one beside its
    // own: refused, even with --force; the same count replaces them all.
    // A weight copy asked of an exported model (one copy) is noted.
    let elsewhere = tmp.path().join("ema2");
    let out = ok(&[
        "sample",
        w,
        "--backend",
        "cpu",
        "--steps",
        "1",
        "--weights",
        "ema2",
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("exported model with one set of weights"), "{}", stderr(&out));
    let fewer = ["sample", w, "--backend", "cpu", "--steps", "1", "--out", s, "--force", "--class", "0"];
    refused(&fewer, "would not replace");
    let names = ["--names", "official"];
    refused(
        &[&["sample", w, "--backend", "cpu", "--steps", "1", "--out", s, "--force"][..], &names].concat(),
        "would not replace",
    );
}

#[test]
fn every_number_is_checked_where_it_enters() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    for (flags, needle) in [
        (&["--lr", "nan"][..], "--lr NaN"),
        (&["--epochs", "inf"], "--epochs inf"),
        (&["--ema-decay1", "2"], "--ema-decay1 2"),
        (&["--ema-decay2=-0.1"], "--ema-decay2 -0.1"),
        (&["--min-lr=-1e-4"], "--min-lr -0.0001"),
        (&["--checkpoint-every", "0"], "--checkpoint-every 0"),
        (&["--warmup-epochs", "nan"], "--warmup-epochs NaN"),
        (&["--mlp-ratio", "inf"], "--mlp-ratio inf"),
    ] {
        let mut args = train_args(&run, flags);
        args.push("--dry-run".into());
        refused(&refs(&args), needle);
    }
    // The same numbers in a TOML file.
    let toml = tmp.path().join("c.toml");
    std::fs::write(&toml, "lr = nan\n").unwrap();
    let args = train_args(&run, &["--config", toml.to_str().unwrap(), "--dry-run"]);
    refused(&refs(&args), "--lr NaN");
    // A preset whose own patch size does not fit the image, fixed by --patch-size.
    let out = ok(&["train", "--backend", "cpu", "--image-size", "1024", "--patch-size", "16", "--dry-run"]);
    assert!(stdout(&out).contains("\"patch_size\": 16"), "{}", stdout(&out));
    assert!(!run.exists(), "nothing was written by refused or dry runs");
    // A run over the memory limit is refused before its directory is made; on the CPU the
    // estimate keeps attention's probabilities even with --attention flash (a GPU switch).
    let args = train_args(&run, &["--attention", "flash", "--max-memory", "0.000001"]);
    let out = common::jit(&refs(&args));
    assert!(!out.status.success() && stderr(&out).contains("memory limit"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--attention flash is for GPUs"), "{}", stderr(&out));
    common::fails(&refs(&args), "memory limit");
    assert!(!run.exists(), "nothing was written by a run over the memory limit");
    // The online evaluation's flags are checked before the run directory is made; given without
    // --eval-every, and a warm-up longer than the run, get a note.
    refused(&refs(&train_args(&run, &["--eval-every", "1"])), "--eval-every needs");
    assert!(!run.exists());
    let notes = tmp.path().join("notes");
    let args = train_args(&notes, &["--eval-count", "5", "--warmup-steps", "50", "--steps", "1"]);
    let out = ok(&refs(&args));
    let err = stderr(&out);
    assert!(
        err.contains("--eval-count is for the online evaluation") && err.contains("never reaches its peak"),
        "{err}"
    );
    // --resume of a file, or of a folder whose settings.json is a folder.
    let settings = notes.join("settings.json");
    refused(&["train", "--backend", "cpu", "--resume", settings.to_str().unwrap()], "takes a run's folder");
    // A precision the device cannot compute in (lavapipe has f16, not bf16) is refused before
    // the run directory is made, naming the precision it can.
    let mut args = train_args(&run, &["--precision", "bf16"]);
    args[2] = "vulkan".into();
    common::fails(&refs(&args), "does not compute in bf16; use --precision f16");
    assert!(!run.exists(), "nothing was written by a run in a precision the device lacks");
    // Counts and scales.
    refused(&["bench", "--backend", "cpu", "--batch-size", "0"], "batch-size");
    refused(&["bench", "--backend", "cpu", "--sample-count", "0"], "sample-count");
    refused(&["sample", "x.safetensors", "--scale", "1000000"], "scale");
}

#[test]
fn files_are_checked_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    refused(&["info", "/dev/zero"], "not a regular file");
    refused(&["info", tmp.path().to_str().unwrap()], "not a regular file");
    // Class names go to the terminal without their control characters.
    let model = tmp.path().join("m.safetensors");
    common::write_model(&model, &common::small_config(3), vec!["\u{1b}[31mred\u{7}".into(), "blue\nline".into()]);
    let out = ok(&["info", model.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(text.contains("red") && !text.contains('\u{1b}') && !text.contains('\u{7}'), "{text:?}");
    // A model whose grid at --scale would not fit the memory limit is refused before sampling.
    refused(
        &[
            "sample",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
            "--scale",
            "64",
            "--count",
            "64",
            "--max-memory",
            "0.01",
        ],
        "grid",
    );
    // A FIFO named like an image in a folder dataset is skipped, not read forever.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("a")).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10])).save(data.join("a/ok.png")).unwrap();
    let fifo = data.join("a/x.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let run = tmp.path().join("run");
    let spec = format!("folder:{}", data.display());
    let out = ok(&refs(&train_args(&run, &["--data", &spec, "--steps", "2"])));
    assert!(run.join("ckpt-00000002.safetensors").is_file(), "{}", stderr(&out));
}

#[test]
fn a_run_without_a_terminal_logs_its_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = ok(&refs(&train_args(&run, &["--steps", "10", "--log-every", "4"])));
    let log = stderr(&out);
    for step in ["step 1/10 | loss", "step 4/10 | loss", "step 8/10 | loss", "step 10/10 | loss"] {
        assert!(log.contains(step), "{step} missing:\n{log}");
    }
    assert!(!log.contains("step 5/10"), "{log}");
    assert!(log.contains("img/s | eta "), "{log}");
    // Probing for a GPU on a headless machine prints nothing that is not ours.
    let out = Command::new(env!("CARGO_BIN_EXE_jit-native"))
        .args(["bench", "--backend", "auto", "--model", "JiT-T/4", "--image-size", "8", "--batch-size", "1"])
        .args(["--train-steps", "1", "--no-sample"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success() && !log.contains("XDG_RUNTIME_DIR") && !log.contains("error"), "{log}");
}

/// `eval`'s report and classifier cache and `toy`'s outputs never replace what a user saved:
/// a run's files are refused, a cache file that is not a classifier is left as it is, existing
/// outputs need --force; and their numbers are checked before any work (image sizes, counts,
/// epochs, threads, the toy's MLP), with memory estimates where sizes multiply.
#[test]
fn eval_bench_and_toy_write_over_nothing_and_check_their_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&refs(&train_args(&run, &["--steps", "1"])));
    let ckpt = run.join("ckpt-00000001.safetensors");
    let saved = std::fs::read(&ckpt).unwrap();
    let c = ckpt.to_str().unwrap();
    let eval_with = |extra: &[&str]| -> Vec<String> {
        let base = ["eval", "--backend", "cpu", "--data", "shapes"];
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let eval = |extra: &[&str]| eval_with(&[&["--image-size", "16", "--count", "10"], extra].concat());
    refused(&refs(&eval(&["--classifier", c])), "file of the training run");
    let settings = run.join("settings.json");
    refused(&refs(&eval(&["--json", settings.to_str().unwrap()])), "file of the training run");
    let notes = tmp.path().join("notes.mpk");
    std::fs::write(&notes, "not a classifier").unwrap();
    let n = notes.to_str().unwrap();
    common::fails(&refs(&eval(&["--classifier", n, "--classifier-epochs", "1"])), "is not a classifier");
    assert_eq!(std::fs::read(&notes).unwrap(), b"not a classifier", "a user's file is never replaced");
    refused(&refs(&eval(&["--json", n])), "--force");
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved, "the run's checkpoint is untouched");
    for (flags, needle) in [
        (&["--count", "1"][..], "--count 1"),
        (&["--classifier-epochs", "0"], "classifier-epochs"),
        (&["--image-size", "100000"], "image-size"),
    ] {
        refused(&refs(&eval_with(flags)), needle);
    }
    for flags in [&["--images", "/nonexistent"][..], &["--fid-stats", "x.npz"], &["--stats-out", "y.npz"]] {
        refused(&refs(&eval(flags)), "add --fid-inception");
    }
    // Within the bounds, a size whose classifier would not fit is refused before any work.
    refused(&refs(&eval_with(&["--image-size", "4096", "--count", "10"])), "memory limit");
    let bench = ["bench", "--backend", "cpu", "--loader", "shapes", "--train-steps", "1"];
    let with = |extra: &[&str]| -> Vec<String> { bench.iter().chain(extra).map(|s| s.to_string()).collect() };
    refused(&refs(&with(&["--loader-threads", "100000"])), "loader-threads");
    refused(&refs(&with(&["--image-size", "5000"])), "image-size");
    refused(&refs(&with(&["--image-size", "4096", "--batch-size", "100000"])), "memory limit");
    for limit in ["nan", "0", "-1", "inf"] {
        refused(&refs(&with(&[&format!("--max-memory={limit}")])), "max-memory");
    }
    for (flag, value) in [("--dims", "1"), ("--hidden", "0"), ("--lr", "nan"), ("--lr=-1", ""), ("--samples", "1")] {
        let args: Vec<&str> = ["toy", flag, value].into_iter().filter(|s| !s.is_empty()).collect();
        refused(&args, flag.trim_end_matches("=-1"));
    }
    // Names and paths that would mislead later commands.
    let web = tmp.path().join("web.safetensors");
    let classes = |names: &str| -> Vec<String> {
        ["export", c, "--out", web.to_str().unwrap(), "--class-names", names].map(String::from).to_vec()
    };
    common::fails(&refs(&classes(",,,,,")), "is empty");
    common::fails(&refs(&classes("a,b,c,d,e,A")), "given twice");
    assert!(!web.exists());
    let out = common::jit(&["bench", "--backend", "cpu", "--model", "JiT-T/4,JiT-Z/9", "--train-steps", "1"]);
    assert!(!out.status.success() && common::stderr(&out).contains("unknown model preset"));
    assert!(!stdout(&out).contains("| JiT-T/4"), "no model is measured before every name is known");
    let folder = format!("folder:{}", notes.display());
    common::fails(
        &["bench", "--backend", "cpu", "--loader", &folder, "--train-steps", "1"],
        "is a file, not an image folder",
    );
    // --depth sizes the network of every bench mode; a flag of another mode gets a note.
    let params = |extra: &[&str]| -> String {
        let args = [&["bench", "--all-reduce", "--backend", "cpu", "--model", "JiT-T/4"][..], extra].concat();
        let out = ok(&args);
        stdout(&out).lines().last().unwrap().split('|').nth(2).unwrap().trim().to_string()
    };
    assert_ne!(params(&["--depth", "1"]), params(&[]), "--all-reduce measures the --depth network");
    let out = ok(&[
        "bench",
        "--backend",
        "cpu",
        "--model",
        "JiT-T/4",
        "--train-steps",
        "1",
        "--no-sample",
        "--loader-threads",
        "2",
    ]);
    assert!(stderr(&out).contains("--loader-threads is for --loader"), "{}", stderr(&out));
    // The toy's outputs: an existing one needs --force.
    let out = tmp.path().join("toy");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("toy.json"), "mine").unwrap();
    refused(&["toy", "--out", out.to_str().unwrap(), "--steps", "1"], "--force");
    assert_eq!(std::fs::read(out.join("toy.json")).unwrap(), b"mine");
}
