//! Errors as `application/problem+json` with the stable codes of docs/API.md.

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::admission::Refusal;
use crate::auth::TokenError;
use crate::store::StoreError;

/// An error answer. Handlers return it; it never carries secrets.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// The same answer for "missing" and "another tenant's": never reveal
    /// that an id exists elsewhere.
    pub fn not_found(what: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn quota(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "quota_exceeded", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the request was not applied",
        )
    }
}

pub fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl ApiError {
    /// The problem body (RFC 9457) every error answers with.
    fn problem(&self) -> serde_json::Value {
        json!({
            "type": format!("urn:murmur:problem:{}", self.code),
            "title": title(self.status),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        })
    }

    fn with_body(self, body: serde_json::Value) -> Response {
        let mut res =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        res.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("application/problem+json"),
        );
        res
    }

    /// The problem body plus OpenAI's `error` object, for the
    /// OpenAI-compatible endpoints: OpenAI's SDKs read the message from
    /// `error.message` and show "(no body)" without it.
    pub fn into_openai_response(self) -> Response {
        let mut body = self.problem();
        body["error"] = json!({
            "message": self.detail,
            "type": self.code,
            "param": null,
            "code": self.code,
        });
        self.with_body(body)
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = self.problem();
        self.with_body(body)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict(msg) => ApiError::conflict(msg),
            other => ApiError::internal(other),
        }
    }
}

/// Job admission's refusals (docs/API.md, "Errors").
impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> ApiError {
        let detail = e.to_string();
        match e {
            Refusal::NotFound(what) => ApiError::not_found(what),
            Refusal::Params(_) => ApiError::invalid(detail),
            Refusal::ModelNotInTier { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "model_not_in_tier", detail)
            }
            Refusal::FeatureNotInTier { .. } | Refusal::TranslationTooLong { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "feature_not_in_tier", detail)
            }
            Refusal::AudioTooLong { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "audio_too_long", detail)
            }
            Refusal::BeamTooWide { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "beam_size_not_in_tier", detail)
            }
            Refusal::BatchTooLarge { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "batch_size_not_in_tier", detail)
            }
            Refusal::ModelNotInstalled(_) | Refusal::FeatureNotInstalled { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
            }
            Refusal::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", detail)
            }
            Refusal::TranslationQuota { .. } => ApiError::quota(detail),
            Refusal::Token(e) => e.into(),
            Refusal::Store(e) => e.into(),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::Invalid
            | TokenError::Expired
            | TokenError::Attenuated
            | TokenError::TooLarge => ApiError::unauthorized(e.to_string()),
            TokenError::Denied => ApiError::forbidden(
                "your role or this API key's scope does not allow this operation",
            ),
            TokenError::Busy => ApiError::unavailable(e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

/// Turns warp's own rejections (no route, wrong method, bad headers) into
/// problem answers.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let err = if rejection.is_not_found() {
        ApiError::not_found("route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "method not allowed on this route",
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::invalid(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::invalid(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::invalid(format!("query string: {e}"))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "invalid_request",
            "Content-Length required",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
            "unsupported content type",
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::invalid("the request could not be understood")
    };
    Ok(err.into_response())
}
