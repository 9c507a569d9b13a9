//! Chat prompts: the messages rendered with the model's chat template (`model::chat`), with the
//! assistant's generation prompt appended, then tokenized.

use crate::api::request::ChatMessage;
use crate::api::ApiError;
use crate::model::chat::{ChatError, ChatMessage as TemplateMessage};

use crate::engine::LoadedModel as Loaded;

/// The prompt token ids for `messages`.
pub(crate) fn prompt_tokens(m: &Loaded, messages: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
    let template = m.chat.as_ref().map_err(|e| {
        ApiError::internal(format!("the model's chat template cannot be used: {e}"))
    })?;
    let msgs: Vec<TemplateMessage> = messages
        .iter()
        .map(|x| TemplateMessage::new(x.role.clone(), x.content.clone()))
        .collect();
    template
        .render_tokens(&m.tokenizer, &msgs, true)
        .map_err(|e| match e {
            ChatError::TooManyMessages { .. }
            | ChatError::InvalidMessage { .. }
            | ChatError::Raised(_)
            | ChatError::OutputTooLarge { .. } => ApiError::invalid("messages", e.to_string()),
            _ => ApiError::internal(e.to_string()),
        })
}
