//! Inference: posteriors over whole volumes, class maps, masks, and their files.

pub mod ensemble;
pub mod postprocess;
pub mod sliding_window;

use std::path::Path;

use anyhow::Context;
use ndarray::{Array3, Array4, Axis};
use tch::{Device, Tensor};
use tracing::info;

use crate::{
    data::{
        dataset::read_dataset,
        subject::{LoadRequest, Subject, load_subjects},
        volume::write_mask,
    },
    model::Model,
    outputs,
    train::tensor_f32,
};

/// The prediction for one subject.
pub struct Prediction {
    /// Averaged posteriors `[class, i, j, k]` (before post-processing).
    pub posteriors: Tensor,
    /// Class map after post-processing: 0 background, `s + 1` structure `s`.
    pub classes: Array3<u8>,
    /// One binary mask per structure, `[structure, i, j, k]`.
    pub masks: Array4<u8>,
}

/// The most probable class of every voxel of posteriors `[class, i, j, k]`.
pub fn argmax_classes(posteriors: &Tensor) -> Array3<u8> {
    let size = posteriors.size();
    let classes = posteriors
        .argmax(0, false)
        .to_kind(tch::Kind::Uint8)
        .contiguous();
    let values = Vec::<u8>::try_from(classes.flatten(0, -1)).expect("a uint8 tensor converts");
    Array3::from_shape_vec(
        (size[1] as usize, size[2] as usize, size[3] as usize),
        values,
    )
    .expect("argmax keeps the spatial shape")
}

/// Predicts one subject: sliding-window posteriors, argmax, optional largest component.
pub fn predict(model: &Model, subject: &Subject) -> Prediction {
    let posteriors = model.posteriors(&tensor_f32(&subject.image));
    let classes = argmax_classes(&posteriors);
    let spec = &model.experiment.spec.model;
    prediction_from_classes(
        posteriors,
        classes,
        spec.structures.len(),
        spec.postprocessing.largest_component,
    )
}

/// The prediction made of posteriors `[class, i, j, k]` and the class map chosen from them: one
/// mask per structure, reduced to its largest connected component when `largest_component`
/// says so, and the class map cleared where post-processing removed voxels.
pub fn prediction_from_classes(
    posteriors: Tensor,
    mut classes: Array3<u8>,
    structures: usize,
    largest_component: bool,
) -> Prediction {
    let (i, j, k) = classes.dim();
    let mut masks = Array4::<u8>::zeros((structures, i, j, k));
    for (s, mut mask) in masks.outer_iter_mut().enumerate() {
        let label = (s + 1) as u8;
        ndarray::Zip::from(&mut mask)
            .and(&classes)
            .for_each(|m, &c| *m = u8::from(c == label));
        if largest_component {
            postprocess::keep_largest_component(mask.view_mut());
        }
    }
    // Voxels removed by post-processing become background in the class map too.
    for (s, mask) in masks.outer_iter().enumerate() {
        let label = (s + 1) as u8;
        ndarray::Zip::from(&mut classes)
            .and(&mask)
            .for_each(|c, &m| {
                if *c == label && m == 0 {
                    *c = 0;
                }
            });
    }
    Prediction {
        posteriors,
        classes,
        masks,
    }
}

/// Writes `<folder>/<subject>/<structure>.nii.gz` and `segmentation.nii.gz` with the subject's
/// geometry.
pub fn write_prediction(
    folder: &Path,
    subject: &Subject,
    structures: &[String],
    prediction: &Prediction,
) -> anyhow::Result<()> {
    let dir = folder.join(&subject.id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (s, structure) in structures.iter().enumerate() {
        let path = dir.join(format!("{structure}{}", outputs::MASK_EXTENSION));
        write_mask(
            &path,
            prediction.masks.index_axis(Axis(0), s),
            &subject.header,
        )?;
    }
    write_mask(
        &dir.join(outputs::SEGMENTATION),
        prediction.classes.view(),
        &subject.header,
    )?;
    Ok(())
}

/// `voxel-trainer infer`: predicts every subject of a dataset CSV with a trained model.
pub fn run_inference(
    model_dir: &Path,
    dataset_csv: &Path,
    output: &Path,
    device: Device,
) -> anyhow::Result<usize> {
    let model = Model::load(model_dir, device)?;
    let spec = &model.experiment.spec;
    let dataset = read_dataset(dataset_csv)?;
    // Only the images are needed; ground truth, when the CSV has it, is for `evaluate`.
    let request = LoadRequest {
        image_channels: &spec.model.image_channels,
        structures: &[],
        normalization: &spec.model.preprocessing.normalization,
    };
    let subjects = load_subjects(&dataset, &dataset.subject_ids(), request)?;
    let progress = indicatif::ProgressBar::new(subjects.len() as u64);
    for subject in &subjects {
        let prediction = predict(&model, subject);
        write_prediction(output, subject, &spec.model.structures, &prediction)?;
        info!(subject = %subject.id, "prediction written");
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(subjects.len())
}
