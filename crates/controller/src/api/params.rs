//! The request parameters the routes share, each validated before anything reads SQL or the
//! store, with the same rules the OpenAPI document declares.

use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiError;

/// `{env}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvPath {
    /// The environment: letters, digits, `-` and `_`, at most 64.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub env: String,
}

/// `{env}` and `{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConfigPath {
    /// The environment: letters, digits, `-` and `_`, at most 64.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub env: String,
    /// The configuration's id (a UUID, hyphenated).
    #[param(format = Uuid)]
    pub id: String,
}

/// `?skip_preflight=` of a create or a replace.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Skip the pre-flight check, for this reason (recorded in the version's history).
    #[param(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,512}$")]
    pub skip_preflight: Option<String>,
}

/// `?version=` (and `?skip_preflight=`) of a rollback.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RollbackQuery {
    /// The earlier version whose document becomes current again.
    #[param(minimum = 1)]
    pub version: i64,
    /// Skip the pre-flight check, for this reason (recorded in the version's history).
    #[param(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,512}$")]
    pub skip_preflight: Option<String>,
}

/// A reason to skip the pre-flight check: 1 to 512 characters, no control characters.
pub fn valid_skip_reason(reason: Option<&str>) -> Result<Option<&str>, ApiError> {
    match reason {
        Some(r) if r.is_empty() || r.chars().count() > 512 || r.chars().any(char::is_control) => {
            Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "skip_preflight",
                "the reason to skip the pre-flight check is 1 to 512 characters without control characters",
            ))
        }
        other => Ok(other),
    }
}

/// The `If-Match` pattern the document declares: the ETag as sent (`"5"`) or the bare
/// version (`5`).
pub const IF_MATCH_PATTERN: &str = r#"^("[0-9]{1,18}"|[0-9]{1,18})$"#;

pub fn valid_env(env: &str) -> Result<(), ApiError> {
    crate::keys::validate_env(env)
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "env", e.reason))
}

impl ConfigPath {
    /// Checks both parts before they reach SQL (a NUL byte or a stray string would
    /// otherwise be a database error, not a refusal).
    pub fn validate(&self) -> Result<(), ApiError> {
        valid_env(&self.env)?;
        let hyphenated = self.id.len() == 36 && uuid::Uuid::try_parse(&self.id).is_ok();
        if !hyphenated {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "id",
                format!(
                    "{:?} is not a configuration id (a hyphenated UUID)",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

impl RollbackQuery {
    pub fn validate(&self) -> Result<(), ApiError> {
        valid_skip_reason(self.skip_preflight.as_deref())?;
        if self.version < 1 {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "version",
                "versions start at 1",
            ));
        }
        Ok(())
    }
}

/// The version `If-Match` names: required (428 without it), exactly [`IF_MATCH_PATTERN`].
pub fn if_match(headers: &HeaderMap) -> Result<i64, ApiError> {
    let raw = headers.get(header::IF_MATCH).ok_or_else(|| {
        ApiError::field(
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match",
            "If-Match with the version you changed is required",
        )
    })?;
    let parsed = raw.to_str().ok().and_then(|v| {
        let digits = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        let ok = (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| digits.parse::<i64>().ok()).flatten()
    });
    parsed.ok_or_else(|| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "If-Match",
            "If-Match must be the configuration's ETag (\"5\") or its version (5)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MATCH,
            value.parse().expect("a valid header value"),
        );
        h
    }

    #[test]
    fn if_match_takes_exactly_the_declared_forms() {
        assert_eq!(if_match(&with("\"5\"")).ok(), Some(5));
        assert_eq!(if_match(&with("12")).ok(), Some(12));
        for bad in [
            "\"5",
            "5\"",
            "",
            "\"\"",
            "W/\"5\"",
            "*",
            "-1",
            "1234567890123456789",
            " 5",
        ] {
            assert_eq!(
                if_match(&with(bad)).map_err(|e| e.status()).err(),
                Some(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
        assert_eq!(
            if_match(&HeaderMap::new()).map_err(|e| e.status()).err(),
            Some(StatusCode::PRECONDITION_REQUIRED)
        );
    }

    #[test]
    fn ids_are_hyphenated_uuids() {
        let path = |id: &str| ConfigPath {
            env: "staging".into(),
            id: id.into(),
        };
        assert!(path("67e55044-10b1-426f-9247-bb680e5fe0c8")
            .validate()
            .is_ok());
        for bad in [
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "x",
            "67e55044-10b1-426f-9247-bb680e5fe0c\0",
        ] {
            assert!(path(bad).validate().is_err(), "{bad:?}");
        }
    }
}
