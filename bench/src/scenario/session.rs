//! session-get: a touching Get over a set of live sessions.

use cachelock::pb::session::{CreateRequest, GetRequest, session_service_client::SessionServiceClient};

use super::Conn;

/// How many sessions session-get spreads over.
const SESSIONS: usize = 1000;

/// A touching Get of session `id`.
pub(crate) async fn get(channel: Conn, id: String) -> Result<(), String> {
    SessionServiceClient::new(channel)
        .get(GetRequest { id, touch: true })
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}

/// Creates the sessions, one user each; their ids.
pub(crate) async fn create(channel: Conn) -> Result<Vec<String>, String> {
    let mut sessions = SessionServiceClient::new(channel);
    let mut ids = Vec::with_capacity(SESSIONS);
    for user in 0..SESSIONS {
        let session = sessions
            .create(CreateRequest {
                user_id: format!("bench-user-{user}"),
                ..CreateRequest::default()
            })
            .await
            .map_err(|status| status.to_string())?
            .into_inner()
            .session
            .ok_or("no session")?;
        ids.push(session.id);
    }
    Ok(ids)
}
