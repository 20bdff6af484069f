//! ApiVersions: what this broker speaks.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseKind};

use super::{supported_keys, supported_versions};

fn api_list() -> Vec<ApiVersion> {
    supported_keys()
        .into_iter()
        .filter_map(|k| {
            let (min, max) = supported_versions(k)?;
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = min;
            v.max_version = max;
            Some(v)
        })
        .collect()
}

pub fn handle(_request: &ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = api_list();
    r.finalized_features_epoch = -1;
    r
}

/// The v0 answer to an ApiVersions request of a version we do not know.
pub fn unsupported_version_response() -> ResponseKind {
    let mut r = ApiVersionsResponse::default();
    r.error_code = ResponseError::UnsupportedVersion.code();
    r.api_keys = api_list();
    ResponseKind::ApiVersions(r)
}
