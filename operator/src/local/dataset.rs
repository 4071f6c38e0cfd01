//! What local mode needs of a dataset CSV without decoding images: its subjects, to assign folds,
//! and a digest of its contents, for the lineage of published models.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::digest::{format_digest, hash_file};

/// Why a dataset CSV could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The CSV could not be read or parsed.
    #[error("dataset {path}: {message}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// What is wrong, with the line where known.
        message: String,
    },
    /// A file the CSV lists could not be read.
    #[error("dataset {csv}: subject {subject}: cannot read {file}: {source}")]
    File {
        /// The CSV file.
        csv: PathBuf,
        /// The subject whose row names the file.
        subject: String,
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One row of a dataset CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRow {
    /// Subject identifier.
    pub subject: String,
    /// The file, resolved against the CSV's folder.
    pub file: PathBuf,
    /// The image channel or structure the file holds.
    pub channel: String,
}

/// Reads the `subject,filePath,channel` rows of a dataset CSV.
pub fn read_rows(csv_path: &Path) -> Result<Vec<DatasetRow>, DatasetError> {
    let error = |message: String| DatasetError::Csv {
        path: csv_path.to_path_buf(),
        message,
    };
    let text = std::fs::read(csv_path).map_err(|e| error(e.to_string()))?;
    // CRLF made LF, or the csv reader's line numbers would be one short (see the trainer's).
    let text = String::from_utf8_lossy(&text).replace("\r\n", "\n");
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| error(e.to_string()))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            error(format!(
                "no `{name}` column; the header is `{}`",
                headers.iter().collect::<Vec<_>>().join(",")
            ))
        })
    };
    let (subject, file, channel) = (column("subject")?, column("filePath")?, column("channel")?);
    let folder = csv_path.parent().unwrap_or(Path::new("."));

    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| error(e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |index: usize, name: &str| {
            record
                .get(index)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| error(format!("line {line}: empty `{name}`")))
        };
        rows.push(DatasetRow {
            subject: field(subject, "subject")?,
            file: folder.join(field(file, "filePath")?),
            channel: field(channel, "channel")?,
        });
    }
    Ok(rows)
}

/// The distinct subjects of the rows, sorted.
pub fn subjects(rows: &[DatasetRow]) -> Vec<String> {
    let set: BTreeSet<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// `sha256:<hex>` over the CSV and, in the CSV's row order, each listed file's subject, channel
/// and bytes: any change of a label, an image or the table gives another digest.
pub fn dataset_digest(csv_path: &Path, rows: &[DatasetRow]) -> Result<String, DatasetError> {
    let mut hasher = Sha256::new();
    let csv = std::fs::read(csv_path).map_err(|e| DatasetError::Csv {
        path: csv_path.to_path_buf(),
        message: e.to_string(),
    })?;
    hasher.update(&csv);
    for row in rows {
        hasher.update(row.subject.as_bytes());
        hasher.update(row.channel.as_bytes());
        hash_file(&mut hasher, &row.file).map_err(|source| DatasetError::File {
            csv: csv_path.to_path_buf(),
            subject: row.subject.clone(),
            file: row.file.clone(),
            source,
        })?;
    }
    Ok(format_digest(hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn subjects_are_distinct_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            dir.path(),
            "dataset.csv",
            "subject,filePath,channel\nb,b.nii,mr\na,a.nii,mr\nb,b_mask.nii,liver\n",
        );
        let rows = read_rows(&csv).unwrap();
        assert_eq!(subjects(&rows), vec!["a", "b"]);
        assert_eq!(rows[0].file, dir.path().join("b.nii"));
    }

    #[test]
    fn a_missing_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            dir.path(),
            "dataset.csv",
            "subject,path,channel\na,a.nii,mr\n",
        );
        let message = read_rows(&csv).unwrap_err().to_string();
        assert!(message.contains("no `filePath` column"), "{message}");
        assert!(message.contains("dataset.csv"), "{message}");
    }

    #[test]
    fn the_digest_changes_with_any_image_byte() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            dir.path(),
            "dataset.csv",
            "subject,filePath,channel\na,a.nii,mr\n",
        );
        write(dir.path(), "a.nii", "image");
        let rows = read_rows(&csv).unwrap();
        let before = dataset_digest(&csv, &rows).unwrap();
        assert!(before.starts_with("sha256:"));
        assert_eq!(before, dataset_digest(&csv, &rows).unwrap());
        write(dir.path(), "a.nii", "imagf");
        assert_ne!(before, dataset_digest(&csv, &rows).unwrap());
    }

    #[test]
    fn a_missing_file_names_the_subject_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            dir.path(),
            "dataset.csv",
            "subject,filePath,channel\na,gone.nii,mr\n",
        );
        let message = dataset_digest(&csv, &read_rows(&csv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("subject a") && message.contains("gone.nii"),
            "{message}"
        );
    }
}
