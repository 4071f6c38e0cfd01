//! A CrossValidation in local mode: one trainer process per fold, at most `parallelism` at once,
//! then the ensemble of the fold models on the held-out test subjects, the comparison with the
//! baseline and the publication.
//!
//! ```text
//! <run>/folds.json             the held-out test subjects and the fold assignment
//! <run>/fold-<k>.yaml          the Experiment manifest of fold k
//! <run>/fold-<k>/              its trainer output folder (weights, metrics, checkpoints)
//! <run>/fold-<k>.log           its trainer's log
//! <run>/fold-<k>.done          the digest of the manifest it finished with
//! <run>/ensemble/              the ensemble's predictions and metrics
//! <run>/metrics.csv            the candidate's per-subject test metrics
//! <run>/report.json            everything the final table shows
//! ```

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tracing::{info, warn};
use voxel_crds::{
    CrossValidation, Experiment, ExperimentSpec,
    experiment::{DataSource, SplitSpec},
    results::StructureSummary,
};

use super::{
    LocalError, LocalOptions, RunReport, data_root,
    dataset::{dataset_digest, read_rows, subjects},
    io_error,
    process::{Exit, TrainerProcess},
    progress::{RunProgress, epochs_done},
    report::FoldReport,
    stages::{self, Candidate, Source},
};
use crate::{
    aggregate::{aggregate_folds, mean_over_runs, summarize, write_metrics},
    cross_validation::{
        Decision, FoldObservation, FoldState, Limits, Observation, Outcome, StageState, decide,
    },
    folds::assign_folds,
    metrics_table::MetricsTable,
    publication::ModelContent,
    registry::Registry,
};

/// File names inside a trainer output folder (the trainer's contract).
const TRAINER_WEIGHTS: &str = "model.safetensors";
const TRAINER_CONFIG: &str = "experiment.yaml";
const TRAINER_METRICS: &str = "metrics.csv";

/// The held-out test subjects and the subjects validating each fold.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FoldPlan {
    /// Subjects no fold trains or validates on; every fold model is tested on them.
    pub test_subjects: Vec<String>,
    /// `folds[k]`: the subjects validating fold k (the other folds' subjects train it).
    pub folds: Vec<Vec<String>>,
}

/// The Experiment each fold runs: the template with the fold's split and an absolute data path.
pub fn fold_experiment(
    cv_name: &str,
    template: &ExperimentSpec,
    data_root: &Path,
    plan: &FoldPlan,
    fold: usize,
) -> Experiment {
    let mut spec = template.clone();
    spec.data.source = DataSource {
        local_path: Some(data_root.display().to_string()),
        persistent_volume_claim: None,
    };
    spec.data.split = SplitSpec {
        test_subjects: plan.test_subjects.clone(),
        validation_subjects: plan.folds[fold].clone(),
        test_fraction: None,
        validation_fraction: None,
        seed: template.data.split.seed,
        fold: None,
    };
    let mut experiment = Experiment::new(&fold_name(cv_name, fold), spec);
    experiment.metadata.labels = Some(
        [
            (
                "voxel.dev/cross-validation".to_string(),
                cv_name.to_string(),
            ),
            ("voxel.dev/fold".to_string(), fold.to_string()),
        ]
        .into(),
    );
    experiment
}

/// Deterministic name of a fold's Experiment.
pub fn fold_name(cv_name: &str, fold: usize) -> String {
    format!("{cv_name}-fold-{fold}")
}

