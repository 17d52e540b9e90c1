//! Local artifacts: files under a root directory (`SPLAI_ARTIFACT_ROOT`), one per URI.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{ArtifactError, ArtifactKey, ArtifactStore, Download, job_folder, local_path};
use crate::domain::{Artifact, JobId};

/// An [`ArtifactStore`] on the local file system.
#[derive(Debug, Clone)]
pub struct LocalArtifactStore {
    root: PathBuf,
}

impl LocalArtifactStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, uri: &str) -> Result<PathBuf, ArtifactError> {
        Ok(local_path(&self.root, uri)?)
    }
}

fn io_err(what: &Path, e: std::io::Error) -> ArtifactError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ArtifactError::NotFound(what.display().to_string())
    } else {
        ArtifactError::Unavailable(format!("{}: {e}", what.display()))
    }
}

/// Writes `body` to a temporary file beside `path` and renames it into place, so a reader sees
/// the old file or the new one, never half of one.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(body)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[async_trait]
impl ArtifactStore for LocalArtifactStore {
    fn backend_name(&self) -> &'static str {
        "local"
    }

    async fn put(
        &self,
        key: &ArtifactKey,
        body: Bytes,
        mime_type: &str,
    ) -> Result<Artifact, ArtifactError> {
        let uri = key.uri();
        let path = self.path(&uri)?;
        let size_bytes = body.len() as u64;
        // One blocking-pool hop for the whole write rather than one per file operation.
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&target, &body))
            .await
            .map_err(|e| ArtifactError::Unavailable(format!("artifact writer: {e}")))?
            .map_err(|e| io_err(&path, e))?;
        Ok(Artifact {
            kind: self.backend_name().to_owned(),
            url: uri,
            size_bytes,
            mime_type: mime_type.to_owned(),
            expires_at: None,
        })
    }

    async fn get(&self, uri: &str) -> Result<Bytes, ArtifactError> {
        let path = self.path(uri)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| io_err(&path, e))
    }

    async fn open(&self, uri: &str) -> Result<Download, ArtifactError> {
        let path = self.path(uri)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_err(&path, e))?;
        let size = file.metadata().await.ok().map(|m| m.len());
        let body = futures::stream::try_unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 64 * 1024];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), f)))
        });
        Ok(Download::Bytes {
            body: body.boxed(),
            size,
        })
    }

    /// Removes `<root>/<job>/`.
    async fn delete_job(&self, job: &JobId) -> Result<(), ArtifactError> {
        let dir = self.root.join(job_folder(job)?);
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&dir, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

    /// An artifact is one file at `<root>/<job>/<task>/<name>` (the contract itself is in
    /// `testing::artifacts`, run by the conformance tests).
    #[tokio::test]
    async fn artifacts_are_files_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path());
        let key = ArtifactKey::output(JobId::parse("job-1").unwrap(), TaskId::parse("t1").unwrap());
        store
            .put(&key, Bytes::from_static(b"{}"), "application/json")
            .await
            .unwrap();
        assert!(dir.path().join("job-1/t1/output.json").is_file());
    }
}
