//! Trainer runs as local processes: the same `voxel-trainer` command a trainer pod runs, with
//! its output captured in a log file and its exit code classified as the operator classifies a
//! pod's.

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

/// Exit code of invalid input data (the trainer's `EX_DATAERR`): never retried.
pub const EXIT_BAD_DATA: i32 = 65;
/// Exit code of an invalid configuration (the trainer's `EX_CONFIG`): never retried.
pub const EXIT_BAD_CONFIG: i32 = 78;
/// Exit code of an invalid command line: never retried.
pub const EXIT_USAGE: i32 = 2;

/// Whether a trainer exit code says that retrying cannot help.
pub fn is_permanent_exit(code: i32) -> bool {
    matches!(code, EXIT_USAGE | EXIT_BAD_DATA | EXIT_BAD_CONFIG)
}

/// How a trainer process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0.
    Succeeded,
    /// Any other end.
    Failed {
        /// Retrying cannot help (invalid data or configuration).
        permanent: bool,
        /// The exit code, absent when a signal ended the process.
        code: Option<i32>,
        /// The trainer's own error message from its log, or a description of the end.
        message: String,
    },
}

/// Finds the `voxel-trainer` executable: `explicit` when given, else the one beside the running
/// `voxel` (how both are built and installed), else the first on `PATH`.
pub fn find_trainer(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("voxel-trainer")));
    match sibling {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("voxel-trainer"),
    }
}

/// A running trainer.
#[derive(Debug)]
pub struct TrainerProcess {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// When it was started.
    pub started: Instant,
}

impl TrainerProcess {
    /// Starts `trainer args…` with `threads` LibTorch threads, appending its output to `log`.
    pub fn spawn(
        trainer: &Path,
        args: &[OsString],
        threads: usize,
        log: &Path,
    ) -> std::io::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = Command::new(trainer)
            .args(args)
            .env("VOXEL_THREADS", threads.to_string())
            // OpenMP inside LibTorch would otherwise start one thread per core in every process.
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start {}: {e}", trainer.display()))
            })?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// The exit, once the process has ended; `None` while it runs.
    pub fn try_finish(&mut self) -> std::io::Result<Option<Exit>> {
        let Some(status) = self.child.try_wait()? else {
            return Ok(None);
        };
        if status.success() {
            return Ok(Some(Exit::Succeeded));
        }
        let code = status.code();
        let message = last_error_line(&self.log).unwrap_or_else(|| match code {
            Some(code) => format!("exited with code {code}"),
            None => "ended by a signal".to_string(),
        });
        Ok(Some(Exit::Failed {
            permanent: code.is_some_and(is_permanent_exit),
            code,
            message,
        }))
    }

    /// Ends the process at once and waits for it. Checkpoints are written atomically, so a
    /// rerun resumes from the last one.
    pub fn stop(&mut self) {
        // Already ended is fine: the process is gone either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The trainer's last `error: …` line (text logs) or JSON error message, for the failure reason.
fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        if let Some(message) = line.strip_prefix("error: ") {
            return Some(message.trim().to_string());
        }
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        (value.get("level")?.as_str()? == "ERROR")
            .then(|| {
                value
                    .pointer("/fields/message")?
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_data_configuration_and_usage_are_permanent() {
        assert!(is_permanent_exit(65));
        assert!(is_permanent_exit(78));
        assert!(is_permanent_exit(2));
        assert!(!is_permanent_exit(1));
        assert!(!is_permanent_exit(137));
    }

    #[test]
    fn the_failure_message_is_the_trainers_last_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("trainer.log");
        std::fs::write(
            &log,
            "INFO training\nerror: subject hippocampus_003: mask has 3 labels\n",
        )
        .unwrap();
        assert_eq!(
            last_error_line(&log).as_deref(),
            Some("subject hippocampus_003: mask has 3 labels")
        );
    }

    #[test]
    fn a_process_is_classified_by_its_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        let script: Vec<OsString> = vec!["-c".into(), "echo 'error: bad spec' >&2; exit 78".into()];
        let mut process = TrainerProcess::spawn(Path::new("sh"), &script, 1, &log).unwrap();
        let exit = loop {
            if let Some(exit) = process.try_finish().unwrap() {
                break exit;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(
            exit,
            Exit::Failed {
                permanent: true,
                code: Some(78),
                message: "bad spec".into()
            }
        );
    }
}
