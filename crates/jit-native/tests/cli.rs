//! End-to-end tests of the `jit-native` binary on the CPU backend: train → resume → sample →
//! export → info, golden imports of official checkpoints, and one-line errors on bad input.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use jit_core::checkpoint::{self, decode, parse};

mod common;
use common::{fails, losses, ok, refused, stdout};

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
    "--steps",
    "6",
    "--checkpoint-every",
    "3",
    "--sample-every",
    "0",
    "--sample-steps",
    "2",
    "--grid-images",
    "4",
    "--keep",
    "5",
    "--lr",
    "1e-3",
];

#[test]
fn train_resume_sample_export_info() {
    let tmp = tempfile::tempdir().unwrap();
    let run_a = tmp.path().join("a");
    let run_b = tmp.path().join("b");
    let mut args = TINY.to_vec();
    args.extend(["--out", run_a.to_str().unwrap()]);
    ok(&args);
    let ckpt = run_a.join("ckpt-00000006.safetensors");
    assert!(run_a.join("ckpt-00000003.safetensors").is_file() && ckpt.is_file());
    assert!(run_a.join("settings.json").is_file());
    let grid = image::open(run_a.join("samples-00000006.png")).expect("final sample grid");
    assert!(grid.width() > 16);
    let full = losses(&run_a);
    assert_eq!(full.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);

    // Interrupted run: stop after 3 steps, then resume; the loss sequence must be identical.
    let mut args = TINY.to_vec();
    args.extend(["--out", run_b.to_str().unwrap(), "--stop-after", "3"]);
    ok(&args);
    assert_eq!(losses(&run_b).len(), 3);
    ok(&["train", "--backend", "cpu", "--resume", run_b.to_str().unwrap()]);
    let resumed = losses(&run_b);
    assert_eq!(resumed.len(), 6);
    for ((s1, l1), (s2, l2)) in full.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert!((l1 - l2).abs() <= 1e-6 * l1.abs().max(1.0), "step {s1}: {l1} vs {l2} after resume");
    }

    // Sample: PNGs of the model size, and the float tensor.
    let out = tmp.path().join("samples");
    let tensor = tmp.path().join("samples.safetensors");
    ok(&[
        "sample",
        ckpt.to_str().unwrap(),
        "--backend",
        "cpu",
        "--class",
        "0",
        "--class",
        "square",
        "--count",
        "2",
        "--steps",
        "3",
        "--previews",
        "--out",
        out.to_str().unwrap(),
        "--save-tensor",
        tensor.to_str().unwrap(),
    ]);
    let img = image::open(out.join("sample-000-class0.png")).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16));
    assert!(out.join("sample-003-class1.png").is_file());
    assert!(out.join("grid.png").is_file() && out.join("previews.png").is_file());
    let bytes = std::fs::read(&tensor).unwrap();
    let st = parse(&bytes).unwrap();
    assert_eq!(st.tensor("samples").unwrap().shape(), &[4, 3, 16, 16]);

    // Export (f16) → info; the exported file samples like the EMA weights it came from.
    let exported = tmp.path().join("model.safetensors");
    let said = stdout(&ok(&["export", ckpt.to_str().unwrap(), "--out", exported.to_str().unwrap()]));
    assert!(said.contains("MiB"), "{said}");
    let info = stdout(&ok(&["info", exported.to_str().unwrap()]));
    assert!(info.contains("step        6"), "{info}");
    assert!(info.contains("circle"), "{info}");
    let again = tmp.path().join("again.safetensors");
    ok(&[
        "sample",
        exported.to_str().unwrap(),
        "--backend",
        "cpu",
        "--class",
        "0",
        "--class",
        "square",
        "--count",
        "2",
        "--steps",
        "3",
        "--grid-only",
        "--force",
        "--out",
        out.to_str().unwrap(),
        "--save-tensor",
        again.to_str().unwrap(),
    ]);
    let a = decode("samples", &st.tensor("samples").unwrap()).unwrap().data;
    let b_bytes = std::fs::read(&again).unwrap();
    let b = decode("samples", &parse(&b_bytes).unwrap().tensor("samples").unwrap()).unwrap().data;
    let err = rel_l2(&b, &a);
    assert!(err < 2e-2, "f16 export changes samples by {err}");
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[path = "../../../tests/golden/dirs.rs"]
mod dirs;

