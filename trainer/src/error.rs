//! Failure classes of the trainer and the exit codes that carry them to the operator.
//!
//! The operator decides from the exit code alone whether a run may be retried, so every error
//! is either *permanent* (the same input would fail again: bad configuration or data) or
//! *transient* (anything else: out of memory, I/O hiccups, a killed process).

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failure that may succeed when retried.
pub const EXIT_TRANSIENT: i32 = 1;
/// Exit code of an invalid command line (clap's own convention).
pub const EXIT_USAGE: i32 = 2;
/// Exit code of invalid input data (sysexits `EX_DATAERR`): never retried.
pub const EXIT_BAD_DATA: i32 = 65;
/// Exit code of an invalid configuration (sysexits `EX_CONFIG`): never retried.
pub const EXIT_BAD_CONFIG: i32 = 78;

/// Whether the exit code says that retrying cannot help.
pub fn is_permanent_exit(code: i32) -> bool {
    matches!(code, EXIT_USAGE | EXIT_BAD_DATA | EXIT_BAD_CONFIG)
}

/// A few words naming the class of failure an exit code stands for, as written at the start
/// of the termination message.
pub fn exit_class(code: i32) -> &'static str {
    match code {
        EXIT_OK => "success",
        EXIT_TRANSIENT => "retryable failure",
        EXIT_USAGE => "invalid command line",
        EXIT_BAD_DATA => "bad data",
        EXIT_BAD_CONFIG => "bad configuration",
        _ => "failure",
    }
}

/// The class of a permanent failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The configuration is invalid.
    BadConfig,
    /// The input data is invalid.
    BadData,
}

impl FailureClass {
    /// The process exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            FailureClass::BadConfig => EXIT_BAD_CONFIG,
            FailureClass::BadData => EXIT_BAD_DATA,
        }
    }
}

/// A failure that retrying cannot fix; its message names the file, subject or field.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PermanentError {
    /// Configuration or data.
    pub class: FailureClass,
    /// What is wrong and where.
    pub message: String,
}

/// A permanent error about input data.
pub fn bad_data(message: impl Into<String>) -> anyhow::Error {
    PermanentError {
        class: FailureClass::BadData,
        message: message.into(),
    }
    .into()
}

/// A permanent error about the configuration.
pub fn bad_config(message: impl Into<String>) -> anyhow::Error {
    PermanentError {
        class: FailureClass::BadConfig,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error chain: permanent when any cause is a [`PermanentError`].
pub fn exit_code_for(error: &anyhow::Error) -> i32 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<PermanentError>())
        .map_or(EXIT_TRANSIENT, |permanent| permanent.class.exit_code())
}
