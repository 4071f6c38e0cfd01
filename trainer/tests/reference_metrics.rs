//! Reproduces the reference segmentation metrics of `tests/data/reference/` from the NIfTI
//! masks stored beside them.
//!
//! The expected values are the "numpy/scipy (own definition)" entries of
//! `reference_values.json`, computed in Python with numpy and scipy from the same files (see
//! the README in that folder). They agree with medpy 0.5.2 and MONAI 1.6.1.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use serde_json::Value;
use voxel_trainer::{
    data::volume::read_volume,
    metrics::{SpacingMm, StructureMetrics, evaluate_structure},
};

/// Largest absolute difference allowed between a computed and a reference value. Dice and
/// the distances in mm are both held to it; the reference values carry full f64 precision.
const TOLERANCE: f64 = 1e-6;

/// The package whose values the Rust implementation reproduces.
const REFERENCE_PACKAGE: &str = "numpy/scipy (own definition)";

/// Number of reference cases with two non-empty masks.
const REFERENCE_CASES: usize = 18;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference")
}

/// A binary mask read from a NIfTI file, with the voxel spacing of its header.
struct LoadedMask {
    /// Voxels above 0.5, indexed [i, j, k] in file order.
    voxels: Array3<bool>,
    /// pixdim[1..4] of the header: float32 widened exactly to f64, as the reference did.
    spacing_mm: SpacingMm,
}

/// Reads a mask with the trainer's own NIfTI loader (so the loader is under test too).
fn load_mask(path: &Path) -> Result<LoadedMask, Box<dyn std::error::Error>> {
    let volume = read_volume(path)?;
    Ok(LoadedMask {
        voxels: volume.data.mapv(|value| value > 0.5),
        spacing_mm: volume.spacing_mm,
    })
}

/// Parses `reference_values.json`, written by Python's `json`, which spells non-finite
/// numbers as the bare tokens `NaN`, `Infinity` and `-Infinity` that JSON does not allow.
/// Outside string literals they are turned into strings, which [`number`] reads back.
fn parse_python_json(text: &str) -> Result<Value, serde_json::Error> {
    let mut quoted = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(character) = rest.chars().next() {
        if in_string {
            if character == '\\' {
                let escaped_len = rest.chars().take(2).map(char::len_utf8).sum();
                quoted.push_str(&rest[..escaped_len]);
                rest = &rest[escaped_len..];
                continue;
            }
            in_string = character != '"';
        } else if character == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|token| rest.starts_with(token))
        {
            quoted.push_str(&format!("\"{token}\""));
            rest = &rest[token.len()..];
            continue;
        }
        quoted.push(character);
        rest = &rest[character.len_utf8()..];
    }
    serde_json::from_str(&quoted)
}

