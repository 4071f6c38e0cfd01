//! `voxel-trainer ensemble` on real MRI with CPU LibTorch: one member reproduces `infer` and the
//! member's own test metrics, two members give the argmax of their mean posteriors computed here
//! independently, a member twice is that member, and incompatible members or unknown subjects
//! are refused with the trainer's exit codes.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use common::{copy_subjects, example_subjects, tiny_experiment, trainer_bin};
use sha2::{Digest, Sha256};
use tch::{Device, Kind};
use voxel_trainer::{
    data::{
        dataset::read_dataset,
        subject::{LoadRequest, load_subjects},
        volume::read_volume,
    },
    error::{EXIT_BAD_CONFIG, EXIT_BAD_DATA},
    infer::{argmax_classes, ensemble::ENSEMBLE_RECORD},
    model::Model,
    outputs,
    train::tensor_f32,
};

/// Two tiny members trained once for all the tests of this file: the same data and split,
/// different seeds, hence different weights.
struct Fixture {
    /// Kept for the life of the test process (statics are never dropped); it lies under
    /// cargo's scratch folder for integration tests, which `cargo clean` empties.
    dir: tempfile::TempDir,
    /// All subjects, with masks.
    csv: PathBuf,
    /// The test subjects only, with masks.
    test_csv: PathBuf,
    /// The test subjects of the split both members share.
    test_subjects: Vec<String>,
    member_a: PathBuf,
    member_b: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let csv = copy_subjects(dir.path(), &example_subjects(8));
        let config_a = tiny_experiment(dir.path(), 1, "");
        let config_b = dir.path().join("experiment-b.yaml");
        let text = std::fs::read_to_string(&config_a).unwrap();
        std::fs::write(&config_b, text.replace("seed: 3", "seed: 4")).unwrap();

        // Both members train side by side, one thread each.
        let (member_a, member_b) = (dir.path().join("a"), dir.path().join("b"));
        let runs: Vec<_> = [(&config_a, &member_a), (&config_b, &member_b)]
            .into_iter()
            .map(|(config, output)| {
                trainer(&["train"])
                    .arg("--config")
                    .arg(config)
                    .arg("--output")
                    .arg(output)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for run in runs {
            check(run.wait_with_output().unwrap());
        }

        let split: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(member_a.join(outputs::SPLIT)).unwrap())
                .unwrap();
        let test_subjects: Vec<String> = split["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(!test_subjects.is_empty());
        let all = std::fs::read_to_string(&csv).unwrap();
        let mut lines: Vec<&str> = vec![all.lines().next().unwrap()];
        lines.extend(all.lines().skip(1).filter(|line| {
            test_subjects
                .iter()
                .any(|t| line.starts_with(&format!("{t},")))
        }));
        let test_csv = dir.path().join("test.csv");
        std::fs::write(&test_csv, lines.join("\n") + "\n").unwrap();
        Fixture {
            dir,
            csv,
            test_csv,
            test_subjects,
            member_a,
            member_b,
        }
    })
}

