//! Progress of local runs: one bar for the whole run and one per trainer, fed by the files the
//! trainer writes (its `epoch_metrics.csv` grows by one row per epoch).
//!
//! On a terminal the bars redraw in place; otherwise (CI, a log file) they stay hidden and the
//! same transitions are logged as lines.

use std::{path::Path, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// File the trainer appends one row to per epoch (header first).
pub const EPOCH_METRICS: &str = "epoch_metrics.csv";

/// Epochs a trainer has finished, read from its output folder (0 before the first).
pub fn epochs_done(output: &Path) -> u64 {
    std::fs::read_to_string(output.join(EPOCH_METRICS))
        .map(|text| {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .count()
                .saturating_sub(1) as u64
        })
        .unwrap_or(0)
}

/// The bars of one `voxel run`.
pub struct RunProgress {
    bars: MultiProgress,
    overall: ProgressBar,
}

impl RunProgress {
    /// A run of `stages` stages (folds, ensemble, comparison, publication), titled `title`.
    pub fn new(title: &str, stages: u64) -> Self {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = bars.add(ProgressBar::new(stages));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:<24} {bar:30} {pos}/{len} stages {msg} [{elapsed_precise}]",
            )
            .expect("the template is valid"),
        );
        overall.set_prefix(title.to_string());
        overall.enable_steady_tick(Duration::from_millis(500));
        Self { bars, overall }
    }

    /// A bar for one trainer run of `epochs` epochs (or one step when `epochs` is 0).
    pub fn trainer(&self, label: &str, epochs: u64) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(epochs.max(1)));
        let template = if epochs > 0 {
            "  {prefix:<22} {bar:30} epoch {pos}/{len} {msg} [{elapsed_precise}<{eta}]"
        } else {
            "  {prefix:<22} {spinner} {msg} [{elapsed_precise}]"
        };
        bar.set_style(ProgressStyle::with_template(template).expect("the template is valid"));
        bar.set_prefix(label.to_string());
        bar
    }

    /// Marks one stage done with a note.
    pub fn stage_done(&self, note: &str) {
        self.overall.inc(1);
        self.overall.set_message(note.to_string());
    }

    /// Clears every bar (before the final table is printed).
    pub fn finish(&self) {
        self.overall.finish_and_clear();
        // Nothing to do when already cleared: the bars are gone either way.
        let _ = self.bars.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_counted_from_the_rows_after_the_header() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(epochs_done(dir.path()), 0);
        std::fs::write(dir.path().join(EPOCH_METRICS), "epoch,loss\n").unwrap();
        assert_eq!(epochs_done(dir.path()), 0);
        std::fs::write(dir.path().join(EPOCH_METRICS), "epoch,loss\n1,0.5\n2,0.4\n").unwrap();
        assert_eq!(epochs_done(dir.path()), 2);
    }
}
