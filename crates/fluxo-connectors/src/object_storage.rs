//! Where file sinks write: a local directory, or a prefix of an S3 bucket
//! (`s3://bucket/prefix`, on AWS or any S3-compatible server such as MinIO
//! or moto).
//!
//! S3 is reached through `object_store`'s client, which the Delta kernel
//! already builds; `deltalake`'s own `s3` feature would bring the AWS SDK.
//! For Delta tables, [`register_delta_s3`] teaches `deltalake` the `s3://`
//! scheme with that client and the default log store. The default log store
//! commits `_delta_log/N.json` with a put-if-absent (`If-None-Match: *`),
//! which S3 has supported since 2024, so two writers cannot both commit
//! version N and no locking table (DynamoDB) is needed.
//!
//! Settings come from the sink's `s3.*` options, else from the standard
//! `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), as the AWS tools read them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::{opt, OptionInfo};

/// The options every file sink takes for `s3://` paths.
pub const S3_OPTIONS: [OptionInfo; 5] = [
    opt(
        "s3.endpoint",
        false,
        "for s3:// paths: the S3 endpoint URL, for S3-compatible servers (default AWS_ENDPOINT_URL, else AWS)",
    ),
    opt(
        "s3.region",
        false,
        "for s3:// paths: the bucket's region (default AWS_REGION, else us-east-1)",
    ),
    opt(
        "s3.access_key_id",
        false,
        "for s3:// paths: the access key id (default AWS_ACCESS_KEY_ID)",
    ),
    opt(
        "s3.secret_access_key",
        false,
        "for s3:// paths: the secret access key (default AWS_SECRET_ACCESS_KEY)",
    ),
    opt(
        "s3.allow_http",
        false,
        "for s3:// paths: 'true' allows a plain http:// endpoint (local servers)",
    ),
];

/// `s3.*` option → `object_store`'s key for it.
const S3_KEYS: [(&str, AmazonS3ConfigKey); 5] = [
    ("s3.endpoint", AmazonS3ConfigKey::Endpoint),
    ("s3.region", AmazonS3ConfigKey::Region),
    ("s3.access_key_id", AmazonS3ConfigKey::AccessKeyId),
    ("s3.secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
    (
        "s3.allow_http",
        AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp),
    ),
];

/// A directory on the local disk, or a prefix in an S3 bucket.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Location),
}

/// `s3://bucket/prefix` and how to reach it.
#[derive(Clone, PartialEq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// `object_store` config keys (`aws_endpoint`, ...) given as options;
    /// the environment fills in the rest.
    settings: Vec<(AmazonS3ConfigKey, String)>,
}

