//! Loading subjects: every image channel and structure mask of a subject, validated together.
//!
//! The whole dataset is validated before training starts, and every problem is reported at once
//! with the subject and file it concerns, so that a user fixes a CSV in one pass instead of one
//! crash at a time.

use std::{collections::BTreeMap, path::Path};

use ndarray::{Array3, Array4, Axis};
use nifti::NiftiHeader;
use tracing::warn;
use voxel_crds::experiment::ChannelNormalization;

use crate::{
    data::{
        dataset::Dataset,
        normalize::normalize,
        volume::{SpacingMm, read_volume},
    },
    error::bad_data,
};

/// Relative tolerance when comparing the spacing of two channels of one subject: NIfTI stores
/// float32, and converters round differently.
const SPACING_TOLERANCE: f64 = 1e-4;

/// One subject, ready for the network.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Subject identifier from the CSV.
    pub id: String,
    /// Normalised image channels, `[channel, i, j, k]`.
    pub image: Array4<f32>,
    /// Ground-truth masks (0 or 1), `[structure, i, j, k]`; `None` when not requested.
    pub masks: Option<Array4<u8>>,
    /// Voxel spacing of the first image channel.
    pub spacing_mm: SpacingMm,
    /// Header of the first image channel: the geometry of every prediction for this subject.
    pub header: NiftiHeader,
    /// Problems that do not stop training (overlapping structures), also logged as warnings.
    pub warnings: Vec<String>,
}

impl Subject {
    /// Spatial shape `[i, j, k]`.
    pub fn shape(&self) -> [usize; 3] {
        let (_, i, j, k) = self.image.dim();
        [i, j, k]
    }

    /// The class map of the ground truth: 0 for background, `s + 1` for structure `s`. Where
    /// structures overlap, the later structure wins (overlaps are reported at load time).
    pub fn class_map(&self) -> Option<Array3<u8>> {
        let masks = self.masks.as_ref()?;
        let mut classes = Array3::<u8>::zeros(masks.index_axis(Axis(0), 0).raw_dim());
        for (s, mask) in masks.outer_iter().enumerate() {
            ndarray::Zip::from(&mut classes)
                .and(&mask)
                .for_each(|c, &m| {
                    if m > 0 {
                        *c = (s + 1) as u8;
                    }
                });
        }
        Some(classes)
    }
}

/// What to load for each subject.
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    /// Image channels, in network order.
    pub image_channels: &'a [String],
    /// Structures whose masks are loaded (may be empty).
    pub structures: &'a [String],
    /// Normalisation settings per channel (channels without an entry get z-score).
    pub normalization: &'a [ChannelNormalization],
}

/// Loads and validates the given subjects; all problems of all subjects are reported together.
pub fn load_subjects(
    dataset: &Dataset,
    ids: &[String],
    request: LoadRequest<'_>,
) -> anyhow::Result<Vec<Subject>> {
    let mut subjects = Vec::with_capacity(ids.len());
    let mut problems = Vec::new();
    for id in ids {
        match load_subject(dataset, id, request) {
            Ok(subject) => {
                for warning in &subject.warnings {
                    warn!(subject = %id, "{warning}");
                }
                subjects.push(subject);
            }
            Err(mut subject_problems) => problems.append(&mut subject_problems),
        }
    }
    if problems.is_empty() {
        Ok(subjects)
    } else {
        Err(bad_data(format!(
            "dataset {} has {} problem(s):\n  {}",
            dataset.csv_path.display(),
            problems.len(),
            problems.join("\n  ")
        )))
    }
}

type Problems = Vec<String>;

