//! fluxo's continuous SQL engine.
//!
//! Users declare **sources** over topics (`CREATE SOURCE ... WITH (topic =
//! ..., format = 'json')`), **materialized views** over them, and query the
//! views (`SELECT` on a view is a pull query on its current contents;
//! `SUBSCRIBE` follows its changes). Each view runs as a **pipeline**: a
//! dataflow of operators over Arrow record batches of changes, planned by
//! DataFusion ([`planner`]: a chain per input, joins, unions and top-N in a
//! graph above), fed straight from the log ([`pipeline`]). **Tables over
//! topics** (`CREATE TABLE ... PRIMARY KEY`) hold the newest row per key and
//! join like views; a view may read other views (their queries are planned
//! into its own dataflow).
//!
//! Main types: [`Engine`] (execute statements, list pipelines, subscribe),
//! [`parser::Statement`] (the SQL surface), [`planner::Dataflow`],
//! [`view::ViewStore`].
//!
//! Invariants:
//! - At any quiescent point a view's rows equal its query run as a batch
//!   over the inputs it has read (for windows: the windows the watermark
//!   closed).
//! - The catalog on disk holds every object that exists, and only those; it
//!   is replaced atomically, and replaying it recreates every pipeline.
//! - A window's row appears in its view only once the watermark has passed
//!   the window's end; after that it changes only through late events
//!   within the view's `allowed_lateness`, as a retraction plus an insert.
//!   Views over windows therefore hold final (or, with lateness, corrected)
//!   results, never partial ones.
//! - Watermarks never go back; an event is late only relative to the
//!   windows it belongs to, and every late event is counted.
//! - A view's subscribers see its snapshot and then every change after it,
//!   each exactly once, in order.

pub mod catalog;
pub mod engine;
pub mod error;
pub mod format;
pub mod history;
pub mod parser;
pub mod pipeline;
pub mod planner;
pub mod reader;
pub mod shared_decode;
pub mod source;
pub mod table;
pub mod view;

pub use engine::{Engine, PipelineStatus, QueryResult};
pub use error::{Result, SqlError};
/// The connectors sources and sinks are made of.
pub use fluxo_connectors as connectors;
/// What subscribers of a view receive.
pub use fluxo_connectors::json;
pub use fluxo_connectors::Topics;
pub use fluxo_dataflow::Changes;
