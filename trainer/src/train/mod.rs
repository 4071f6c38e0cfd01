//! Training: the epoch loop, validation after every epoch, checkpoints, and the final
//! evaluation on the test subjects.

pub mod checkpoint;
pub mod loss;
pub mod optimizer;
pub mod schedule;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Axis;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use tracing::info;
use voxel_crds::Experiment;

use crate::{
    data::{
        dataset::read_dataset,
        sampling::{PatchSampler, SamplingSubject, Stream, stream_seed},
        split::{Split, split_subjects},
        subject::{LoadRequest, Subject, load_subjects},
    },
    error::bad_config,
    evaluate::{MetricsRow, Summary, write_metrics_csv},
    infer::{predict, write_prediction},
    metrics::dice,
    model::Model,
    outputs,
    progress_metrics::TrainingMetrics,
    resolve::resolved_dataset_path,
    train::{
        checkpoint::RunState,
        loss::segmentation_loss,
        optimizer::Optimizer,
        schedule::{Progress, learning_rate},
    },
};

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: u32,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean loss over the validation subjects (whole volumes); NaN without validation subjects.
    pub validation_loss: f64,
    /// Mean validation Dice per structure (spec order), NaN-excluding.
    pub validation_dice: Vec<f64>,
    /// Wall-clock seconds of the epoch (not part of the reproducible results).
    pub seconds: f64,
}

/// Options of a training run that are not part of the Experiment.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The Experiment manifest.
    pub config: PathBuf,
    /// The output folder (created; a previous run of the same configuration is resumed).
    pub output: PathBuf,
    /// Overrides the data root for `spec.data.source` (how trainer pods find their volume).
    pub data_root: Option<PathBuf>,
    /// Compute device.
    pub device: Device,
    /// Stop after this epoch's checkpoint as if interrupted (for preemption drills).
    pub stop_after_epoch: Option<u32>,
    /// Gauges to keep up to date with the run's progress (served by the metrics endpoint).
    pub metrics: Option<Arc<TrainingMetrics>>,
    /// The output folder's mirror in an object store, pushed after every checkpoint.
    pub sync: Option<Arc<crate::sync::ArtifactSync>>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Training finished and the test subjects were scored.
    Finished {
        /// Epochs of the whole run, including any restored from a checkpoint.
        epochs: u32,
        /// The test metrics.
        summary: Summary,
    },
    /// Stopped on request after the given epoch; rerunning resumes.
    Stopped(u32),
}

