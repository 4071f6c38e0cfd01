//! The `voxel-trainer` command line.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tch::Device;
use tracing::{error, info};
use voxel_trainer::{
    data::dataset::read_dataset,
    error::{EXIT_OK, exit_code_for},
    evaluate::{Summary, evaluate_folder, write_metrics_csv},
    infer::{
        ensemble::{CombineRule, EnsembleOptions, run_ensemble},
        run_inference,
    },
    progress_metrics::{self, MetricsServer},
    sync::ArtifactSync,
    termination,
    train::{Outcome, TrainOptions, train},
};

/// Trains, runs and evaluates medical image segmentation models with LibTorch.
///
/// Exit codes: 0 success; 1 a failure that may pass on retry; 2 invalid command line;
/// 65 invalid data; 78 invalid configuration (65 and 78 are never worth retrying).
#[derive(Debug, Parser)]
#[command(name = "voxel-trainer", version, about)]
struct Cli {
    /// Compute device: `auto` takes CUDA when LibTorch sees a GPU.
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Intra-op threads of LibTorch (default: LibTorch's choice, usually the core count).
    #[arg(long, global = true, env = "VOXEL_THREADS")]
    threads: Option<i32>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// On exit, write a one-line outcome here (at most 4096 bytes): a Kubernetes termination
    /// message such as `/dev/termination-log`. On failure it is the error, after its class.
    #[arg(
        long,
        global = true,
        env = "VOXEL_TERMINATION_LOG",
        value_name = "PATH"
    )]
    termination_log: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train an Experiment manifest, then evaluate on its test subjects. Resumes from the last
    /// checkpoint in the output folder.
    Train {
        /// The Experiment manifest (the same YAML a cluster takes).
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Output folder: weights, checkpoints, metrics.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Folder that replaces `spec.data.source` (the volume mount path in a pod).
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// Stop after this epoch's checkpoint, as a preemption would (rerun to resume).
        #[arg(long)]
        stop_after_epoch: Option<u32>,
        /// Serve live training metrics at `http://HOST:PORT/metrics` while training (port 0
        /// takes a free port; the log says which).
        #[arg(long, env = "VOXEL_METRICS_ADDRESS", value_name = "HOST:PORT")]
        metrics_address: Option<String>,
        /// Mirror the output folder to `s3://BUCKET/PREFIX`: pull what an earlier attempt left
        /// before training, push after every checkpoint and at the end. Credentials, region and
        /// endpoint come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
        /// `AWS_ENDPOINT` (and `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
        #[arg(long, env = "VOXEL_SYNC_TO", value_name = "URL")]
        sync_to: Option<String>,
    },
    /// Predict every subject of a dataset CSV with a trained model.
    Infer {
        /// A training output folder (holds model.safetensors and experiment.yaml).
        #[arg(long)]
        model: PathBuf,
        /// Dataset CSV listing the images to segment.
        #[arg(long)]
        dataset: PathBuf,
        /// Output folder: `<subject>/<structure>.nii.gz` and `segmentation.nii.gz`.
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Score predictions (`<subject>/<structure>.nii.gz`) against the masks of a dataset CSV.
    Evaluate {
        /// Dataset CSV with the ground-truth masks.
        #[arg(long)]
        dataset: PathBuf,
        /// Folder of predictions, one subfolder per subject.
        #[arg(long)]
        predictions: PathBuf,
        /// Where to write the per-subject metrics CSV.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Structures to score (default: every mask found in the predictions).
        #[arg(long, value_delimiter = ',')]
        structures: Option<Vec<String>>,
    },
    /// Predict with several trained models together, combining their posteriors one member at
    /// a time, and score the result when the dataset has the structure masks.
    Ensemble {
        /// A member's training output folder; repeat once per member.
        #[arg(long = "model", value_name = "DIR", required = true)]
        models: Vec<PathBuf>,
        /// Dataset CSV with the images (and, for scoring, the masks).
        #[arg(long)]
        dataset: PathBuf,
        /// Output folder: `predictions/`, `metrics.csv`, `summary.json`, `ensemble.json`.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Subjects to predict, comma-separated (default: every subject of the dataset).
        #[arg(long, value_delimiter = ',')]
        subjects: Option<Vec<String>>,
        /// How the members' predictions are combined.
        #[arg(long, value_enum, default_value_t = CombineRule::Mean)]
        combine: CombineRule,
        /// Keep only each structure's largest connected component (default: as the first
        /// member's spec says).
        #[arg(long, value_name = "true|false")]
        largest_component: Option<bool>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let termination_log = cli.termination_log.clone();
    init_logging(format);
    let (code, message) = match run(cli) {
        Ok(message) => (EXIT_OK, message),
        Err(e) => {
            let code = exit_code_for(&e);
            match format {
                LogFormat::Json => error!(exit_code = code, "{e:#}"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            (code, termination::failed(&e))
        }
    };
    if let Some(path) = &termination_log {
        termination::write(path, &message);
    }
    ExitCode::from(code as u8)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn device(choice: DeviceChoice) -> anyhow::Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            anyhow::ensure!(
                tch::Cuda::is_available(),
                "--device cuda: LibTorch sees no CUDA device"
            );
            Device::Cuda(0)
        }
    })
}

