//! Tables: data written elsewhere (`CREATE TABLE name WITH (connector =
//! 'parquet', path = 'dir')`), read by batch queries. A table is the
//! directory's `*.parquet` files as they are when a query is planned: the
//! files are listed and their schema read again for each query, so a table
//! over a Parquet sink's directory shows every file committed so far, and
//! the sink's staged files (under `_staging/`) never.

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
