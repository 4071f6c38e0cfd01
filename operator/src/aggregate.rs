//! Aggregation of fold results: the mean and standard deviation over folds of each fold's mean,
//! per structure and metric.
//!
//! Every fold of a cross-validation is scored on the same held-out test subjects, so the spread
//! over folds says how much the model depends on which subjects trained it.

use std::path::Path;

use voxel_crds::results::{METRIC_NAMES, MetricAggregate, StructureSummary};

use crate::metrics_table::{MetricsRow, MetricsTable};

/// Per-structure summary of a table of per-subject metrics, structures in order of appearance.
pub fn summarize(table: &MetricsTable) -> Vec<StructureSummary> {
    let mut structures: Vec<&str> = Vec::new();
    for row in table.rows() {
        if !structures.contains(&row.structure.as_str()) {
            structures.push(&row.structure);
        }
    }
    structures
        .into_iter()
        .map(|structure| {
            let rows: Vec<&MetricsRow> = table
                .rows()
                .iter()
                .filter(|r| r.structure == structure)
                .collect();
            let mut summary = StructureSummary {
                structure: structure.to_string(),
                ..StructureSummary::default()
            };
            for (column, metric) in METRIC_NAMES.iter().enumerate() {
                *summary.metric_mut(metric).expect("a known metric name") =
                    MetricAggregate::of(rows.iter().map(|r| r.values[column]));
            }
            summary
        })
        .collect()
}

/// Per-subject metrics of several runs scored on the same subjects (the folds of a
/// cross-validation on its test set), averaged over the runs: each subject and structure gets
/// the mean of every run's value. A NaN in any run (structure empty in both masks) makes the
/// mean NaN, and an infinite value (missed structure) makes it infinite, so that the
/// conventions of the per-run files carry over.
pub fn mean_over_runs(tables: &[MetricsTable]) -> Vec<MetricsRow> {
    let Some(first) = tables.first() else {
        return Vec::new();
    };
    first
        .rows()
        .iter()
        .filter_map(|row| {
            let mut values = [0.0; METRIC_NAMES.len()];
            for table in tables {
                let other = table.row(&row.subject, &row.structure)?;
                for (sum, value) in values.iter_mut().zip(other.values) {
                    *sum += value;
                }
            }
            for value in &mut values {
                *value /= tables.len() as f64;
            }
            Some(MetricsRow {
                subject: row.subject.clone(),
                structure: row.structure.clone(),
                values,
                line: 0,
            })
        })
        .collect()
}

/// Writes rows in the trainer's `metrics.csv` format (`NaN`, `inf` for non-finite values).
pub fn write_metrics(path: &Path, rows: &[MetricsRow]) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    let mut header = vec!["subject", "structure"];
    header.extend(METRIC_NAMES);
    writer.write_record(&header)?;
    for row in rows {
        let mut record = vec![row.subject.clone(), row.structure.clone()];
        record.extend(row.values.iter().map(|v| format_value(*v)));
        writer.write_record(&record)?;
    }
    writer.flush()
}

/// A metric value as the trainer writes it: shortest round-trip decimal, `NaN`, `inf`, `-inf`.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        value.to_string()
    }
}

/// Aggregates the per-structure summaries of several folds.
///
/// For each structure (in the order of first appearance) and metric, the fold means enter a
/// [`MetricAggregate`]: `mean` and `std` are taken over the folds, `count` is the number of folds
/// with a mean, and a fold without one (no finite value at all) counts as `nan`.
pub fn aggregate_folds(folds: &[Vec<StructureSummary>]) -> Vec<StructureSummary> {
    let mut structures: Vec<&str> = Vec::new();
    for fold in folds {
        for summary in fold {
            if !structures.contains(&summary.structure.as_str()) {
                structures.push(&summary.structure);
            }
        }
    }

    structures
        .into_iter()
        .map(|structure| {
            let mut aggregate = StructureSummary {
                structure: structure.to_string(),
                ..StructureSummary::default()
            };
            for metric in METRIC_NAMES {
                let fold_means = folds.iter().map(|fold| {
                    fold.iter()
                        .find(|s| s.structure == structure)
                        .and_then(|s| s.metric(metric))
                        .and_then(|m| m.mean)
                        .unwrap_or(f64::NAN)
                });
                *aggregate.metric_mut(metric).expect("a known metric name") =
                    MetricAggregate::of(fold_means);
            }
            aggregate
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(structure: &str, dice: Option<f64>) -> StructureSummary {
        StructureSummary {
            structure: structure.into(),
            dice: MetricAggregate {
                mean: dice,
                count: u32::from(dice.is_some()),
                ..MetricAggregate::default()
            },
            ..StructureSummary::default()
        }
    }

    #[test]
    fn mean_and_spread_are_taken_over_the_fold_means() {
        let folds = vec![
            vec![fold("anterior", Some(0.8)), fold("posterior", Some(0.7))],
            vec![fold("anterior", Some(0.9)), fold("posterior", Some(0.9))],
        ];
        let aggregate = aggregate_folds(&folds);
        assert_eq!(aggregate.len(), 2);
        assert_eq!(aggregate[0].structure, "anterior");
        let dice = &aggregate[0].dice;
        assert!((dice.mean.unwrap() - 0.85).abs() < 1e-12);
        assert!((dice.std.unwrap() - 0.05f64.hypot(0.05)).abs() < 1e-12);
        assert_eq!(dice.count, 2);
        assert!((aggregate[1].dice.mean.unwrap() - 0.8).abs() < 1e-12);
    }

    #[test]
    fn a_fold_without_a_mean_is_counted_not_averaged() {
        let folds = vec![
            vec![fold("anterior", Some(0.8))],
            vec![fold("anterior", None)],
        ];
        let dice = &aggregate_folds(&folds)[0].dice;
        assert_eq!(dice.mean, Some(0.8));
        assert_eq!((dice.count, dice.nan), (1, 1));
    }
}