#[test]
fn imports_official_checkpoints_matching_the_reference_ema() {
    let tmp = tempfile::tempdir().unwrap();
    let mut imported = 0;
    for pth in dirs::golden_files(".checkpoint-last.pth") {
        let dir = pth.parent().unwrap();
        let name = pth.file_name().unwrap().to_string_lossy().trim_end_matches(".checkpoint-last.pth").to_string();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let start = json["config"]["in_context_start"].as_u64().unwrap().to_string();
        let out = tmp.path().join(format!("{name}.safetensors"));
        ok(&[
            "import",
            pth.to_str().unwrap(),
            "--weights",
            "ema1",
            "--in-context-start",
            &start,
            "--out",
            out.to_str().unwrap(),
        ]);

        let device = Device::flex();
        let bytes = std::fs::read(&out).unwrap();
        let (net, meta) = checkpoint::load(&bytes, "", &device).unwrap();
        assert_eq!(meta.network.hidden_size, json["config"]["hidden_size"].as_u64().unwrap() as usize);
        let golden = std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap();
        let g = parse(&golden).unwrap();
        let get = |k: &str| decode(k, &g.tensor(k).unwrap()).unwrap();
        let (z, t, y) = (get("in.z"), get("in.t"), get("in.y"));
        let z = Tensor::<4>::from_data(TensorData::new(z.data, <[usize; 4]>::try_from(z.shape).unwrap()), &device);
        let n = t.data.len();
        let t = Tensor::<1>::from_data(TensorData::new(t.data, [n]), &device);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(y.data.iter().map(|v| *v as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let ours: Vec<f32> = net.forward(z, t, y).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let expected_bytes = std::fs::read(dir.join(format!("{name}.ema1_expected.safetensors"))).unwrap();
        let e = parse(&expected_bytes).unwrap();
        let expected = decode("out.net_ema1", &e.tensor("out.net_ema1").unwrap()).unwrap().data;
        let err = rel_l2(&ours, &expected);
        println!("{name}: imported EMA-1 forward rel L2 {err:.2e}");
        assert!(err <= 1e-4, "{name}: {err}");
        imported += 1;
    }
    assert!(imported > 0, "no NAME.checkpoint-last.pth in the golden folders");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_string_lossy().to_string();

    // A real checkpoint to damage.
    let run = p("run");
    let mut args: Vec<&str> = TINY.iter().map(|a| if *a == "6" || *a == "3" { "1" } else { a }).collect();
    args.extend(["--out", &run]);
    ok(&args);
    let ckpt = PathBuf::from(&run).join("ckpt-00000001.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();

    std::fs::write(p("truncated.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    fails(&["sample", &p("truncated.safetensors"), "--backend", "cpu"], "truncated");
    fails(&["info", &p("truncated.safetensors")], "truncated");
    fails(&["sample", &p("missing.safetensors"), "--backend", "cpu"], "cannot open");

    // Metadata of another config over these weights.
    let st = parse(&bytes).unwrap();
    let mut meta = checkpoint::read_meta(&bytes).unwrap();
    meta.network.hidden_size = 64;
    let info =
        std::collections::HashMap::from([(checkpoint::META_KEY.to_string(), serde_json::to_string(&meta).unwrap())]);
    std::fs::write(p("other.safetensors"), safetensors::serialize(st.tensors(), Some(info)).unwrap()).unwrap();
    fails(&["sample", &p("other.safetensors"), "--backend", "cpu"], "has shape");

    // Datasets.
    fails(
        &["train", "--backend", "cpu", "--data", &format!("folder:{}", p("nope")), "--out", &p("r1")],
        "does not exist",
    );
    std::fs::create_dir_all(tmp.path().join("empty/cats")).unwrap();
    std::fs::write(tmp.path().join("empty/cats/readme.txt"), "no images").unwrap();
    fails(
        &["train", "--backend", "cpu", "--data", &format!("folder:{}", p("empty")), "--out", &p("r2")],
        "has no images",
    );
    fails(
        &["train", "--backend", "cpu", "--data", &format!("idx:{}", p("empty")), "--out", &p("r3")],
        "missing IDX file",
    );
    fails(&["train", "--backend", "cpu", "--data", "imagenet", "--out", &p("r4")], "unknown dataset");
    fails(&["train", "--backend", "cpu", "--model", "JiT-Z/16", "--out", &p("r5")], "unknown model preset");
    refused(&["sample", ckpt.to_str().unwrap(), "--backend", "cpu", "--class", "giraffe"], "unknown class");
    refused(&["sample", ckpt.to_str().unwrap(), "--backend", "cpu", "--class", "99"], "does not exist");

    // .pth files that are not JiT checkpoints.
    std::fs::write(p("text.pth"), "just some text").unwrap();
    fails(&["import", &p("text.pth"), "--out", &p("o.safetensors")], "not a PyTorch zip checkpoint");
    std::fs::write(p("cut.pth"), &bytes[..100]).unwrap();
    fails(&["import", &p("cut.pth"), "--out", &p("o.safetensors")], "not a PyTorch zip checkpoint");
    {
        use std::io::Write;
        let f = std::fs::File::create(p("other.pth")).unwrap();
        let mut zip = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        // pickle protocol 2 of {'foo': 1}
        zip.write_all(b"\x80\x02}q\x00X\x03\x00\x00\x00fooq\x01K\x01s.").unwrap();
        zip.finish().unwrap();
    }
    fails(&["import", &p("other.pth"), "--out", &p("o.safetensors")], "not a JiT training checkpoint");
    assert!(!tmp.path().join("o.safetensors").exists());
}

#[test]
fn trains_on_fashion_mnist_and_image_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let small = [
        "--backend",
        "cpu",
        "--model",
        "JiT-T/4",
        "--depth",
        "1",
        "--hidden-size",
        "16",
        "--num-heads",
        "1",
        "--in-context-len",
        "0",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--sample-every",
        "0",
        "--sample-steps",
        "1",
        "--grid-images",
        "2",
    ];
    let fashion = Path::new("/usr/share/datasets/fashion-mnist");
    if fashion.is_dir() {
        let run = tmp.path().join("fm");
        let mut args = vec!["train", "--data", "fashion-mnist", "--out", run.to_str().unwrap()];
        args.extend(small);
        ok(&args);
        let meta = checkpoint::read_meta(&std::fs::read(run.join("ckpt-00000002.safetensors")).unwrap()).unwrap();
        assert_eq!((meta.network.in_channels, meta.network.input_size, meta.network.num_classes), (1, 32, 10));
        assert_eq!(meta.class_names[9], "Ankle boot");
    } else {
        eprintln!("SKIP fashion-mnist part: apt-get install dataset-fashion-mnist");
    }

    // An image folder with two classes of differently sized PNGs (one with alpha).
    let data = tmp.path().join("pets");
    for (class, color) in [("cats", [200u8, 60, 60, 255]), ("dogs", [60, 60, 200, 128])] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..3 {
            let img = image::RgbaImage::from_pixel(20 + 7 * i, 30, image::Rgba(color));
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let run = tmp.path().join("pets-run");
    let spec = format!("folder:{}", data.display());
    let mut args = vec!["train", "--data", &spec, "--image-size", "16", "--out", run.to_str().unwrap()];
    args.extend(small);
    ok(&args);
    let meta = checkpoint::read_meta(&std::fs::read(run.join("ckpt-00000002.safetensors")).unwrap()).unwrap();
    assert_eq!(meta.class_names, vec!["cats", "dogs"]);
    assert_eq!((meta.network.in_channels, meta.network.input_size), (3, 16));
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("nan");
    let mut args: Vec<&str> = TINY
        .iter()
        .map(|a| {
            if *a == "1e-3" {
                "1e30"
            } else if *a == "3" {
                "1"
            } else {
                a
            }
        })
        .collect();
    args.extend(["--steps", "30", "--warmup-steps", "1", "--out", run.to_str().unwrap()]);
    let args: Vec<&str> = {
        // drop the first --steps 6 so that the later --steps 30 is the only one
        let i = args.iter().position(|a| *a == "--steps").unwrap();
        args.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, a)| *a).collect()
    };
    fails(&args, "became");
    let kept: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    assert!(!kept.is_empty(), "the last good checkpoint is kept");
    for name in kept {
        let bytes = std::fs::read(run.join(&name)).unwrap();
        let (net, _) = checkpoint::load(&bytes, "net", &Device::flex()).unwrap();
        let values = jit_core::state_dict::export(&net).unwrap();
        assert!(values.values().all(|t| t.data.iter().all(|v| v.is_finite())), "{name} holds finite weights");
    }
}

/// `--precision f16` scales its losses (the scale in every metrics line), and a resumed run
/// carries on with the scale its checkpoint saved.
#[test]
fn an_f16_run_scales_its_losses_and_resumes_with_its_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("f16");
    let scales = || -> Vec<f64> {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss_scale"].as_f64().unwrap())
            .collect()
    };
    let args = common::tiny_train_args(&run, 4, &["--precision", "f16", "--steps", "2"]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(scales(), vec![65536.0; 2]);
    assert_eq!(losses(&run).len(), 2);
    // A saved scale other than the first one comes back on resume.
    let ckpt = run.join("ckpt-00000002.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let (mut state, meta) = jit_core::TrainState::from_checkpoint(
        &bytes,
        Default::default(),
        0,
        &Device::flex(),
        jit_core::MemoryLimit::default(),
    )
    .unwrap();
    state.loss_scale = Some(jit_core::LossScale { scale: 1024.0, ..Default::default() });
    std::fs::write(&ckpt, state.to_checkpoint(&meta).unwrap()).unwrap();
    let resume = |steps: &str, precision: &str| {
        ok(&[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--backend",
            "cpu",
            "--steps",
            steps,
            "--precision",
            precision,
        ])
    };
    resume("3", "f16");
    assert_eq!(scales(), vec![65536.0, 65536.0, 1024.0]);
    // Without f16 there is no scale, and a note says the run changed precision.
    let out = resume("4", "f32");
    assert!(String::from_utf8_lossy(&out.stderr).contains("trained with --precision f16"));
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!text.lines().last().unwrap().contains("loss_scale"), "{text}");
    // A resume with nothing to do leaves the settings as they were.
    let settings = std::fs::read(run.join("settings.json")).unwrap();
    ok(&["train", "--resume", run.to_str().unwrap(), "--backend", "cpu", "--steps", "2", "--lr", "5"]);
    assert_eq!(std::fs::read(run.join("settings.json")).unwrap(), settings);
    // A run whose checkpoints were all set aside as unusable does not start again at step 0.
    for entry in std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().path()) {
        if entry.file_name().unwrap().to_string_lossy().starts_with("ckpt-") {
            std::fs::rename(&entry, format!("{}.unusable", entry.display())).unwrap();
        }
    }
    fails(&["train", "--resume", run.to_str().unwrap(), "--backend", "cpu", "--steps", "6"], "set aside");
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), text, "no step was run again");
}