impl fmt::Debug for S3Location {
    // The secret key stays out of logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.settings.iter().map(|(k, _)| k.as_ref()).collect();
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("settings", &keys)
            .finish()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3(s3) => write!(f, "{s3}"),
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.is_empty() {
            true => write!(f, "s3://{}", self.bucket),
            false => write!(f, "s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

impl Location {
    /// The location `path` names (`what` is the connector, for messages); a
    /// relative local path is under `data_dir`.
    pub fn from_options(options: &Options, what: &str, data_dir: &Path) -> Result<Location> {
        let given = options.required(what, "path")?;
        let s3_given: Vec<&str> = S3_KEYS
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| options.get(k).is_some())
            .collect();
        if let Some((scheme, rest)) = given.split_once("://") {
            match scheme.to_ascii_lowercase().as_str() {
                "s3" | "s3a" => return S3Location::parse(given, rest, options).map(Location::S3),
                "file" => {}
                _ => {
                    return Err(ConnectorError::Config(format!(
                    "path = '{given}': {what} writes to a local directory or to s3://bucket/prefix"
                )))
                }
            }
        }
        if !s3_given.is_empty() {
            return Err(ConnectorError::Config(format!(
                "{} apply to s3:// paths only, and path = '{given}' is local",
                s3_given.join(", ")
            )));
        }
        let path = PathBuf::from(given.trim_start_matches("file://"));
        let path = if path.is_absolute() {
            path
        } else {
            data_dir.join(path)
        };
        let path = std::path::absolute(&path).map_err(|e| ConnectorError::io(path.display(), e))?;
        Ok(Location::Local(path))
    }

    /// The location as a directory URL (with a trailing `/`), as `deltalake`
    /// takes it.
    pub fn url(&self) -> Result<Url> {
        match self {
            Location::Local(path) => Url::from_directory_path(path).map_err(|()| {
                ConnectorError::Config(format!(
                    "{} is not an absolute directory path",
                    path.display()
                ))
            }),
            Location::S3(s3) => Url::parse(&format!("{s3}/"))
                .map_err(|e| ConnectorError::Config(format!("{s3} is not a valid URL: {e}"))),
        }
    }
}

impl S3Location {
    fn parse(given: &str, rest: &str, options: &Options) -> Result<S3Location> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ConnectorError::Config(format!(
                "path = '{given}' names no bucket; write s3://bucket/prefix"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|part| part == "." || part == ".." || part.is_empty())
        {
            return Err(ConnectorError::Config(format!(
                "path = '{given}': a prefix cannot hold empty, '.' or '..' parts"
            )));
        }
        let mut settings = Vec::new();
        for (option, key) in S3_KEYS {
            if let Some(value) = options.get(option) {
                if option == "s3.allow_http" {
                    options.flag(option, false)?;
                }
                settings.push((key, value.trim_end_matches('/').to_string()));
            }
        }
        // object_store's own refusal reads "builder error"; say what to do.
        let endpoint = options
            .get("s3.endpoint")
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_default();
        let allow_http = options.flag("s3.allow_http", false)?
            || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        if endpoint.to_ascii_lowercase().starts_with("http://") && !allow_http {
            return Err(ConnectorError::Config(format!(
                "the S3 endpoint {endpoint} is plain http; add s3.allow_http = 'true' \
                 (for a local S3 server) or use https"
            )));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix,
            settings,
        })
    }

    /// Settings as `deltalake` passes them to [`ObjectStoreFactory`]: the
    /// `object_store` key names.
    pub fn storage_options(&self) -> HashMap<String, String> {
        self.settings
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.clone()))
            .collect()
    }

    /// The bucket's client. Requests are retried for about `retry_for`,
    /// so that a statement that checks the bucket fails fast while a
    /// running sink rides out a blip.
    pub fn store(&self, retry_for: Duration) -> Result<Arc<dyn ObjectStore>> {
        let url = format!("s3://{}", self.bucket);
        let store = builder(&url, self.settings.iter().cloned(), retry_for)
            .build()
            .map_err(|e| ConnectorError::Config(format!("{self}: {e}")))?;
        Ok(Arc::new(store))
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> ObjectPath {
        match self.prefix.is_empty() {
            true => ObjectPath::from(name),
            false => ObjectPath::from(format!("{}/{name}", self.prefix)),
        }
    }

    /// Lists the prefix, so that a missing bucket, a wrong endpoint or
    /// region, or refused credentials fail `CREATE SINK` with the reason.
    pub async fn check(&self) -> Result<()> {
        let store = self.store(Duration::from_secs(5))?;
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let endpoint = self
            .settings
            .iter()
            .find(|(k, _)| *k == AmazonS3ConfigKey::Endpoint)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| "AWS".into());
        store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| {
                ConnectorError::Config(format!(
                    "cannot list {self} at {endpoint}: {e}; check that the bucket exists and \
                     the s3.endpoint, s3.region and credentials (s3.access_key_id, \
                     s3.secret_access_key or AWS_* variables)"
                ))
            })
    }
}

