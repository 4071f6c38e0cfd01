//! Live training progress as Prometheus metrics, served over HTTP while the trainer runs.
//!
//! The metric names are a contract with the operator, which scrapes them. Every metric is a
//! gauge, because prometheus-client appends `_total` to the names of counters. A value that is
//! not known yet (the loss before the first epoch, the time left before this process has timed
//! an epoch) is `NaN`, which Prometheus and the operator's parser read as "no value".

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Context;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::{debug, info, warn};

use crate::{error::bad_config, train::EpochRecord};

/// Path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Content type of the metrics endpoint's answer (the OpenMetrics text format).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Epochs finished so far, including those restored from a checkpoint.
pub const EPOCHS_COMPLETED: &str = "voxel_trainer_epochs_completed";
/// Epochs of the whole run (`spec.training.epochs`).
pub const EPOCHS: &str = "voxel_trainer_epochs";
/// Mean training loss of the last finished epoch.
pub const TRAIN_LOSS: &str = "voxel_trainer_train_loss";
/// Mean validation Dice of the last finished epoch, labelled by structure.
pub const VALIDATION_DICE: &str = "voxel_trainer_validation_dice";
/// Estimated seconds until the last epoch finishes.
pub const ESTIMATED_SECONDS_LEFT: &str = "voxel_trainer_estimated_seconds_left";
/// 1 once the test subjects have been scored, else 0.
pub const FINISHED: &str = "voxel_trainer_finished";

/// The label set of the per-structure metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StructureLabel {
    /// Structure name, as in `spec.model.structures`.
    pub structure: String,
}

/// A gauge holding a float.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The progress of one training run, as the gauges the metrics endpoint serves.
///
/// Shared between the epoch loop, which sets the values, and the server thread, which encodes
/// them; every update is a handful of atomic stores.
#[derive(Debug)]
pub struct TrainingMetrics {
    registry: Registry,
    epochs_completed: Gauge,
    epochs: Gauge,
    train_loss: FloatGauge,
    validation_dice: Family<StructureLabel, FloatGauge>,
    estimated_seconds_left: FloatGauge,
    finished: Gauge,
}

impl Default for TrainingMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TrainingMetrics {
    /// Gauges of a run that has not started: no epochs, unknown loss and time left.
    pub fn new() -> Self {
        let epochs_completed = Gauge::default();
        let epochs = Gauge::default();
        let train_loss = FloatGauge::default();
        train_loss.set(f64::NAN);
        let validation_dice = Family::default();
        let estimated_seconds_left = FloatGauge::default();
        estimated_seconds_left.set(f64::NAN);
        let finished = Gauge::default();

        let mut registry = Registry::default();
        registry.register(
            EPOCHS_COMPLETED,
            "Epochs finished so far, including those restored from a checkpoint",
            epochs_completed.clone(),
        );
        registry.register(
            EPOCHS,
            "Epochs of the whole run (spec.training.epochs)",
            epochs.clone(),
        );
        registry.register(
            TRAIN_LOSS,
            "Mean training loss of the last finished epoch",
            train_loss.clone(),
        );
        registry.register(
            VALIDATION_DICE,
            "Mean validation Dice (a fraction) of the last finished epoch, per structure",
            validation_dice.clone(),
        );
        registry.register(
            ESTIMATED_SECONDS_LEFT,
            "Seconds until the last epoch finishes, from this process's mean epoch time",
            estimated_seconds_left.clone(),
        );
        registry.register(
            FINISHED,
            "1 once the test subjects have been scored, else 0",
            finished.clone(),
        );
        Self {
            registry,
            epochs_completed,
            epochs,
            train_loss,
            validation_dice,
            estimated_seconds_left,
            finished,
        }
    }

    /// Records the length of the run and its finished epochs.
    ///
    /// `records` are in epoch order (one per finished epoch, validation Dice in the order of
    /// `structures`); the first `restored` of them came from a checkpoint, so their times say
    /// nothing about the speed of this process and stay out of the estimate of the time left.
    pub fn record_epochs(
        &self,
        epochs: u32,
        structures: &[String],
        records: &[EpochRecord],
        restored: usize,
    ) {
        let completed = records.last().map_or(0, |r| r.epoch);
        self.epochs.set(i64::from(epochs));
        self.epochs_completed.set(i64::from(completed));
        self.estimated_seconds_left.set(estimated_seconds_left(
            epochs,
            completed,
            records.get(restored..).unwrap_or_default(),
        ));
        let Some(last) = records.last() else {
            return;
        };
        self.train_loss.set(last.train_loss);
        for (structure, &dice) in structures.iter().zip(&last.validation_dice) {
            let label = StructureLabel {
                structure: structure.clone(),
            };
            // No validation subject had the structure: leave the series out.
            if dice.is_nan() {
                self.validation_dice.remove(&label);
            } else {
                self.validation_dice.get_or_create(&label).set(dice);
            }
        }
    }

