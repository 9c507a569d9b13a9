//! Chat prompts: the messages rendered with the model's chat template, then tokenized.
//!
//! The template engine lives in `model::chat` (another branch); until it is merged this
//! route answers 501.

use crate::api::request::ChatMessage;
use crate::api::ApiError;

use super::Loaded;

/// The prompt token ids for `messages`, ending with the assistant's generation prompt.
pub(crate) fn prompt_tokens(m: &Loaded, messages: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
    let _ = (m, messages);
    Err(ApiError {
        status: 501,
        ..ApiError::internal("chat templates are not available in this build yet")
    })
}
