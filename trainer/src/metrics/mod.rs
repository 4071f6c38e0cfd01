//! Segmentation metrics per subject and structure: Dice overlap and surface distances in mm.
//!
//! Every function compares a *prediction* with the *ground truth* of one structure of one
//! subject. Both are binary masks on the same voxel grid, indexed `[i, j, k]` in NIfTI file
//! order, and the voxel spacing is given in millimetres along the same three axes.
//!
//! # Definitions
//!
//! These follow the canonical definitions of `shared/data/reference/README.md`, which match
//! medpy 0.5.2 and MONAI 1.6.1.
//!
//! - **Dice** = 2 |P ∩ G| / (|P| + |G|), a fraction in [0, 1] (never a percentage).
//! - **Surface voxels** S(X) are the voxels of X that have at least one of their six face
//!   neighbours outside X. Outside the volume counts as background, so mask voxels on the
//!   volume border are surface voxels.
//! - **Surface distance** d(x, Y) is the Euclidean distance in mm, using the spacing, from the
//!   centre of a surface voxel x to the nearest surface-voxel centre of Y. The directed sets
//!   are D_PG = { d(p, G) : p ∈ S(P) } and D_GP = { d(g, P) : g ∈ S(G) }.
//! - **Hausdorff distance (HD)** = max(max D_PG, max D_GP).
//! - **HD95, pooled** = the 95th percentile of D_PG ∪ D_GP (medpy's `hd95`). This is the
//!   value the trainer reports as "HD95".
//! - **HD95, max of directed** = max(95th percentile of D_PG, 95th percentile of D_GP)
//!   (MONAI's `compute_hausdorff_distance(percentile=95)`). The two definitions differ on
//!   some real cases, so both are kept and neither is silently substituted for the other.
//! - **Mean surface distance (ASSD)** = the mean of D_PG ∪ D_GP, averaged over the surface
//!   voxels of both masks (medpy's `assd`; MONAI's average surface distance with
//!   `symmetric=True`).
//!
//! Percentiles use numpy's default linear interpolation, see [`percentile_linear`].
//!
//! # Empty masks
//!
//! A metric of an empty structure has no meaningful value, and returning 0 would hide that,
//! so the conventions are:
//!
//! - **Both masks empty:** Dice and every distance are NaN. There is nothing to compare, and
//!   an average over subjects must leave such a subject out (and say how many it left out).
//! - **Exactly one mask empty:** Dice is 0 and every distance is +∞. The structure was missed
//!   entirely, or predicted where there is none, which is as wrong as a result can be.
//!
//! These match MONAI, except that MONAI gives NaN for HD95 when one mask is empty.
//!
//! [`StructureMetrics`] serialises with serde; JSON has no NaN or infinity, so a JSON writer
//! such as `serde_json` writes those values as `null`.

mod overlap;
mod surface;

use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

pub use overlap::dice;
pub use surface::{SurfaceDistances, percentile_linear, surface_distances};

/// Voxel spacing in millimetres along i, j, k.
pub type SpacingMm = [f64; 3];

/// Why two masks could not be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// The prediction and the ground truth are not on the same voxel grid.
    #[error(
        "prediction has shape {prediction:?} but ground truth has shape {truth:?}; \
         metrics need both masks on the same voxel grid"
    )]
    ShapeMismatch {
        /// Shape of the predicted mask, [i, j, k].
        prediction: [usize; 3],
        /// Shape of the ground-truth mask, [i, j, k].
        truth: [usize; 3],
    },

    /// A spacing value is zero, negative, infinite or NaN, so no distance in mm exists.
    #[error("voxel spacing must be finite and positive along i, j, k, found {spacing_mm:?} mm")]
    InvalidSpacing {
        /// The spacing that was passed, in mm along i, j, k.
        spacing_mm: SpacingMm,
    },
}

/// All metrics of one structure of one subject.
///
/// Distances are in mm. See the module documentation for the definitions and for the values
/// taken when a mask is empty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StructureMetrics {
    /// Dice overlap, a fraction in [0, 1].
    pub dice: f64,
    /// Hausdorff distance: the largest surface distance in either direction, in mm.
    pub hausdorff_mm: f64,
    /// 95th percentile of the pooled surface distances of both directions (medpy), in mm.
    pub hausdorff95_mm: f64,
    /// Larger of the two directed 95th percentiles (MONAI), in mm.
    pub hausdorff95_max_directed_mm: f64,
    /// Mean of the pooled surface distances of both directions (ASSD), in mm.
    pub mean_surface_distance_mm: f64,
}