/// Runs a CrossValidation to its end.
pub fn run(
    cv: &CrossValidation,
    source: &Source,
    options: &LocalOptions,
) -> Result<RunReport, LocalError> {
    let name = cv.metadata.name.clone().unwrap_or_default();
    let spec = &cv.spec;
    let run_dir = options.prepare_run_dir("CrossValidation", &name)?;

    let root = data_root(&spec.template.data.source, &source.manifest_path)?;
    let csv = root.join(&spec.template.data.dataset);
    let rows = read_rows(&csv)?;
    stages::check_baseline(spec.compare_to.as_ref(), &Registry::new(&options.registry))?;
    let all = subjects(&rows);
    let split = voxel_crds::split::split_subjects(&all, &spec.template.data.split)
        .map_err(|e| LocalError::Config(format!("spec.template.{e}")))?;
    if split.test.is_empty() {
        return Err(LocalError::Config(
            "spec.template.data.split: a cross-validation needs held-out test subjects \
             (testSubjects or testFraction) to evaluate the fold models and the ensemble on"
                .into(),
        ));
    }
    let pool: Vec<String> = all
        .iter()
        .filter(|s| !split.test.contains(s))
        .cloned()
        .collect();
    let plan = FoldPlan {
        folds: assign_folds(&pool, spec.folds, spec.seed)
            .map_err(|e| LocalError::Config(format!("spec.folds: {e}")))?,
        test_subjects: split.test.clone(),
    };
    write_json(&run_dir.join("folds.json"), &plan)?;
    info!(
        cross_validation = %name,
        folds = plan.folds.len(),
        test = plan.test_subjects.len(),
        "folds assigned"
    );

    let fold_count = plan.folds.len();
    let manifests: Vec<PathBuf> = (0..fold_count)
        .map(|fold| {
            let experiment = fold_experiment(&name, &spec.template, &root, &plan, fold);
            let path = run_dir.join(format!("fold-{fold}.yaml"));
            let text = serde_yaml::to_string(&experiment).expect("an Experiment serialises");
            std::fs::write(&path, text).map_err(io_error(&path))?;
            Ok(path)
        })
        .collect::<Result<_, LocalError>>()?;

    let parallel = (spec.parallelism as usize)
        .clamp(1, fold_count)
        .min(options.cores.max(1));
    let threads = (options.cores / parallel).max(1);
    let limits = Limits {
        parallelism: parallel as u32,
        retries: options.retries,
    };
    let stages = fold_count as u64 + u64::from(spec.ensemble.enabled) + 1;
    let progress = RunProgress::new(&name, stages);
    let epochs = u64::from(spec.template.training.epochs);

    let mut observation = Observation {
        folds: vec![FoldObservation::pending(); fold_count],
        ensemble_enabled: spec.ensemble.enabled,
        ensemble: StageState::NotStarted,
    };
    for (fold, manifest) in manifests.iter().enumerate() {
        if finished_before(manifest, &run_dir.join(format!("fold-{fold}")))? {
            observation.folds[fold].state = FoldState::Succeeded;
            progress.stage_done(&format!("fold {fold} already trained"));
            info!(fold, "fold already trained with the same manifest; reused");
        }
    }

    let mut running: Vec<(usize, TrainerProcess, indicatif::ProgressBar)> = Vec::new();
    // The exit code of the first permanent failure, which classifies the run's own failure.
    let mut permanent_code: Option<i32> = None;
    let mut ensemble: Option<(TrainerProcess, indicatif::ProgressBar)> = None;
    let ensemble_dir = run_dir.join("ensemble");
    let outcome = loop {
        let Decision {
            start_folds,
            stop_folds,
            start_ensemble,
            outcome,
        } = decide(&observation, limits);
        for fold in stop_folds {
            if let Some(position) = running.iter().position(|(f, ..)| *f == fold as usize) {
                let (_, mut process, bar) = running.remove(position);
                process.stop();
                bar.abandon_with_message("stopped");
            }
        }
        if let Some(outcome) = outcome {
            break outcome;
        }
        for fold in start_folds {
            let fold = fold as usize;
            let output = run_dir.join(format!("fold-{fold}"));
            let args: Vec<OsString> = vec![
                "--log-format".into(),
                "json".into(),
                "train".into(),
                "--config".into(),
                manifests[fold].clone().into(),
                "--output".into(),
                output.into(),
            ];
            let log = run_dir.join(format!("fold-{fold}.log"));
            let process = TrainerProcess::spawn(&options.trainer, &args, threads, &log)
                .map_err(|e| LocalError::Other(e.to_string()))?;
            let bar = progress.trainer(&format!("fold {fold}"), epochs);
            info!(fold, log = %log.display(), threads, "fold started");
            observation.folds[fold].state = FoldState::Running;
            running.push((fold, process, bar));
        }
        if start_ensemble {
            let fold_dirs: Vec<PathBuf> = (0..fold_count)
                .map(|f| run_dir.join(format!("fold-{f}")))
                .collect();
            let process = start_ensemble_process(
                options,
                &fold_dirs,
                &csv,
                &plan.test_subjects,
                spec.ensemble.combine,
                &ensemble_dir,
                &run_dir.join("ensemble.log"),
            )?;
            let bar = progress.trainer("ensemble", 0);
            bar.set_message(format!("{} members", fold_count));
            observation.ensemble = StageState::Running;
            ensemble = Some((process, bar));
        }

        std::thread::sleep(Duration::from_millis(200));
        let mut still_running = Vec::new();
        for (fold, mut process, bar) in running.drain(..) {
            let output = run_dir.join(format!("fold-{fold}"));
            bar.set_position(epochs_done(&output));
            match process
                .try_finish()
                .map_err(|e| LocalError::Other(e.to_string()))?
            {
                None => still_running.push((fold, process, bar)),
                Some(Exit::Succeeded) => {
                    let digest = crate::digest::digest_file(&manifests[fold])
                        .map_err(io_error(&manifests[fold]))?
                        .0;
                    let marker = run_dir.join(format!("fold-{fold}.done"));
                    std::fs::write(&marker, digest).map_err(io_error(&marker))?;
                    observation.folds[fold].state = FoldState::Succeeded;
                    bar.finish_and_clear();
                    progress.stage_done(&format!("fold {fold} trained"));
                    info!(fold, "fold succeeded");
                }
                Some(Exit::Failed {
                    permanent,
                    code,
                    message,
                }) => {
                    if permanent && permanent_code.is_none() {
                        permanent_code = code;
                    }
                    let fold_state = &mut observation.folds[fold];
                    fold_state.failures += 1;
                    warn!(fold, ?code, permanent, failures = fold_state.failures, %message, "fold failed");
                    fold_state.state = FoldState::Failed { permanent, message };
                    bar.abandon_with_message("failed");
                }
            }
        }
        running = still_running;
        if let Some((mut process, bar)) = ensemble.take() {
            bar.tick();
            match process
                .try_finish()
                .map_err(|e| LocalError::Other(e.to_string()))?
            {
                None => ensemble = Some((process, bar)),
                Some(exit) => {
                    bar.finish_and_clear();
                    observation.ensemble = if exit == Exit::Succeeded {
                        progress.stage_done("ensemble evaluated");
                        StageState::Succeeded
                    } else {
                        warn!(?exit, "ensemble failed");
                        StageState::Failed
                    };
                }
            }
        }
    };

    if let Outcome::Failed { reason } = outcome {
        progress.finish();
        let message = format!(
            "CrossValidation {name} failed: {reason} (logs in {})",
            run_dir.display()
        );
        return Err(LocalError::from_trainer(permanent_code, message));
    }

    let finished = finish(cv, &name, &run_dir, &csv, &rows, &plan, source, options);
    progress.finish();
    finished
}