    /// Records that the test subjects have been scored.
    pub fn set_finished(&self) {
        self.finished.set(1);
    }

    /// The metrics in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        encode(&mut text, &self.registry).context("cannot encode the training metrics")?;
        Ok(text)
    }
}

/// Seconds until epoch `epochs` finishes: the mean time of the epochs `timed` in this process
/// times the epochs left; 0 when none are left, NaN while no epoch has been timed.
pub fn estimated_seconds_left(epochs: u32, completed: u32, timed: &[EpochRecord]) -> f64 {
    let left = epochs.saturating_sub(completed);
    if left == 0 {
        return 0.0;
    }
    if timed.is_empty() {
        return f64::NAN;
    }
    let mean = timed.iter().map(|r| r.seconds).sum::<f64>() / timed.len() as f64;
    mean * f64::from(left)
}

/// The metrics endpoint: answers `GET /metrics` from a background thread until dropped.
pub struct MetricsServer {
    address: SocketAddr,
    metrics: Arc<TrainingMetrics>,
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// The address the server listens on (with the port the system chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The gauges the server serves, to be updated by the epoch loop.
    pub fn metrics(&self) -> Arc<TrainingMetrics> {
        Arc::clone(&self.metrics)
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // The thread is not joined: a client that stalls mid-answer must not keep the trainer
        // from exiting. Dropping the last handle on the server closes its listening socket.
        self.stopping.store(true, Ordering::Release);
        self.server.unblock();
    }
}

/// Serves fresh [`TrainingMetrics`] at `http://<address>/metrics` from a background thread.
///
/// `address` is `HOST:PORT`; port 0 takes a free port, which [`MetricsServer::address`] tells.
/// An address that does not parse is a configuration error; one that cannot be bound (taken,
/// or not local) is an ordinary, retryable failure.
pub fn start(address: &str) -> anyhow::Result<MetricsServer> {
    let candidates: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| bad_config(format!("metrics address {address:?} is not HOST:PORT: {e}")))?
        .collect();
    let server = tiny_http::Server::http(candidates.as_slice())
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .with_context(|| format!("metrics server on {address} has no IP address"))?;

    let metrics = Arc::new(TrainingMetrics::new());
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let thread_state = (
        Arc::clone(&server),
        Arc::clone(&metrics),
        Arc::clone(&stopping),
    );
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let (server, metrics, stopping) = thread_state;
            serve(&server, &metrics, &stopping);
        })
        .context("cannot start the metrics server thread")?;
    info!(address = %bound, "serving metrics");
    Ok(MetricsServer {
        address: bound,
        metrics,
        server,
        stopping,
    })
}

/// Answers requests until the server is unblocked or stops accepting connections.
fn serve(server: &tiny_http::Server, metrics: &TrainingMetrics, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => answer(request, metrics),
            Err(_) if stopping.load(Ordering::Acquire) => return,
            Err(error) => {
                // tiny_http's accept thread ends after an accept error; nothing more will come.
                warn!(%error, "metrics server stopped accepting connections");
                return;
            }
        }
    }
}

fn answer(request: tiny_http::Request, metrics: &TrainingMetrics) {
    let path = request.url().split('?').next().unwrap_or_default();
    let readable = matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    let response = if path != METRICS_PATH {
        tiny_http::Response::from_string("not found; metrics are at /metrics\n")
            .with_status_code(404)
    } else if !readable {
        tiny_http::Response::from_string("only GET and HEAD\n").with_status_code(405)
    } else {
        match metrics.encode() {
            Ok(text) => tiny_http::Response::from_string(text).with_header(content_type()),
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "cannot answer a metrics request"
                );
                tiny_http::Response::from_string("cannot encode the metrics\n")
                    .with_status_code(500)
            }
        }
    };
    if let Err(error) = request.respond(response) {
        debug!(%error, "metrics client went away");
    }
}

