//! Scoring predictions against ground truth: per-subject metrics, their CSV, and the summary.
//!
//! Conventions (the same in every file and table): Dice is a fraction in [0, 1]; distances are
//! in millimetres. A structure empty in both prediction and ground truth has NaN for every
//! metric and is left out of means; empty in exactly one gives Dice 0 and infinite distances.
//! Means and standard deviations are taken over the finite values, and the summary reports how
//! many values entered (`count`), how many were NaN (`nan`) and how many infinite (`infinite`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;
use ndarray::{ArrayView3, ArrayView4, Axis};
use serde::{Deserialize, Serialize};

use crate::{
    data::{dataset::Dataset, volume::read_volume},
    error::bad_data,
    metrics::{StructureMetrics, evaluate_structure},
    outputs,
};

/// The metrics of one structure of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Subject identifier.
    pub subject: String,
    /// Structure name.
    pub structure: String,
    /// The metrics.
    #[serde(flatten)]
    pub metrics: StructureMetrics,
}

/// Names of the metrics, as in the CSV columns.
pub const METRIC_NAMES: [&str; 5] = [
    "dice",
    "hausdorff_mm",
    "hausdorff95_mm",
    "hausdorff95_max_directed_mm",
    "mean_surface_distance_mm",
];

fn metric_values(m: &StructureMetrics) -> [f64; 5] {
    [
        m.dice,
        m.hausdorff_mm,
        m.hausdorff95_mm,
        m.hausdorff95_max_directed_mm,
        m.mean_surface_distance_mm,
    ]
}

/// Scores one structure of one subject from in-memory masks.
pub fn score(
    subject: &str,
    structure: &str,
    prediction: ArrayView3<bool>,
    truth: ArrayView3<bool>,
    spacing_mm: [f64; 3],
) -> anyhow::Result<MetricsRow> {
    let metrics = evaluate_structure(prediction, truth, spacing_mm)
        .map_err(|e| bad_data(format!("subject {subject}, structure {structure}: {e}")))?;
    Ok(MetricsRow {
        subject: subject.into(),
        structure: structure.into(),
        metrics,
    })
}

/// Scores every structure of one subject: `predicted` and `truth` are masks (0 or 1) of the
/// shape `[structure, i, j, k]`, in the order of `structures`.
pub fn score_subject(
    subject: &str,
    structures: &[String],
    predicted: ArrayView4<u8>,
    truth: ArrayView4<u8>,
    spacing_mm: [f64; 3],
) -> anyhow::Result<Vec<MetricsRow>> {
    let mut rows = Vec::with_capacity(structures.len());
    for (s, structure) in structures.iter().enumerate() {
        let p = predicted.index_axis(Axis(0), s).mapv(|v| v > 0);
        let t = truth.index_axis(Axis(0), s).mapv(|v| v > 0);
        rows.push(score(subject, structure, p.view(), t.view(), spacing_mm)?);
    }
    Ok(rows)
}

/// Writes rows as CSV with the columns of [`outputs::METRICS_COLUMNS`]. Non-finite values are
/// written as `NaN`, `inf` and `-inf`, which pandas and numpy read back.
pub fn write_metrics_csv(path: &Path, rows: &[MetricsRow]) -> anyhow::Result<()> {
    let partial = path.with_extension("csv.partial");
    let mut writer = csv::Writer::from_path(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    writer.write_record(outputs::METRICS_COLUMNS)?;
    for row in rows {
        let mut record = vec![row.subject.clone(), row.structure.clone()];
        record.extend(metric_values(&row.metrics).iter().map(|v| format_value(*v)));
        writer.write_record(&record)?;
    }
    writer.flush()?;
    drop(writer);
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Formats a metric so that it reads back exactly (shortest round-trip representation).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v}")
    }
}

/// Reads a metrics CSV written by [`write_metrics_csv`] (or by anyone using its columns).
pub fn read_metrics_csv(path: &Path) -> anyhow::Result<Vec<MetricsRow>> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| bad_data(format!("cannot read metrics CSV {}: {e}", path.display())))?;
    let headers = reader.headers()?.clone();
    let missing: Vec<&str> = outputs::METRICS_COLUMNS
        .iter()
        .copied()
        .filter(|c| !headers.iter().any(|h| h == *c))
        .collect();
    if !missing.is_empty() {
        return Err(bad_data(format!(
            "metrics CSV {}: missing columns {missing:?}",
            path.display()
        )));
    }
    let mut rows = Vec::new();
    for record in reader.deserialize::<MetricsRow>() {
        rows.push(record.map_err(|e| bad_data(format!("metrics CSV {}: {e}", path.display())))?);
    }
    Ok(rows)
}

/// Statistics of one metric of one structure over subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Aggregate {
    /// Mean of the finite values; `null` when there are none.
    pub mean: Option<f64>,
    /// Sample standard deviation (n - 1) of the finite values; `null` below two values.
    pub std: Option<f64>,
    /// Number of finite values that entered the mean.
    pub count: usize,
    /// Number of NaN values (structure empty in both prediction and ground truth).
    pub nan: usize,
    /// Number of infinite values (structure empty in exactly one of them).
    pub infinite: usize,
}