fn finished_before(manifest: &Path, output: &Path) -> Result<bool, LocalError> {
    let marker = output.with_extension("done");
    let Ok(recorded) = std::fs::read_to_string(&marker) else {
        return Ok(false);
    };
    let current = crate::digest::digest_file(manifest)
        .map_err(io_error(manifest))?
        .0;
    Ok(recorded == current
        && output.join(TRAINER_METRICS).is_file()
        && output.join(TRAINER_WEIGHTS).is_file())
}

/// Starts `voxel-trainer ensemble` over the given member folders.
pub(crate) fn start_ensemble_process(
    options: &LocalOptions,
    members: &[PathBuf],
    dataset: &Path,
    subjects: &[String],
    combine: voxel_crds::common::Combine,
    output: &Path,
    log: &Path,
) -> Result<TrainerProcess, LocalError> {
    let mut args: Vec<OsString> = vec!["--log-format".into(), "json".into(), "ensemble".into()];
    for member in members {
        args.push("--model".into());
        args.push(member.clone().into());
    }
    args.extend([
        "--dataset".into(),
        dataset.as_os_str().to_owned(),
        "--subjects".into(),
        subjects.join(",").into(),
        "--combine".into(),
        combine_flag(combine).into(),
        "--output".into(),
        output.as_os_str().to_owned(),
    ]);
    info!(members = members.len(), log = %log.display(), "ensemble started");
    TrainerProcess::spawn(&options.trainer, &args, options.cores.max(1), log)
        .map_err(|e| LocalError::Other(e.to_string()))
}