fn load_subject(
    dataset: &Dataset,
    id: &str,
    request: LoadRequest<'_>,
) -> Result<Subject, Problems> {
    let Some(files) = dataset.subjects.get(id) else {
        return Err(vec![format!(
            "subject {id}: not listed in {}",
            dataset.csv_path.display()
        )]);
    };
    let mut problems = Vec::new();
    let wanted = request.image_channels.iter().chain(request.structures);
    for channel in wanted {
        if !files.files.contains_key(channel) {
            let present: Vec<&String> = files.files.keys().collect();
            problems.push(format!(
                "subject {id}: no file for channel {channel:?} (the CSV lists {present:?})"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // The first image channel defines the subject's grid.
    let mut reference: Option<(String, [usize; 3], SpacingMm, NiftiHeader)> = None;
    let mut check_grid = |file: &Path,
                          data: &Array3<f32>,
                          spacing: SpacingMm,
                          header: &NiftiHeader| {
        let shape = {
            let (i, j, k) = data.dim();
            [i, j, k]
        };
        match &reference {
            None => {
                reference = Some((file.display().to_string(), shape, spacing, header.clone()));
                None
            }
            Some((first, first_shape, first_spacing, _)) => {
                if shape != *first_shape {
                    Some(format!(
                        "subject {id}, file {}: shape {shape:?} differs from {first} with shape \
                         {first_shape:?}",
                        file.display()
                    ))
                } else if spacing
                    .iter()
                    .zip(first_spacing)
                    .any(|(a, b)| (a - b).abs() > SPACING_TOLERANCE * b.abs().max(1.0))
                {
                    Some(format!(
                        "subject {id}, file {}: spacing {spacing:?} mm differs from {first} with \
                         spacing {first_spacing:?} mm",
                        file.display()
                    ))
                } else {
                    None
                }
            }
        }
    };

    let mut channels = Vec::new();
    for channel in request.image_channels {
        let file = &files.files[channel];
        let volume = match read_volume(file) {
            Ok(volume) => volume,
            Err(e) => {
                problems.push(format!("subject {id}: {e}"));
                continue;
            }
        };
        let not_finite = volume.data.iter().filter(|v| !v.is_finite()).count();
        if not_finite > 0 {
            problems.push(format!(
                "subject {id}, file {}: {not_finite} voxel(s) are NaN or infinite",
                file.display()
            ));
            continue;
        }
        if let Some(problem) = check_grid(file, &volume.data, volume.spacing_mm, &volume.header) {
            problems.push(problem);
            continue;
        }
        let mut data = volume.data;
        let settings = request.normalization.iter().find(|n| &n.channel == channel);
        normalize(data.view_mut(), settings);
        channels.push(data);
    }

    let mut masks = Vec::new();
    for structure in request.structures {
        let file = &files.files[structure];
        let volume = match read_volume(file) {
            Ok(volume) => volume,
            Err(e) => {
                problems.push(format!("subject {id}: {e}"));
                continue;
            }
        };
        let not_finite = volume.data.iter().filter(|v| !v.is_finite()).count();
        let not_binary: Vec<f32> = {
            let mut odd: Vec<f32> = volume
                .data
                .iter()
                .copied()
                .filter(|&v| v.is_finite() && v != 0.0 && v != 1.0)
                .collect();
            odd.sort_by(f32::total_cmp);
            odd.dedup();
            odd
        };
        if not_finite > 0 {
            problems.push(format!(
                "subject {id}, file {}: mask of {structure:?} has {not_finite} NaN or infinite \
                 voxel(s)",
                file.display()
            ));
            continue;
        }
        if !not_binary.is_empty() {
            let shown: Vec<f32> = not_binary.iter().copied().take(5).collect();
            problems.push(format!(
                "subject {id}, file {}: mask of {structure:?} is not binary (values other than \
                 0 and 1: {shown:?}{}); a multi-label file must be split into one mask per \
                 structure",
                file.display(),
                if not_binary.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
            continue;
        }
        if let Some(problem) = check_grid(file, &volume.data, volume.spacing_mm, &volume.header) {
            problems.push(problem);
            continue;
        }
        masks.push(volume.data.mapv(|v| u8::from(v > 0.5)));
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let Some((_, shape, spacing_mm, header)) = reference else {
        return Err(vec![format!("subject {id}: no image channel requested")]);
    };
    let stack = |arrays: Vec<Array3<f32>>| -> Array4<f32> {
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        ndarray::stack(Axis(0), &views).expect("all channels were checked to share one shape")
    };
    let image = stack(channels);
    let mut warnings = Vec::new();
    let masks = if request.structures.is_empty() {
        None
    } else {
        let views: Vec<_> = masks.iter().map(|a| a.view()).collect();
        let stacked =
            ndarray::stack(Axis(0), &views).expect("all masks were checked to share one shape");
        warnings.extend(overlaps(&stacked, request.structures));
        Some(stacked)
    };
    debug_assert_eq!(image.shape()[1..], shape[..]);
    Ok(Subject {
        id: id.to_string(),
        image,
        masks,
        spacing_mm,
        header,
        warnings,
    })
}

/// One message per pair of structures that share voxels.
fn overlaps(masks: &Array4<u8>, structures: &[String]) -> Vec<String> {
    let mut found = BTreeMap::new();
    for a in 0..structures.len() {
        for b in a + 1..structures.len() {
            let shared = ndarray::Zip::from(masks.index_axis(Axis(0), a))
                .and(masks.index_axis(Axis(0), b))
                .fold(0usize, |n, &x, &y| n + usize::from(x > 0 && y > 0));
            if shared > 0 {
                found.insert((a, b), shared);
            }
        }
    }
    found
        .into_iter()
        .map(|((a, b), n)| {
            format!(
                "structures {:?} and {:?} overlap in {n} voxel(s); {:?} wins in the class map",
                structures[a], structures[b], structures[b]
            )
        })
        .collect()
}
