//! Bad input is rejected before training, with a message naming the subject, the file and
//! what is wrong; every problem of a dataset is reported at once.

mod common;

use std::{path::Path, process::Command};

use common::{copy_subjects, example_subjects, tiny_experiment, trainer_bin};
use voxel_crds::experiment::ChannelNormalization;
use voxel_trainer::{
    data::{
        dataset::read_dataset,
        subject::{LoadRequest, load_subjects},
        volume::{read_volume, write_float, write_mask},
    },
    error::{EXIT_BAD_CONFIG, EXIT_BAD_DATA},
};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Loads every subject of `dir/dataset.csv` with the example's channels; returns the error text.
fn load_error(dir: &Path) -> String {
    let dataset = match read_dataset(&dir.join("dataset.csv")) {
        Ok(dataset) => dataset,
        Err(e) => return format!("{e:#}"),
    };
    let channels = strings(&["mr"]);
    let structures = strings(&["anterior", "posterior"]);
    let normalization: Vec<ChannelNormalization> = Vec::new();
    let request = LoadRequest {
        image_channels: &channels,
        structures: &structures,
        normalization: &normalization,
    };
    match load_subjects(&dataset, &dataset.subject_ids(), request) {
        Ok(_) => panic!("the dataset in {} was accepted", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn two_subjects() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let ids = example_subjects(2);
    copy_subjects(dir.path(), &ids);
    (dir, ids)
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "message does not mention {part:?}:\n{message}"
        );
    }
}

#[test]
fn missing_file_names_subject_and_path() {
    let (dir, ids) = two_subjects();
    let file = format!("masks/{}_anterior.nii.gz", ids[0]);
    std::fs::remove_file(dir.path().join(&file)).unwrap();
    assert_mentions(&load_error(dir.path()), &[&ids[0], &file, "does not exist"]);
}

#[test]
fn git_lfs_pointer_is_reported_as_such() {
    let (dir, ids) = two_subjects();
    let file = format!("images/{}.nii.gz", ids[1]);
    std::fs::write(
        dir.path().join(&file),
        "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 123\n",
    )
    .unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &[&ids[1], &file, "Git LFS pointer"],
    );
}

#[test]
fn truncated_gzip_is_reported_with_its_file() {
    let (dir, ids) = two_subjects();
    let file = format!("images/{}.nii.gz", ids[0]);
    let path = dir.path().join(&file);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &[&ids[0], &file, "not a readable NIfTI"],
    );
}

#[test]
fn mask_of_another_shape_is_rejected() {
    let (dir, ids) = two_subjects();
    let file = format!("masks/{}_posterior.nii.gz", ids[0]);
    let path = dir.path().join(&file);
    let mask = read_volume(&path).unwrap();
    let cropped = mask.data.slice(ndarray::s![1.., .., ..]).mapv(|v| v as u8);
    write_mask(&path, cropped.view(), &mask.header).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &[&ids[0], &file, "shape", "differs"],
    );
}

#[test]
fn mask_with_another_spacing_is_rejected() {
    let (dir, ids) = two_subjects();
    let file = format!("masks/{}_anterior.nii.gz", ids[1]);
    let path = dir.path().join(&file);
    let mask = read_volume(&path).unwrap();
    let mut header = mask.header.clone();
    header.pixdim[3] = 2.0;
    write_float(&path, mask.data.view(), &header).unwrap();
    assert_mentions(&load_error(dir.path()), &[&ids[1], &file, "spacing"]);
}

#[test]
fn nan_voxels_are_counted_and_reported() {
    let (dir, ids) = two_subjects();
    let file = format!("images/{}.nii.gz", ids[0]);
    let path = dir.path().join(&file);
    let mut image = read_volume(&path).unwrap();
    image.data[[3, 4, 5]] = f32::NAN;
    image.data[[4, 4, 5]] = f32::INFINITY;
    write_float(&path, image.data.view(), &image.header).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &[&ids[0], &file, "2 voxel(s) are NaN or infinite"],
    );
}

#[test]
fn multi_label_file_given_as_mask_is_not_binary() {
    let (dir, ids) = two_subjects();
    let file = format!("masks/{}_anterior.nii.gz", ids[0]);
    let path = dir.path().join(&file);
    let mask = read_volume(&path).unwrap();
    let labels = mask.data.mapv(|v| if v > 0.5 { 2u8 } else { 0 });
    write_mask(&path, labels.view(), &mask.header).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &[&ids[0], &file, "not binary", "2.0"],
    );
}

#[test]
fn channel_missing_from_the_csv_is_named() {
    let (dir, ids) = two_subjects();
    let csv = dir.path().join("dataset.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !(l.starts_with(&ids[1]) && l.ends_with(",posterior")))
        .collect();
    std::fs::write(&csv, kept.join("\n") + "\n").unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &[&ids[1], "no file for channel \"posterior\""],
    );
}

