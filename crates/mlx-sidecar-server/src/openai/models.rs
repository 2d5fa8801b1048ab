//! `GET /v1/models` and `GET /v1/models/{id}`: the one served model.

use axum::{
    Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};

use super::{
    error::ApiError,
    types::{ModelCard, ModelList},
};
use crate::state::AppState;

fn card(state: &AppState, id: String) -> ModelCard {
    ModelCard {
        id,
        object: "model",
        created: state.started_unix(),
        owned_by: "mlx-sidecar",
    }
}

/// `GET /v1/models`.
pub(crate) async fn list(State(state): State<AppState>) -> Response {
    match state.served_model() {
        Ok(id) => Json(ModelList {
            object: "list",
            data: vec![card(&state, id)],
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models/{id}`.
pub(crate) async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.served_model() {
        Ok(served) if served == id => Json(card(&state, served)).into_response(),
        Ok(served) => ApiError::model_not_found(&id, &served).into_response(),
        Err(e) => e.into_response(),
    }
}
