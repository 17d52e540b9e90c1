//! Operator YAML files (model routing, policy): read once at start-up, parsed with the line and
//! column of any problem, an empty file meaning the type's default.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why an operator YAML file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum YamlFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the expected shape.
    #[error("{path}: line {line}, column {column}: {problem}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line of the problem (0 when the parser gave no location).
        line: usize,
        /// 1-based column of the problem (0 when the parser gave no location).
        column: usize,
        /// What is wrong.
        problem: String,
    },
}

/// The file's text and the path as shown in errors.
///
/// # Errors
/// `Read` when the file cannot be read.
pub fn read(path: &Path) -> Result<(String, String), YamlFileError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, shown)),
        Err(source) => Err(YamlFileError::Read {
            path: shown,
            source,
        }),
    }
}

/// Parses `text`; `path` only labels errors. An empty (or blank) text is `T::default()`.
///
/// # Errors
/// `Parse`, with the line and column, for malformed YAML or unknown or mistyped fields.
pub fn parse<T: DeserializeOwned + Default>(text: &str, path: &str) -> Result<T, YamlFileError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    yaml_serde::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        YamlFileError::Parse {
            path: path.to_owned(),
            line,
            column,
            problem: e.to_string(),
        }
    })
}