impl Aggregate {
    /// Aggregates values, finite ones entering the statistics.
    pub fn of(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = finite.len();
        let mean = (n > 0).then(|| finite.iter().sum::<f64>() / n as f64);
        let std = mean
            .filter(|_| n > 1)
            .map(|m| (finite.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Self {
            mean,
            std,
            count: n,
            nan: values.iter().filter(|v| v.is_nan()).count(),
            infinite: values.iter().filter(|v| v.is_infinite()).count(),
        }
    }
}

/// Per-structure, per-metric aggregates of a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Number of distinct subjects scored.
    pub subjects: usize,
    /// Structure -> metric name -> aggregate.
    pub structures: BTreeMap<String, BTreeMap<String, Aggregate>>,
}

impl Summary {
    /// Summarises rows.
    pub fn of(rows: &[MetricsRow]) -> Self {
        let mut by_structure: BTreeMap<String, Vec<&StructureMetrics>> = BTreeMap::new();
        for row in rows {
            by_structure
                .entry(row.structure.clone())
                .or_default()
                .push(&row.metrics);
        }
        let structures = by_structure
            .into_iter()
            .map(|(structure, metrics)| {
                let per_metric = METRIC_NAMES
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let values: Vec<f64> =
                            metrics.iter().map(|m| metric_values(m)[i]).collect();
                        (name.to_string(), Aggregate::of(&values))
                    })
                    .collect();
                (structure, per_metric)
            })
            .collect();
        let mut subjects: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        Self {
            subjects: subjects.len(),
            structures,
        }
    }

    /// Writes the summary as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// A plain-text table: one line per structure with Dice and HD95.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<16} {:>16} {:>18} {:>18} {:>6}\n",
            "structure", "dice", "hd95_mm", "msd_mm", "n"
        );
        let cell = |a: Option<&Aggregate>| match a {
            Some(Aggregate {
                mean: Some(m), std, ..
            }) => {
                format!("{m:.4} ± {:.4}", std.unwrap_or(0.0))
            }
            _ => "n/a".into(),
        };
        for (structure, metrics) in &self.structures {
            out += &format!(
                "{:<16} {:>16} {:>18} {:>18} {:>6}\n",
                structure,
                cell(metrics.get("dice")),
                cell(metrics.get("hausdorff95_mm")),
                cell(metrics.get("mean_surface_distance_mm")),
                metrics.get("dice").map_or(0, |a| a.count)
            );
        }
        out
    }
}

/// Scores the predictions in `predictions` (`<subject>/<structure>.nii.gz`) against the masks
/// of `dataset`. Structures default to every mask file found in the prediction folders.
pub fn evaluate_folder(
    dataset: &Dataset,
    predictions: &Path,
    structures: Option<&[String]>,
) -> anyhow::Result<Vec<MetricsRow>> {
    let entries = std::fs::read_dir(predictions).map_err(|e| {
        bad_data(format!(
            "cannot read predictions folder {}: {e}",
            predictions.display()
        ))
    })?;
    let mut subject_dirs: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    subject_dirs.sort();
    if subject_dirs.is_empty() {
        return Err(bad_data(format!(
            "predictions folder {} has no subject folders",
            predictions.display()
        )));
    }
    let structures: Vec<String> = match structures {
        Some(s) => s.to_vec(),
        None => {
            let mut found = Vec::new();
            for (_, dir) in &subject_dirs {
                for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(outputs::MASK_EXTENSION)
                        && name != outputs::SEGMENTATION
                        && !found.iter().any(|f: &String| f == stem)
                    {
                        found.push(stem.to_string());
                    }
                }
            }
            found.sort();
            found
        }
    };

    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (subject, dir) in &subject_dirs {
        let Some(files) = dataset.subjects.get(subject) else {
            problems.push(format!(
                "subject {subject}: predicted in {} but not in the dataset {}",
                dir.display(),
                dataset.csv_path.display()
            ));
            continue;
        };
        for structure in &structures {
            let predicted = dir.join(format!("{structure}{}", outputs::MASK_EXTENSION));
            let Some(truth_path) = files.files.get(structure) else {
                problems.push(format!(
                    "subject {subject}: the dataset has no ground truth for structure {structure:?}"
                ));
                continue;
            };
            match score_files(subject, structure, &predicted, truth_path) {
                Ok(row) => rows.push(row),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    if !problems.is_empty() {
        return Err(bad_data(format!(
            "cannot evaluate {}: {} problem(s):\n  {}",
            predictions.display(),
            problems.len(),
            problems.join("\n  ")
        )));
    }
    Ok(rows)
}

fn score_files(
    subject: &str,
    structure: &str,
    predicted: &Path,
    truth: &Path,
) -> anyhow::Result<MetricsRow> {
    let prediction =
        read_volume(predicted).map_err(|e| bad_data(format!("subject {subject}: {e}")))?;
    let truth_volume =
        read_volume(truth).map_err(|e| bad_data(format!("subject {subject}: {e}")))?;
    if prediction.data.dim() != truth_volume.data.dim() {
        return Err(bad_data(format!(
            "subject {subject}, structure {structure}: prediction {} has shape {:?} but ground \
             truth {} has shape {:?}",
            predicted.display(),
            prediction.data.shape(),
            truth.display(),
            truth_volume.data.shape()
        )));
    }
    let p = prediction.data.mapv(|v| v > 0.5);
    let t = truth_volume.data.mapv(|v| v > 0.5);
    score(
        subject,
        structure,
        p.view(),
        t.view(),
        truth_volume.spacing_mm,
    )
}
