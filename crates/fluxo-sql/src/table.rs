//! Tables: data written elsewhere (`CREATE TABLE name WITH (connector =
//! 'parquet' | 'delta', path = 'dir')`), read by batch queries and joined
//! with streams' history. A table is read as it is when a query is planned:
//! - a Parquet table is the directory's `*.parquet` files, listed and their
//!   schema read again for each query, so a table over a Parquet sink's
//!   directory shows every file committed so far, and the sink's staged
//!   files (under `_staging/`) never;
//! - a Delta table is its latest committed version, loaded for each query
//!   (`deltalake`'s DataFusion provider, with partition and statistics
//!   pruning); files no commit names are never read.
//!
//! Either may be on S3 (`path = 's3://bucket/prefix'` with the sinks'
//! `s3.*` options, see `fluxo_connectors::object_storage`), so a table can
//! read what an S3 sink wrote: the bucket's client is registered in the
//! query's session for the scan to read through.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SessionState;
use fluxo_connectors::object_storage::{self, Location, S3Location};

use crate::error::{Result, SqlError};

/// The options a table takes.
pub const OPTIONS: &[&str] = &[
    "connector",
    "path",
    "s3.endpoint",
    "s3.region",
    "s3.access_key_id",
    "s3.secret_access_key",
    "s3.allow_http",
];

/// How a table's files are organized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Parquet,
    Delta,
}

impl TableFormat {
    pub fn from_connector(connector: Option<&str>) -> Result<TableFormat> {
        match connector {
            Some("parquet") => Ok(TableFormat::Parquet),
            Some("delta") => Ok(TableFormat::Delta),
            Some(other) => Err(SqlError::Plan(format!(
                "connector '{other}' is not supported for tables; use connector = 'parquet' or 'delta'"
            ))),
            None => Err(SqlError::Plan(
                "a table needs connector = 'parquet' or 'delta' and path = '<directory>'".into(),
            )),
        }
    }
}

/// The table at `location`, read as it is now.
pub async fn open(
    format: TableFormat,
    location: &Location,
    state: &SessionState,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    match (format, location) {
        (TableFormat::Parquet, Location::Local(dir)) => parquet_table(dir, state).await,
        (TableFormat::Delta, Location::Local(dir)) => delta_table(dir, state).await,
        (TableFormat::Parquet, Location::S3(s3)) => s3_parquet_table(s3, state).await,
        (TableFormat::Delta, Location::S3(s3)) => s3_delta_table(s3, state).await,
    }
}

/// The latest version of the Delta table at `s3`.
async fn s3_delta_table(
    s3: &S3Location,
    state: &SessionState,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    object_storage::register_delta_s3();
    s3.check().await?;
    let not_a_table = |e: &dyn std::fmt::Display| {
        SqlError::Plan(format!(
            "{s3} is not a Delta table (no readable _delta_log): {e}"
        ))
    };
    let url = Location::S3(s3.clone()).url()?;
    let table = deltalake::open_table_with_storage_options(url, s3.storage_options())
        .await
        .map_err(|e| not_a_table(&e))?;
    table
        .update_datafusion_session(state)
        .map_err(|e| not_a_table(&e))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| SqlError::Plan(format!("cannot read Delta table {s3}: {e}")))?;
    let schema = provider.schema();
    Ok((provider, schema))
}

/// The Parquet objects directly under `s3`'s prefix, as a table.
async fn s3_parquet_table(
    s3: &S3Location,
    state: &SessionState,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    s3.check().await?;
    let store = s3.store(Duration::from_secs(180))?;
    let bucket = url::Url::parse(&format!("s3://{}", s3.bucket))
        .map_err(|e| SqlError::Plan(format!("{s3} is not a valid URL: {e}")))?;
    let prefix = (!s3.prefix.is_empty()).then(|| s3.key(""));
    let listed = store
        .list_with_delimiter(prefix.as_ref())
        .await
        .map_err(|e| SqlError::Plan(format!("cannot list {s3}: {e}")))?;
    if !listed
        .objects
        .iter()
        .any(|o| o.location.as_ref().ends_with(".parquet"))
    {
        return Err(SqlError::Plan(format!(
            "{s3} holds no Parquet files (*.parquet) to take the table's columns from"
        )));
    }
    state.runtime_env().register_object_store(&bucket, store);
    // A URL takes no glob (only local paths do); the listing skips the
    // files in subdirectories such as `_staging/` by default
    // (`listing_table_ignore_subdirectory`), and others than `*.parquet` by
    // the extension.
    let url = ListingTableUrl::parse(format!("{s3}/"))?;
    listing_table(url, state, &s3.to_string()).await
}

/// The latest version of the Delta table at `dir`.
pub async fn delta_table(
    dir: &Path,
    state: &SessionState,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    let not_a_table = |e: &dyn std::fmt::Display| {
        SqlError::Plan(format!(
            "{} is not a Delta table (no readable _delta_log): {e}",
            dir.display()
        ))
    };
    if !dir.join("_delta_log").is_dir() {
        return Err(not_a_table(&"the directory has no _delta_log"));
    }
    let absolute = std::path::absolute(dir).map_err(|e| SqlError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let url = url::Url::from_directory_path(&absolute)
        .map_err(|()| not_a_table(&"not an absolute path"))?;
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| not_a_table(&e))?;
    table
        .update_datafusion_session(state)
        .map_err(|e| not_a_table(&e))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| SqlError::Plan(format!("cannot read Delta table {}: {e}", dir.display())))?;
    let schema = provider.schema();
    Ok((provider, schema))
}

/// The Parquet files directly in `dir`, as a table.
pub async fn parquet_table(
    dir: &Path,
    state: &SessionState,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    if !dir.is_dir() {
        return Err(SqlError::Plan(format!(
            "{} is not a directory of Parquet files",
            dir.display()
        )));
    }
    let has_files = std::fs::read_dir(dir)
        .map_err(|e| SqlError::Plan(format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "parquet"));
    if !has_files {
        return Err(SqlError::Plan(format!(
            "{} holds no Parquet files (*.parquet) to take the table's columns from",
            dir.display()
        )));
    }
    let glob = format!("{}/*.parquet", dir.display());
    let url = ListingTableUrl::parse(&glob)?;
    listing_table(url, state, &dir.display().to_string()).await
}

/// The Parquet files `url` (a glob) names, as one table.
async fn listing_table(
    url: ListingTableUrl,
    state: &SessionState,
    what: &str,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let schema = options
        .infer_schema(state, &url)
        .await
        .map_err(|e| SqlError::Plan(format!("cannot read the Parquet files in {what}: {e}")))?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema.clone());
    Ok((Arc::new(ListingTable::try_new(config)?), schema))
}