#[test]
fn toy_x_prediction_stays_on_the_manifold_where_eps_prediction_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("toy");
    ok(&[
        "toy",
        "--dims",
        "512",
        "--targets",
        "x,eps",
        "--steps",
        "200",
        "--batch-size",
        "128",
        "--samples",
        "300",
        "--sample-steps",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("toy.json")).unwrap()).unwrap();
    let get = |target: &str, key: &str| {
        results.as_array().unwrap().iter().find(|r| r["target"] == target).unwrap()[key].as_f64().unwrap()
    };
    let (off_x, off_eps) = (get("x", "off_manifold"), get("eps", "off_manifold"));
    println!("D=512 off-manifold norm: x-pred {off_x:.3}, eps-pred {off_eps:.3}");
    assert!(off_x * 10.0 < off_eps, "x-prediction should stay far closer to the data plane: {off_x} vs {off_eps}");
    assert!(get("x", "sliced_w1") < get("eps", "sliced_w1"));
    assert!(out.join("toy.png").is_file() && out.join("toy.md").is_file());
}

#[test]
fn eval_separates_real_from_noise_and_scores_a_checkpoint() {
    if !Path::new("/usr/share/datasets/fashion-mnist").is_dir() {
        eprintln!("SKIP: apt-get install dataset-fashion-mnist");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("fm");
    ok(&[
        "train",
        "--backend",
        "cpu",
        "--data",
        "fashion-mnist",
        "--model",
        "JiT-T/8",
        "--depth",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        "--out",
        run.to_str().unwrap(),
    ]);
    let clf = tmp.path().join("clf.mpk");
    let report = tmp.path().join("eval.json");
    let ckpt = run.join("ckpt-00000002.safetensors");
    ok(&[
        "eval",
        ckpt.to_str().unwrap(),
        "--backend",
        "cpu",
        "--data",
        "fashion-mnist",
        "--count",
        "300",
        "--steps",
        "2",
        "--classifier-epochs",
        "1",
        "--classifier",
        clf.to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(clf.is_file(), "the classifier is cached");
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    let fd = |i: usize| rows[i]["fd_classifier"].as_f64().unwrap();
    let (floor, noise, generated) = (fd(0), fd(1), fd(2));
    println!("FD-classifier: real {floor:.2}, noise {noise:.2}, 2-step model {generated:.2}");
    assert!(floor < 0.1 * noise, "real vs real ({floor}) should be far below noise vs real ({noise})");
    assert!(rows[0]["class_accuracy"].as_f64().unwrap() > 0.6, "the classifier learned the classes");
    assert!(generated > floor, "an untrained model is worse than real data");
    // A checkpoint for another image size is refused.
    fails(
        &[
            "eval",
            ckpt.to_str().unwrap(),
            "--backend",
            "cpu",
            "--data",
            "fashion-mnist",
            "--image-size",
            "28",
            "--classifier",
            clf.to_str().unwrap(),
        ],
        "but the dataset has",
    );
}

/// A run written by the runner before training moved into jit-core (the same file format):
/// its checkpoint samples, and the run resumes with its old `settings.json`.
#[test]
fn runs_written_by_the_previous_version_still_sample_and_resume() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-v0");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), run.join(entry.file_name())).unwrap();
    }
    let old_settings = std::fs::read_to_string(run.join("settings.json")).unwrap();
    assert!(old_settings.contains("null"), "the fixture has the old settings format");
    let ckpt = run.join("ckpt-00000002.safetensors");
    let out = tmp.path().join("samples");
    ok(&["sample", ckpt.to_str().unwrap(), "--backend", "cpu", "--steps", "2", "--out", out.to_str().unwrap()]);
    assert!(out.join("grid.png").is_file());
    ok(&["train", "--backend", "cpu", "--resume", run.to_str().unwrap(), "--steps", "3"]);
    let steps: Vec<u64> = losses(&run).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![1, 2, 3]);
    assert!(run.join("ckpt-00000003.safetensors").is_file());
}

