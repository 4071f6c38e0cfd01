//! An Experiment in local mode: one trainer process, then the comparison and the publication.

use std::{ffi::OsString, path::PathBuf};

use tracing::info;
use voxel_crds::Experiment;

use super::{
    LocalError, LocalOptions, RunReport,
    cross_validation::{read_metrics, wait, write_json},
    data_root,
    dataset::{dataset_digest, read_rows},
    process::{Exit, TrainerProcess},
    progress::RunProgress,
    stages::{self, Candidate, Source},
};
use crate::{aggregate::summarize, publication::ModelContent, registry::Registry};

/// Runs an Experiment to its end.
pub fn run(
    experiment: &Experiment,
    source: &Source,
    options: &LocalOptions,
) -> Result<RunReport, LocalError> {
    let name = experiment.metadata.name.clone().unwrap_or_default();
    let spec = &experiment.spec;
    let run_dir = options.prepare_run_dir("Experiment", &name)?;
    let root = data_root(&spec.data.source, &source.manifest_path)?;
    let csv = root.join(&spec.data.dataset);
    let rows = read_rows(&csv)?;
    let registry = Registry::new(&options.registry);
    stages::check_baseline(spec.compare_to.as_ref(), &registry)?;

    let output = run_dir.join("train");
    let progress = RunProgress::new(&name, 1);
    let bar = progress.trainer("training", u64::from(spec.training.epochs));
    let args: Vec<OsString> = vec![
        "--log-format".into(),
        "json".into(),
        "train".into(),
        "--config".into(),
        source.manifest_path.clone().into(),
        "--output".into(),
        output.clone().into(),
    ];
    let log = run_dir.join("train.log");
    let mut attempts = 0;
    loop {
        attempts += 1;
        info!(experiment = %name, attempt = attempts, log = %log.display(), "trainer started");
        let process = TrainerProcess::spawn(&options.trainer, &args, options.cores.max(1), &log)
            .map_err(|e| LocalError::Other(e.to_string()))?;
        match wait(process, &bar, Some(&output))? {
            Exit::Succeeded => break,
            Exit::Failed {
                permanent,
                code,
                message,
            } => {
                if permanent {
                    progress.finish();
                    return Err(LocalError::from_trainer(
                        code,
                        format!("Experiment {name}: {message}"),
                    ));
                }
                if attempts > options.retries {
                    progress.finish();
                    return Err(LocalError::Other(format!(
                        "Experiment {name} failed {attempts} times; last: {message} (log {})",
                        log.display()
                    )));
                }
            }
        }
    }
    bar.finish_and_clear();
    progress.stage_done("trained");

    let metrics_csv = output.join("metrics.csv");
    let summary = summarize(&read_metrics(&metrics_csv)?);
    let candidate = Candidate {
        kind: "Experiment",
        name: name.clone(),
        metrics_csv,
        summary: summary.clone(),
        artifacts: ["model.safetensors", "experiment.yaml"]
            .into_iter()
            .map(|file| (output.join(file), PathBuf::from(file)))
            .collect(),
        content: ModelContent::Single {
            configuration: spec.clone(),
        },
        dataset_digest: dataset_digest(&csv, &rows)?,
        seed: spec.training.seed,
        runs: vec![name.clone()],
    };
    let registry = Registry::new(&options.registry);
    let comparison =
        stages::compare_with_baseline(&candidate, spec.compare_to.as_ref(), &registry)?;
    let publication = stages::publish(
        &candidate,
        comparison.as_ref(),
        spec.publish.as_ref(),
        source,
        &registry,
        &options.trainer,
    )?;
    progress.finish();
    let test_subjects = summary
        .first()
        .map_or(0, |s| s.dice.count + s.dice.nan + s.dice.infinite);
    let report = RunReport {
        kind: "Experiment".into(),
        name,
        run_dir: run_dir.clone(),
        folds: Vec::new(),
        aggregate: Vec::new(),
        test_subjects,
        ensemble: None,
        ensemble_members: 0,
        metrics: summary,
        comparison,
        publication: publication.map(Into::into),
    };
    write_json(&run_dir.join("report.json"), &report)?;
    Ok(report)
}