/// Computes Dice and the surface distances of one structure of one subject.
///
/// `prediction` and `truth` are masks indexed `[i, j, k]` on the same grid; `spacing_mm` is
/// the voxel size along those axes. Unlike [`dice`] and [`surface_distances`], this checks
/// its inputs and never panics.
///
/// # Errors
///
/// [`MetricsError::ShapeMismatch`] when the masks differ in shape, and
/// [`MetricsError::InvalidSpacing`] when a spacing value is not finite and positive.
pub fn evaluate_structure(
    prediction: ArrayView3<bool>,
    truth: ArrayView3<bool>,
    spacing_mm: SpacingMm,
) -> Result<StructureMetrics, MetricsError> {
    check_same_shape(&prediction, &truth)?;
    check_spacing(spacing_mm)?;

    // Both checks passed, so the preconditions of `dice` and `surface_distances` hold.
    let distances = surface_distances(prediction, truth, spacing_mm);
    Ok(StructureMetrics {
        dice: dice(prediction, truth),
        hausdorff_mm: distances.hausdorff_mm,
        hausdorff95_mm: distances.hausdorff95_mm,
        hausdorff95_max_directed_mm: distances.hausdorff95_max_directed_mm,
        mean_surface_distance_mm: distances.mean_surface_distance_mm,
    })
}

/// Fails with [`MetricsError::ShapeMismatch`], naming both shapes, unless the masks have the
/// same shape.
fn check_same_shape(
    prediction: &ArrayView3<bool>,
    truth: &ArrayView3<bool>,
) -> Result<(), MetricsError> {
    let prediction_shape: [usize; 3] = prediction.dim().into();
    let truth_shape: [usize; 3] = truth.dim().into();
    if prediction_shape != truth_shape {
        return Err(MetricsError::ShapeMismatch {
            prediction: prediction_shape,
            truth: truth_shape,
        });
    }
    Ok(())
}

/// Fails with [`MetricsError::InvalidSpacing`] unless every spacing value is finite and
/// positive.
fn check_spacing(spacing_mm: SpacingMm) -> Result<(), MetricsError> {
    if spacing_mm
        .iter()
        .all(|&step_mm| step_mm.is_finite() && step_mm > 0.0)
    {
        Ok(())
    } else {
        Err(MetricsError::InvalidSpacing { spacing_mm })
    }
}

/// Enforces a documented precondition of a function that returns no `Result`: a failed check
/// is a bug of the caller, reported with the check's own message.
#[track_caller]
fn require(check: Result<(), MetricsError>) {
    if let Err(error) = check {
        panic!("{error}");
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    #[test]
    fn structure_metrics_combine_dice_and_surface_distances() {
        // P is one voxel; G is that voxel and the next one along k, 2 mm further.
        let prediction = Array3::from_shape_fn((3, 3, 4), |index| index == (1, 1, 0));
        let truth = Array3::from_shape_fn((3, 3, 4), |(i, j, k)| (i, j) == (1, 1) && k <= 1);
        let metrics = evaluate_structure(prediction.view(), truth.view(), [1.0, 1.0, 2.0])
            .expect("the masks share a shape and the spacing is positive");

        // D_PG = [0] and D_GP = [0, 2] mm, so the pooled distances are [0, 0, 2] mm.
        let expected = [
            ("dice", metrics.dice, 2.0 / 3.0),
            ("hausdorff_mm", metrics.hausdorff_mm, 2.0),
            // Pooled rank 0.95 · 2 = 1.9: 0 + 0.9 · (2 − 0).
            ("hausdorff95_mm", metrics.hausdorff95_mm, 1.8),
            // Directed: 0 for D_PG; rank 0.95 · 1 in D_GP gives 0.95 · 2.
            (
                "hausdorff95_max_directed_mm",
                metrics.hausdorff95_max_directed_mm,
                1.9,
            ),
            (
                "mean_surface_distance_mm",
                metrics.mean_surface_distance_mm,
                2.0 / 3.0,
            ),
        ];
        for (name, actual, expected) in expected {
            assert!(
                (actual - expected).abs() < 1e-12,
                "{name}: {actual}, expected {expected}"
            );
        }
    }

    #[test]
    fn masks_of_different_shapes_are_an_error_naming_both_shapes() {
        let prediction = Array3::from_elem((4, 4, 4), true);
        let truth = Array3::from_elem((4, 4, 5), true);
        let error = evaluate_structure(prediction.view(), truth.view(), [1.0; 3]).unwrap_err();
        assert_eq!(
            error,
            MetricsError::ShapeMismatch {
                prediction: [4, 4, 4],
                truth: [4, 4, 5]
            }
        );
        assert!(error.to_string().contains("[4, 4, 4]"), "{error}");
        assert!(error.to_string().contains("[4, 4, 5]"), "{error}");
    }

    #[test]
    fn spacing_that_is_not_finite_and_positive_is_an_error() {
        let mask = Array3::from_elem((2, 2, 2), true);
        for spacing_mm in [
            [1.0, 0.0, 1.0],
            [1.0, 1.0, -2.0],
            [f64::NAN, 1.0, 1.0],
            [f64::INFINITY; 3],
        ] {
            let error = evaluate_structure(mask.view(), mask.view(), spacing_mm).unwrap_err();
            assert!(
                matches!(error, MetricsError::InvalidSpacing { .. }),
                "{spacing_mm:?}"
            );
        }
    }
}
