//! The one error body: every failure the server answers, whatever caused it (a bad name, an
//! unknown object, malformed JSON, a wrong content type, a failure inside the server), has
//! this shape.

/// What kind of failure, for programs; the HTTP status says the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed or asks for something invalid.
    BadRequest,
    /// 401: no credential, or one that is not valid.
    Unauthorized,
    /// 403: the credential does not allow this.
    Forbidden,
    /// 404: no such object, or no such route.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 409: the name is taken, or the object's state does not allow the request now.
    Conflict,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 415: the request body is not JSON.
    UnsupportedMediaType,
    /// 500: a failure inside the server; its log has the detail.
    Internal,
    /// 507: not enough free disk for what was asked; nothing was written.
    InsufficientStorage,
    /// 503: a part the request needs (an agent, a disk) is not available now.
    Unavailable,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::InsufficientStorage => 507,
        }
    }

    /// The code an HTTP status stands for, for answers from something that is not a
    /// thinclone server (a proxy) and so carry no body of this shape.
    pub fn from_http_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            503 => ErrorCode::Unavailable,
            507 => ErrorCode::InsufficientStorage,
            _ => ErrorCode::Internal,
        }
    }
}

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What happened and, for a caller's mistake, what to do about it.
    #[schema(examples("no clone named alice"))]
    pub error: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> ErrorBody {
        ErrorBody { code, error: error.into() }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for ErrorBody {}
