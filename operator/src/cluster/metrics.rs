//! The operator's own Prometheus metrics, served at `/metrics` beside the health endpoints.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Label of the errors-by-kind counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Label of the finished-Experiments counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The kinds of reconcile errors (see `ReconcileError::kind`).
pub const ERROR_KINDS: [&str; 5] = ["conflict", "invalid", "forbidden", "api", "transport"];

/// Every metric the operator exports (names get `voxel_` prefixed, counters `_total` suffixed).
#[derive(Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<KindLabel, Counter>,
    reconcile_duration: Histogram,
    experiments_created: Counter,
    experiments_finished: Family<OutcomeLabel, Counter>,
    attempts_preempted: Counter,
    attempts_retried: Counter,
    pending_for_gpu: Histogram,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    /// Registers every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voxel");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        // 1 ms to about 16 s: a reconcile is a handful of API calls and one scrape.
        let reconcile_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        );
        let experiments_created = Counter::default();
        let experiments_finished = Family::<OutcomeLabel, Counter>::default();
        let attempts_preempted = Counter::default();
        let attempts_retried = Counter::default();
        // 1 s to about 9 h: from a free GPU to a cluster autoscaler bringing up a spot node.
        let pending_for_gpu = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 16),
        );
        registry.register(
            "reconciles",
            "Reconciles of Experiments",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind of error",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        registry.register(
            "experiments_created",
            "Experiments whose first trainer pod was created",
            experiments_created.clone(),
        );
        registry.register(
            "experiments_finished",
            "Experiments that succeeded or failed, by outcome",
            experiments_finished.clone(),
        );
        registry.register(
            "attempts_preempted",
            "Trainer attempts ended by preemption (resumed from their checkpoint)",
            attempts_preempted.clone(),
        );
        registry.register(
            "attempts_retried",
            "Trainer attempts that failed and were retried after a back-off",
            attempts_retried.clone(),
        );
        registry.register(
            "pending_for_gpu_seconds",
            "Time from creating a trainer pod to its trainer running",
            pending_for_gpu.clone(),
        );
        // Every label value is exported from the start at 0, so that rates and alerts see a
        // series before the first error or outcome.
        for kind in ERROR_KINDS {
            let _ = reconcile_errors.get_or_create(&KindLabel { kind: kind.into() });
        }
        for outcome in ["succeeded", "failed"] {
            let _ = experiments_finished.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            experiments_created,
            experiments_finished,
            attempts_preempted,
            attempts_retried,
            pending_for_gpu,
        }
    }

    /// One reconcile took `elapsed`.
    pub fn reconciled(&self, elapsed: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// One reconcile failed with an error of `kind`.
    pub fn reconcile_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// An Experiment got its first attempt.
    pub fn experiment_started(&self) {
        self.experiments_created.inc();
    }

    /// An Experiment ended (`succeeded`, `failed`).
    pub fn experiment_finished(&self, outcome: &str) {
        self.experiments_finished
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// An attempt was preempted.
    pub fn attempt_preempted(&self) {
        self.attempts_preempted.inc();
    }

    /// A failed attempt is retried.
    pub fn attempt_retried(&self) {
        self.attempts_retried.inc();
    }

    /// A trainer pod waited this long between creation and running.
    pub fn pending_for_gpu(&self, seconds: f64) {
        self.pending_for_gpu.observe(seconds);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_exported_under_the_voxel_prefix() {
        let metrics = OperatorMetrics::new();
        metrics.reconciled(Duration::from_millis(3));
        metrics.reconcile_error("conflict");
        metrics.experiment_finished("succeeded");
        metrics.attempt_preempted();
        metrics.pending_for_gpu(12.0);
        let text = metrics.encode();
        for line in [
            "voxel_reconciles_total 1",
            "voxel_reconcile_errors_total{kind=\"conflict\"} 1",
            "voxel_experiments_finished_total{outcome=\"succeeded\"} 1",
            "voxel_attempts_preempted_total 1",
            "voxel_attempts_retried_total 0",
            "voxel_reconcile_errors_total{kind=\"transport\"} 0",
            "voxel_experiments_finished_total{outcome=\"failed\"} 0",
            "voxel_pending_for_gpu_seconds_count 1",
            "voxel_reconcile_duration_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