/// An S3 client for `url` (`s3://bucket[/...]`): the environment's `AWS_*`
/// variables, then `settings` over them.
fn builder(
    url: &str,
    settings: impl IntoIterator<Item = (AmazonS3ConfigKey, String)>,
    retry_for: Duration,
) -> AmazonS3Builder {
    // Without a connect timeout, an endpoint that drops packets holds a
    // statement for minutes. Set as a key, not with `with_client_options`,
    // which would replace the client settings (`allow_http`) given as keys.
    let mut builder = AmazonS3Builder::from_env().with_url(url).with_config(
        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
        "5s",
    );
    for (key, value) in settings {
        builder = builder.with_config(key, value);
    }
    // A statement's check retries once, so a wrong endpoint answers in
    // seconds; a running sink retries as object_store does by default.
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: if retry_for < Duration::from_secs(30) {
            1
        } else {
            10
        },
        retry_timeout: retry_for,
    };
    builder.with_retry(retry)
}

/// Builds `deltalake`'s stores for `s3://` tables.
#[derive(Debug, Default)]
struct S3Factory;

impl ObjectStoreFactory for S3Factory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, ObjectPath)> {
        let bucket = url
            .host_str()
            .ok_or_else(|| DeltaTableError::InvalidTableLocation(url.to_string()))?;
        // Keys this crate does not know (deltalake's own) are left to it.
        let settings = config
            .raw
            .iter()
            .filter_map(|(k, v)| Some((AmazonS3ConfigKey::from_str(k).ok()?, v.clone())));
        let store = builder(
            &format!("s3://{bucket}"),
            settings,
            Duration::from_secs(180),
        )
        .build()
        .map_err(DeltaTableError::from)?;
        let path =
            ObjectPath::parse(url.path()).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        Ok((Arc::new(store), path))
    }
}

impl LogStoreFactory for S3Factory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Teaches `deltalake` the `s3://` and `s3a://` schemes; idempotent.
pub fn register_delta_s3() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        let factory = Arc::new(S3Factory);
        for scheme in ["s3://", "s3a://"] {
            if let Ok(url) = Url::parse(scheme) {
                object_store_factories().insert(url.clone(), factory.clone());
                logstore_factories().insert(url, factory.clone());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(pairs: &[(&str, &str)]) -> Result<Location> {
        Location::from_options(
            &Options::from_pairs(pairs),
            "a delta sink",
            Path::new("/data"),
        )
    }

    #[test]
    fn paths_are_local_or_s3() {
        assert_eq!(
            location(&[("path", "lake/t")]).unwrap(),
            Location::Local(PathBuf::from("/data/lake/t"))
        );
        assert_eq!(
            location(&[("path", "file:///x/y")]).unwrap(),
            Location::Local(PathBuf::from("/x/y"))
        );
        let Location::S3(s3) = location(&[
            ("path", "s3://b/lake/t/"),
            ("s3.endpoint", "http://localhost:9000/"),
            ("s3.allow_http", "true"),
        ])
        .unwrap() else {
            panic!("not s3")
        };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("b", "lake/t"));
        assert_eq!(s3.to_string(), "s3://b/lake/t");
        assert_eq!(s3.key("_staging/x").as_ref(), "lake/t/_staging/x");
        let options = s3.storage_options();
        assert_eq!(options["aws_endpoint"], "http://localhost:9000");
        assert_eq!(options["allow_http"], "true");
        let root = location(&[("path", "s3://b")]).unwrap();
        assert_eq!(root.url().unwrap().as_str(), "s3://b/");
    }

    #[test]
    fn mistakes_are_named() {
        let e = location(&[("path", "gs://b/x")]).unwrap_err().to_string();
        assert!(e.contains("s3://bucket/prefix"), "{e}");
        let e = location(&[("path", "s3:///x")]).unwrap_err().to_string();
        assert!(e.contains("names no bucket"), "{e}");
        let e = location(&[("path", "lake"), ("s3.region", "eu-west-1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3.region apply to s3:// paths only"), "{e}");
        let e = location(&[("path", "s3://b/x"), ("s3.allow_http", "yes")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'true' or 'false'"), "{e}");
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        let s3 = location(&[("path", "s3://b/x"), ("s3.secret_access_key", "hunter2")]).unwrap();
        assert!(!format!("{s3:?}").contains("hunter2"));
    }
}
