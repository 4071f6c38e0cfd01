//! Segmentation losses over `[batch, class, i, j, k]` log-posteriors and class-index targets.

use tch::{Kind, Reduction, Tensor};
use voxel_crds::experiment::{LossKind, LossSpec};

/// Smoothing of the soft Dice ratio: keeps the gradient finite when a structure is absent from
/// a whole batch, and small enough not to bias present structures.
const DICE_SMOOTHING: f64 = 1e-5;

/// The loss of `spec` for log-posteriors `[batch, class, i, j, k]` and targets
/// `[batch, i, j, k]` (int64 class indices).
pub fn segmentation_loss(log_posteriors: &Tensor, targets: &Tensor, spec: &LossSpec) -> Tensor {
    match spec.kind {
        LossKind::CrossEntropy => cross_entropy(log_posteriors, targets),
        LossKind::SoftDice => soft_dice(log_posteriors, targets),
        LossKind::DiceCrossEntropy => {
            let w = spec.dice_weight;
            soft_dice(log_posteriors, targets) * w
                + cross_entropy(log_posteriors, targets) * (1.0 - w)
        }
    }
}

/// Mean voxel-wise cross entropy.
pub fn cross_entropy(log_posteriors: &Tensor, targets: &Tensor) -> Tensor {
    log_posteriors.nll_loss_nd::<Tensor>(targets, None, Reduction::Mean, -100)
}

/// One minus the mean soft Dice of the structures (classes 1..), pooled over the batch.
pub fn soft_dice(log_posteriors: &Tensor, targets: &Tensor) -> Tensor {
    let classes = log_posteriors.size()[1];
    let posteriors = log_posteriors.exp();
    // [batch, i, j, k, class] -> [batch, class, i, j, k]
    let one_hot = targets
        .one_hot(classes)
        .permute([0, 4, 1, 2, 3])
        .to_kind(Kind::Float);
    let dims: &[i64] = &[0, 2, 3, 4];
    let intersection = (&posteriors * &one_hot).sum_dim_intlist(dims, false, Kind::Float);
    let sizes = posteriors.sum_dim_intlist(dims, false, Kind::Float)
        + one_hot.sum_dim_intlist(dims, false, Kind::Float);
    let dice = (intersection * 2.0 + DICE_SMOOTHING) / (sizes + DICE_SMOOTHING);
    1.0 - dice.narrow(0, 1, classes - 1).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    fn perfect(classes: i64) -> (Tensor, Tensor) {
        let targets = Tensor::from_slice(&[0i64, 1, 2, 1, 0, 2, 2, 1]).reshape([1, 2, 2, 2]);
        // Near-certain posteriors on the right class.
        let logits = targets
            .one_hot(classes)
            .permute([0, 4, 1, 2, 3])
            .to_kind(Kind::Float)
            * 50.0;
        (logits.log_softmax(1, Kind::Float), targets)
    }

    #[test]
    fn perfect_prediction_has_zero_loss() {
        let (log_p, t) = perfect(3);
        for kind in [
            LossKind::CrossEntropy,
            LossKind::SoftDice,
            LossKind::DiceCrossEntropy,
        ] {
            let loss = segmentation_loss(
                &log_p,
                &t,
                &LossSpec {
                    kind,
                    dice_weight: 0.5,
                },
            );
            assert!(loss.double_value(&[]) < 1e-6, "{kind:?}");
        }
    }

    #[test]
    fn uniform_prediction_has_cross_entropy_log_classes() {
        let t = Tensor::zeros([1, 2, 2, 2], (Kind::Int64, Device::Cpu));
        let log_p =
            Tensor::zeros([1, 3, 2, 2, 2], (Kind::Float, Device::Cpu)).log_softmax(1, Kind::Float);
        let ce = cross_entropy(&log_p, &t).double_value(&[]);
        assert!((ce - 3f64.ln()).abs() < 1e-6);
    }
}
