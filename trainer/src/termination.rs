//! The termination message: a line or two that the trainer leaves in a file as it exits. In a
//! pod, the kubelet copies the file (`terminationMessagePath`) into the container's status,
//! where the operator reads it into the attempt's `message`.

use std::{collections::BTreeMap, path::Path};

use tracing::{debug, warn};

use crate::{
    error::{exit_class, exit_code_for},
    evaluate::Summary,
};

/// The most bytes Kubernetes keeps of a termination message.
pub const MAX_BYTES: usize = 4096;

/// The longest prefix of `message` that fits in [`MAX_BYTES`] and ends on a char boundary.
pub fn truncated(message: &str) -> &str {
    if message.len() <= MAX_BYTES {
        return message;
    }
    // Index 0 is always a boundary, so the search ends.
    let end = (0..=MAX_BYTES)
        .rev()
        .find(|&i| message.is_char_boundary(i))
        .unwrap_or(0);
    &message[..end]
}

/// The message of a run that trained `epochs` epochs and scored its test subjects: the test
/// summary as one line of JSON, `{"epochs":8,"subjects":2,"structures":{...}}`, which the
/// operator reads into the Experiment's status. Should it not fit in [`MAX_BYTES`] (dozens of
/// structures), only the means and standard deviations are kept, and then only those of Dice.
pub fn finished(epochs: u32, summary: &Summary) -> String {
    let message = |structures: serde_json::Value| {
        serde_json::json!({"epochs": epochs, "subjects": summary.subjects, "structures": structures})
            .to_string()
    };
    let full = message(serde_json::json!(summary.structures));
    if full.len() <= MAX_BYTES {
        return full;
    }
    let brief = |keep: &dyn Fn(&str) -> bool| {
        let structures: BTreeMap<&String, BTreeMap<&String, serde_json::Value>> = summary
            .structures
            .iter()
            .map(|(structure, metrics)| {
                let metrics = metrics
                    .iter()
                    .filter(|(name, _)| keep(name))
                    .map(|(name, a)| (name, serde_json::json!({"mean": a.mean, "std": a.std})))
                    .collect();
                (structure, metrics)
            })
            .collect();
        message(serde_json::json!(structures))
    };
    let means = brief(&|_| true);
    if means.len() <= MAX_BYTES {
        return means;
    }
    brief(&|name| name == "dice")
}

/// The message of a run stopped on request after `epoch`.
pub fn stopped(epoch: u32) -> String {
    format!("stopped after epoch {epoch}")
}

/// The message of a failed run: its class and exit code, then the whole error chain, e.g.
/// `bad configuration (exit 78): reading experiment.yaml: ...`.
pub fn failed(error: &anyhow::Error) -> String {
    let code = exit_code_for(error);
    format!("{} (exit {code}): {error:#}", exit_class(code))
}

/// Writes `message`, cut to [`MAX_BYTES`], to `path`. A file that cannot be written is logged
/// and otherwise ignored: the exit code, not the message, is what the operator acts on.
pub fn write(path: &Path, message: &str) {
    match std::fs::write(path, truncated(message)) {
        Ok(()) => debug!(path = %path.display(), "termination message written"),
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot write the termination message")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        error::{bad_config, bad_data},
        evaluate::Aggregate,
    };

    #[test]
    fn short_messages_are_kept_whole() {
        assert_eq!(truncated("stopped after epoch 3"), "stopped after epoch 3");
        let exact = "x".repeat(MAX_BYTES);
        assert_eq!(truncated(&exact), exact);
    }

    #[test]
    fn long_messages_are_cut_to_the_limit_on_a_char_boundary() {
        // 'é' is two bytes: after one ASCII byte, byte 4096 falls inside a character.
        let message = format!("x{}", "é".repeat(MAX_BYTES));
        let cut = truncated(&message);
        assert_eq!(cut.len(), MAX_BYTES - 1);
        assert!(cut.ends_with('é'));
        assert!(message.starts_with(cut));

        let ascii = "y".repeat(2 * MAX_BYTES);
        assert_eq!(truncated(&ascii).len(), MAX_BYTES);
    }

    #[test]
    fn written_messages_never_exceed_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write(&path, &"€".repeat(MAX_BYTES));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= MAX_BYTES && text.len() > MAX_BYTES - 3);
    }

    #[test]
    fn an_unwritable_termination_log_is_only_logged() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("missing/termination-log"),
            "stopped after epoch 1",
        );
    }

    #[test]
    fn a_finished_run_reports_its_summary_as_json() {
        let dice = |values: &[f64]| {
            let aggregate = Aggregate::of(values);
            BTreeMap::from([("dice".to_string(), aggregate)])
        };
        let summary = Summary {
            subjects: 2,
            structures: BTreeMap::from([
                ("anterior".to_string(), dice(&[0.8744, 0.8])),
                ("tail".to_string(), dice(&[f64::NAN])),
            ]),
        };
        let message = finished(8, &summary);
        let read: serde_json::Value = serde_json::from_str(&message).unwrap();
        assert_eq!(read["epochs"], 8);
        assert_eq!(read["subjects"], 2);
        let mean = read["structures"]["anterior"]["dice"]["mean"]
            .as_f64()
            .unwrap();
        assert!((mean - 0.8372).abs() < 1e-12, "{mean}");
        assert_eq!(read["structures"]["anterior"]["dice"]["count"], 2);
        assert_eq!(read["structures"]["tail"]["dice"]["nan"], 1);
    }

    #[test]
    fn a_summary_too_long_for_a_message_keeps_means_and_deviations() {
        let metrics: BTreeMap<String, Aggregate> = ["dice", "hd95_mm", "msd_mm", "volume_ml"]
            .into_iter()
            .map(|m| (m.to_string(), Aggregate::of(&[0.5, 0.7])))
            .collect();
        let structures = (0..40)
            .map(|i| (format!("structure-{i:02}"), metrics.clone()))
            .collect();
        let summary = Summary {
            subjects: 9,
            structures,
        };
        let message = finished(3, &summary);
        assert!(message.len() <= MAX_BYTES, "{} bytes", message.len());
        let read: serde_json::Value = serde_json::from_str(&message).unwrap();
        let mean = read["structures"]["structure-39"]["dice"]["mean"]
            .as_f64()
            .unwrap();
        assert!((mean - 0.6).abs() < 1e-12, "{mean}");
        assert!(
            read["structures"]["structure-39"]["dice"]
                .get("count")
                .is_none()
        );
    }

    #[test]
    fn failures_start_with_their_exit_class() {
        let config = bad_config("spec.training.epochs: expected > 0, found 0");
        assert_eq!(
            failed(&config.context("reading experiment.yaml")),
            "bad configuration (exit 78): reading experiment.yaml: \
             spec.training.epochs: expected > 0, found 0"
        );
        assert!(failed(&bad_data("subject 3: no mask")).starts_with("bad data (exit 65): "));
        let transient = anyhow::anyhow!("out of memory");
        assert_eq!(
            failed(&transient),
            "retryable failure (exit 1): out of memory"
        );
    }
}
