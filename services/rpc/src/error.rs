//! One mapping from error codes to gRPC status codes.
//!
//! Every service error says which [`ErrorCode`] it is and what a client may be told.
//! Internal causes are logged with an id, never sent: a client sees "internal error
//! (ref …)", so no stack of causes, SQL or patient data leaves the process.

use hrx_ports::PortError;

/// What kind of failure, for the client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorCode {
    /// The request is malformed: a bad id, page size, cursor, purpose…
    InvalidArgument,
    /// No client certificate, or one that names no principal.
    Unauthenticated,
    /// The caller may not do this (another facility's events, no consent…).
    PermissionDenied,
    NotFound,
    /// A concurrent writer won; retrying with fresh state may succeed.
    Aborted,
    /// A dependency (log, store) is unreachable; retry later.
    Unavailable,
    /// A per-caller limit is reached (open follow streams…); retry once below it.
    ResourceExhausted,
    /// A bug or corrupt data.
    Internal,
}

impl ErrorCode {
    /// The table.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::Aborted => tonic::Code::Aborted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }
}

/// A service error: its code, and the message a client may see.
pub trait ServiceError: std::error::Error {
    fn code(&self) -> ErrorCode;

    /// Safe for the client: ids and counts only. Defaults to the error's Display for
    /// client errors and to a reference number for internal ones.
    fn client_message(&self) -> String {
        self.to_string()
    }
}

impl ServiceError for PortError {
    fn code(&self) -> ErrorCode {
        match self {
            PortError::Unavailable(_) => ErrorCode::Unavailable,
            PortError::Conflict(_) => ErrorCode::Aborted,
            PortError::Corrupt(_) => ErrorCode::Internal,
            PortError::TooMany { .. } => ErrorCode::ResourceExhausted,
        }
    }
}

/// The status for a service error. Internal and unavailable errors are logged here,
/// with a reference the client gets instead of the cause.
pub fn status<E: ServiceError + ?Sized>(e: &E) -> tonic::Status {
    let code = e.code();
    let message = match code {
        ErrorCode::Internal | ErrorCode::Unavailable => {
            let reference = reference();
            tracing::error!(%reference, error = %e, "request failed");
            let what = if code == ErrorCode::Internal {
                "internal error"
            } else {
                "service unavailable, retry later"
            };
            format!("{what} (ref {reference})")
        }
        _ => e.client_message(),
    };
    tonic::Status::new(code.grpc(), message)
}

/// A short reference to find a logged error: time-derived, unique enough per process.
fn reference() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{t:x}-{n}")
}

/// Errors of request parsing, shared by the services.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller could not be identified (a patient request that does not verify).
    #[error("{0}")]
    Unauthenticated(String),
}

impl RequestError {
    pub fn invalid(field: &'static str, problem: impl std::fmt::Display) -> Self {
        RequestError::Invalid {
            field,
            problem: problem.to_string(),
        }
    }
}

impl ServiceError for RequestError {
    fn code(&self) -> ErrorCode {
        match self {
            RequestError::Invalid { .. } => ErrorCode::InvalidArgument,
            RequestError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            RequestError::NotFound(_) => ErrorCode::NotFound,
            RequestError::Unauthenticated(_) => ErrorCode::Unauthenticated,
        }
    }
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_sent() {
        let s = status(&PortError::Corrupt(
            "table records: bad kind code 99".into(),
        ));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("records"));
        let s = status(&PortError::Unavailable("disk".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let s = status(&RequestError::invalid("page_size", "at most 500"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "page_size: at most 500");
    }
}
