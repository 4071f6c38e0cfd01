//! The dataset CSV: one row per file, `subject,filePath,channel`, plus optional columns.
//!
//! `filePath` is relative to the CSV's own folder (absolute paths are kept). `channel` names an
//! image channel (`ct`, `mr`) or a structure whose binary mask the file holds. Any other column
//! (non-image features, labels) is kept per subject; a subject must give the same value in every
//! row for such a column.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::error::bad_data;

const SUBJECT: &str = "subject";
const FILE_PATH: &str = "filePath";
const CHANNEL: &str = "channel";

/// The files and extra columns of one subject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubjectFiles {
    /// File per channel or structure name, resolved against the CSV's folder.
    pub files: BTreeMap<String, PathBuf>,
    /// Values of the extra columns.
    pub extra: BTreeMap<String, String>,
}

/// A parsed dataset CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The CSV file this was read from.
    pub csv_path: PathBuf,
    /// Subjects by identifier, in sorted order.
    pub subjects: BTreeMap<String, SubjectFiles>,
    /// Names of the columns beyond `subject,filePath,channel`.
    pub extra_columns: Vec<String>,
}

impl Dataset {
    /// Subject identifiers in sorted order.
    pub fn subject_ids(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }
}

/// Reads a dataset CSV, reporting every malformed row at once (with its line number).
pub fn read_dataset(csv_path: &Path) -> anyhow::Result<Dataset> {
    let shown = csv_path.display();
    let text = std::fs::read(csv_path)
        .map_err(|e| bad_data(format!("cannot read dataset CSV {shown}: {e}")))?;
    // The csv reader counts a CRLF file's lines one short (a record starts at the LF that
    // ends the line before it), so line endings are made LF first to keep line numbers right.
    let text = String::from_utf8_lossy(&text).replace("\r\n", "\n");
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| bad_data(format!("dataset CSV {shown}: cannot read the header: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(subject_col), Some(path_col), Some(channel_col)) =
        (column(SUBJECT), column(FILE_PATH), column(CHANNEL))
    else {
        return Err(bad_data(format!(
            "dataset CSV {shown}: the header must contain the columns {SUBJECT},{FILE_PATH},\
             {CHANNEL}; found {:?}",
            headers.iter().collect::<Vec<_>>()
        )));
    };
    let extra_columns: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| ![subject_col, path_col, channel_col].contains(i))
        .map(|(i, h)| (i, h.to_string()))
        .collect();

    let folder = csv_path.parent().unwrap_or(Path::new("."));
    let mut subjects: BTreeMap<String, SubjectFiles> = BTreeMap::new();
    let mut first_line: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                problems.push(format!("malformed row: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("").to_string();
        let (subject, file, channel) = (field(subject_col), field(path_col), field(channel_col));
        if subject.is_empty() || file.is_empty() || channel.is_empty() {
            problems.push(format!(
                "line {line}: subject, filePath and channel must all be set (found {subject:?}, \
                 {file:?}, {channel:?})"
            ));
            continue;
        }
        let key = (subject.clone(), channel.clone());
        if let Some(first) = first_line.get(&key) {
            problems.push(format!(
                "line {line}: subject {subject} has channel {channel} twice (first on line \
                 {first})"
            ));
            continue;
        }
        first_line.insert(key, line);

        let entry = subjects.entry(subject.clone()).or_default();
        entry.files.insert(channel, folder.join(&file));
        for (i, name) in &extra_columns {
            let value = field(*i);
            if value.is_empty() {
                continue;
            }
            match entry.extra.get(name) {
                Some(existing) if existing != &value => problems.push(format!(
                    "line {line}: subject {subject} has {name}={value:?} but an earlier row says \
                     {existing:?}"
                )),
                _ => {
                    entry.extra.insert(name.clone(), value);
                }
            }
        }
    }
    if subjects.is_empty() && problems.is_empty() {
        problems.push("no rows".to_string());
    }
    if !problems.is_empty() {
        return Err(bad_data(format!(
            "dataset CSV {shown} has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )));
    }
    Ok(Dataset {
        csv_path: csv_path.to_owned(),
        subjects,
        extra_columns: extra_columns.into_iter().map(|(_, h)| h).collect(),
    })
}
