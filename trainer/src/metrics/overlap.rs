//! Volume overlap between a predicted and a ground-truth mask.

use ndarray::ArrayView3;

use super::{check_same_shape, require};

/// Dice overlap 2 |P ∩ G| / (|P| + |G|) of a predicted and a ground-truth mask, in [0, 1].
///
/// Both masks are indexed `[i, j, k]`. Dice is NaN when both masks are empty and 0 when
/// exactly one is (see the module documentation).
///
/// # Panics
///
/// When the masks differ in shape: the caller guarantees that both lie on the same grid.
/// [`evaluate_structure`](super::evaluate_structure) returns an error instead.
#[track_caller]
pub fn dice(prediction: ArrayView3<bool>, truth: ArrayView3<bool>) -> f64 {
    require(check_same_shape(&prediction, &truth));

    let mut predicted_voxels = 0_usize;
    let mut truth_voxels = 0_usize;
    let mut overlap_voxels = 0_usize;
    // `Zip` walks both views in one memory order, whatever their strides are.
    ndarray::Zip::from(prediction)
        .and(truth)
        .for_each(|&predicted, &true_voxel| {
            predicted_voxels += usize::from(predicted);
            truth_voxels += usize::from(true_voxel);
            overlap_voxels += usize::from(predicted && true_voxel);
        });

    let total_voxels = predicted_voxels + truth_voxels;
    if total_voxels == 0 {
        return f64::NAN;
    }
    // Voxel counts stay far below 2^53, so the conversions to f64 are exact.
    2.0 * overlap_voxels as f64 / total_voxels as f64
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    /// A 4×4×4 mask with the listed voxels set.
    fn mask_with(voxels: &[[usize; 3]]) -> Array3<bool> {
        let mut mask = Array3::from_elem((4, 4, 4), false);
        for &index in voxels {
            mask[index] = true;
        }
        mask
    }

    #[test]
    fn identical_masks_have_dice_one() {
        let mask = mask_with(&[[0, 0, 0], [1, 2, 3], [3, 3, 3]]);
        assert_eq!(dice(mask.view(), mask.view()), 1.0);
    }

    #[test]
    fn disjoint_masks_have_dice_zero() {
        let prediction = mask_with(&[[0, 0, 0]]);
        let truth = mask_with(&[[3, 3, 3]]);
        assert_eq!(dice(prediction.view(), truth.view()), 0.0);
    }

    #[test]
    fn dice_is_twice_the_overlap_over_the_sum_of_both_sizes() {
        // |P| = 2, |G| = 3, |P ∩ G| = 1, so Dice = 2 / 5.
        let prediction = mask_with(&[[0, 0, 0], [1, 1, 1]]);
        let truth = mask_with(&[[1, 1, 1], [2, 2, 2], [3, 3, 3]]);
        assert_eq!(dice(prediction.view(), truth.view()), 0.4);
    }

    #[test]
    fn dice_does_not_depend_on_memory_layout() {
        let prediction = mask_with(&[[0, 1, 2], [1, 1, 1], [3, 0, 2]]);
        let truth = mask_with(&[[0, 1, 2], [3, 0, 2], [2, 2, 2]]);
        let transposed_prediction = prediction.view().reversed_axes();
        let transposed_truth = truth.view().reversed_axes();
        assert_eq!(
            dice(transposed_prediction, transposed_truth),
            dice(prediction.view(), truth.view())
        );
    }

    #[test]
    fn two_empty_masks_have_dice_nan() {
        let empty = mask_with(&[]);
        assert!(dice(empty.view(), empty.view()).is_nan());
    }

    #[test]
    fn one_empty_mask_gives_dice_zero() {
        let empty = mask_with(&[]);
        let structure = mask_with(&[[2, 2, 2]]);
        assert_eq!(dice(empty.view(), structure.view()), 0.0);
        assert_eq!(dice(structure.view(), empty.view()), 0.0);
    }

    #[test]
    #[should_panic(
        expected = "prediction has shape [4, 4, 4] but ground truth has shape [4, 4, 5]"
    )]
    fn masks_of_different_shapes_violate_the_precondition_of_dice() {
        let prediction = Array3::from_elem((4, 4, 4), true);
        let truth = Array3::from_elem((4, 4, 5), true);
        dice(prediction.view(), truth.view());
    }
}
