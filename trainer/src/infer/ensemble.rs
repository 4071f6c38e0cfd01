//! Ensembles: several trained models predict the same subjects and their posteriors are
//! combined, one member at a time.
//!
//! Memory: every member's weights are loaded once, up front, and stay loaded for the whole run,
//! so that each weights file is read and hashed once (a member's weights are megabytes, where
//! the posteriors of one CT volume are gigabytes). Per subject, the run holds the subject's image
//! (and its ground-truth masks when they are scored), the running float64 sum of the members'
//! posteriors `[class, i, j, k]`, and the float32 posteriors of the one member being run (with
//! the sliding window's own buffers while that member runs), dropped as soon as they are added.
//! Majority vote adds one int16 vote count per class and voxel, and a short-lived copy of the
//! mean for its tie-break at the end. So two posterior volumes at most are held for a subject
//! however many members there are: never a stack of all of them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ndarray::Array3;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};
use voxel_crds::{
    Experiment,
    experiment::{ChannelNormalization, NormalizationMethod},
};

use crate::{
    data::{
        dataset::{Dataset, read_dataset},
        subject::{LoadRequest, Subject, load_subjects},
    },
    error::{bad_config, bad_data},
    evaluate::{MetricsRow, Summary, score_subject, write_metrics_csv},
    infer::{argmax_classes, prediction_from_classes, write_prediction},
    model::Model,
    outputs,
    train::tensor_f32,
};

/// The record of an ensemble run, written next to its predictions and metrics.
pub const ENSEMBLE_RECORD: &str = "ensemble.json";

/// How the members' predictions of a voxel become one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CombineRule {
    /// The class with the largest posterior averaged over the members.
    Mean,
    /// The class most members predict (each member's argmax is one vote). A tie goes to the tied
    /// class with the larger averaged posterior, and a tie of those to the lower class index.
    MajorityVote,
}

/// What `voxel-trainer ensemble` is asked to do.
#[derive(Debug, Clone)]
pub struct EnsembleOptions {
    /// Training output folders of the members, in order; the first one's spec is the reference.
    pub members: Vec<PathBuf>,
    /// Dataset CSV with the images (and, for scoring, the structure masks).
    pub dataset: PathBuf,
    /// Output folder: predictions, metrics and the ensemble record.
    pub output: PathBuf,
    /// Subjects to predict; `None` predicts every subject of the dataset.
    pub subjects: Option<Vec<String>>,
    /// How the members' predictions are combined.
    pub combine: CombineRule,
    /// Overrides the first member's `postprocessing.largestComponent`.
    pub largest_component: Option<bool>,
    /// Where the networks run (posteriors are combined on the CPU).
    pub device: Device,
}

/// What an ensemble run produced.
#[derive(Debug, Clone)]
pub struct EnsembleOutcome {
    /// Number of subjects predicted.
    pub subjects: usize,
    /// Number of members.
    pub members: usize,
    /// The metrics summary, when the dataset has the masks of every structure of every subject.
    pub summary: Option<Summary>,
}

/// One member of the ensemble, as recorded in [`ENSEMBLE_RECORD`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    /// The member's training output folder (absolute).
    pub folder: PathBuf,
    /// SHA-256 of the member's weights file, lowercase hexadecimal.
    pub weights_sha256: String,
}

/// The content of [`ENSEMBLE_RECORD`]: what was combined, how, and for which subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleRecord {
    /// The members, in the order given.
    pub members: Vec<MemberRecord>,
    /// The combination rule.
    pub combine: CombineRule,
    /// Whether each structure was reduced to its largest connected component.
    pub largest_component: bool,
    /// The dataset CSV (absolute).
    pub dataset: PathBuf,
    /// The subjects predicted, in order.
    pub subjects: Vec<String>,
    /// Whether the predictions were scored against ground truth.
    pub scored: bool,
}

/// A member's model with what identifies it.
struct Member {
    record: MemberRecord,
    model: Model,
}

