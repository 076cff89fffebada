//! Data-parallel runs under `mpirun -np 2` on this machine (CPU backend, a tiny model): the
//! same losses and weights as one process training on the whole global batch, resumes across
//! world sizes, a rank killed with `kill -9`, Ctrl-C on `mpirun`, ranks started differently, and
//! sharded sampling.
//! Needs Open MPI's `mpirun` (scripts/test.sh installs it and, as root, sets its
//! allow-run-as-root variables). Every run is bounded in steps and by `timeout`.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jit_core::checkpoint;

mod common;
use common::{losses, ok, refs, stderr, tiny_train_args};

const BIN: &str = env!("CARGO_BIN_EXE_jit-native");

/// A tiny training command for `out`, `batch` images per process, then `extra` (weights compared
/// every step).
fn train_args(out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    tiny_train_args(out, batch, &[&["--lr", "2e-3", "--check-every", "1"][..], extra].concat())
}

/// `mpirun -np N jit-native ARGS`, within two minutes.
fn mpirun(np: usize, args: &[String]) -> Output {
    let out = Command::new("timeout")
        .args(["120", "mpirun", "--oversubscribe", "-np", &np.to_string(), BIN])
        .args(args)
        .output()
        .expect("mpirun (install openmpi-bin)");
    if !out.status.success() {
        eprintln!("mpirun {args:?}:\n{}", stderr(&out));
    }
    out
}

/// The `net` weights of a checkpoint, by name.
fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = checkpoint::parse(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name.starts_with("net."))
        .map(|(name, view)| {
            (name, view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn assert_close_losses(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for ((sa, la), (sb, lb)) in a.iter().zip(b) {
        assert_eq!(sa, sb, "{what}");
        assert!((la - lb).abs() <= 1e-5 * lb.abs().max(1e-3), "{what}: step {sa}: {la} vs {lb}");
    }
}

#[test]
fn two_ranks_train_as_one_process_on_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(&refs(&train_args(&one, 8, &["--steps", "20", "--checkpoint-every", "20"])));
    let out = mpirun(2, &train_args(&two, 4, &["--steps", "20", "--checkpoint-every", "20"]));
    assert!(out.status.success());
    let log = stderr(&out);
    assert!(log.contains("rank 0 of 2") && log.contains("rank 1 of 2"), "{log}");
    assert!(log.contains("batch 8 (4 × 2 processes)"), "{log}");
    assert_close_losses(&losses(&two), &losses(&one), "2 ranks × 4 vs 1 × 8");
    let (w1, w2) = (weights(&one.join("ckpt-00000020.safetensors")), weights(&two.join("ckpt-00000020.safetensors")));
    assert_eq!(w1.len(), w2.len());
    for ((name, a), (_, b)) in w1.iter().zip(&w2) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: {worst}");
    }
    // Only rank 0 wrote: one line per step, one settings file saying 2 ranks.
    let settings = std::fs::read_to_string(two.join("settings.json")).unwrap();
    assert!(settings.contains("\"ranks\": 2"), "{settings}");
}

#[test]
fn a_run_resumes_with_another_number_of_processes_at_the_same_global_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ok(&refs(&train_args(&whole, 8, &["--steps", "12", "--checkpoint-every", "12"])));
    let reference = losses(&whole);
    // 2 ranks, then 1 process.
    let a = tmp.path().join("a");
    assert!(mpirun(2, &train_args(&a, 4, &["--steps", "12", "--stop-after", "6"])).status.success());
    ok(&["train", "--backend", "cpu", "--resume", a.to_str().unwrap()]);
    assert_close_losses(&losses(&a), &reference, "2 ranks then 1");
    // 1 process, then 2 ranks.
    let b = tmp.path().join("b");
    ok(&refs(&train_args(&b, 8, &["--steps", "12", "--stop-after", "6"])));
    let resume: Vec<String> = ["train", "--backend", "cpu", "--resume", b.to_str().unwrap()].map(String::from).into();
    assert!(mpirun(2, &resume).status.success());
    assert_close_losses(&losses(&b), &reference, "1 process then 2 ranks");
    // A global batch of 8 does not split over 3 processes.
    let out = mpirun(3, &resume);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not split over 3 processes"), "{}", stderr(&out));
}

#[test]
fn ranks_started_with_other_flags_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (a, b) = (train_args(&run, 4, &["--steps", "3"]), train_args(&run, 4, &["--steps", "4"]));
    let out = Command::new("timeout")
        .args(["120", "mpirun", "--oversubscribe", "-np", "1", BIN])
        .args(&a)
        .args([":", "-np", "1", BIN])
        .args(&b)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("rank 1 was started with other flags or another binary"), "{}", stderr(&out));
}

