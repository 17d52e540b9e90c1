//! Artifact URIs (`artifact://<job>/<task>/<name>`) and where they live on local disk.

use std::path::{Component, Path, PathBuf};

/// Why an artifact URI cannot be resolved to a local file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactUriError {
    /// Not an `artifact://` URI.
    #[error("`{0}` is not an artifact:// URI")]
    Scheme(String),
    /// Fewer than three segments, or a segment that could escape the root.
    #[error("`{0}` must be artifact://<job>/<task>/<name> with plain path segments")]
    Shape(String),
}

/// The file behind an artifact URI under `root`. Rejects anything that could leave `root`.
///
/// # Errors
/// A URI of another scheme or shape.
pub fn local_path(root: &Path, uri: &str) -> Result<PathBuf, ArtifactUriError> {
    Ok(root.join(relative_path(uri)?))
}

/// The `<job>/<task>/<name>` of an artifact URI, checked as [`local_path`] does: the part an
/// object key or file path is made of.
///
/// # Errors
/// A URI of another scheme or shape.
pub(crate) fn relative_path(uri: &str) -> Result<&str, ArtifactUriError> {
    let rest = uri
        .strip_prefix("artifact://")
        .ok_or_else(|| ArtifactUriError::Scheme(uri.to_owned()))?;
    let rel = Path::new(rest);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    // Empty segments too: `a//b` is one file but would be another object key.
    let empty = rest.split('/').any(str::is_empty);
    if !plain || empty || rel.components().count() < 3 || rest.contains('\\') {
        return Err(ArtifactUriError::Shape(uri.to_owned()));
    }
    Ok(rest)
}

/// The folder (or key prefix, without its trailing `/`) holding every artifact of `job`,
/// checked as [`relative_path`] checks a URI: a job id may contain `/`, but never a segment
/// that could leave the root.
///
/// # Errors
/// A job id that is not plain path segments.
pub(crate) fn job_folder(job: &crate::domain::JobId) -> Result<&str, ArtifactUriError> {
    let uri = format!("artifact://{job}/t/n");
    relative_path(&uri)?;
    Ok(job.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_resolve_under_the_root_only() {
        let root = Path::new("/srv/a");
        assert_eq!(
            local_path(root, "artifact://j/t/out.json").unwrap(),
            PathBuf::from("/srv/a/j/t/out.json")
        );
        assert!(matches!(
            local_path(root, "s3://b/k"),
            Err(ArtifactUriError::Scheme(_))
        ));
        for bad in [
            "artifact://j/../../etc/passwd",
            "artifact:///etc/passwd",
            "artifact://j/t",
            "artifact://j//x",
            "artifact://j/t//x",
            "artifact://j/t/x/",
        ] {
            assert!(local_path(root, bad).is_err(), "{bad}");
        }
    }
}
