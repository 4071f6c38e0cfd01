//! Reading the per-subject `metrics.csv` that `voxel-trainer` writes (one row per test subject
//! and structure), for comparisons between models.
//!
//! Columns are found by name, so their order does not matter and extra columns are ignored.
//! Values are numbers or `NaN`, `inf` and `-inf` (any case; NaN when a structure is empty in
//! both masks, infinite when it is empty in exactly one).

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use csv::{ReaderBuilder, StringRecord, Trim};
use thiserror::Error;
use voxel_crds::results::METRIC_NAMES;

/// Column naming the subject.
pub const SUBJECT_COLUMN: &str = "subject";

/// Column naming the structure.
pub const STRUCTURE_COLUMN: &str = "structure";

/// The metrics of one structure of one subject.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsRow {
    /// The subject, as in the dataset CSV.
    pub subject: String,
    /// The structure, as in `spec.model.structures`.
    pub structure: String,
    /// The metrics in the order of [`METRIC_NAMES`]: Dice as a fraction, distances in mm.
    pub values: [f64; METRIC_NAMES.len()],
    /// Line of the file the row was read from (the header is line 1).
    pub line: u64,
}

impl MetricsRow {
    /// The value of the metric named as in the CSV header; `None` for an unknown name.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let column = METRIC_NAMES.iter().position(|m| *m == name)?;
        Some(self.values[column])
    }
}

/// A whole `metrics.csv`: at most one row per subject and structure.
#[derive(Clone, Debug)]
pub struct MetricsTable {
    path: PathBuf,
    rows: Vec<MetricsRow>,
    index: HashMap<(String, String), usize>,
}

/// Why a metrics CSV could not be read. Every message names the file, and the line and column
/// where there is one.
#[derive(Debug, Error)]
pub enum MetricsTableError {
    /// The file could not be opened or read.
    #[error("cannot read metrics CSV {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not well-formed CSV at some line.
    #[error("{}: line {line}: {problem}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line (1 is the header).
        line: u64,
        /// What is wrong there.
        problem: String,
    },
    /// Required columns are absent from the header.
    #[error(
        "{}: line 1: missing column(s) {}; a metrics CSV has the columns {}",
        path.display(), missing.join(", "), expected_columns().join(",")
    )]
    MissingColumns {
        /// The file.
        path: PathBuf,
        /// The columns not found.
        missing: Vec<String>,
    },
    /// A metric value is not a number.
    #[error(
        "{}: line {line}, column {column}: expected a number, NaN, inf or -inf, found `{value}`",
        path.display()
    )]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// The column's name.
        column: String,
        /// The text found.
        value: String,
    },
    /// The subject or structure is blank.
    #[error("{}: line {line}, column {column}: empty", path.display())]
    EmptyName {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// `subject` or `structure`.
        column: String,
    },
    /// A subject and structure appear twice.
    #[error(
        "{}: line {line}: subject {subject}, structure {structure} already on line {first_line}",
        path.display()
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The line of the second row.
        line: u64,
        /// Line of the first row.
        first_line: u64,
        /// The subject.
        subject: String,
        /// The structure.
        structure: String,
    },
}

/// The columns a metrics CSV must have: subject, structure and every metric.
pub fn expected_columns() -> Vec<&'static str> {
    [SUBJECT_COLUMN, STRUCTURE_COLUMN]
        .into_iter()
        .chain(METRIC_NAMES)
        .collect()
}