fn trainer(args: &[&str]) -> Command {
    let mut command = Command::new(trainer_bin());
    // One thread: LibTorch's CPU kernels are deterministic for a fixed thread count, and the
    // posteriors computed in this process below use one thread too.
    command.args(["--threads", "1"]).args(args);
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

/// Runs `ensemble` with the members, over the fixture's full CSV, into a fresh folder named
/// `name`; returns the command's output and the folder.
fn ensemble(name: &str, members: &[&Path], extra: &[&str]) -> (Output, PathBuf) {
    let f = fixture();
    let output = f.dir.path().join(name);
    let mut command = trainer(&["ensemble"]);
    for member in members {
        command.arg("--model").arg(member);
    }
    command
        .arg("--dataset")
        .arg(&f.csv)
        .arg("--output")
        .arg(&output)
        .args(extra);
    (command.output().unwrap(), output)
}

fn test_subjects_arg() -> String {
    fixture().test_subjects.join(",")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of every test subject's prediction folder under `folder`.
fn prediction_files(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for subject in &fixture().test_subjects {
        for file in ["anterior.nii.gz", "posterior.nii.gz", outputs::SEGMENTATION] {
            files.push(PathBuf::from(subject).join(file));
        }
    }
    assert!(
        files.iter().all(|f| folder.join(f).exists()),
        "{}",
        folder.display()
    );
    files
}

fn assert_same_predictions(left: &Path, right: &Path) {
    for file in prediction_files(left) {
        assert!(
            read(&left.join(&file)) == read(&right.join(&file)),
            "{} differs between {} and {}",
            file.display(),
            left.display(),
            right.display()
        );
    }
}

#[test]
fn one_member_reproduces_its_infer_output_and_its_test_metrics() {
    let f = fixture();
    let subjects = test_subjects_arg();
    let inferred = f.dir.path().join("infer-a");
    check(
        trainer(&["infer", "--model"])
            .arg(&f.member_a)
            .arg("--dataset")
            .arg(&f.test_csv)
            .arg("--output")
            .arg(&inferred)
            .output()
            .unwrap(),
    );

    for combine in ["mean", "majority-vote"] {
        let (output, out) = ensemble(
            &format!("one-{combine}"),
            &[&f.member_a],
            &["--subjects", &subjects, "--combine", combine],
        );
        let stdout = String::from_utf8_lossy(&check(output).stdout).into_owned();
        assert!(stdout.contains("Test metrics"), "{stdout}");

        assert_same_predictions(&inferred, &out.join(outputs::TEST_PREDICTIONS));
        // Training scored the same test subjects with the same masks: the same rows, the same
        // bytes, the same summary.
        for file in [outputs::TEST_METRICS, outputs::SUMMARY] {
            assert_eq!(
                std::fs::read_to_string(out.join(file)).unwrap(),
                std::fs::read_to_string(f.member_a.join(file)).unwrap(),
                "{file} with --combine {combine}"
            );
        }

        let record: serde_json::Value =
            serde_json::from_slice(&read(&out.join(ENSEMBLE_RECORD))).unwrap();
        let weights = read(&f.member_a.join(outputs::MODEL_WEIGHTS));
        let sha256: String = Sha256::digest(&weights)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(record["members"][0]["weightsSha256"], sha256.as_str());
        assert_eq!(
            Path::new(record["members"][0]["folder"].as_str().unwrap()),
            f.member_a
        );
        assert_eq!(record["combine"], combine);
        assert_eq!(record["subjects"], serde_json::json!(f.test_subjects));
        assert_eq!(record["scored"], true);
    }
}

fn differing_voxels(left: &ndarray::Array3<f32>, right: &ndarray::Array3<f32>) -> usize {
    assert_eq!(left.dim(), right.dim());
    ndarray::Zip::from(left)
        .and(right)
        .fold(0, |n, x, y| n + usize::from(x != y))
}

#[test]
fn two_members_give_the_argmax_of_their_mean_posteriors() {
    let f = fixture();
    let (output, out) = ensemble(
        "two",
        &[&f.member_a, &f.member_b],
        &[
            "--subjects",
            &test_subjects_arg(),
            "--largest-component",
            "false",
        ],
    );
    check(output);

    // The reference, computed here through the library: each member's posteriors in full,
    // their mean in float64, its argmax.
    tch::set_num_threads(1);
    let a = Model::load(&f.member_a, Device::Cpu).unwrap();
    let b = Model::load(&f.member_b, Device::Cpu).unwrap();
    let spec = &a.experiment.spec.model;
    let dataset = read_dataset(&f.csv).unwrap();
    let request = LoadRequest {
        image_channels: &spec.image_channels,
        structures: &[],
        normalization: &spec.preprocessing.normalization,
    };
    // Voxels where the mean's class differs from member A's and from member B's.
    let (mut unlike_a, mut unlike_b) = (0, 0);
    for subject in load_subjects(&dataset, &f.test_subjects, request).unwrap() {
        let image = tensor_f32(&subject.image);
        let (pa, pb) = (a.posteriors(&image), b.posteriors(&image));
        let mean = (pa.to_kind(Kind::Double) + pb.to_kind(Kind::Double)) / 2.0;
        let expected = argmax_classes(&mean);
        let as_f32 = |classes: ndarray::Array3<u8>| classes.mapv(f32::from);
        unlike_a += differing_voxels(&as_f32(argmax_classes(&pa)), &as_f32(expected.clone()));
        unlike_b += differing_voxels(&as_f32(argmax_classes(&pb)), &as_f32(expected.clone()));

        let folder = out.join(outputs::TEST_PREDICTIONS).join(&subject.id);
        let written = read_volume(&folder.join(outputs::SEGMENTATION)).unwrap();
        assert_eq!(
            differing_voxels(&written.data, &expected.mapv(f32::from)),
            0,
            "subject {}: class map",
            subject.id
        );
        for (s, structure) in spec.structures.iter().enumerate() {
            let mask = read_volume(&folder.join(format!("{structure}.nii.gz"))).unwrap();
            let label = s as u8 + 1;
            assert_eq!(
                differing_voxels(
                    &mask.data,
                    &expected.mapv(|c| f32::from(u8::from(c == label)))
                ),
                0,
                "subject {}: {structure}",
                subject.id
            );
        }
    }
    // Otherwise the comparison above would not tell the mean from either member alone.
    assert!(
        unlike_a > 0 && unlike_b > 0,
        "the mean equals a member: {unlike_a} voxels differ from A, {unlike_b} from B"
    );

    let metrics = std::fs::read_to_string(out.join(outputs::TEST_METRICS)).unwrap();
    assert_eq!(
        metrics.lines().next().unwrap(),
        outputs::METRICS_COLUMNS.join(",")
    );
    assert_eq!(metrics.lines().count(), 1 + 2 * f.test_subjects.len());
}

#[test]
fn the_same_member_twice_equals_that_member_alone() {
    let f = fixture();
    let subjects = test_subjects_arg();
    let (output, once) = ensemble("once", &[&f.member_a], &["--subjects", &subjects]);
    check(output);
    let (output, twice) = ensemble(
        "twice",
        &[&f.member_a, &f.member_a],
        &["--subjects", &subjects],
    );
    check(output);

    assert_same_predictions(
        &once.join(outputs::TEST_PREDICTIONS),
        &twice.join(outputs::TEST_PREDICTIONS),
    );
    for file in [outputs::TEST_METRICS, outputs::SUMMARY] {
        assert_eq!(read(&once.join(file)), read(&twice.join(file)), "{file}");
    }
}

#[test]
fn a_member_with_other_structures_is_refused_naming_its_folder() {
    let f = fixture();
    // A copy of member A whose structures are listed in the other order.
    let reordered = f.dir.path().join("reordered");
    std::fs::create_dir_all(&reordered).unwrap();
    std::fs::copy(
        f.member_a.join(outputs::MODEL_WEIGHTS),
        reordered.join(outputs::MODEL_WEIGHTS),
    )
    .unwrap();
    let config = std::fs::read_to_string(f.member_a.join(outputs::RESOLVED_CONFIG)).unwrap();
    let mut manifest: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
    manifest["spec"]["model"]["structures"] =
        serde_yaml::from_str("[posterior, anterior]").unwrap();
    std::fs::write(
        reordered.join(outputs::RESOLVED_CONFIG),
        serde_yaml::to_string(&manifest).unwrap(),
    )
    .unwrap();

    let (output, out) = ensemble("refused", &[&f.member_a, &reordered], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_BAD_CONFIG), "{stderr}");
    assert!(
        stderr.contains(&reordered.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("spec.model.structures"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a refused ensemble");
}

#[test]
fn an_unknown_subject_is_a_data_error_naming_it() {
    let f = fixture();
    let subjects = format!("{},no_such_subject", f.test_subjects[0]);
    let (output, out) = ensemble("unknown", &[&f.member_a], &["--subjects", &subjects]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_BAD_DATA), "{stderr}");
    assert!(stderr.contains("no_such_subject"), "{stderr}");
    assert!(
        !out.exists(),
        "nothing is written when a subject is unknown"
    );
}

#[test]
fn without_masks_the_subjects_are_predicted_but_not_scored() {
    let f = fixture();
    let all = std::fs::read_to_string(&f.test_csv).unwrap();
    let images_only: Vec<&str> = all
        .lines()
        .filter(|line| !line.ends_with(",anterior") && !line.ends_with(",posterior"))
        .collect();
    let csv = f.dir.path().join("images-only.csv");
    std::fs::write(&csv, images_only.join("\n") + "\n").unwrap();

    let out = f.dir.path().join("unscored");
    let output = trainer(&["ensemble", "--model"])
        .arg(&f.member_a)
        .arg("--dataset")
        .arg(&csv)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check(output).stdout).into_owned();
    assert!(!stdout.contains("Test metrics"), "{stdout}");

    prediction_files(&out.join(outputs::TEST_PREDICTIONS));
    assert!(!out.join(outputs::TEST_METRICS).exists());
    assert!(!out.join(outputs::SUMMARY).exists());
    let record: serde_json::Value =
        serde_json::from_slice(&read(&out.join(ENSEMBLE_RECORD))).unwrap();
    assert_eq!(record["scored"], false);
    assert_eq!(record["subjects"], serde_json::json!(f.test_subjects));
}
