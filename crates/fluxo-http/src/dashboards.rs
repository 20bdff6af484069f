//! Saved dashboards: named sets of live charts over views, kept in
//! `DATA_DIR/console/dashboards.json` (replaced atomically on each change).
//!
//! A chart names a view and how to draw it; the console keeps the view's
//! rows current from its SSE change stream and redraws. The server checks
//! what it can (the view exists when the chart is saved, the chart type is
//! one it knows, columns are named) so a bad dashboard is refused with a
//! message instead of drawing nothing.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{json_body, ApiError, AppState, HttpError};

const MAX_CHARTS: usize = 64;
const MAX_NAME: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Chart {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub view: String,
    /// `line` (time series), `bar` (top N), `table` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The time column of a line, the label of a bar, the sort column of
    /// a table or number.
    #[serde(default)]
    pub x: Option<String>,
    /// The value columns.
    #[serde(default)]
    pub y: Vec<String>,
    /// A column whose values split a line into series.
    #[serde(default)]
    pub series: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub charts: Vec<Chart>,
}

const CHART_TYPES: &[&str] = &["line", "bar", "table", "number"];

impl Dashboard {
    /// Checks the dashboard against the views that exist now.
    fn validate(&mut self, views: &[String]) -> Result<(), String> {
        self.name = self.name.trim().to_string();
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(format!(
                "a dashboard needs a name of 1 to {MAX_NAME} characters"
            ));
        }
        if self.charts.len() > MAX_CHARTS {
            return Err(format!("a dashboard holds at most {MAX_CHARTS} charts"));
        }
        for (i, c) in self.charts.iter_mut().enumerate() {
            let which = format!("chart {} ({})", i + 1, c.title);
            if !views.contains(&c.view) {
                return Err(format!(
                    "{which}: there is no materialized view {:?} (SHOW VIEWS lists them)",
                    c.view
                ));
            }
            if !CHART_TYPES.contains(&c.kind.as_str()) {
                return Err(format!(
                    "{which}: type {:?} is not one of {}",
                    c.kind,
                    CHART_TYPES.join(", ")
                ));
            }
            if matches!(c.kind.as_str(), "line" | "bar") && c.x.is_none() {
                return Err(format!("{which}: a {} chart needs an x column", c.kind));
            }
            if c.kind != "table" && c.y.is_empty() {
                return Err(format!(
                    "{which}: a {} chart needs at least one y column",
                    c.kind
                ));
            }
            if c.id.is_empty() {
                c.id = format!("c{}", i + 1);
            }
            if c.title.trim().is_empty() {
                c.title = c.view.clone();
            }
        }
        Ok(())
    }
}

/// The dashboards and the file that keeps them.
pub struct DashboardStore {
    dir: PathBuf,
    path: PathBuf,
    dashboards: Mutex<Vec<Dashboard>>,
}

impl DashboardStore {
    /// Opens `data_dir/console/dashboards.json`, or starts empty.
    pub fn open(data_dir: &FsPath) -> Result<DashboardStore, HttpError> {
        let dir = data_dir.join("console");
        let path = dir.join("dashboards.json");
        let err = |message: String| HttpError::Dashboards {
            path: path.display().to_string(),
            message,
        };
        let dashboards = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: DashboardFile =
                    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                file.dashboards
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(DashboardStore {
            dir,
            path,
            dashboards: Mutex::new(dashboards),
        })
    }

    pub fn list(&self) -> Vec<Dashboard> {
        self.dashboards.lock().clone()
    }

    pub fn get(&self, id: &str) -> Option<Dashboard> {
        self.dashboards.lock().iter().find(|d| d.id == id).cloned()
    }

    /// Adds a dashboard (a fresh id is given) after checking it.
    pub fn create(&self, mut d: Dashboard, views: &[String]) -> Result<Dashboard, ApiError> {
        d.validate(views).map_err(ApiError::bad_request)?;
        d.id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut all = self.dashboards.lock();
        all.push(d.clone());
        self.save(&all)?;
        Ok(d)
    }

    /// Adds the dashboard unless one of that name exists (the demo's setup,
    /// which must not add a copy at every start).
    pub fn ensure_named(&self, d: Dashboard, views: &[String]) -> Result<Dashboard, ApiError> {
        if let Some(existing) = self.list().into_iter().find(|x| x.name == d.name) {
            return Ok(existing);
        }
        self.create(d, views)
    }