/// Trains, then evaluates on the test subjects.
pub fn train(options: &TrainOptions) -> anyhow::Result<Outcome> {
    let experiment = voxel_crds::manifest::read_experiment(&options.config)
        .map_err(|e| bad_config(e.to_string()))?;
    crate::model::check_supported(&experiment)?;
    let dataset_path =
        resolved_dataset_path(&experiment, &options.config, options.data_root.as_deref())?;
    let resolved = crate::resolve::resolve(&experiment, &dataset_path);
    std::fs::create_dir_all(&options.output)
        .with_context(|| format!("cannot create output folder {}", options.output.display()))?;
    crate::resolve::write_or_check(&resolved, &options.output)?;

    let spec = &resolved.spec;
    let dataset = read_dataset(&dataset_path)?;
    let split = split_subjects(&dataset.subject_ids(), &spec.data.split)?;
    std::fs::write(
        options.output.join(outputs::SPLIT),
        serde_json::to_string_pretty(&split)?,
    )?;
    info!(
        train = split.train.len(),
        validation = split.validation.len(),
        test = split.test.len(),
        "subjects split"
    );

    // The whole dataset is validated before the first step.
    let request = LoadRequest {
        image_channels: &spec.model.image_channels,
        structures: &spec.model.structures,
        normalization: &spec.model.preprocessing.normalization,
    };
    let all_ids: Vec<String> = [&split.train, &split.validation, &split.test]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let subjects = load_subjects(&dataset, &all_ids, request)?;
    let by_id = |ids: &[String]| -> Vec<&Subject> {
        ids.iter()
            .filter_map(|id| subjects.iter().find(|s| &s.id == id))
            .collect()
    };
    info!(subjects = subjects.len(), dataset = %dataset_path.display(), "dataset validated");

    let classes = spec.model.structures.len() + 1;
    let crop = spec.model.preprocessing.crop_size.map(|s| s as usize);
    let sampling: Vec<SamplingSubject> = by_id(&split.train)
        .into_iter()
        .map(|s| SamplingSubject::new(s, crop, classes))
        .collect();
    let sampler = PatchSampler {
        patch: crop,
        class_weights: spec
            .model
            .preprocessing
            .class_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; classes]),
        flip_axes: spec
            .model
            .augmentation
            .flip_axes
            .iter()
            .map(|&a| usize::from(a))
            .collect(),
        flip_probability: spec.model.augmentation.flip_probability,
    };

    let seed = spec.training.seed;
    tch::manual_seed(stream_seed(seed, 0, Stream::Torch) as i64);
    let mut model = Model::new(&resolved, options.device)?;
    let mut optimizer = Optimizer::new(&model.vs, &spec.training.optimizer);
    let checkpoints = options.output.join(outputs::CHECKPOINTS);
    let mut state = match checkpoint::restore_latest(&checkpoints, &mut model.vs, &mut optimizer)? {
        Some(state) => {
            info!(epoch = state.epoch, "resuming from checkpoint");
            state
        }
        None => RunState {
            epoch: 0,
            step: 0,
            seed,
            records: Vec::new(),
        },
    };

    let epochs = spec.training.epochs;
    let restored = state.records.len();
    let record_progress = |records: &[EpochRecord]| {
        if let Some(metrics) = &options.metrics {
            metrics.record_epochs(epochs, &spec.model.structures, records, restored);
        }
    };
    record_progress(&state.records);
    let batch_size = spec.training.batch_size as usize;
    let steps_per_epoch = sampling.len().div_ceil(batch_size) as u64;
    let progress = ProgressBar::new(u64::from(epochs)).with_position(u64::from(state.epoch));
    progress.set_style(
        ProgressStyle::with_template("{bar:30} epoch {pos}/{len} {msg} [{elapsed_precise}<{eta}]")
            .expect("the template is valid"),
    );
    let validation = by_id(&split.validation);
    for epoch in state.epoch + 1..=epochs {
        let started = Instant::now();
        tch::manual_seed(stream_seed(seed, u64::from(epoch), Stream::Torch) as i64);
        let patches = sampler.draw_epoch(&sampling, seed, u64::from(epoch));
        let mut losses = Vec::new();
        let mut lr = 0.0;
        for batch in patches.chunks(batch_size) {
            lr = learning_rate(
                &spec.training.schedule,
                spec.training.optimizer.learning_rate,
                Progress {
                    step: state.step,
                    steps_per_epoch,
                    total_steps: steps_per_epoch * u64::from(epochs),
                },
            );
            let images: Vec<Tensor> = batch.iter().map(|p| tensor_f32(&p.image)).collect();
            let targets: Vec<Tensor> = batch
                .iter()
                .map(|p| tensor_u8(&p.classes.view().insert_axis(Axis(0)).to_owned()))
                .collect();
            let images = Tensor::stack(&images, 0).to_device(options.device);
            let targets = Tensor::cat(&targets, 0)
                .to_kind(Kind::Int64)
                .to_device(options.device);
            optimizer.zero_grad();
            let logits = model.network.forward_t(&images, true);
            let loss = segmentation_loss(
                &logits.log_softmax(1, Kind::Float),
                &targets,
                &spec.model.loss,
            );
            loss.backward();
            optimizer.step(lr);
            state.step += 1;
            losses.push(loss.double_value(&[]));
        }
        let train_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        let (validation_loss, validation_dice) = validate(&model, &validation);
        let record = EpochRecord {
            epoch,
            learning_rate: lr,
            train_loss,
            validation_loss,
            validation_dice,
            seconds: started.elapsed().as_secs_f64(),
        };
        info!(
            epoch,
            train_loss = format_args!("{train_loss:.4}"),
            validation_loss = format_args!("{validation_loss:.4}"),
            validation_dice = ?record.validation_dice.iter().map(|d| (d * 1e4).round() / 1e4).collect::<Vec<_>>(),
            seconds = format_args!("{:.1}", record.seconds),
            "epoch finished"
        );
        progress.set_message(format!(
            "loss {train_loss:.3} val dice {}",
            record
                .validation_dice
                .iter()
                .map(|d| format!("{d:.3}"))
                .collect::<Vec<_>>()
                .join("/")
        ));
        progress.inc(1);
        state.records.push(record);
        state.epoch = epoch;
        write_epoch_metrics(&options.output, &spec.model.structures, &state.records)?;
        if epoch % spec.training.checkpoint_every_epochs == 0 || epoch == epochs {
            checkpoint::save(&checkpoints, &model.vs, &optimizer, &state)?;
            if let Some(sync) = &options.sync {
                sync.push(&options.output)?;
            }
        }
        record_progress(&state.records);
        if options.stop_after_epoch == Some(epoch) && epoch < epochs {
            progress.abandon();
            info!(epoch, "stopping as requested; rerun to resume");
            return Ok(Outcome::Stopped(epoch));
        }
    }
    progress.finish();
    write_epoch_metrics(&options.output, &spec.model.structures, &state.records)?;
    model
        .vs
        .save(options.output.join(outputs::MODEL_WEIGHTS))
        .context("saving the trained weights")?;

    let test = by_id(&split.test);
    let rows = predict_and_score(
        &model,
        &test,
        &options.output.join(outputs::TEST_PREDICTIONS),
    )?;
    write_metrics_csv(&options.output.join(outputs::TEST_METRICS), &rows)?;
    let summary = Summary::of(&rows);
    summary.write(&options.output.join(outputs::SUMMARY))?;
    if let Some(metrics) = &options.metrics {
        metrics.set_finished();
    }
    Ok(Outcome::Finished { epochs, summary })
}

