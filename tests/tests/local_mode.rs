//! `voxel run` end to end on the shipped hippocampus MRI, with the example manifests of
//! `examples/hippocampus/` shrunk to train in seconds (see `shrunk_example`): the
//! CrossValidation trains its folds as `voxel-trainer` processes, ensembles them and publishes
//! version 1; the single model is compared with it and published as version 2; the Ensemble
//! combines both. The same manifest gives the same metrics twice; two runs publishing at once
//! get distinct versions; invalid manifests stop before anything starts.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Output,
};

use serde_json::Value;
use voxel_e2e::{
    dataset_subjects, example_data, read_json, sha256_file, shrunk_example, success, voxel,
    write_manifest, yaml,
};
use voxel_operator::folds::assign_folds;

const EPOCHS: u32 = 2;

fn run(state: &Path, manifest: &Path) -> String {
    let output = success(voxel(state).arg("run").arg("-f").arg(manifest));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_dir(state: &Path, kind: &str, name: &str) -> PathBuf {
    state.join("runs").join(kind).join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"));
    items
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn assert_contains(text: &str, expected: &[&str]) {
    for e in expected {
        assert!(text.contains(e), "missing {e:?} in:\n{text}");
    }
}

/// Where `alias` of `model` points, from `voxel models show`.
fn alias_target(state: &Path, model: &str, alias: &str) -> String {
    let shown = success(voxel(state).args(["models", "show", &format!("{model}@{alias}")]));
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("Model:"))
        .expect("a Model: line");
    line.trim_start_matches("Model:").trim().to_string()
}

fn check_cross_validation(state: &Path, manifest: &Path, table: &str) {
    assert_contains(
        table,
        &[
            "fold 0",
            "fold 2",
            "Aggregate over 3 folds",
            "Ensemble of the 3 fold models",
            "Published hippocampus version 1",
            "Alias production -> hippocampus:1",
        ],
    );

    // The folds: by subject, disjoint, covering every non-test subject, as the pure decision
    // assigns them from the example's seed (11).
    let run = run_dir(state, "crossvalidation", "hippocampus-cv");
    let plan = read_json(&run.join("folds.json"));
    let test = strings(&plan["testSubjects"]);
    let folds: Vec<Vec<String>> = plan["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    let all = dataset_subjects(&example_data().join("dataset_small.csv"));
    assert_eq!(test.len(), 8, "testFraction 0.2 of 40 subjects");
    let pool: Vec<String> = all.iter().filter(|s| !test.contains(s)).cloned().collect();
    assert_eq!(folds, assign_folds(&pool, 3, 11).unwrap());
    let mut seen = BTreeSet::new();
    for subject in folds.iter().flatten().chain(&test) {
        assert!(seen.insert(subject.clone()), "{subject} is in two places");
    }
    assert_eq!(seen.len(), all.len());
    for (fold, subjects) in folds.iter().enumerate() {
        let manifest: Value =
            serde_yaml::from_str(&read(&run.join(format!("fold-{fold}.yaml")))).unwrap();
        let split = &manifest["spec"]["data"]["split"];
        assert_eq!(
            &strings(&split["validationSubjects"]),
            subjects,
            "fold {fold}"
        );
        assert_eq!(strings(&split["testSubjects"]), test, "fold {fold}");
        let metrics = read(&run.join(format!("fold-{fold}/metrics.csv")));
        assert_eq!(
            metrics.lines().count(),
            1 + 2 * test.len(),
            "fold {fold} tested on the test set"
        );
    }
    let ensemble = read_json(&run.join("ensemble/ensemble.json"));
    assert_eq!(ensemble["members"].as_array().unwrap().len(), 3);
    let report = read_json(&run.join("report.json"));
    assert_eq!(report["folds"].as_array().unwrap().len(), 3);
    assert_eq!(report["ensemble"][0]["dice"]["count"], 8);

    // The published version: its files, digests and lineage.
    let version = state.join("registry/hippocampus/versions/1");
    assert_eq!(
        read(&version.join("metrics.csv")),
        read(&run.join("ensemble/metrics.csv")),
        "the published metrics are the ensemble's"
    );
    for fold in 0..3 {
        let weights = version.join(format!("artifacts/fold-{fold}/model.safetensors"));
        let trained = run.join(format!("fold-{fold}/model.safetensors"));
        assert_eq!(sha256_file(&weights), sha256_file(&trained));
        assert!(
            std::fs::metadata(&weights)
                .unwrap()
                .permissions()
                .readonly()
        );
    }
    let shown = success(voxel(state).args(["models", "show", "hippocampus:1"]));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_contains(
        &shown,
        &[
            "CrossValidation hippocampus-cv",
            &sha256_file(manifest),
            "seed:            42",
            "hippocampus-cv-fold-0, hippocampus-cv-fold-1, hippocampus-cv-fold-2",
            &sha256_file(&run.join("fold-0/model.safetensors")),
        ],
    );
}

#[test]
fn the_example_cross_validation_single_model_and_ensemble_run_compare_and_publish() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let cv = write_manifest(
        dir.path(),
        "cross-validation.yaml",
        &shrunk_example("cross-validation.yaml", EPOCHS),
    );
    let table = run(&state, &cv);
    check_cross_validation(&state, &cv, &table);

    // The single model, compared with version 1 on the same test subjects, is version 2.
    let single = write_manifest(
        dir.path(),
        "single-model.yaml",
        &shrunk_example("single-model.yaml", EPOCHS),
    );
    let table = run(&state, &single);
    assert_contains(
        &table,
        &[
            "Comparison with hippocampus:1",
            "Published hippocampus version 2",
        ],
    );
    let single_run = run_dir(&state, "experiment", "hippocampus-single");
    let comparison = read_json(&single_run.join("report.json"))["comparison"].clone();
    assert_eq!(comparison["baseline"], "hippocampus:1");
    let tests = comparison["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2 * 5, "one test per structure and metric");
    for test in tests.iter().filter(|t| t["metric"] == "dice") {
        assert_eq!(
            test["pairs"], 8,
            "paired on the 8 shared test subjects: {test}"
        );
    }

    // `voxel compare` on the two metrics files reaches the same p-values and verdicts.
    let compare_json = dir.path().join("compare.json");
    success(
        voxel(&state)
            .arg("compare")
            .arg(state.join("registry/hippocampus/versions/1/metrics.csv"))
            .arg(single_run.join("train/metrics.csv"))
            .arg("--output")
            .arg(&compare_json),
    );
    let standalone = read_json(&compare_json);
    assert_eq!(standalone["tests"], comparison["tests"]);
    assert_eq!(standalone["verdicts"], comparison["verdicts"]);

    // The alias moved only if version 2 is not significantly worse than version 1.
    let worse = comparison["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["verdict"] == "Worse");
    let expected = if worse {
        "hippocampus:1"
    } else {
        "hippocampus:2"
    };
    assert_eq!(
        alias_target(&state, "hippocampus", "production"),
        expected,
        "{comparison}"
    );

    // The Ensemble of both versions: three fold networks and the single one.
    let ensemble = write_manifest(
        dir.path(),
        "ensemble.yaml",
        &shrunk_example("ensemble.yaml", EPOCHS),
    );
    let table = run(&state, &ensemble);
    assert_contains(
        &table,
        &[
            &format!("Comparison with {expected}"),
            "Published hippocampus-ensemble version 1",
        ],
    );
    let ensemble_run = run_dir(&state, "ensemble", "hippocampus-all");
    let combined = read_json(&ensemble_run.join("ensemble/ensemble.json"));
    assert_eq!(
        combined["members"].as_array().unwrap().len(),
        4,
        "{combined}"
    );

    assert_contains(&table, &["Ensemble of 4 networks on the 8 test subjects"]);

    // Rerunning the first manifest reuses its folds, finds version 1 already published and
    // leaves the alias where the later versions put it.
    let table = run(&state, &cv);
    assert_contains(
        &table,
        &[
            "Already published hippocampus version 1",
            "Alias production not moved",
        ],
    );
    assert_eq!(alias_target(&state, "hippocampus", "production"), expected);

    let list = success(voxel(&state).args(["models", "list"]));
    let list = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        list.lines()
            .filter(|l| l.starts_with("hippocampus"))
            .count(),
        3,
        "{list}"
    );

    // A published file changed behind the registry's back is reported, and an Ensemble
    // refuses to use that version.
    let weights = state.join("registry/hippocampus/versions/2/artifacts/model.safetensors");
    let mut permissions = std::fs::metadata(&weights).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&weights, permissions).unwrap();
    std::fs::write(&weights, b"not the published weights").unwrap();
    let shown = success(voxel(&state).args(["models", "show", "hippocampus:2"]));
    assert_contains(
        &String::from_utf8_lossy(&shown.stdout),
        &["NOT OK: changed since publication"],
    );
    let (code, message) = refused(&state, &ensemble);
    assert_eq!(code, Some(65), "{message}");
    assert_contains(
        &message,
        &["hippocampus:2", "artifacts/model.safetensors", "changed"],
    );
}

#[test]
fn the_same_manifest_run_twice_gives_identical_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cv = write_manifest(
        dir.path(),
        "cross-validation.yaml",
        &shrunk_example("cross-validation.yaml", EPOCHS),
    );
    let states = [dir.path().join("first"), dir.path().join("second")];
    for state in &states {
        run(state, &cv);
    }
    let runs = states
        .each_ref()
        .map(|state| run_dir(state, "crossvalidation", "hippocampus-cv"));
    let files = [
        "fold-0/metrics.csv",
        "fold-1/metrics.csv",
        "fold-2/metrics.csv",
        "ensemble/metrics.csv",
        "fold-0/model.safetensors",
        "folds.json",
    ];
    for file in files {
        let [first, second] = runs.each_ref().map(|run| sha256_file(&run.join(file)));
        assert_eq!(
            first, second,
            "{file} differs between two runs of the same manifest"
        );
    }
    // Per-epoch losses and validation Dice too; only the last column, the seconds, may differ.
    let [first, second] = runs.each_ref().map(|run| {
        read(&run.join("fold-2/epoch_metrics.csv"))
            .lines()
            .map(|line| line.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(first.len(), 1 + EPOCHS as usize);
    assert_eq!(
        first, second,
        "fold-2/epoch_metrics.csv differs beyond its timings"
    );
}

#[test]
fn two_runs_publishing_at_once_get_distinct_consecutive_versions() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let manifests: Vec<PathBuf> = ["left", "right"]
        .iter()
        .map(|name| {
            let mut manifest = shrunk_example("experiment.yaml", 1);
            manifest["metadata"]["name"] = (*name).into();
            manifest["spec"]["publish"] = yaml("{model: race}");
            write_manifest(dir.path(), &format!("{name}.yaml"), &manifest)
        })
        .collect();
    let children: Vec<_> = manifests
        .iter()
        .map(|manifest| {
            voxel(&state)
                .arg("run")
                .arg("-f")
                .arg(manifest)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut versions = Vec::new();
    for output in &outputs {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("Published race version"))
            .unwrap();
        versions.push(
            line.split_whitespace()
                .nth(3)
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2]);
    let sources: BTreeSet<String> = (1..=2)
        .map(|v| {
            let shown = success(voxel(&state).args(["models", "show", &format!("race:{v}")]));
            let text = String::from_utf8_lossy(&shown.stdout).into_owned();
            text.lines()
                .find(|l| l.contains("source:"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(
        sources.len(),
        2,
        "each version comes from its own run: {sources:?}"
    );
}

fn refused(state: &Path, manifest: &Path) -> (Option<i32>, String) {
    let output = voxel(state)
        .arg("run")
        .arg("-f")
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "{} was accepted",
        manifest.display()
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_manifests_and_data_stop_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let mut one_fold = shrunk_example("cross-validation.yaml", 1);
    one_fold["spec"]["folds"] = 1.into();
    let path = write_manifest(dir.path(), "one-fold.yaml", &one_fold);
    let (code, message) = refused(&state, &path);
    assert_eq!(code, Some(78), "{message}");
    assert_contains(&message, &["spec.folds"]);

    let path = write_manifest(
        dir.path(),
        "ensemble.yaml",
        &shrunk_example("ensemble.yaml", 1),
    );
    let (code, message) = refused(&state, &path);
    assert_eq!(code, Some(78), "{message}");
    assert_contains(&message, &["spec.members", "hippocampus"]);

    // A dataset whose image file is missing is invalid data, named by subject and file.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for folder in ["images", "masks"] {
        std::os::unix::fs::symlink(example_data().join(folder), data.join(folder)).unwrap();
    }
    let csv = read(&example_data().join("dataset_small.csv"));
    let first = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let image = format!("images/{first}.nii.gz");
    assert!(csv.contains(&image));
    std::fs::write(
        data.join("dataset_small.csv"),
        csv.replace(&image, "images/missing.nii.gz"),
    )
    .unwrap();
    let mut missing = shrunk_example("cross-validation.yaml", 1);
    missing["spec"]["template"]["data"]["source"]["localPath"] = data.display().to_string().into();
    let path = write_manifest(dir.path(), "missing-file.yaml", &missing);
    let (code, message) = refused(&state, &path);
    assert_eq!(code, Some(65), "{message}");
    assert_contains(&message, &[&first, "missing.nii.gz"]);

    // A baseline that does not exist is found out before anything trains.
    let path = write_manifest(
        dir.path(),
        "single.yaml",
        &shrunk_example("single-model.yaml", 1),
    );
    let (code, message) = refused(&state, &path);
    assert_eq!(code, Some(78), "{message}");
    assert_contains(&message, &["spec.compareTo", "hippocampus"]);
    assert!(
        !run_dir(&state, "experiment", "hippocampus-single")
            .join("train")
            .exists()
    );

    assert!(!state.join("registry").exists(), "nothing was published");
}

#[test]
fn a_name_that_is_not_a_dns_subdomain_is_refused_and_fresh_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let keep = state.join("registry/keep.txt");
    std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
    std::fs::write(&keep, "published work").unwrap();
    for name in ["../../registry", "Hippo_CV", "/tmp/elsewhere", ""] {
        let mut manifest = shrunk_example("cross-validation.yaml", 1);
        manifest["metadata"]["name"] = name.into();
        let path = write_manifest(dir.path(), "named.yaml", &manifest);
        let output = voxel(&state)
            .arg("run")
            .arg("--fresh")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{name:?}: {message}");
        assert_contains(&message, &["metadata.name"]);
        assert_eq!(
            read(&keep),
            "published work",
            "{name:?} removed the registry"
        );
    }
}

#[test]
fn unknown_fields_are_warned_of_by_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = shrunk_example("experiment.yaml", 1);
    manifest["spec"]["training"]["learningrate"] = 0.3.into();
    let path = write_manifest(dir.path(), "typo.yaml", &manifest);
    let output = success(voxel(dir.path()).arg("validate").arg("-f").arg(&path));
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert_contains(&warnings, &["unknown field \"spec.training.learningrate\""]);
}
