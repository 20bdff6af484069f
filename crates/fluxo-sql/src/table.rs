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

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SessionState;

use crate::error::{Result, SqlError};

/// The options a table takes.
pub const OPTIONS: &[&str] = &["connector", "path"];

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

/// The table at `dir`, read as it is now.
pub async fn open(
    format: TableFormat,
    dir: &Path,
    state: &SessionState,
) -> Result<(Arc<dyn TableProvider>, SchemaRef)> {
    match format {
        TableFormat::Parquet => parquet_table(dir, state).await,
        TableFormat::Delta => delta_table(dir, state).await,
    }
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
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let schema = options.infer_schema(state, &url).await.map_err(|e| {
        SqlError::Plan(format!(
            "cannot read the Parquet files in {}: {e}",
            dir.display()
        ))
    })?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema.clone());
    Ok((Arc::new(ListingTable::try_new(config)?), schema))
}