#[test]
fn duplicate_row_names_both_lines() {
    let (dir, ids) = two_subjects();
    let csv = dir.path().join("dataset.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text += &format!("{},images/{}.nii.gz,mr\n", ids[0], ids[0]);
    std::fs::write(&csv, text).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &["line 8", &ids[0], "channel mr twice", "line 2"],
    );
}

#[test]
fn duplicate_row_in_a_crlf_file_names_both_lines() {
    // Windows line endings, as the shipped dataset.csv has them.
    let (dir, ids) = two_subjects();
    let csv = dir.path().join("dataset.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap().replace('\n', "\r\n");
    text += &format!("{},images/{}.nii.gz,mr\r\n", ids[0], ids[0]);
    std::fs::write(&csv, text).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &["line 8:", &ids[0], "channel mr twice", "first on line 2)"],
    );
}

#[test]
fn every_problem_of_every_subject_is_reported_at_once() {
    let (dir, ids) = two_subjects();
    std::fs::remove_file(dir.path().join(format!("images/{}.nii.gz", ids[0]))).unwrap();
    std::fs::remove_file(
        dir.path()
            .join(format!("masks/{}_posterior.nii.gz", ids[1])),
    )
    .unwrap();
    let message = load_error(dir.path());
    assert_mentions(&message, &["2 problem(s)", &ids[0], &ids[1]]);
}

#[test]
fn overlapping_structures_are_reported_without_stopping() {
    let (dir, ids) = two_subjects();
    // The posterior mask becomes the union of both structures: it overlaps the anterior one.
    let anterior =
        read_volume(&dir.path().join(format!("masks/{}_anterior.nii.gz", ids[0]))).unwrap();
    let posterior_path = dir
        .path()
        .join(format!("masks/{}_posterior.nii.gz", ids[0]));
    let posterior = read_volume(&posterior_path).unwrap();
    let union = ndarray::Zip::from(&anterior.data)
        .and(&posterior.data)
        .map_collect(|&a, &p| u8::from(a > 0.5 || p > 0.5));
    write_mask(&posterior_path, union.view(), &posterior.header).unwrap();
    let expected_overlap = anterior.data.iter().filter(|&&v| v > 0.5).count();

    let dataset = read_dataset(&dir.path().join("dataset.csv")).unwrap();
    let (channels, structures) = (strings(&["mr"]), strings(&["anterior", "posterior"]));
    let request = LoadRequest {
        image_channels: &channels,
        structures: &structures,
        normalization: &[],
    };
    let subjects = load_subjects(&dataset, &ids, request).unwrap();
    assert_eq!(
        subjects[0].warnings,
        vec![format!(
            "structures \"anterior\" and \"posterior\" overlap in {expected_overlap} voxel(s); \
             \"posterior\" wins in the class map"
        )]
    );
    assert!(subjects[1].warnings.is_empty());
}

#[test]
fn trainer_exits_with_the_bad_data_code_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ids = example_subjects(4);
    copy_subjects(dir.path(), &ids);
    let file = format!("images/{}.nii.gz", ids[0]);
    std::fs::write(dir.path().join(&file), b"not an image").unwrap();
    let config = tiny_experiment(dir.path(), 1, "");
    let out = Command::new(trainer_bin())
        .args(["train", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_BAD_DATA), "{stderr}");
    assert_mentions(&stderr, &[&ids[0], &file]);
}

#[test]
fn trainer_exits_with_the_bad_config_code_and_names_the_field() {
    let (dir, _) = two_subjects();
    let config = tiny_experiment(dir.path(), 1, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[16, 16, 16]", "[16, 15, 16]");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(trainer_bin())
        .args(["train", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_CONFIG));
    assert_mentions(
        &String::from_utf8_lossy(&out.stderr),
        &["spec.model.preprocessing.cropSize", "[16, 15, 16]"],
    );
}

#[test]
fn the_shipped_example_dataset_is_valid() {
    let csv = common::example_data().join("dataset.csv");
    let dataset = read_dataset(&csv).unwrap();
    assert_eq!(dataset.subjects.len(), 195);
    let (channels, structures) = (strings(&["mr"]), strings(&["anterior", "posterior"]));
    let request = LoadRequest {
        image_channels: &channels,
        structures: &structures,
        normalization: &[],
    };
    let subjects = load_subjects(&dataset, &dataset.subject_ids(), request).unwrap();
    assert!(
        subjects
            .iter()
            .all(|s| s.warnings.is_empty() && s.spacing_mm == [1.0; 3])
    );
}