/// The PIDs of the processes whose command line mentions `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-f", needle]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_rank_killed_ends_the_run_and_the_last_checkpoint_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    // A constant learning rate: the schedule does not depend on --steps.
    let constant = ["--warmup-steps", "0", "--schedule", "constant"];
    ok(&refs(&train_args(&whole, 8, &[&constant[..], &["--steps", "120", "--checkpoint-every", "120"]].concat())));
    let reference = losses(&whole);
    let run = tmp.path().join("killed");
    let job = Command::new("timeout")
        .args(["120", "mpirun", "--oversubscribe", "-np", "2", BIN])
        .args(train_args(&run, 4, &[&constant[..], &["--steps", "100000", "--checkpoint-every", "5"]].concat()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while losses(&run).len() < 12 {
        assert!(start.elapsed() < Duration::from_secs(60), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank0: u32 = std::fs::read_to_string(run.join(".lock")).unwrap().trim().parse().unwrap();
    let launchers = [job.id()];
    let rank1 = pids_with(run.to_str().unwrap())
        .into_iter()
        .find(|p| *p != rank0 && !launchers.contains(p) && is_jit(*p))
        .expect("rank 1's process");
    assert!(Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap().success());
    let killed = Instant::now();
    let out = job.wait_with_output().unwrap();
    assert!(killed.elapsed() < Duration::from_secs(60), "the other rank took {:?} to end", killed.elapsed());
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(log.contains("rank 1"), "the message names the rank:\n{log}");
    // Rank 0 ends too (it holds the run's lock until it does).
    while std::path::Path::new(&format!("/proc/{rank0}")).exists() {
        assert!(killed.elapsed() < Duration::from_secs(60), "rank 0 still runs {:?} after the kill", killed.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Resume from the newest checkpoint (one process, same global batch) to step 40.
    ok(&["train", "--backend", "cpu", "--resume", run.to_str().unwrap(), "--steps", "120"]);
    // A step logged before the kill and again after the resume: the resumed one counts.
    let got: std::collections::BTreeMap<u64, f64> = losses(&run).into_iter().collect();
    assert_close_losses(&got.into_iter().collect::<Vec<_>>(), &reference, "killed and resumed");
}

#[test]
fn ctrl_c_on_mpirun_saves_the_step_in_flight_once_and_ends_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let constant = ["--warmup-steps", "0", "--schedule", "constant"];
    let run = tmp.path().join("interrupted");
    // mpirun itself gets the signal, as from a terminal; checkpoints only when asked.
    let mut job = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2", BIN])
        .args(train_args(&run, 4, &[&constant[..], &["--steps", "100000", "--checkpoint-every", "100000"]].concat()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (install openmpi-bin)");
    let start = Instant::now();
    while losses(&run).len() < 12 {
        if start.elapsed() > Duration::from_secs(60) {
            job.kill().ok();
            panic!("the run did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank0: u32 = std::fs::read_to_string(run.join(".lock")).unwrap().trim().parse().unwrap();
    assert!(Command::new("kill").args(["-INT", &job.id().to_string()]).status().unwrap().success());
    let interrupted = Instant::now();
    while job.try_wait().unwrap().is_none() {
        if interrupted.elapsed() > Duration::from_secs(60) {
            job.kill().ok();
            panic!("mpirun still runs a minute after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = stderr(&job.wait_with_output().unwrap());
    while Path::new(&format!("/proc/{rank0}")).exists() {
        assert!(interrupted.elapsed() < Duration::from_secs(60), "rank 0 still runs after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One checkpoint, of the last step logged: the step in flight, saved once, by rank 0.
    let logged = losses(&run);
    let last = logged.last().expect("steps were logged").0;
    let checkpoints: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("ckpt-"))
        .collect();
    assert_eq!(checkpoints, [format!("ckpt-{last:08}.safetensors")], "{log}");
    assert!(log.contains("saving a checkpoint"), "the run said it saves:\n{log}");
    // Resumed (one process, same global batch) for 10 more steps: the losses of a run that was
    // never interrupted.
    let end = (last + 10).to_string();
    ok(&["train", "--backend", "cpu", "--resume", run.to_str().unwrap(), "--steps", &end]);
    let whole = tmp.path().join("whole");
    ok(&refs(&train_args(&whole, 8, &[&constant[..], &["--steps", &end, "--checkpoint-every", &end]].concat())));
    assert_close_losses(&losses(&run), &losses(&whole), "interrupted and resumed");
}

/// Whether `pid` runs this binary (not `timeout` or `mpirun`, whose command lines hold it too).
fn is_jit(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == Path::new(BIN))
}

#[test]
fn sharded_sampling_gives_the_images_of_one_process_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&refs(&train_args(&run, 8, &["--steps", "2", "--checkpoint-every", "2"])));
    let ckpt = run.join("ckpt-00000002.safetensors").display().to_string();
    let sample = |out: &str| -> Vec<String> {
        let out = tmp.path().join(out);
        format!(
            "sample {ckpt} --backend cpu --weights net --count 3 --steps 3 --seed 5 --out {} --save-tensor {}",
            out.display(),
            out.join("t.safetensors").display()
        )
        .split_whitespace()
        .map(String::from)
        .collect()
    };
    ok(&refs(&sample("one")));
    assert!(mpirun(2, &sample("two")).status.success());
    // The images (the file's metadata map may list its keys in any order).
    let tensor = |d: &str| {
        let bytes = std::fs::read(tmp.path().join(d).join("t.safetensors")).unwrap();
        let st = checkpoint::parse(&bytes).unwrap();
        let view = st.tensor("samples").unwrap();
        (view.shape().to_vec(), view.data().to_vec())
    };
    let (one, two) = (tensor("one"), tensor("two"));
    assert_eq!(one.0, [18, 3, 16, 16]);
    assert!(one == two, "the same images, bit for bit");
    let grid = |d: &str| std::fs::read(tmp.path().join(d).join("grid.png")).unwrap();
    assert_eq!(grid("one"), grid("two"));
}