    pub fn replace(
        &self,
        id: &str,
        mut d: Dashboard,
        views: &[String],
    ) -> Result<Dashboard, ApiError> {
        d.validate(views).map_err(ApiError::bad_request)?;
        d.id = id.to_string();
        let mut all = self.dashboards.lock();
        let slot = all
            .iter_mut()
            .find(|x| x.id == id)
            .ok_or_else(|| ApiError::not_found(format!("dashboard {id} does not exist")))?;
        *slot = d.clone();
        self.save(&all)?;
        Ok(d)
    }

    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        let mut all = self.dashboards.lock();
        let before = all.len();
        all.retain(|d| d.id != id);
        if all.len() == before {
            return Err(ApiError::not_found(format!(
                "dashboard {id} does not exist"
            )));
        }
        self.save(&all)?;
        Ok(())
    }

    /// Temp file, fsync, rename, directory fsync: a crash leaves the old
    /// file or the new one, never half of one. Called with the lock held,
    /// so writes happen in the order of the changes.
    fn save(&self, dashboards: &[Dashboard]) -> Result<(), ApiError> {
        let write = || -> std::io::Result<()> {
            let dir = &self.dir;
            std::fs::create_dir_all(dir)?;
            let tmp = self.path.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            let file = DashboardFile {
                dashboards: dashboards.to_vec(),
            };
            f.write_all(&serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| ApiError::internal(format!("cannot save {}: {e}", self.path.display())))
    }
}

#[derive(Serialize, Deserialize)]
struct DashboardFile {
    dashboards: Vec<Dashboard>,
}

const DASHBOARD_SHAPE: &str = r#"{"name": "...", "charts": [{"view": "...", "type": "line|bar|table|number", "x": "...", "y": ["..."]}]}"#;

pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "dashboards": state.dashboards.list() }))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Dashboard>, ApiError> {
    state
        .dashboards
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("dashboard {id} does not exist")))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Dashboard>), ApiError> {
    let d: Dashboard = json_body(body, DASHBOARD_SHAPE)?;
    let views = state.engine.view_names();
    let d = state.dashboards.create(d, &views)?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub(crate) async fn replace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Dashboard>, ApiError> {
    let d: Dashboard = json_body(body, DASHBOARD_SHAPE)?;
    let views = state.engine.view_names();
    Ok(Json(state.dashboards.replace(&id, d, &views)?))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.dashboards.delete(&id)?;
    Ok(Json(json!({ "deleted": id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(view: &str, kind: &str) -> Chart {
        Chart {
            id: String::new(),
            title: String::new(),
            view: view.into(),
            kind: kind.into(),
            x: Some("window_end".into()),
            y: vec!["revenue".into()],
            series: None,
            limit: None,
        }
    }

    #[test]
    fn dashboards_survive_a_reopen_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let views = vec!["revenue".to_string()];
        let store = DashboardStore::open(dir.path()).unwrap();
        let d = store
            .create(
                Dashboard {
                    id: "ignored".into(),
                    name: " Shop ".into(),
                    charts: vec![chart("revenue", "line")],
                },
                &views,
            )
            .unwrap();
        assert_ne!(d.id, "ignored", "the server gives ids");
        assert_eq!(d.name, "Shop");
        assert_eq!(d.charts[0].title, "revenue");

        let bad_view = Dashboard {
            id: String::new(),
            name: "x".into(),
            charts: vec![chart("nope", "line")],
        };
        let e = store.create(bad_view, &views).unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert!(e.1.contains("no materialized view"), "{}", e.1);
        let bad_type = Dashboard {
            id: String::new(),
            name: "x".into(),
            charts: vec![chart("revenue", "pie")],
        };
        assert!(store
            .create(bad_type, &views)
            .unwrap_err()
            .1
            .contains("pie"));

        let mut renamed = d.clone();
        renamed.name = "Shop live".into();
        store.replace(&d.id, renamed, &views).unwrap();
        let again = DashboardStore::open(dir.path()).unwrap();
        assert_eq!(again.list().len(), 1);
        assert_eq!(again.get(&d.id).unwrap().name, "Shop live");
        again.delete(&d.id).unwrap();
        assert_eq!(again.delete(&d.id).unwrap_err().0, StatusCode::NOT_FOUND);
        assert!(DashboardStore::open(dir.path()).unwrap().list().is_empty());
    }
}