/// The trainer's `--combine` value of a combination rule.
pub(crate) fn combine_flag(combine: voxel_crds::common::Combine) -> &'static str {
    match combine {
        voxel_crds::common::Combine::Mean => "mean",
        voxel_crds::common::Combine::MajorityVote => "majority-vote",
    }
}

/// Waits for a process to end, ticking its bar.
pub(crate) fn wait(
    mut process: TrainerProcess,
    bar: &indicatif::ProgressBar,
    output: Option<&Path>,
) -> Result<Exit, LocalError> {
    loop {
        if let Some(output) = output {
            bar.set_position(epochs_done(output));
        }
        bar.tick();
        if let Some(exit) = process
            .try_finish()
            .map_err(|e| LocalError::Other(e.to_string()))?
        {
            return Ok(exit);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), LocalError> {
    let text = serde_json::to_string_pretty(value).expect("report types serialise");
    std::fs::write(path, text + "\n").map_err(io_error(path))
}

pub(crate) fn read_metrics(path: &Path) -> Result<MetricsTable, LocalError> {
    MetricsTable::read(path).map_err(|e| LocalError::Data(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    cv: &CrossValidation,
    name: &str,
    run_dir: &Path,
    csv: &Path,
    rows: &[super::dataset::DatasetRow],
    plan: &FoldPlan,
    source: &Source,
    options: &LocalOptions,
) -> Result<RunReport, LocalError> {
    let spec = &cv.spec;
    let fold_dirs: Vec<PathBuf> = (0..plan.folds.len())
        .map(|f| run_dir.join(format!("fold-{f}")))
        .collect();
    let fold_tables: Vec<MetricsTable> = fold_dirs
        .iter()
        .map(|dir| read_metrics(&dir.join(TRAINER_METRICS)))
        .collect::<Result<_, _>>()?;
    let fold_summaries: Vec<Vec<StructureSummary>> = fold_tables.iter().map(summarize).collect();
    let folds: Vec<FoldReport> = fold_summaries
        .iter()
        .enumerate()
        .map(|(fold, summary)| FoldReport {
            fold: fold as u32,
            experiment: fold_name(name, fold),
            validation_subjects: plan.folds[fold].len() as u32,
            metrics: summary.clone(),
        })
        .collect();
    let aggregate = aggregate_folds(&fold_summaries);

    // The candidate: the ensemble when there is one, else each test subject's mean over folds.
    let (metrics_csv, ensemble_metrics) = if spec.ensemble.enabled {
        let path = run_dir.join("ensemble").join(TRAINER_METRICS);
        let summary = summarize(&read_metrics(&path)?);
        (path, Some(summary))
    } else {
        let path = run_dir.join(TRAINER_METRICS);
        write_metrics(&path, &mean_over_runs(&fold_tables)).map_err(io_error(&path))?;
        (path, None)
    };
    let candidate_summary = summarize(&read_metrics(&metrics_csv)?);

    let mut artifacts = Vec::new();
    for (fold, dir) in fold_dirs.iter().enumerate() {
        for file in [TRAINER_WEIGHTS, TRAINER_CONFIG] {
            artifacts.push((
                dir.join(file),
                PathBuf::from(format!("fold-{fold}")).join(file),
            ));
        }
    }
    let candidate = Candidate {
        kind: "CrossValidation",
        name: name.to_string(),
        metrics_csv,
        summary: candidate_summary,
        artifacts,
        content: ModelContent::Ensemble {
            configuration: spec.template.clone(),
            members: (0..plan.folds.len()).map(|f| format!("fold-{f}")).collect(),
            combine: spec.ensemble.combine,
        },
        dataset_digest: dataset_digest(csv, rows)?,
        seed: spec.template.training.seed,
        runs: (0..plan.folds.len()).map(|f| fold_name(name, f)).collect(),
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
    let report = RunReport {
        kind: "CrossValidation".into(),
        name: name.to_string(),
        run_dir: run_dir.to_path_buf(),
        folds,
        aggregate,
        test_subjects: plan.test_subjects.len() as u32,
        ensemble_members: if ensemble_metrics.is_some() {
            plan.folds.len() as u32
        } else {
            0
        },
        ensemble: ensemble_metrics,
        metrics: candidate.summary.clone(),
        comparison,
        publication: publication.map(Into::into),
    };
    write_json(&run_dir.join("report.json"), &report)?;
    Ok(report)
}
