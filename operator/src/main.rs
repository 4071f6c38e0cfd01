//! The `voxel` command line: local mode (`voxel run`), manifest validation, the CRDs, baseline
//! comparisons and the local model registry.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use voxel_operator::{
    local::{self, LocalOptions},
    models,
    registry::{ModelReference, Registry},
};

/// Voxel: train, compare and publish medical imaging models from Kubernetes manifests.
#[derive(Debug, Parser)]
#[command(name = "voxel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where local mode keeps its state and its registry.
#[derive(Debug, clap::Args)]
struct StateArgs {
    /// Folder of local run state (`runs/…`); the registry lives in `<state>/registry` unless
    /// `--registry` says otherwise.
    #[arg(long, env = "VOXEL_STATE", default_value = ".voxel")]
    state: PathBuf,
    /// Folder of the local model registry.
    #[arg(long, env = "VOXEL_REGISTRY")]
    registry: Option<PathBuf>,
}

impl StateArgs {
    fn registry(&self) -> PathBuf {
        self.registry
            .clone()
            .unwrap_or_else(|| self.state.join("registry"))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an Experiment, CrossValidation or Ensemble manifest on this machine (local mode):
    /// trainer runs are local `voxel-trainer` processes and the registry is a folder.
    Run {
        /// The manifest file.
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[command(flatten)]
        state: StateArgs,
        /// The `voxel-trainer` executable (default: the one beside `voxel`, else on `PATH`).
        #[arg(long, env = "VOXEL_TRAINER")]
        trainer: Option<PathBuf>,
        /// CPU cores shared by the trainers running at once (default: every core).
        #[arg(long, env = "VOXEL_CORES", value_parser = clap::value_parser!(u64).range(1..))]
        cores: Option<u64>,
        /// Retries of a trainer run that failed for a reason that may pass (not for invalid
        /// data or configuration, which fail at once).
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Start over: discard what an earlier run of this manifest left (published versions
        /// are kept).
        #[arg(long)]
        fresh: bool,
    },
    /// Check a manifest of any Voxel kind against the schema and the cross-field rules.
    Validate {
        /// The manifest file.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Compare a candidate's per-subject metrics.csv with a baseline's, paired by subject.
    Compare(voxel_operator::compare::CompareArgs),
    /// The local model registry: published versions, aliases, metrics and lineage.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run the controllers against a Kubernetes cluster: Experiments become trainer pods.
    Operator(voxel_operator::cluster::OperatorArgs),
    /// Print the CustomResourceDefinitions of the Voxel API, generated from its types.
    Crds {
        /// Write one file per CRD into this folder (for example `charts/voxel/crds`) instead
        /// of printing them.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// One line per published version.
    List,
    /// One version with its metrics, comparison and lineage.
    Show {
        /// `NAME` (the latest version), `NAME:VERSION` or `NAME@ALIAS`.
        reference: String,
        /// Print the version's Model manifest as YAML instead of the summary.
        #[arg(long)]
        yaml: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            file,
            state,
            trainer,
            cores,
            retries,
            fresh,
        } => {
            init_logging();
            warn_unknown_fields(&file);
            let options = LocalOptions {
                registry: state.registry(),
                state_dir: state.state,
                trainer: local::process::find_trainer(trainer.as_deref()),
                cores: cores.map_or_else(
                    || std::thread::available_parallelism().map_or(1, |n| n.get()),
                    |n| n as usize,
                ),
                retries,
                fresh,
            };
            match local::run_manifest(&file, &options) {
                Ok(report) => {
                    print!("{}", report.render());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Validate { file } => validate(&file),
        Command::Compare(args) => voxel_operator::compare::run(&args),
        Command::Models { command, state } => {
            models_command(&command, &Registry::new(state.registry()))
        }
        Command::Crds { output_dir } => crds(output_dir.as_deref()),
        Command::Operator(args) => operator(args),
    }
}

/// `voxel operator`: structured logs, one JSON object a line when stderr is not a terminal (a
/// cluster's log pipeline), readable lines on a terminal.
fn operator(args: voxel_operator::cluster::OperatorArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
    // One TLS provider for kube's and reqwest's rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(voxel_operator::cluster::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; on a terminal the progress bars tell the story, so only warnings are
/// logged there unless `RUST_LOG` asks for more.
fn init_logging() {
    let default = if std::io::stderr().is_terminal() {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Warns of the manifest's fields that no type reads, as `kubectl apply` does.
fn warn_unknown_fields(file: &Path) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for field in voxel_crds::manifest::unknown_fields(&text) {
        eprintln!(
            "warning: {}: unknown field \"{field}\" is ignored (the API server drops it too)",
            file.display()
        );
    }
}

fn validate(file: &Path) -> ExitCode {
    warn_unknown_fields(file);
    match voxel_crds::manifest::read_manifest(file) {
        Ok(manifest) => {
            let name = manifest.name().unwrap_or_default();
            println!("{}: {} {name} is valid", file.display(), manifest.kind());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(local::EXIT_BAD_CONFIG)
        }
    }
}

fn models_command(command: &ModelsCommand, registry: &Registry) -> ExitCode {
    let result = match command {
        ModelsCommand::List => models::list(registry).map_err(|e| e.to_string()),
        ModelsCommand::Show { reference, yaml } => match reference.parse::<ModelReference>() {
            Ok(reference) => models::show(registry, &reference, *yaml).map_err(|e| e.to_string()),
            Err(e) => {
                // A reference that does not parse is a command-line error, as clap's own are.
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the CRDs, or writes one file per CRD into `output_dir`.
fn crds(output_dir: Option<&Path>) -> ExitCode {
    let Some(dir) = output_dir else {
        print!("{}", voxel_operator::crd_gen::crd_yaml());
        return ExitCode::SUCCESS;
    };
    match voxel_operator::crd_gen::write_crd_files(dir) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write the CRDs into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
