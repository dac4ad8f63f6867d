//! etcd's KV service.

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse,
    PbTxnRequest, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::Context;
use crate::mvcc::kvstore::{WriteRequest, WriteResponse};
use crate::mvcc::request_check;

pub(crate) struct KvService {
    ctx: Context,
}

impl KvService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

fn unexpected() -> Status {
    Status::internal("store returned a response of the wrong type")
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        request_check::check_range(&req)?;
        self.ctx.allow_range(&caller, &req)?;
        self.ctx.metrics.ranges.inc();
        let store = self.ctx.store.clone();
        let mut resp = tokio::task::spawn_blocking(move || store.range(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type RangeStreamStream =
        futures::stream::Iter<std::vec::IntoIter<Result<PbRangeStreamResponse, Status>>>;

    /// etcd 3.6's chunked range: chunks of at most 1,000 keys, header and count on the last.
    async fn range_stream(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        const CHUNK: usize = 1000;
        let mut whole = self.range(request).await?.into_inner();
        let mut chunks: Vec<Result<PbRangeStreamResponse, Status>> = Vec::new();
        while whole.kvs.len() > CHUNK {
            let rest = whole.kvs.split_off(CHUNK);
            let kvs = std::mem::replace(&mut whole.kvs, rest);
            chunks.push(Ok(PbRangeStreamResponse {
                range_response: Some(PbRangeResponse {
                    kvs,
                    ..Default::default()
                }),
            }));
        }
        chunks.push(Ok(PbRangeStreamResponse {
            range_response: Some(whole),
        }));
        Ok(Response::new(futures::stream::iter(chunks)))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        request_check::check_put(&req)?;
        self.ctx.allow_put(&caller, &req)?;
        self.ctx.metrics.puts.inc();
        match self.ctx.store.write(WriteRequest::Put(req)).await? {
            WriteResponse::Put(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        request_check::check_delete(&req)?;
        self.ctx.allow_delete(&caller, &req)?;
        self.ctx.metrics.deletes.inc();
        match self.ctx.store.write(WriteRequest::Delete(req)).await? {
            WriteResponse::Delete(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        request_check::check_txn(&req, self.ctx.config.max_txn_ops)?;
        self.ctx.allow_txn(&caller, &req)?;
        self.ctx.metrics.txns.inc();
        match self.ctx.store.write(WriteRequest::Txn(req)).await? {
            WriteResponse::Txn(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        let req = request.into_inner();
        // Compaction is always physical here: it finishes before the response.
        self.ctx
            .store
            .write(WriteRequest::Compact(req.revision))
            .await
            .map_err(Status::from)?;
        Ok(Response::new(PbCompactionResponse {
            header: self.ctx.header(self.ctx.store.current_revision()),
        }))
    }
}