/// Runs the command; its result is the termination message of a success.
fn run(cli: Cli) -> anyhow::Result<String> {
    if let Some(threads) = cli.threads {
        tch::set_num_threads(threads);
    }
    let device = device(cli.device)?;
    Ok(match cli.command {
        Command::Train {
            config,
            output,
            data_root,
            stop_after_epoch,
            metrics_address,
            sync_to,
        } => {
            info!(config = %config.display(), output = %output.display(), ?device, "training");
            // Kept alive until training returns: dropping it stops the endpoint.
            let server = metrics_address
                .as_deref()
                .map(progress_metrics::start)
                .transpose()?;
            let options = TrainOptions {
                config,
                output: output.clone(),
                data_root,
                device,
                stop_after_epoch,
                metrics: server.as_ref().map(MetricsServer::metrics),
                sync: None,
            };
            let sync = sync_to
                .as_deref()
                .map(ArtifactSync::from_url)
                .transpose()?
                .map(Arc::new);
            let options = match sync {
                Some(sync) => {
                    sync.pull(&output)?;
                    TrainOptions {
                        sync: Some(sync),
                        ..options
                    }
                }
                None => options,
            };
            let outcome = train(&options)?;
            if let Some(sync) = &options.sync {
                let files = sync.push(&output)?;
                info!(files, to = sync.url(), "uploaded the results");
            }
            report_training(outcome, &output)
        }
        Command::Infer {
            model,
            dataset,
            output,
        } => {
            let count = run_inference(&model, &dataset, &output, device)?;
            println!("Predicted {count} subject(s) into {}", output.display());
            format!("predicted {count} subject(s)")
        }
        Command::Evaluate {
            dataset,
            predictions,
            output,
            structures,
        } => {
            let dataset = read_dataset(&dataset)?;
            let rows = evaluate_folder(&dataset, &predictions, structures.as_deref())?;
            write_metrics_csv(&output, &rows).context("writing metrics")?;
            let summary = Summary::of(&rows);
            print!("{}", summary.table());
            println!("Per-subject metrics in {}", output.display());
            format!("scored {} subject(s)", summary.subjects)
        }
        Command::Ensemble {
            models,
            dataset,
            output,
            subjects,
            combine,
            largest_component,
        } => {
            let options = EnsembleOptions {
                members: models,
                dataset,
                output: output.clone(),
                subjects,
                combine,
                largest_component,
                device,
            };
            let outcome = run_ensemble(&options)?;
            println!(
                "Predicted {} subject(s) with {} member(s)",
                outcome.subjects, outcome.members
            );
            if let Some(summary) = &outcome.summary {
                println!("Test metrics ({} subjects), mean ± std:", summary.subjects);
                print!("{}", summary.table());
            }
            println!("Results in {}", output.display());
            format!(
                "predicted {} subject(s) with {} member(s)",
                outcome.subjects, outcome.members
            )
        }
    })
}

/// Prints how training ended and returns its termination message.
fn report_training(outcome: Outcome, output: &Path) -> String {
    match outcome {
        Outcome::Finished { epochs, summary } => {
            println!("Test metrics ({} subjects), mean ± std:", summary.subjects);
            print!("{}", summary.table());
            println!("Results in {}", output.display());
            termination::finished(epochs, &summary)
        }
        Outcome::Stopped(epoch) => {
            println!("Stopped after epoch {epoch}; rerun to resume.");
            termination::stopped(epoch)
        }
    }
}