/// `voxel-trainer ensemble`: predicts the subjects with every member, combines the posteriors,
/// writes the predictions like `infer` does and, when the dataset has ground truth, scores them
/// like `train` does.
pub fn run_ensemble(options: &EnsembleOptions) -> anyhow::Result<EnsembleOutcome> {
    let experiments = read_member_specs(&options.members)?;
    check_compatible(&options.members, &experiments)?;
    let members = load_members(&options.members, options.device)?;
    let reference = &experiments[0].spec.model;
    let largest_component = options
        .largest_component
        .unwrap_or(reference.postprocessing.largest_component);

    let dataset = read_dataset(&options.dataset)?;
    let subject_ids = select_subjects(&dataset, options.subjects.as_deref())?;
    let scored = ground_truth_available(&dataset, &subject_ids, &reference.structures);
    let request = LoadRequest {
        image_channels: &reference.image_channels,
        structures: if scored { &reference.structures } else { &[] },
        normalization: &reference.preprocessing.normalization,
    };
    info!(
        members = members.len(),
        subjects = subject_ids.len(),
        combine = ?options.combine,
        scored,
        "ensemble"
    );

    let predictions = options.output.join(outputs::TEST_PREDICTIONS);
    std::fs::create_dir_all(&predictions)
        .with_context(|| format!("cannot create {}", predictions.display()))?;
    let mut rows: Vec<MetricsRow> = Vec::new();
    let progress = indicatif::ProgressBar::new(subject_ids.len() as u64);
    for id in &subject_ids {
        // One subject at a time, so that only its image is in memory.
        let subject = load_subjects(&dataset, std::slice::from_ref(id), request)?
            .pop()
            .expect("load_subjects returns one subject per id or fails");
        let (posteriors, classes) = predict_subject(&members, &subject, options.combine);
        let prediction = prediction_from_classes(
            posteriors,
            classes,
            reference.structures.len(),
            largest_component,
        );
        write_prediction(&predictions, &subject, &reference.structures, &prediction)?;
        if let Some(truth) = &subject.masks {
            rows.extend(score_subject(
                &subject.id,
                &reference.structures,
                prediction.masks.view(),
                truth.view(),
                subject.spacing_mm,
            )?);
        }
        info!(subject = %subject.id, "ensemble prediction written");
        progress.inc(1);
    }
    progress.finish_and_clear();

    let summary = scored
        .then(|| write_metrics(&options.output, &rows))
        .transpose()?;
    let record = EnsembleRecord {
        members: members.iter().map(|m| m.record.clone()).collect(),
        combine: options.combine,
        largest_component,
        dataset: std::path::absolute(&options.dataset).unwrap_or(options.dataset.clone()),
        subjects: subject_ids.clone(),
        scored,
    };
    let path = options.output.join(ENSEMBLE_RECORD);
    std::fs::write(&path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(EnsembleOutcome {
        subjects: subject_ids.len(),
        members: members.len(),
        summary,
    })
}

/// Writes the per-subject metrics and their summary into `output`, as `train` does.
fn write_metrics(output: &Path, rows: &[MetricsRow]) -> anyhow::Result<Summary> {
    write_metrics_csv(&output.join(outputs::TEST_METRICS), rows)?;
    let summary = Summary::of(rows);
    summary.write(&output.join(outputs::SUMMARY))?;
    Ok(summary)
}

/// Runs the members on one subject, one after the other, and combines their posteriors with
/// `rule`: the averaged posteriors `[class, i, j, k]` and the class map.
fn predict_subject(
    members: &[Member],
    subject: &Subject,
    rule: CombineRule,
) -> (Tensor, Array3<u8>) {
    let image = tensor_f32(&subject.image);
    let mut accumulator = PosteriorAccumulator::new(rule);
    for member in members {
        accumulator.add(member.model.posteriors(&image));
    }
    // `read_member_specs` refuses an empty member list.
    accumulator
        .finish()
        .expect("an ensemble has at least one member")
}

/// The running combination of the members' posteriors of one subject.
///
/// Holds the float64 sum of the posteriors `[class, i, j, k]` added so far and, for majority
/// vote, the number of members whose argmax is each class `[class, i, j, k]` (int16). Each
/// member's posteriors are taken by value and dropped once added. Float64 keeps the sum of a
/// few float32 posteriors exact in practice, so the order of the members does not matter.
#[derive(Debug)]
pub struct PosteriorAccumulator {
    rule: CombineRule,
    sum: Option<Tensor>,
    votes: Option<Tensor>,
    members: usize,
}

impl PosteriorAccumulator {
    /// An empty accumulator.
    pub fn new(rule: CombineRule) -> Self {
        Self {
            rule,
            sum: None,
            votes: None,
            members: 0,
        }
    }

    /// Number of members added.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Adds one member's posteriors `[class, i, j, k]`.
    ///
    /// # Panics
    /// When the shape differs from the first member's: members predicting one subject always
    /// agree on it once [`check_compatible`] has passed.
    pub fn add(&mut self, posteriors: Tensor) {
        let posteriors = posteriors.to_device(Device::Cpu);
        if let Some(sum) = &self.sum {
            assert_eq!(
                sum.size(),
                posteriors.size(),
                "members' posteriors of one subject differ in shape"
            );
        }
        if self.rule == CombineRule::MajorityVote {
            let size = posteriors.size();
            let votes = self
                .votes
                .get_or_insert_with(|| Tensor::zeros(size.as_slice(), (Kind::Int16, Device::Cpu)));
            let winner = posteriors.argmax(0, true); // [1, i, j, k]
            let one = Tensor::ones(winner.size(), (Kind::Int16, Device::Cpu));
            let _ = votes.scatter_add_(0, &winner, &one);
        }
        // Added in place (float32 into float64): no third volume, not even for a moment.
        match &mut self.sum {
            Some(sum) => {
                let _ = sum.g_add_(&posteriors);
            }
            None => self.sum = Some(posteriors.to_kind(Kind::Double)),
        }
        self.members += 1;
    }

    /// The averaged posteriors `[class, i, j, k]` (float32) and the class map of the rule;
    /// `None` when no member was added. The mean is taken in place; a majority vote's tie-break
    /// needs one short-lived float64 copy of it.
    pub fn finish(self) -> Option<(Tensor, Array3<u8>)> {
        let mut mean = self.sum?;
        let _ = mean.g_div_scalar_(self.members as f64);
        let classes = match self.votes {
            Some(votes) => argmax_classes(&vote_winners(&votes, &mean)),
            None => argmax_classes(&mean),
        };
        Some((mean.to_kind(Kind::Float), classes))
    }
}

/// Scores per class `[class, i, j, k]` whose argmax is the majority vote: the averaged
/// posterior where the class has the most votes of the voxel, -1 (below every posterior)
/// elsewhere. LibTorch's argmax takes the first of equal maxima, hence the lower class index on
/// a complete tie.
fn vote_winners(votes: &Tensor, mean: &Tensor) -> Tensor {
    let most = votes.amax([0i64].as_slice(), true); // [1, i, j, k]
    let tied = votes.eq_tensor(&most);
    mean.where_scalarother(&tied, -1.0)
}

/// Reads every member's resolved configuration; a missing or invalid one is a configuration
/// error naming the member's folder.
fn read_member_specs(folders: &[PathBuf]) -> anyhow::Result<Vec<Experiment>> {
    if folders.is_empty() {
        return Err(bad_config("an ensemble needs at least one --model"));
    }
    folders
        .iter()
        .map(|folder| {
            let path = folder.join(outputs::RESOLVED_CONFIG);
            voxel_crds::manifest::read_experiment(&path)
                .map_err(|e| bad_config(format!("ensemble member {}: {e}", folder.display())))
        })
        .collect()
}

/// Checks that every member reads the same image the same way and predicts the same classes:
/// image channels, structures (in order) and per-channel normalisation equal the first
/// member's. A difference is a configuration error naming the member and the field.
pub fn check_compatible(folders: &[PathBuf], experiments: &[Experiment]) -> anyhow::Result<()> {
    let (Some(first_folder), Some(first)) = (folders.first(), experiments.first()) else {
        return Ok(());
    };
    let first = &first.spec.model;
    for (folder, experiment) in folders.iter().zip(experiments).skip(1) {
        let model = &experiment.spec.model;
        let differs = |field: &str, theirs: String, ours: String| {
            bad_config(format!(
                "ensemble member {}: {field} is {theirs} but the first member {} has {ours}; \
                 members must agree on it",
                folder.display(),
                first_folder.display()
            ))
        };
        if model.image_channels != first.image_channels {
            return Err(differs(
                "spec.model.imageChannels",
                format!("{:?}", model.image_channels),
                format!("{:?}", first.image_channels),
            ));
        }
        if model.structures != first.structures {
            return Err(differs(
                "spec.model.structures",
                format!("{:?}", model.structures),
                format!("{:?}", first.structures),
            ));
        }
        for channel in &first.image_channels {
            let theirs = effective_normalization(&model.preprocessing.normalization, channel);
            let ours = effective_normalization(&first.preprocessing.normalization, channel);
            if theirs != ours {
                return Err(differs(
                    &format!("spec.model.preprocessing.normalization of channel {channel:?}"),
                    format!("{theirs:?}"),
                    format!("{ours:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// The normalisation a channel gets: its entry, or z-score when it has none (as the loader
/// does), so that an explicit z-score entry and a missing one agree.
fn effective_normalization(
    settings: &[ChannelNormalization],
    channel: &str,
) -> ChannelNormalization {
    settings
        .iter()
        .find(|n| n.channel == channel)
        .cloned()
        .unwrap_or_else(|| ChannelNormalization {
            channel: channel.to_string(),
            method: NormalizationMethod::ZScore,
            window_level: None,
            window_width: None,
            lower_percentile: None,
            upper_percentile: None,
        })
}

/// Loads every member's weights and hashes its weights file.
fn load_members(folders: &[PathBuf], device: Device) -> anyhow::Result<Vec<Member>> {
    folders
        .iter()
        .map(|folder| {
            let model = Model::load(folder, device)?;
            let weights_sha256 = sha256_hex(&folder.join(outputs::MODEL_WEIGHTS))?;
            let folder = std::path::absolute(folder).unwrap_or(folder.clone());
            info!(member = %folder.display(), sha256 = %weights_sha256, "ensemble member loaded");
            Ok(Member {
                record: MemberRecord {
                    folder,
                    weights_sha256,
                },
                model,
            })
        })
        .collect()
}

/// SHA-256 of a file's bytes, lowercase hexadecimal.
fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The subjects to predict: `requested` without repeats, in its order, each of which must be in
/// the dataset; or every subject of the dataset.
pub fn select_subjects(
    dataset: &Dataset,
    requested: Option<&[String]>,
) -> anyhow::Result<Vec<String>> {
    let Some(requested) = requested else {
        return Ok(dataset.subject_ids());
    };
    let mut selected: Vec<String> = Vec::with_capacity(requested.len());
    for id in requested {
        if !selected.contains(id) {
            selected.push(id.clone());
        }
    }
    let unknown: Vec<&String> = selected
        .iter()
        .filter(|id| !dataset.subjects.contains_key(*id))
        .collect();
    if !unknown.is_empty() {
        return Err(bad_data(format!(
            "--subjects: {unknown:?} not in the dataset {}",
            dataset.csv_path.display()
        )));
    }
    if selected.is_empty() {
        return Err(bad_data("--subjects: no subject given"));
    }
    Ok(selected)
}

/// Whether every subject has a mask of every structure in the dataset: only then are the
/// predictions scored. A dataset with masks for some subjects only is predicted but not scored,
/// with a warning naming the subjects without them.
fn ground_truth_available(dataset: &Dataset, subjects: &[String], structures: &[String]) -> bool {
    let lacking: Vec<&String> = subjects
        .iter()
        .filter(|id| {
            let files = &dataset.subjects[*id].files;
            !structures.iter().all(|s| files.contains_key(s))
        })
        .collect();
    if !lacking.is_empty() && lacking.len() < subjects.len() {
        warn!(
            subjects = ?lacking,
            "these subjects lack structure masks in the dataset; nothing is scored"
        );
    }
    lacking.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Posteriors `[class, 1, 1, voxels]` from per-voxel class probabilities.
    fn posteriors(voxels: &[&[f32]]) -> Tensor {
        let classes = voxels[0].len() as i64;
        let values: Vec<f32> = (0..classes as usize)
            .flat_map(|c| voxels.iter().map(move |v| v[c]))
            .collect();
        Tensor::from_slice(&values).reshape([classes, 1, 1, voxels.len() as i64])
    }

    fn combine(rule: CombineRule, members: Vec<Tensor>) -> (Tensor, Vec<u8>) {
        let mut accumulator = PosteriorAccumulator::new(rule);
        for member in members {
            accumulator.add(member);
        }
        let (mean, classes) = accumulator.finish().unwrap();
        (mean, classes.iter().copied().collect())
    }

    #[test]
    fn streamed_sum_equals_the_mean_of_the_stacked_members() {
        tch::manual_seed(7);
        let members: Vec<Tensor> = (0..5)
            .map(|_| Tensor::rand([3, 4, 5, 6], (Kind::Float, Device::Cpu)).softmax(0, Kind::Float))
            .collect();
        let stacked = Tensor::stack(&members, 0).to_kind(Kind::Double).mean_dim(
            [0i64].as_slice(),
            false,
            Kind::Double,
        );
        let copies = members.iter().map(|m| m.copy()).collect();
        let (mean, classes) = combine(CombineRule::Mean, copies);

        assert_eq!(mean.kind(), Kind::Float);
        let difference = (mean.to_kind(Kind::Double) - &stacked)
            .abs()
            .max()
            .double_value(&[]);
        // The only rounding is the final cast to float32.
        assert!(difference < 1e-7, "difference {difference}");
        assert_eq!(
            classes,
            argmax_classes(&stacked).iter().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_accumulator_of_one_member_returns_its_posteriors_unchanged() {
        let member = Tensor::rand([3, 2, 3, 4], (Kind::Float, Device::Cpu)).softmax(0, Kind::Float);
        for rule in [CombineRule::Mean, CombineRule::MajorityVote] {
            let (mean, classes) = combine(rule, vec![member.copy()]);
            assert!(mean.equal(&member));
            assert_eq!(
                classes,
                argmax_classes(&member).iter().copied().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn an_empty_accumulator_has_no_result() {
        let accumulator = PosteriorAccumulator::new(CombineRule::Mean);
        assert_eq!(accumulator.members(), 0);
        assert!(accumulator.finish().is_none());
    }

    #[test]
    fn mean_and_majority_vote_differ_where_a_confident_minority_outweighs_the_majority() {
        // Two members lean to class 1, one is sure of class 2: the mean picks 2, the vote 1.
        let members = || {
            vec![
                posteriors(&[&[0.3, 0.4, 0.3]]),
                posteriors(&[&[0.3, 0.4, 0.3]]),
                posteriors(&[&[0.0, 0.0, 1.0]]),
            ]
        };
        assert_eq!(combine(CombineRule::Mean, members()).1, vec![2]);
        assert_eq!(combine(CombineRule::MajorityVote, members()).1, vec![1]);
    }

    #[test]
    fn a_tied_vote_goes_to_the_tied_class_with_the_larger_averaged_posterior() {
        // Both voxels: one vote for class 1, one for class 2. Voxel 0: class 2 has the larger
        // mean (0.5 against 0.35). Voxel 1: class 2 (0.33) beats class 1 (0.315); class 0 has
        // the largest mean (0.355), and wins the mean rule, but no vote, so it cannot win here.
        let members = || {
            vec![
                posteriors(&[&[0.1, 0.5, 0.4], &[0.36, 0.37, 0.27]]),
                posteriors(&[&[0.2, 0.2, 0.6], &[0.35, 0.26, 0.39]]),
            ]
        };
        assert_eq!(combine(CombineRule::MajorityVote, members()).1, vec![2, 2]);
        assert_eq!(combine(CombineRule::Mean, members()).1, vec![2, 0]);
    }

    #[test]
    fn a_complete_tie_goes_to_the_lower_class() {
        // One vote each for 1 and 2, with equal averaged posteriors.
        let members = vec![
            posteriors(&[&[0.0, 0.75, 0.25]]),
            posteriors(&[&[0.0, 0.25, 0.75]]),
        ];
        assert_eq!(combine(CombineRule::MajorityVote, members).1, vec![1]);
    }

    /// A minimal Experiment with the given structures and normalisation (YAML flow lists).
    fn experiment(structures: &str, normalization: &str) -> Experiment {
        let text = format!(
            r#"apiVersion: voxel.dev/v1alpha1
kind: Experiment
metadata: {{name: e}}
spec:
  model:
    task: Segmentation
    architecture: UNet3D
    imageChannels: [mr]
    structures: {structures}
    preprocessing:
      cropSize: [16, 16, 16]
      normalization: {normalization}
  training: {{epochs: 1}}
  data:
    source: {{localPath: .}}
    dataset: d.csv
"#
        );
        voxel_crds::manifest::parse_experiment(&text, Path::new("e.yaml")).unwrap()
    }

    fn check(experiments: &[Experiment]) -> anyhow::Result<()> {
        let folders: Vec<PathBuf> = (0..experiments.len())
            .map(|n| PathBuf::from(format!("member-{n}")))
            .collect();
        check_compatible(&folders, experiments)
    }

    #[test]
    fn members_must_agree_on_structures_in_order_and_on_normalisation() {
        let reference = experiment("[a, b]", "[]");
        assert!(check(&[reference.clone(), experiment("[a, b]", "[]")]).is_ok());
        // A missing entry is z-score, so an explicit z-score entry agrees with it.
        assert!(
            check(&[
                reference.clone(),
                experiment("[a, b]", "[{channel: mr, method: ZScore}]")
            ])
            .is_ok()
        );

        let reordered = check(&[reference.clone(), experiment("[b, a]", "[]")]).unwrap_err();
        let message = reordered.to_string();
        assert!(message.contains("member-1") && message.contains("spec.model.structures"));
        assert_eq!(
            crate::error::exit_code_for(&reordered),
            crate::error::EXIT_BAD_CONFIG
        );

        let windowed = experiment(
            "[a, b]",
            "[{channel: mr, method: CtWindow, windowLevel: 40, windowWidth: 400}]",
        );
        let message = check(&[reference, windowed]).unwrap_err().to_string();
        assert!(
            message.contains("member-1") && message.contains("normalization"),
            "{message}"
        );
    }
}