fn content_type() -> tiny_http::Header {
    tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
        // Infallible: both halves are constant, printable ASCII.
        .expect("the content type header is valid")
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
    };

    use super::*;

    /// The status line and body of a plain HTTP/1.0 GET.
    fn get(address: SocketAddr, path: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(address).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_string();
        (status, head.to_string(), body.to_string())
    }

    fn record(epoch: u32, train_loss: f64, validation_dice: Vec<f64>, seconds: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            learning_rate: 0.01,
            train_loss,
            validation_loss: 0.5,
            validation_dice,
            seconds,
        }
    }

    fn structures() -> Vec<String> {
        vec!["anterior".into(), "posterior".into()]
    }

    #[test]
    fn metrics_endpoint_serves_the_recorded_progress() {
        let server = start("127.0.0.1:0").unwrap();
        let records = [
            record(1, 0.9, vec![0.1, 0.2], 100.0),
            record(2, 0.7, vec![0.3, 0.4], 10.0),
            record(3, 0.25, vec![0.5, f64::NAN], 20.0),
        ];
        // Epoch 1 came from a checkpoint: 2 epochs left at the mean of 10 s and 20 s.
        server
            .metrics()
            .record_epochs(5, &structures(), &records, 1);

        let (status, head, body) = get(server.address(), "/metrics");
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert!(head.contains(CONTENT_TYPE), "{head}");
        let lines: Vec<&str> = body.lines().collect();
        for expected in [
            "voxel_trainer_epochs_completed 3",
            "voxel_trainer_epochs 5",
            "voxel_trainer_train_loss 0.25",
            "voxel_trainer_validation_dice{structure=\"anterior\"} 0.5",
            "voxel_trainer_estimated_seconds_left 30.0",
            "voxel_trainer_finished 0",
            "# TYPE voxel_trainer_epochs_completed gauge",
            "# EOF",
        ] {
            assert!(lines.contains(&expected), "no {expected:?} in:\n{body}");
        }
        assert!(
            !body.contains("posterior"),
            "a NaN Dice was served:\n{body}"
        );
        assert!(!body.contains("_total"), "{body}");
    }

    #[test]
    fn metrics_endpoint_reports_a_finished_run() {
        let server = start("127.0.0.1:0").unwrap();
        let records = [record(1, 0.5, vec![0.6, 0.7], 4.0)];
        server
            .metrics()
            .record_epochs(1, &structures(), &records, 0);
        server.metrics().set_finished();

        let (_, _, body) = get(server.address(), "/metrics");
        let lines: Vec<&str> = body.lines().collect();
        for expected in [
            "voxel_trainer_finished 1",
            "voxel_trainer_estimated_seconds_left 0.0",
            "voxel_trainer_validation_dice{structure=\"posterior\"} 0.7",
        ] {
            assert!(lines.contains(&expected), "no {expected:?} in:\n{body}");
        }
    }

    #[test]
    fn unknown_values_are_nan_before_the_first_epoch() {
        let metrics = TrainingMetrics::new();
        metrics.record_epochs(4, &structures(), &[], 0);
        let text = metrics.encode().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"voxel_trainer_train_loss NaN"), "{text}");
        assert!(
            lines.contains(&"voxel_trainer_estimated_seconds_left NaN"),
            "{text}"
        );
        assert!(
            lines.contains(&"voxel_trainer_epochs_completed 0"),
            "{text}"
        );
        assert!(!text.contains("voxel_trainer_validation_dice{"), "{text}");
    }

    #[test]
    fn a_dice_that_becomes_nan_is_no_longer_served() {
        let metrics = TrainingMetrics::new();
        let first = [record(1, 0.5, vec![0.6, 0.7], 4.0)];
        metrics.record_epochs(3, &structures(), &first, 0);
        let second = [first[0].clone(), record(2, 0.4, vec![f64::NAN, 0.8], 4.0)];
        metrics.record_epochs(3, &structures(), &second, 0);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("anterior"), "{text}");
        assert!(text.contains("voxel_trainer_validation_dice{structure=\"posterior\"} 0.8"));
    }

    #[test]
    fn other_paths_are_not_found() {
        let server = start("127.0.0.1:0").unwrap();
        let (status, _, _) = get(server.address(), "/");
        assert_eq!(status, "HTTP/1.0 404 Not Found");
        let (status, _, _) = get(server.address(), "/metrics/extra");
        assert_eq!(status, "HTTP/1.0 404 Not Found");
    }

    #[test]
    fn a_taken_address_is_refused_naming_the_address() {
        let first = start("127.0.0.1:0").unwrap();
        let taken = first.address().to_string();
        let error = start(&taken).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains(&taken), "{message}");
        assert!(message.contains("cannot serve metrics"), "{message}");
        assert_eq!(
            crate::error::exit_code_for(&error),
            crate::error::EXIT_TRANSIENT
        );
    }

    #[test]
    fn an_address_without_a_port_is_a_configuration_error() {
        let error = start("localhost").unwrap_err();
        assert!(format!("{error:#}").contains("\"localhost\""), "{error:#}");
        assert_eq!(
            crate::error::exit_code_for(&error),
            crate::error::EXIT_BAD_CONFIG
        );
    }

    #[test]
    fn the_time_left_averages_only_the_epochs_timed_here() {
        let timed = [record(3, 0.1, vec![], 2.0), record(4, 0.1, vec![], 4.0)];
        assert_eq!(estimated_seconds_left(10, 4, &timed), 18.0);
        assert_eq!(estimated_seconds_left(4, 4, &timed), 0.0);
        assert!(estimated_seconds_left(10, 2, &[]).is_nan());
    }
}
