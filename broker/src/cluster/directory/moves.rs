//! Moving a session between nodes over gRPC: taking it from the node that
//! has it (a client connected here) and giving it to another (drain).
//! Both client directories (etcd's and the home nodes') use these.

use std::time::Duration;

use starling_proto::v1::{AdoptRequest, SessionSnapshot, TakeoverRequest};
use tracing::{debug, info, warn};

use crate::cluster::peer::links::PeerForwarder;
use crate::cluster::peer::{PeerCallError, answer_within};
use crate::session::directory::MovedSession;

const MOVE_TIMEOUT: Duration = Duration::from_secs(6);

/// Takes the session `owner` holds for `client_id` and folds it into what
/// earlier attempts took: a second attempt takes the session a racing node
/// made meanwhile, and the first holds the client's history.
pub async fn take_into(
    forwarder: &PeerForwarder,
    own_node: &str,
    owner: &str,
    client_id: &str,
    moved: Option<MovedSession>,
) -> Option<MovedSession> {
    match take_from(forwarder, own_node, owner, client_id).await {
        Ok(Some(session)) => {
            info!(client_id, from = %owner, "session taken over from another node");
            Some(match moved {
                Some(first) => first.absorb(session),
                None => session,
            })
        }
        Ok(None) => {
            debug!(client_id, from = %owner, "previous owner had no session to hand over");
            moved
        }
        Err(error) => {
            warn!(client_id, from = %owner, %error, "session takeover failed");
            moved
        }
    }
}

async fn take_from(
    forwarder: &PeerForwarder,
    own_node: &str,
    owner: &str,
    client_id: &str,
) -> Result<Option<MovedSession>, PeerCallError> {
    let mut peer = forwarder.client_of(owner)?;
    let request = TakeoverRequest {
        client_id: client_id.to_string(),
        node: own_node.to_string(),
    };
    let call = "TakeoverSession";
    let response = answer_within(call, MOVE_TIMEOUT, peer.takeover_session(request)).await?;
    match response.session {
        None => Ok(None),
        Some(snapshot) => MovedSession::decode(&snapshot.state)
            .map(Some)
            .map_err(|error| PeerCallError::BadAnswer {
                call,
                problem: format!("the session does not decode: {error}"),
            }),
    }
}

/// Why a session could not be given to another node.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error(transparent)]
    Call(#[from] PeerCallError),
    #[error("the session does not encode: {0}")]
    Encode(#[from] postcard::Error),
}

/// Gives a session to `node`, which adopts it (drain). False when `node`
/// already has a newer session of the client.
pub async fn hand_to(
    forwarder: &PeerForwarder,
    node: &str,
    moved: &MovedSession,
) -> Result<bool, HandOverError> {
    let mut peer = forwarder.client_of(node)?;
    let state = moved.encode()?;
    let request = AdoptRequest {
        session: Some(SessionSnapshot {
            client_id: moved.state.client_id.to_string(),
            state,
        }),
    };
    let response = answer_within("AdoptSession", MOVE_TIMEOUT, peer.adopt_session(request)).await?;
    Ok(response.adopted)
}
