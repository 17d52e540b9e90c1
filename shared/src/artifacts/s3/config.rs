//! The S3/MinIO artifact settings, read once through a variable lookup by the gateway and the
//! worker alike (`SPLAI_S3_*`, and the original's `SPLAI_MINIO_*`).

use std::time::Duration;

use crate::aws::AwsSettings;
use crate::backends::Secret;

/// The smallest part S3 accepts for any but the last part of a multipart upload.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Where and how S3 artifacts are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `SPLAI_S3_BUCKET` (or `SPLAI_MINIO_BUCKET`; default `splai-artifacts`).
    pub bucket: String,
    /// `SPLAI_S3_PREFIX` (default empty): put before every object key; a `/` is added when
    /// missing.
    pub prefix: String,
    /// `SPLAI_S3_ENDPOINT` (or `SPLAI_MINIO_ENDPOINT`, `http://` unless
    /// `SPLAI_MINIO_USE_SSL=true` when it names no scheme); `None` leaves the SDK's own
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or AWS itself).
    pub endpoint: Option<String>,
    /// `SPLAI_S3_FORCE_PATH_STYLE` (default `false`, `true` for MinIO): `endpoint/bucket/key`
    /// URLs instead of `bucket.endpoint/key`, for stores without per-bucket host names.
    pub force_path_style: bool,
    /// `SPLAI_S3_REGION`; `None` takes the SDK's (`AWS_REGION`, the profile, ...).
    pub region: Option<String>,
    /// `SPLAI_MINIO_ACCESS_KEY` and `SPLAI_MINIO_SECRET_KEY`: static credentials instead of
    /// the standard chain.
    pub static_credentials: Option<(String, Secret)>,
    /// An S3-compatible store (MinIO, or any `SPLAI_S3_ENDPOINT`): checksums only when an
    /// operation requires them, since the SDK's default CRC checksums break older MinIO.
    pub compatible: bool,
    /// `SPLAI_AWS_CREATE_RESOURCES` (default `false`): create a missing bucket at start-up.
    pub create_bucket: bool,
    /// `SPLAI_S3_PRESIGN_EXPIRY_SECONDS` (default 900): how long a presigned download URL
    /// works; upload URLs add the task's own timeout to it.
    pub presign_expiry: Duration,
    /// `SPLAI_S3_PART_SIZE_BYTES` (default 8 MiB, at least 5 MiB): outputs larger than this
    /// are uploaded in parts of this size, one part in memory at a time.
    pub part_size: usize,
}

impl Default for S3Config {
    fn default() -> Self {
        let aws = AwsSettings::default();
        Self {
            bucket: aws.s3_bucket,
            prefix: aws.s3_prefix,
            endpoint: None,
            force_path_style: false,
            region: None,
            static_credentials: None,
            compatible: false,
            create_bucket: aws.create_resources,
            presign_expiry: Duration::from_secs(900),
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// A bad S3 setting, named in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct S3ConfigError(String);

impl S3Config {
    /// Reads the settings through `var` (unset and blank variables are `None`). `minio` is
    /// `SPLAI_ARTIFACT_BACKEND=minio`; `SPLAI_MINIO_ENDPOINT` implies it too.
    ///
    /// # Errors
    /// A variable with an invalid value, or an access key without its secret.
    pub fn from_vars(
        minio: bool,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, S3ConfigError> {
        let d = Self::default();
        let flag = |k: &str, default: bool| -> Result<bool, S3ConfigError> {
            var(k).map_or(Ok(default), |v| match v.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(S3ConfigError(format!(
                    "invalid {k}=`{v}`: expected true or false"
                ))),
            })
        };
        let number = |k: &str, default: u64| -> Result<u64, S3ConfigError> {
            var(k).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| S3ConfigError(format!("invalid {k}=`{v}`: expected a number")))
            })
        };
        let minio_endpoint = var("SPLAI_MINIO_ENDPOINT");
        let minio = minio || minio_endpoint.is_some();
        let endpoint = match (var("SPLAI_S3_ENDPOINT"), minio_endpoint) {
            (Some(e), _) => Some(endpoint_url("SPLAI_S3_ENDPOINT", &e, true)?),
            (None, Some(e)) => Some(endpoint_url(
                "SPLAI_MINIO_ENDPOINT",
                &e,
                flag("SPLAI_MINIO_USE_SSL", false)?,
            )?),
            (None, None) => None,
        };
        let static_credentials =
            match (var("SPLAI_MINIO_ACCESS_KEY"), var("SPLAI_MINIO_SECRET_KEY")) {
                (Some(id), Some(secret)) => Some((id, Secret::new(secret))),
                (None, None) => None,
                _ => {
                    return Err(S3ConfigError(
                        "SPLAI_MINIO_ACCESS_KEY and SPLAI_MINIO_SECRET_KEY must be set together"
                            .into(),
                    ));
                }
            };
        let part_size = number("SPLAI_S3_PART_SIZE_BYTES", d.part_size as u64)?;
        if part_size < MIN_PART_SIZE as u64 {
            return Err(S3ConfigError(format!(
                "invalid SPLAI_S3_PART_SIZE_BYTES=`{part_size}`: S3 parts are at least \
                 {MIN_PART_SIZE} bytes"
            )));
        }
        let presign = number(
            "SPLAI_S3_PRESIGN_EXPIRY_SECONDS",
            d.presign_expiry.as_secs(),
        )?;
        // S3 refuses presigned URLs valid for longer than seven days.
        if !(1..=7 * 24 * 3600).contains(&presign) {
            return Err(S3ConfigError(format!(
                "invalid SPLAI_S3_PRESIGN_EXPIRY_SECONDS=`{presign}`: 1 to 604800"
            )));
        }
        Ok(Self {
            bucket: var("SPLAI_S3_BUCKET")
                .or_else(|| var("SPLAI_MINIO_BUCKET"))
                .unwrap_or(d.bucket),
            prefix: var("SPLAI_S3_PREFIX").unwrap_or(d.prefix),
            compatible: minio || endpoint.is_some(),
            endpoint,
            force_path_style: flag("SPLAI_S3_FORCE_PATH_STYLE", minio)?,
            region: var("SPLAI_S3_REGION"),
            static_credentials,
            create_bucket: flag("SPLAI_AWS_CREATE_RESOURCES", d.create_bucket)?,
            presign_expiry: Duration::from_secs(presign),
            part_size: part_size as usize,
        })
    }

