//! The learning-rate schedule: a pure function of the optimisation step.

use std::f64::consts::PI;

use voxel_crds::experiment::{ScheduleKind, ScheduleSpec};

/// Where training stands, in steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Zero-based index of the step about to be taken.
    pub step: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
}

/// The learning rate of step `progress.step` for a peak rate `peak`.
pub fn learning_rate(spec: &ScheduleSpec, peak: f64, progress: Progress) -> f64 {
    let warmup = u64::from(spec.warmup_epochs) * progress.steps_per_epoch;
    if progress.step < warmup {
        // Linear warm-up reaching the peak on the last warm-up step.
        return peak * (progress.step + 1) as f64 / warmup as f64;
    }
    let span = progress.total_steps.saturating_sub(warmup).max(1);
    let fraction = ((progress.step - warmup) as f64 / span as f64).min(1.0);
    let floor = spec.min_learning_rate;
    match spec.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::Cosine => floor + (peak - floor) * 0.5 * (1.0 + (PI * fraction).cos()),
        ScheduleKind::Polynomial => floor + (peak - floor) * (1.0 - fraction).powf(spec.power),
        ScheduleKind::Step => {
            let epoch = progress.step / progress.steps_per_epoch.max(1);
            let drops = epoch / u64::from(spec.step_epochs.max(1));
            peak * spec.gamma.powi(drops as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64) -> Progress {
        Progress {
            step,
            steps_per_epoch: 10,
            total_steps: 100,
        }
    }

    fn spec(kind: ScheduleKind, warmup_epochs: u32) -> ScheduleSpec {
        ScheduleSpec {
            kind,
            warmup_epochs,
            ..ScheduleSpec::default()
        }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = spec(ScheduleKind::Cosine, 2);
        assert!((learning_rate(&s, 1.0, at(0)) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, at(19)) - 1.0).abs() < 1e-12);
        assert!(
            (learning_rate(&s, 1.0, at(20)) - 1.0).abs() < 1e-12,
            "cosine starts at peak"
        );
    }

    #[test]
    fn cosine_reaches_half_at_mid_run_and_the_floor_at_the_end() {
        let s = ScheduleSpec {
            min_learning_rate: 0.1,
            ..spec(ScheduleKind::Cosine, 0)
        };
        assert!((learning_rate(&s, 1.0, at(50)) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, at(100)) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn polynomial_and_step_follow_their_formulas() {
        let p = ScheduleSpec {
            power: 2.0,
            ..spec(ScheduleKind::Polynomial, 0)
        };
        assert!((learning_rate(&p, 1.0, at(50)) - 0.25).abs() < 1e-12);
        let s = ScheduleSpec {
            step_epochs: 3,
            gamma: 0.5,
            ..spec(ScheduleKind::Step, 0)
        };
        assert_eq!(learning_rate(&s, 1.0, at(29)), 1.0);
        assert_eq!(learning_rate(&s, 1.0, at(30)), 0.5);
        assert_eq!(learning_rate(&s, 1.0, at(60)), 0.25);
    }
}