impl MetricsTable {
    /// Reads a metrics CSV file.
    pub fn read(path: &Path) -> Result<Self, MetricsTableError> {
        let file = std::fs::File::open(path).map_err(|source| MetricsTableError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(file, path)
    }

    /// Reads a metrics CSV from any reader; `path` names it in error messages.
    pub fn from_reader(mut reader: impl io::Read, path: &Path) -> Result<Self, MetricsTableError> {
        // CRLF made LF, or the csv reader's line numbers would be one short.
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|source| MetricsTableError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        let mut reader = ReaderBuilder::new()
            .trim(Trim::All)
            .from_reader(text.as_bytes());
        let malformed = |error: csv::Error| csv_error(path, error);

        let header = reader.headers().map_err(malformed)?.clone();
        let columns = locate_columns(&header, path)?;

        let mut table = Self::empty(path);
        let mut record = StringRecord::new();
        while reader.read_record(&mut record).map_err(malformed)? {
            let line = record.position().map_or(0, |p| p.line());
            let row = parse_row(&record, &columns, path, line)?;
            table.insert(row)?;
        }
        Ok(table)
    }

    /// A table of rows built in memory (for example means over runs); `path` names it in error
    /// messages. The same subject and structure twice is refused as when reading.
    pub fn from_rows(
        path: &Path,
        rows: impl IntoIterator<Item = MetricsRow>,
    ) -> Result<Self, MetricsTableError> {
        let mut table = Self::empty(path);
        for row in rows {
            table.insert(row)?;
        }
        Ok(table)
    }

    /// The file the table was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every row, in file order.
    pub fn rows(&self) -> &[MetricsRow] {
        &self.rows
    }

    /// The row of one subject and structure.
    pub fn row(&self, subject: &str, structure: &str) -> Option<&MetricsRow> {
        let i = self
            .index
            .get(&(subject.to_owned(), structure.to_owned()))?;
        Some(&self.rows[*i])
    }

    /// The subjects, each once, in the order they first appear.
    pub fn subjects(&self) -> Vec<&str> {
        distinct(self.rows.iter().map(|r| r.subject.as_str()))
    }

    /// The structures, each once, in the order they first appear.
    pub fn structures(&self) -> Vec<&str> {
        distinct(self.rows.iter().map(|r| r.structure.as_str()))
    }

    fn empty(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            rows: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn insert(&mut self, row: MetricsRow) -> Result<(), MetricsTableError> {
        let key = (row.subject.clone(), row.structure.clone());
        if let Some(&first) = self.index.get(&key) {
            return Err(MetricsTableError::Duplicate {
                path: self.path.clone(),
                line: row.line,
                first_line: self.rows[first].line,
                subject: row.subject,
                structure: row.structure,
            });
        }
        self.index.insert(key, self.rows.len());
        self.rows.push(row);
        Ok(())
    }
}

/// Positions of the subject, structure and metric columns in the header.
struct Columns {
    subject: usize,
    structure: usize,
    metrics: [usize; METRIC_NAMES.len()],
}

fn locate_columns(header: &StringRecord, path: &Path) -> Result<Columns, MetricsTableError> {
    let position = |name: &str| header.iter().position(|h| h == name);
    let missing: Vec<String> = expected_columns()
        .into_iter()
        .filter(|c| position(c).is_none())
        .map(str::to_owned)
        .collect();
    match (position(SUBJECT_COLUMN), position(STRUCTURE_COLUMN)) {
        (Some(subject), Some(structure)) if missing.is_empty() => Ok(Columns {
            subject,
            structure,
            // Every metric column was found: `missing` is empty.
            metrics: METRIC_NAMES.map(|m| position(m).unwrap_or_default()),
        }),
        _ => Err(MetricsTableError::MissingColumns {
            path: path.to_owned(),
            missing,
        }),
    }
}

fn parse_row(
    record: &StringRecord,
    columns: &Columns,
    path: &Path,
    line: u64,
) -> Result<MetricsRow, MetricsTableError> {
    // The reader rejects rows whose length differs from the header's, so every index exists.
    let field = |i: usize| record.get(i).unwrap_or_default();
    let name = |i: usize, column: &str| match field(i) {
        "" => Err(MetricsTableError::EmptyName {
            path: path.to_owned(),
            line,
            column: column.to_owned(),
        }),
        text => Ok(text.to_owned()),
    };

    let mut values = [0.0; METRIC_NAMES.len()];
    for ((value, &i), metric) in values.iter_mut().zip(&columns.metrics).zip(METRIC_NAMES) {
        let text = field(i);
        *value = text.parse().map_err(|_| MetricsTableError::BadValue {
            path: path.to_owned(),
            line,
            column: metric.to_owned(),
            value: text.to_owned(),
        })?;
    }
    Ok(MetricsRow {
        subject: name(columns.subject, SUBJECT_COLUMN)?,
        structure: name(columns.structure, STRUCTURE_COLUMN)?,
        values,
        line,
    })
}

fn csv_error(path: &Path, error: csv::Error) -> MetricsTableError {
    let line = error.position().map_or(0, |p| p.line());
    let problem = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields like the header, found {len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_owned(),
        _ => error.to_string(),
    };
    match error.into_kind() {
        csv::ErrorKind::Io(source) => MetricsTableError::Io {
            path: path.to_owned(),
            source,
        },
        _ => MetricsTableError::Malformed {
            path: path.to_owned(),
            line,
            problem,
        },
    }
}

fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    names.filter(|n| seen.insert(*n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "subject,structure,dice,hausdorff_mm,hausdorff95_mm,\
                          hausdorff95_max_directed_mm,mean_surface_distance_mm\n";

    fn read(text: &str) -> Result<MetricsTable, MetricsTableError> {
        MetricsTable::from_reader(text.as_bytes(), Path::new("run/metrics.csv"))
    }

    #[test]
    fn reads_rows_with_nan_and_infinite_values() {
        let table = read(&format!(
            "{HEADER}s1,liver,0.9,3.5,2.0,2.5,0.7\ns1,spleen,NaN,nan,inf,-inf,Infinity\n"
        ))
        .expect("valid CSV");
        assert_eq!(table.subjects(), ["s1"]);
        assert_eq!(table.structures(), ["liver", "spleen"]);
        let liver = table.row("s1", "liver").expect("row");
        assert_eq!(liver.metric("dice"), Some(0.9));
        assert_eq!(liver.line, 2);
        let spleen = table.row("s1", "spleen").expect("row");
        assert!(spleen.values[0].is_nan() && spleen.values[1].is_nan());
        assert_eq!(
            spleen.values[2..],
            [f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY]
        );
    }

    #[test]
    fn columns_are_found_by_name_in_any_order() {
        let text = "structure,extra,mean_surface_distance_mm,subject,dice,hausdorff95_mm,\
                    hausdorff_mm,hausdorff95_max_directed_mm\nliver,x,0.5,s1,0.9,2,3,4\n";
        let row = read(text).expect("valid CSV").rows()[0].clone();
        assert_eq!(row.subject, "s1");
        assert_eq!(row.values, [0.9, 3.0, 2.0, 4.0, 0.5]);
    }

    #[test]
    fn a_missing_column_is_named() {
        let error = read("subject,structure,dice\ns1,liver,0.9\n").unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("run/metrics.csv: line 1: missing column(s) hausdorff_mm,"));
    }

    #[test]
    fn a_bad_value_is_named_with_its_line_and_column() {
        let error = read(&format!(
            "{HEADER}s1,liver,0.9,3.5,2.0,2.5,0.7\ns2,liver,0.8,x,1,1,1\n"
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "run/metrics.csv: line 3, column hausdorff_mm: \
             expected a number, NaN, inf or -inf, found `x`"
        );
    }

    #[test]
    fn a_short_row_is_named_with_its_line() {
        let error = read(&format!("{HEADER}s1,liver,0.9\n")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "run/metrics.csv: line 2: expected 7 fields like the header, found 3"
        );
    }

    #[test]
    fn a_repeated_subject_and_structure_is_refused() {
        let row = "s1,liver,0.9,3.5,2.0,2.5,0.7\n";
        let error = read(&format!("{HEADER}{row}{row}")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "run/metrics.csv: line 3: subject s1, structure liver already on line 2"
        );
    }

    #[test]
    fn a_blank_subject_is_refused() {
        let error = read(&format!("{HEADER} ,liver,0.9,3.5,2.0,2.5,0.7\n")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "run/metrics.csv: line 2, column subject: empty"
        );
    }

    #[test]
    fn a_table_built_in_memory_refuses_duplicates_too() {
        let row = MetricsRow {
            subject: "s1".into(),
            structure: "liver".into(),
            values: [0.9, 1.0, 1.0, 1.0, 0.2],
            line: 0,
        };
        let path = Path::new("means.csv");
        let table = MetricsTable::from_rows(path, [row.clone()]).expect("one row");
        assert_eq!(table.row("s1", "liver"), Some(&row));
        assert!(matches!(
            MetricsTable::from_rows(path, [row.clone(), row]),
            Err(MetricsTableError::Duplicate { .. })
        ));
    }

    #[test]
    fn an_absent_file_is_named() {
        let error = MetricsTable::read(Path::new("/nonexistent/metrics.csv")).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read metrics CSV /nonexistent/metrics.csv")
        );
    }
}
