//! `voxel-trainer` end to end on real MRI with CPU LibTorch: it learns (and says so on its
//! metrics endpoint), an interrupted run resumes to exactly the same result, `infer` +
//! `evaluate` reproduce the test metrics, and every ending leaves a termination message.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{copy_subjects, example_subjects, tiny_experiment, trainer_bin};
use voxel_trainer::{
    data::volume::read_volume,
    evaluate::read_metrics_csv,
    outputs, progress_metrics,
    train::{Outcome, TrainOptions},
};

fn trainer(args: &[&str], extra: &[&Path]) -> Command {
    let mut command = Command::new(trainer_bin());
    // One thread: LibTorch's CPU kernels are deterministic for a fixed thread count, and the
    // tests run side by side.
    command.args(["--threads", "1"]).args(args);
    for path in extra {
        command.arg(path);
    }
    command
}

fn check(output: Output) -> Output {
    assert!(
        output.status.success(),
        "voxel-trainer failed ({:?}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn train(config: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut command = trainer(&["train", "--config"], &[config]);
    command.arg("--output").arg(output).args(extra);
    check(command.output().unwrap())
}

fn dataset(subjects: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let csv = copy_subjects(dir.path(), &example_subjects(subjects));
    (dir, csv)
}

/// `epoch_metrics.csv` without its wall-clock column.
fn epoch_metrics_without_time(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(outputs::EPOCH_METRICS)).unwrap();
    text.lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// The body of `GET /metrics`.
fn scrape(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of the sample `series` (name and labels, as written) in a metrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

fn column(dir: &Path, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join(outputs::EPOCH_METRICS)).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let index = header.iter().position(|h| *h == name).unwrap();
    lines
        .map(|l| l.split(',').nth(index).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_few_epochs_of_training_learn_the_hippocampus() {
    let (dir, _) = dataset(12);
    let config = tiny_experiment(dir.path(), 15, "");
    // Wider than the other tests' network, with patches that see most of a hippocampus.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("baseChannels: 4", "baseChannels: 8")
        .replace("cropSize: [16, 16, 16]", "cropSize: [24, 32, 24]");
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("run");
    // In this process, to read the metrics endpoint after training; one thread, as the
    // command line runs of the other tests.
    tch::set_num_threads(1);
    let server = progress_metrics::start("127.0.0.1:0").unwrap();
    let options = TrainOptions {
        config,
        output: out.clone(),
        data_root: None,
        device: tch::Device::cuda_if_available(),
        stop_after_epoch: None,
        metrics: Some(server.metrics()),
        sync: None,
    };
    let outcome = voxel_trainer::train::train(&options).unwrap();
    assert!(matches!(outcome, Outcome::Finished { epochs: 15, .. }));

    let losses = column(&out, "train_loss");
    let dice = column(&out, "validation_dice_posterior");
    assert_eq!(losses.len(), 15);
    assert!(
        losses[14] < 0.6 * losses[0],
        "training loss did not fall: {losses:?}"
    );
    // An untrained network scores about 0; 15 short epochs of a tiny U-Net reach about 0.37.
    assert!(dice[0] < 0.1 && dice[14] > 0.3, "validation Dice: {dice:?}");
    for file in [
        outputs::MODEL_WEIGHTS,
        outputs::RESOLVED_CONFIG,
        outputs::TEST_METRICS,
        outputs::SUMMARY,
        outputs::SPLIT,
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }

    let metrics = scrape(server.address());
    assert_eq!(sample(&metrics, "voxel_trainer_epochs_completed"), 15.0);
    assert_eq!(sample(&metrics, "voxel_trainer_epochs"), 15.0);
    assert_eq!(sample(&metrics, "voxel_trainer_finished"), 1.0);
    assert_eq!(
        sample(&metrics, "voxel_trainer_estimated_seconds_left"),
        0.0
    );
    assert_eq!(sample(&metrics, "voxel_trainer_train_loss"), losses[14]);
    assert_eq!(
        sample(
            &metrics,
            "voxel_trainer_validation_dice{structure=\"posterior\"}"
        ),
        dice[14]
    );
}

#[test]
fn interrupted_runs_resume_to_the_same_weights_and_metrics() {
    let (dir, _) = dataset(6);
    let config = tiny_experiment(dir.path(), 4, "");

    let whole = dir.path().join("whole");
    train(&config, &whole, &[]);

    // Stopped cleanly after epoch 2, then resumed.
    let stopped = dir.path().join("stopped");
    let first = train(&config, &stopped, &["--stop-after-epoch", "2"]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("Stopped after epoch 2"));
    assert!(!stopped.join(outputs::MODEL_WEIGHTS).exists());
    train(&config, &stopped, &[]);

    // Killed outright once the first checkpoint exists, then resumed.
    let killed = dir.path().join("killed");
    let mut child = trainer(&["train", "--config"], &[&config])
        .arg("--output")
        .arg(&killed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !killed
        .join(outputs::CHECKPOINTS)
        .join("epoch-00001")
        .exists()
    {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    train(&config, &killed, &[]);

    let weights = std::fs::read(whole.join(outputs::MODEL_WEIGHTS)).unwrap();
    for resumed in [&stopped, &killed] {
        assert!(
            std::fs::read(resumed.join(outputs::MODEL_WEIGHTS)).unwrap() == weights,
            "{} ended with other weights",
            resumed.display()
        );
        assert_eq!(
            epoch_metrics_without_time(resumed),
            epoch_metrics_without_time(&whole)
        );
        assert_eq!(
            std::fs::read_to_string(resumed.join(outputs::TEST_METRICS)).unwrap(),
            std::fs::read_to_string(whole.join(outputs::TEST_METRICS)).unwrap()
        );
    }
}

#[test]
fn resuming_with_another_configuration_is_refused() {
    let (dir, _) = dataset(4);
    let config = tiny_experiment(dir.path(), 2, "");
    let out = dir.path().join("run");
    let log = dir.path().join("termination-log");
    let log_arg = log.to_str().unwrap();
    train(
        &config,
        &out,
        &["--stop-after-epoch", "1", "--termination-log", log_arg],
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "stopped after epoch 1"
    );
    let changed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("seed: 3", "seed: 4");
    std::fs::write(&config, changed).unwrap();
    let result = trainer(&["train", "--config"], &[&config])
        .arg("--output")
        .arg(&out)
        .env("VOXEL_TERMINATION_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(
        result.status.code(),
        Some(voxel_trainer::error::EXIT_BAD_CONFIG)
    );
    assert!(String::from_utf8_lossy(&result.stderr).contains("different configuration"));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("bad configuration (exit 78): ")
            && message.contains("different configuration"),
        "{message}"
    );
}

#[test]
fn infer_and_evaluate_reproduce_the_test_metrics_with_the_input_geometry() {
    let (dir, csv) = dataset(6);
    let config = tiny_experiment(dir.path(), 2, "");
    let run = dir.path().join("run");
    let log = dir.path().join("termination-log");
    let trained = train(
        &config,
        &run,
        &[
            "--metrics-address",
            "127.0.0.1:0",
            "--termination-log",
            log.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&trained.stderr).contains("serving metrics"));
    // The termination message is the test summary, as the trainer wrote it to summary.json.
    let message: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(outputs::SUMMARY)).unwrap())
            .unwrap();
    assert_eq!(message["epochs"], 2);
    assert_eq!(message["subjects"], summary["subjects"]);
    assert_eq!(message["structures"], summary["structures"]);

    // A dataset CSV of the test subjects only.
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(outputs::SPLIT)).unwrap()).unwrap();
    let test: Vec<String> = split["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(!test.is_empty());
    let all = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = vec![all.lines().next().unwrap()];
    lines.extend(
        all.lines()
            .skip(1)
            .filter(|l| test.iter().any(|t| l.starts_with(&format!("{t},")))),
    );
    let test_csv = dir.path().join("test.csv");
    std::fs::write(&test_csv, lines.join("\n") + "\n").unwrap();

    let predictions = dir.path().join("predictions");
    check(
        trainer(&["infer", "--model"], &[&run])
            .arg("--dataset")
            .arg(&test_csv)
            .arg("--output")
            .arg(&predictions)
            .output()
            .unwrap(),
    );
    let metrics = dir.path().join("metrics.csv");
    check(
        trainer(&["evaluate", "--dataset"], &[&test_csv])
            .arg("--predictions")
            .arg(&predictions)
            .arg("--output")
            .arg(&metrics)
            .output()
            .unwrap(),
    );
    assert_eq!(
        read_metrics_csv(&metrics).unwrap(),
        read_metrics_csv(&run.join(outputs::TEST_METRICS)).unwrap()
    );

    for subject in &test {
        let image = read_volume(&dir.path().join(format!("images/{subject}.nii.gz"))).unwrap();
        for file in ["anterior.nii.gz", "posterior.nii.gz", outputs::SEGMENTATION] {
            let written = read_volume(&predictions.join(subject).join(file)).unwrap();
            assert_eq!(written.data.dim(), image.data.dim(), "{subject}/{file}");
            assert_eq!(written.spacing_mm, image.spacing_mm);
            let (w, i) = (&written.header, &image.header);
            assert_eq!((w.qform_code, w.sform_code), (i.qform_code, i.sform_code));
            assert_eq!(
                (w.srow_x, w.srow_y, w.srow_z),
                (i.srow_x, i.srow_y, i.srow_z)
            );
            assert_eq!(
                (w.quatern_b, w.quatern_c, w.quatern_d),
                (i.quatern_b, i.quatern_c, i.quatern_d)
            );
            assert_eq!(
                (w.quatern_x, w.quatern_y, w.quatern_z),
                (i.quatern_x, i.quatern_y, i.quatern_z)
            );
        }
        let classes = read_volume(&predictions.join(subject).join(outputs::SEGMENTATION)).unwrap();
        assert!(
            classes
                .data
                .iter()
                .all(|&c| c == 0.0 || c == 1.0 || c == 2.0)
        );
    }
}
