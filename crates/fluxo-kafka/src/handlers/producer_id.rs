//! InitProducerId: a fresh producer id for an idempotent producer, or, with
//! a `transactional.id`, the transaction coordinator's id and bumped epoch
//! (which fences older producers of that id).

use std::sync::Arc;

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};

use super::ResponseFuture;
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
    version: i16,
) -> ResponseFuture {
    let mut r = InitProducerIdResponse::default();
    r.ongoing_txn_producer_id = ProducerId(-1);
    r.ongoing_txn_producer_epoch = -1;
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if let Some(id) = request.transactional_id.as_ref() {
        let broker = broker.clone();
        let id = id.0.to_string();
        return Box::pin(async move {
            let expected = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
                .then_some((request.producer_id.0, request.producer_epoch));
            match broker
                .transactions
                .init_producer_id(&id, request.transaction_timeout_ms, expected)
                .await
            {
                Ok((pid, epoch)) => {
                    r.producer_id = ProducerId(pid);
                    r.producer_epoch = epoch;
                }
                Err(code) => {
                    // PRODUCER_FENCED is known from v4 (KIP-588).
                    r.error_code = if code == fluxo_txn::codes::PRODUCER_FENCED && version < 4 {
                        fluxo_txn::codes::INVALID_PRODUCER_EPOCH
                    } else {
                        code
                    };
                }
            }
            Some(ResponseKind::InitProducerId(r))
        });
    }
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        // KIP-360: an idempotent producer bumps its epoch after an error.
        r.producer_id = request.producer_id;
        r.producer_epoch = request.producer_epoch.saturating_add(1);
    } else {
        r.producer_id = ProducerId(broker.store.allocate_producer_id());
        r.producer_epoch = 0;
    }
    Box::pin(async move { Some(ResponseKind::InitProducerId(r)) })
}