/// A number of the reference file, including the non-finite ones that [`parse_python_json`]
/// turned into strings.
fn number(value: &Value) -> f64 {
    match value {
        Value::String(token) if token == "NaN" => f64::NAN,
        Value::String(token) if token == "Infinity" => f64::INFINITY,
        Value::String(token) if token == "-Infinity" => f64::NEG_INFINITY,
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

fn load_reference() -> Result<Value, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(reference_dir().join("reference_values.json"))?;
    Ok(parse_python_json(&text)?)
}

/// Whether `actual` matches `expected`: both NaN, the same infinity, or within [`TOLERANCE`].
fn matches(actual: f64, expected: f64) -> bool {
    if expected.is_nan() {
        actual.is_nan()
    } else if expected.is_infinite() {
        actual == expected
    } else {
        (actual - expected).abs() <= TOLERANCE
    }
}

/// Lists every metric of `actual` that differs from `expected`, one line each.
fn mismatches(case: &str, actual: &StructureMetrics, expected: &StructureMetrics) -> Vec<String> {
    [
        ("dice", actual.dice, expected.dice),
        ("hausdorff_mm", actual.hausdorff_mm, expected.hausdorff_mm),
        (
            "hausdorff95_mm",
            actual.hausdorff95_mm,
            expected.hausdorff95_mm,
        ),
        (
            "hausdorff95_max_directed_mm",
            actual.hausdorff95_max_directed_mm,
            expected.hausdorff95_max_directed_mm,
        ),
        (
            "mean_surface_distance_mm",
            actual.mean_surface_distance_mm,
            expected.mean_surface_distance_mm,
        ),
    ]
    .into_iter()
    .filter(|&(_, actual, expected)| !matches(actual, expected))
    .map(|(metric, actual, expected)| format!("{case}: {metric} = {actual}, expected {expected}"))
    .collect()
}

#[test]
fn all_reference_cases_reproduce_the_numpy_scipy_values() -> TestResult {
    let reference = load_reference()?;
    let cases = reference["cases"]
        .as_array()
        .ok_or("reference file has no \"cases\" list")?;
    assert_eq!(cases.len(), REFERENCE_CASES);

    let mut failures = Vec::new();
    for (row, case) in cases.iter().enumerate() {
        let dataset_dir = reference_dir().join(case["dataset"].as_str().ok_or("no dataset")?);
        let truth_file = case["reference"].as_str().ok_or("no reference file")?;
        let prediction_file = case["prediction"].as_str().ok_or("no prediction file")?;
        let name = format!("row {} ({prediction_file} against {truth_file})", row + 1);

        let truth = load_mask(&dataset_dir.join(truth_file))?;
        let prediction = load_mask(&dataset_dir.join(prediction_file))?;
        // Guards the loader: voxel counts and spacing must be those the reference read.
        let expected_spacing: Vec<f64> = case["spacing"]
            .as_array()
            .ok_or("no spacing")?
            .iter()
            .map(number)
            .collect();
        assert_eq!(
            truth.spacing_mm.to_vec(),
            expected_spacing,
            "{name}: spacing"
        );
        assert_eq!(
            prediction.spacing_mm, truth.spacing_mm,
            "{name}: spacing of prediction"
        );
        let count = |mask: &Array3<bool>| mask.iter().filter(|&&inside| inside).count() as f64;
        assert_eq!(
            count(&truth.voxels),
            number(&case["voxels_ref"]),
            "{name}: truth voxels"
        );
        assert_eq!(
            count(&prediction.voxels),
            number(&case["voxels_pred"]),
            "{name}: voxels"
        );

        let expected_values = &case["metrics"][REFERENCE_PACKAGE];
        let expected = StructureMetrics {
            dice: number(&expected_values["dice"]),
            hausdorff_mm: number(&expected_values["hd"]),
            hausdorff95_mm: number(&expected_values["hd95_pooled"]),
            hausdorff95_max_directed_mm: number(&expected_values["hd95_maxdir"]),
            mean_surface_distance_mm: number(&expected_values["assd"]),
        };
        let actual = evaluate_structure(
            prediction.voxels.view(),
            truth.voxels.view(),
            truth.spacing_mm,
        )?;
        failures.extend(mismatches(&name, &actual, &expected));
    }

    assert!(
        failures.is_empty(),
        "values differ from the reference:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// The reference's metrics of a case with an empty mask, where it reports one HD95 for both
/// definitions.
fn expected_empty_case(
    reference: &Value,
    prediction_label: &str,
    truth_label: &str,
) -> StructureMetrics {
    let case = reference["empty"]
        .as_array()
        .and_then(|cases| {
            cases.iter().find(|case| {
                case["prediction"].as_str() == Some(prediction_label)
                    && case["reference"].as_str() == Some(truth_label)
            })
        })
        .unwrap_or_else(|| panic!("no empty-mask case {prediction_label} against {truth_label}"));
    let values = &case["metrics"][REFERENCE_PACKAGE];
    StructureMetrics {
        dice: number(&values["dice"]),
        hausdorff_mm: number(&values["hd"]),
        hausdorff95_mm: number(&values["hd95"]),
        hausdorff95_max_directed_mm: number(&values["hd95"]),
        mean_surface_distance_mm: number(&values["assd"]),
    }
}

/// An 8×8×8 grid with the 2×2×2 cube [3..5]³ set, or nothing set: the reference's masks.
fn synthetic_mask(with_cube: bool) -> Array3<bool> {
    Array3::from_shape_fn((8, 8, 8), |(i, j, k)| {
        with_cube && [i, j, k].iter().all(|index| (3..5).contains(index))
    })
}

#[test]
fn empty_prediction_of_a_real_structure_gives_dice_zero_and_infinite_distances() -> TestResult {
    let reference = load_reference()?;
    let expected = expected_empty_case(
        &reference,
        "masks_fast/lung_middle_lobe_right.nii.gz (empty)",
        "masks_total/lung_middle_lobe_right.nii.gz (1 voxel)",
    );
    let dataset_dir = reference_dir().join("totalsegmentator-example-ct");
    let truth = load_mask(&dataset_dir.join("masks_total/lung_middle_lobe_right.nii.gz"))?;
    let prediction = load_mask(&dataset_dir.join("masks_fast/lung_middle_lobe_right.nii.gz"))?;

    let actual = evaluate_structure(
        prediction.voxels.view(),
        truth.voxels.view(),
        truth.spacing_mm,
    )?;
    assert_eq!(
        mismatches("lung_middle_lobe_right", &actual, &expected),
        Vec::<String>::new()
    );
    assert_eq!(actual.dice, 0.0);
    assert_eq!(actual.hausdorff_mm, f64::INFINITY);
    Ok(())
}

#[test]
fn exactly_one_empty_mask_gives_dice_zero_and_infinite_distances() -> TestResult {
    let reference = load_reference()?;
    let (cube, empty) = (synthetic_mask(true), synthetic_mask(false));

    let missed = evaluate_structure(empty.view(), cube.view(), [1.0; 3])?;
    let expected_missed = expected_empty_case(&reference, "empty", "2x2x2 cube");
    assert_eq!(
        mismatches("empty prediction", &missed, &expected_missed),
        Vec::<String>::new()
    );

    let spurious = evaluate_structure(cube.view(), empty.view(), [1.0; 3])?;
    let expected_spurious = expected_empty_case(&reference, "2x2x2 cube", "empty");
    assert_eq!(
        mismatches("empty truth", &spurious, &expected_spurious),
        Vec::<String>::new()
    );

    assert_eq!(missed.dice, 0.0);
    assert_eq!(missed.mean_surface_distance_mm, f64::INFINITY);
    Ok(())
}

#[test]
fn two_empty_masks_give_nan_for_every_metric() -> TestResult {
    let reference = load_reference()?;
    let empty = synthetic_mask(false);

    let actual = evaluate_structure(empty.view(), empty.view(), [1.0; 3])?;
    let expected = expected_empty_case(&reference, "empty", "empty");
    assert_eq!(
        mismatches("both empty", &actual, &expected),
        Vec::<String>::new()
    );
    assert!(actual.dice.is_nan() && actual.hausdorff95_max_directed_mm.is_nan());
    Ok(())
}

#[test]
fn python_json_tokens_outside_strings_become_numbers_and_strings_stay_intact() -> TestResult {
    let parsed = parse_python_json(r#"{"a": NaN, "b": -Infinity, "c": "np.NaN \" Infinity"}"#)?;
    assert!(number(&parsed["a"]).is_nan());
    assert_eq!(number(&parsed["b"]), f64::NEG_INFINITY);
    assert_eq!(parsed["c"], "np.NaN \" Infinity");
    Ok(())
}
