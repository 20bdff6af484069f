//! The console's files, as embedded by `fluxo-console`.
//!
//! The app routes with the URL's fragment (`/#/topics`), so the server only
//! ever serves `/` and the files next to it.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::ApiError;

fn file(name: &str) -> Response {
    match fluxo_console::asset(name) {
        // The files are not fingerprinted, so browsers must revalidate
        // after an upgrade; they are small.
        Some(a) => (
            [(CONTENT_TYPE, a.content_type), (CACHE_CONTROL, "no-cache")],
            a.bytes,
        )
            .into_response(),
        None => ApiError::not_found(format!("no such file: /{name}")).into_response(),
    }
}

pub(crate) async fn index() -> Response {
    file("index.html")
}

pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    file(&name)
}
