//! Reading a request body within a limit, for every handler that takes one.

use axum::body::Body;

use super::error::ApiError;

pub async fn read_value(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::TooLarge(format!(
                    "value exceeds --max-request-bytes {limit}"
                )))
            } else {
                Err(ApiError::BadRequest(format!(
                    "could not read the request body: {e}"
                )))
            }
        }
    }
}
