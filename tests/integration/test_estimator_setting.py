"""The similarity estimator is refused by the service until pools can carry embeddings."""

from __future__ import annotations

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"preset": "similarity"},
        {"preset": "bots+similarity"},
        {"config": pb.PoolConfig(estimator=pb.ESTIMATOR_KIND_SIMILARITY)},
        {"config": pb.PoolConfig(estimator=pb.ESTIMATOR_KIND_BOTH)},
    ],
)
def test_a_pool_asking_for_similarity_is_refused_and_not_created(stub, request_kwargs):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreatePool(pb.CreatePoolRequest(name="p", **request_kwargs))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs task embeddings" in err.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetPool(pb.GetPoolRequest(pool="p"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_interpolation_estimator_is_served(stub):
    config = pb.PoolConfig(estimator=pb.ESTIMATOR_KIND_INTERPOLATION)
    reply = stub.CreatePool(pb.CreatePoolRequest(name="p", config=config))
    assert reply.created
    assert reply.pool.config.estimator == pb.ESTIMATOR_KIND_INTERPOLATION