    /// The object key of an artifact path (`<job>/<task>/<name>`) under the prefix.
    pub(crate) fn object_key(&self, path: &str) -> String {
        match self.prefix.as_str() {
            "" => path.to_owned(),
            p if p.ends_with('/') => format!("{p}{path}"),
            p => format!("{p}/{path}"),
        }
    }
}

/// An endpoint as a URL: MinIO's `host:port` gets `http://` (or `https://` with `tls`).
fn endpoint_url(name: &str, raw: &str, tls: bool) -> Result<String, S3ConfigError> {
    let raw = raw.trim().trim_end_matches('/');
    let url = if raw.contains("://") {
        raw.to_owned()
    } else if tls {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    };
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(url),
        _ => Err(S3ConfigError(format!(
            "invalid {name}=`{raw}`: expected an http(s) URL or host:port"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(minio: bool, vars: &[(&str, &str)]) -> Result<S3Config, S3ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        S3Config::from_vars(minio, &|k| map.get(k).map(|v| (*v).to_owned()))
    }

    /// Plain S3 keeps the SDK's endpoint and virtual-host URLs; the S3 variables override.
    #[test]
    fn s3_variables_are_read_with_their_defaults() {
        let c = read(false, &[]).unwrap();
        assert_eq!(c, S3Config::default());
        assert_eq!(c.bucket, "splai-artifacts");
        assert!(!c.force_path_style && !c.compatible && c.endpoint.is_none());
        let c = read(
            false,
            &[
                ("SPLAI_S3_BUCKET", "outs"),
                ("SPLAI_S3_PREFIX", "runs"),
                ("SPLAI_S3_ENDPOINT", "http://127.0.0.1:4566/"),
                ("SPLAI_S3_FORCE_PATH_STYLE", "true"),
                ("SPLAI_S3_REGION", "eu-west-1"),
                ("SPLAI_S3_PRESIGN_EXPIRY_SECONDS", "60"),
            ],
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert!(c.force_path_style && c.compatible);
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.presign_expiry, Duration::from_secs(60));
        assert_eq!(c.object_key("j/t/output.json"), "runs/j/t/output.json");
    }

    /// The original's MinIO variables: host:port endpoint with the scheme from `_USE_SSL`,
    /// static credentials, path-style, and compatible checksums.
    #[test]
    fn minio_variables_are_accepted_as_in_the_original() {
        let c = read(
            false,
            &[
                ("SPLAI_MINIO_ENDPOINT", "minio:9000"),
                ("SPLAI_MINIO_ACCESS_KEY", "minioadmin"),
                ("SPLAI_MINIO_SECRET_KEY", "minio-secret"),
                ("SPLAI_MINIO_BUCKET", "outputs"),
                ("SPLAI_MINIO_USE_SSL", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://minio:9000"));
        assert!(c.force_path_style && c.compatible);
        assert_eq!(c.bucket, "outputs");
        assert_eq!(
            c.static_credentials.as_ref().map(|(id, _)| id.as_str()),
            Some("minioadmin")
        );
        assert!(!format!("{c:?}").contains("minio-secret"));
        let c = read(true, &[("SPLAI_MINIO_ENDPOINT", "minio:9000")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://minio:9000"));
    }

    /// Bad values fail naming their variable.
    #[test]
    fn bad_s3_values_name_the_variable() {
        for (k, v) in [
            ("SPLAI_S3_FORCE_PATH_STYLE", "maybe"),
            ("SPLAI_MINIO_USE_SSL", "yes please"),
            ("SPLAI_S3_ENDPOINT", "ftp://x"),
            ("SPLAI_S3_PART_SIZE_BYTES", "1024"),
            ("SPLAI_S3_PRESIGN_EXPIRY_SECONDS", "0"),
            ("SPLAI_MINIO_ACCESS_KEY", "only-the-id"),
        ] {
            let mut vars = vec![(k, v)];
            if k == "SPLAI_MINIO_USE_SSL" {
                vars.push(("SPLAI_MINIO_ENDPOINT", "minio:9000"));
            }
            let e = read(false, &vars).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
