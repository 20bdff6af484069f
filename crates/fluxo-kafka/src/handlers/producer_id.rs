//! InitProducerId for idempotent producers. Transactional ids are refused
//! until the transaction coordinator exists.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::Broker;

pub fn handle(broker: &Arc<Broker>, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.ongoing_txn_producer_id = ProducerId(-1);
    r.ongoing_txn_producer_epoch = -1;
    if request.transactional_id.is_some() {
        r.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        r.producer_id = ProducerId(-1);
        r.producer_epoch = -1;
        return r;
    }
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        // KIP-360: an idempotent producer bumps its epoch after an error.
        r.producer_id = request.producer_id;
        r.producer_epoch = request.producer_epoch.saturating_add(1);
        return r;
    }
    r.producer_id = ProducerId(broker.allocate_producer_id());
    r.producer_epoch = 0;
    r
}
