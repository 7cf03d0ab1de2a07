"""The estimator setting over gRPC: similarity needs embeddings, and is served when tasks have them."""

from __future__ import annotations

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb

SIMILARITY_REQUESTS = [
    {"preset": "similarity"},
    {"preset": "bots+similarity"},
    {"config": pb.PoolConfig(estimator=pb.ESTIMATOR_KIND_SIMILARITY)},
    {"config": pb.PoolConfig(estimator=pb.ESTIMATOR_KIND_BOTH)},
]


@pytest.mark.parametrize("request_kwargs", SIMILARITY_REQUESTS)
def test_a_similarity_pool_with_tasks_without_embeddings_is_refused_and_not_created(
    stub, request_kwargs
):
    tasks = [pb.Task(key="a"), pb.Task(key="b")]
    with pytest.raises(grpc.RpcError) as err:
        stub.CreatePool(pb.CreatePoolRequest(name="p", tasks=tasks, **request_kwargs))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs task embeddings" in err.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetPool(pb.GetPoolRequest(pool="p"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("request_kwargs", SIMILARITY_REQUESTS)
def test_a_similarity_pool_with_embeddings_is_served(stub, request_kwargs):
    tasks = [pb.Task(key=f"t{i}", embedding=[float(i), float(i % 3)]) for i in range(6)]
    reply = stub.CreatePool(pb.CreatePoolRequest(name="p", tasks=tasks, **request_kwargs))
    assert reply.created and reply.tasks_added == 6
    assert reply.pool.config.estimator in (pb.ESTIMATOR_KIND_SIMILARITY, pb.ESTIMATOR_KIND_BOTH)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=2))
    outcomes = [pb.Outcome(task_key=t.key, successes=3, trials=4) for t in sel.tasks]
    stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p", request_id="r1", selection_id=sel.selection_id, outcomes=outcomes, final=True
        )
    )
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.steps_applied == 1


def test_an_empty_similarity_pool_is_created_and_filled_later(stub):
    reply = stub.CreatePool(pb.CreatePoolRequest(name="p", preset="similarity"))
    assert reply.created
    tasks = [pb.Task(key=f"t{i}", embedding=[float(i)]) for i in range(3)]
    added = stub.AddTasks(pb.AddTasksRequest(pool="p", tasks=tasks))
    assert added.tasks_added == 3


def test_the_interpolation_estimator_is_served(stub):
    config = pb.PoolConfig(estimator=pb.ESTIMATOR_KIND_INTERPOLATION)
    reply = stub.CreatePool(pb.CreatePoolRequest(name="p", config=config))
    assert reply.created
    assert reply.pool.config.estimator == pb.ESTIMATOR_KIND_INTERPOLATION