/// Predicts every subject, writes its masks under `folder`, and scores it.
pub fn predict_and_score(
    model: &Model,
    subjects: &[&Subject],
    folder: &Path,
) -> anyhow::Result<Vec<MetricsRow>> {
    let structures = &model.experiment.spec.model.structures;
    let mut rows = Vec::new();
    for subject in subjects {
        let prediction = predict(model, subject);
        write_prediction(folder, subject, structures, &prediction)?;
        let truth = subject
            .masks
            .as_ref()
            .expect("test subjects are loaded with masks");
        for (s, structure) in structures.iter().enumerate() {
            let p = prediction.masks.index_axis(Axis(0), s).mapv(|v| v > 0);
            let t = truth.index_axis(Axis(0), s).mapv(|v| v > 0);
            rows.push(crate::evaluate::score(
                &subject.id,
                structure,
                p.view(),
                t.view(),
                subject.spacing_mm,
            )?);
        }
    }
    Ok(rows)
}

/// Mean whole-volume loss and mean Dice per structure over the validation subjects.
fn validate(model: &Model, subjects: &[&Subject]) -> (f64, Vec<f64>) {
    let structures = model.experiment.spec.model.structures.len();
    if subjects.is_empty() {
        return (f64::NAN, vec![f64::NAN; structures]);
    }
    let mut losses = Vec::new();
    let mut dices = vec![Vec::new(); structures];
    for subject in subjects {
        let posteriors = model.posteriors(&tensor_f32(&subject.image));
        let classes = subject
            .class_map()
            .expect("validation subjects are loaded with masks");
        let target = tensor_u8(&classes).to_kind(Kind::Int64).unsqueeze(0);
        let log_posteriors = posteriors.clamp_min(1e-8).log().unsqueeze(0);
        losses.push(
            segmentation_loss(&log_posteriors, &target, &model.experiment.spec.model.loss)
                .double_value(&[]),
        );
        let predicted = crate::infer::argmax_classes(&posteriors);
        for (s, list) in dices.iter_mut().enumerate() {
            let label = (s + 1) as u8;
            let p = predicted.mapv(|c| c == label);
            let t = classes.mapv(|c| c == label);
            list.push(dice(p.view(), t.view()));
        }
    }
    let mean = |v: &[f64]| {
        let finite: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if finite.is_empty() {
            f64::NAN
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        }
    };
    (mean(&losses), dices.iter().map(|d| mean(d)).collect())
}

fn write_epoch_metrics(
    output: &Path,
    structures: &[String],
    records: &[EpochRecord],
) -> anyhow::Result<()> {
    let path = output.join(outputs::EPOCH_METRICS);
    let partial = path.with_extension("csv.partial");
    let mut writer = csv::Writer::from_path(&partial)?;
    let mut header: Vec<String> = ["epoch", "learning_rate", "train_loss", "validation_loss"]
        .map(String::from)
        .to_vec();
    header.extend(structures.iter().map(|s| format!("validation_dice_{s}")));
    header.push("seconds".into());
    writer.write_record(&header)?;
    for r in records {
        let mut row = vec![
            r.epoch.to_string(),
            crate::evaluate::format_value(r.learning_rate),
            crate::evaluate::format_value(r.train_loss),
            crate::evaluate::format_value(r.validation_loss),
        ];
        row.extend(
            r.validation_dice
                .iter()
                .map(|d| crate::evaluate::format_value(*d)),
        );
        row.push(format!("{:.3}", r.seconds));
        writer.write_record(&row)?;
    }
    writer.flush()?;
    drop(writer);
    std::fs::rename(&partial, &path)?;
    Ok(())
}

/// A float tensor with the array's shape (copied; the array may have any layout).
pub fn tensor_f32<D: ndarray::Dimension>(array: &ndarray::Array<f32, D>) -> Tensor {
    let shape: Vec<i64> = array.shape().iter().map(|&s| s as i64).collect();
    let standard = array.as_standard_layout();
    Tensor::from_slice(standard.as_slice().expect("standard layout is contiguous")).reshape(shape)
}

/// A uint8 tensor with the array's shape.
pub fn tensor_u8<D: ndarray::Dimension>(array: &ndarray::Array<u8, D>) -> Tensor {
    let shape: Vec<i64> = array.shape().iter().map(|&s| s as i64).collect();
    let standard = array.as_standard_layout();
    Tensor::from_slice(standard.as_slice().expect("standard layout is contiguous")).reshape(shape)
}

/// The split a training output folder recorded.
pub fn read_split(output: &Path) -> anyhow::Result<Split> {
    let path = output.join(outputs::SPLIT);
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?)
}

/// Keeps the Experiment type in the public signature documented.
pub type Manifest = Experiment;
