//! What a local run produced, as JSON (`report.json`) and as the tables printed at its end.

use std::{fmt::Write, path::PathBuf};

use serde::Serialize;
use voxel_crds::results::{Comparison, MetricAggregate, StructureSummary};

use super::stages::Publication;

/// One fold's results.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FoldReport {
    /// Fold number.
    pub fold: u32,
    /// Name of the fold's Experiment.
    pub experiment: String,
    /// Subjects that validated the fold.
    pub validation_subjects: u32,
    /// Test metrics of the fold's model.
    pub metrics: Vec<StructureSummary>,
}

/// The published version.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicationReport {
    /// Model name.
    pub model: String,
    /// Version number.
    pub version: u32,
    /// False when the same publication already existed.
    pub new: bool,
    /// Digest of the artifacts.
    pub digest: String,
    /// The alias asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Whether it moved; the reason when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias_refused: Option<String>,
}

impl From<Publication> for PublicationReport {
    fn from(p: Publication) -> Self {
        let (alias, alias_refused) = match p.promotion {
            None => (None, None),
            Some((alias, Ok(()))) => (Some(alias), None),
            Some((alias, Err(reason))) => (Some(alias), Some(reason)),
        };
        Self {
            model: p.model,
            version: p.version,
            new: p.new,
            digest: p.digest,
            alias,
            alias_refused,
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Kind of the manifest run.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Where its files are.
    pub run_dir: PathBuf,
    /// Per-fold results (cross-validations only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<FoldReport>,
    /// Mean and spread over folds of the fold means (cross-validations only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<StructureSummary>,
    /// Number of held-out test subjects.
    pub test_subjects: u32,
    /// The ensemble's test metrics, when one was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Vec<StructureSummary>>,
    /// The networks the ensemble combined (0 without an ensemble).
    pub ensemble_members: u32,
    /// The test metrics of what is compared and published.
    pub metrics: Vec<StructureSummary>,
    /// The comparison with the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// The published version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publication: Option<PublicationReport>,
}

fn cell(aggregate: &MetricAggregate, decimals: usize) -> String {
    match (aggregate.mean, aggregate.std) {
        (Some(mean), Some(std)) => format!("{mean:.decimals$} ± {std:.decimals$}"),
        (Some(mean), None) => format!("{mean:.decimals$}"),
        _ => "n/a".into(),
    }
}

fn metrics_rows(out: &mut String, label: &str, summaries: &[StructureSummary]) {
    for summary in summaries {
        let excluded = summary.dice.nan + summary.dice.infinite;
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>17} {:>17} {:>17} {:>5}{}",
            label,
            summary.structure,
            cell(&summary.dice, 4),
            cell(&summary.hausdorff95_mm, 3),
            cell(&summary.mean_surface_distance_mm, 3),
            summary.dice.count,
            if excluded > 0 {
                format!(" ({excluded} excluded)")
            } else {
                String::new()
            },
        );
    }
}

impl RunReport {
    /// The tables printed at the end of `voxel run`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {}: results in {}",
            self.kind,
            self.name,
            self.run_dir.display()
        );
        let header = format!(
            "{:<12} {:<12} {:>17} {:>17} {:>17} {:>5}",
            "", "structure", "dice", "hd95_mm", "msd_mm", "n"
        );
        if !self.folds.is_empty() {
            let _ = writeln!(
                out,
                "\nTest metrics per fold ({} held-out subjects), mean ± std over subjects:",
                self.test_subjects
            );
            let _ = writeln!(out, "{header}");
            for fold in &self.folds {
                metrics_rows(&mut out, &format!("fold {}", fold.fold), &fold.metrics);
            }
            let _ = writeln!(
                out,
                "\nAggregate over {} folds, mean ± std of the fold means:",
                self.folds.len()
            );
            let _ = writeln!(out, "{header}");
            metrics_rows(&mut out, "folds", &self.aggregate);
        }
        if let Some(ensemble) = &self.ensemble {
            let members = if self.folds.is_empty() {
                format!("{} networks", self.ensemble_members)
            } else {
                format!("the {} fold models", self.ensemble_members)
            };
            let _ = writeln!(
                out,
                "\nEnsemble of {members} on the {} test subjects, mean ± std:",
                self.test_subjects
            );
            let _ = writeln!(out, "{header}");
            metrics_rows(&mut out, "ensemble", ensemble);
        } else if self.folds.is_empty() {
            let _ = writeln!(
                out,
                "\nTest metrics ({} subjects), mean ± std:",
                self.test_subjects
            );
            let _ = writeln!(out, "{header}");
            metrics_rows(&mut out, "test", &self.metrics);
        }
        if let Some(comparison) = &self.comparison {
            let _ = writeln!(out, "\nComparison with {}:", comparison.baseline);
            out += &crate::compare::comparison_table(comparison);
        }
        if let Some(p) = &self.publication {
            let state = if p.new {
                "Published"
            } else {
                "Already published"
            };
            let _ = writeln!(
                out,
                "\n{state} {} version {} ({})",
                p.model, p.version, p.digest
            );
            match (&p.alias, &p.alias_refused) {
                (Some(alias), None) => {
                    let _ = writeln!(out, "Alias {alias} -> {}:{}", p.model, p.version);
                }
                (Some(alias), Some(reason)) => {
                    let _ = writeln!(out, "Alias {alias} not moved: {reason}");
                }
                _ => {}
            }
            let _ = writeln!(out, "Lineage: voxel models show {}:{}", p.model, p.version);
        }
        out
    }
}