/// `bench` prints its table with the fused kernels on, and off with `--no-fused` (the
/// comparison the GPU script runs).
#[test]
fn bench_prints_a_table_with_and_without_the_fused_kernels() {
    let args = [
        "bench",
        "--backend",
        "cpu",
        "--model",
        "JiT-T/4",
        "--image-size",
        "8",
        "--batch-size",
        "2",
        "--train-steps",
        "1",
        "--sample-count",
        "1",
        "--sample-steps",
        "2",
    ];
    for (extra, state) in [(None, "fused kernels on"), (Some("--no-fused"), "fused kernels off")] {
        let mut a = args.to_vec();
        a.extend(extra);
        let text = stdout(&ok(&a));
        assert!(text.contains(state), "{state}: {text}");
        let row = text.lines().find(|l| l.starts_with("| JiT-T/4")).expect("a JiT-T/4 row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let train_ips: f64 = cells[7].parse().expect("train img/s");
        let sample_ips: f64 = cells[10].parse().expect("sample img/s");
        let mean_train_ips: f64 = cells[12].parse().expect("train img/s of the mean step");
        assert!(train_ips > 0.0 && sample_ips > 0.0 && mean_train_ips > 0.0, "{row}");
    }
}

#[test]
fn sample_writes_the_adm_evaluators_npz() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&common::refs(&common::tiny_train_args(&run, 4, &["--steps", "2", "--checkpoint-every", "2"])));
    let ckpt = run.join("ckpt-00000002.safetensors");
    let (out, npz) = (tmp.path().join("s"), tmp.path().join("samples.npz"));
    ok(&[
        "sample",
        ckpt.to_str().unwrap(),
        "--backend",
        "cpu",
        "--class",
        "1",
        "--count",
        "2",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--npz",
        npz.to_str().unwrap(),
    ]);
    // The same images named as the official evaluation names them.
    let official = tmp.path().join("official");
    let (c, o) = (ckpt.to_str().unwrap(), official.to_str().unwrap());
    ok(&[
        "sample",
        c,
        "--backend",
        "cpu",
        "--class",
        "1",
        "--count",
        "2",
        "--steps",
        "2",
        "--names",
        "official",
        "--out",
        o,
    ]);
    for i in 0..2 {
        let ours = image::open(out.join(format!("sample-{i:03}-class1.png"))).unwrap().to_rgb8();
        assert_eq!(image::open(official.join(format!("{i:05}.png"))).unwrap().to_rgb8(), ours);
    }
    assert!(!official.join("sample-000-class1.png").exists());
    let bytes = std::fs::read(&npz).unwrap();
    // One stored zip entry `arr_0.npy`: a .npy v1.0 header as np.save writes it, then the pixels.
    assert_eq!(&bytes[..4], b"PK\x03\x04");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 0, "stored, not compressed");
    let name_len = u16::from_le_bytes([bytes[26], bytes[27]]) as usize;
    let extra_len = u16::from_le_bytes([bytes[28], bytes[29]]) as usize;
    assert_eq!(&bytes[30..30 + name_len], b"arr_0.npy");
    let npy = &bytes[30 + name_len + extra_len..];
    assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    assert!(header.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 16, 16, 3), }"), "{header}");
    // The pixels are the PNGs' (NHWC, RGB).
    let pixels = &npy[10 + header_len..10 + header_len + 2 * 16 * 16 * 3];
    let png = image::open(out.join("sample-001-class1.png")).unwrap().to_rgb8();
    assert_eq!(&pixels[16 * 16 * 3..], png.as_raw().as_slice());
}
