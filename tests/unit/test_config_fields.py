"""A pool setting is declared in the contract and the engine; everything else follows."""

from __future__ import annotations

import dataclasses

import bots_client
import bots_core
from bots_api.v1 import selector_pb2 as pb
from bots_client import _convert as client_convert
from bots_server import _convert as server_convert


def test_the_contract_the_engine_and_the_client_name_the_same_settings():
    contract = {f.name for f in pb.PoolConfig.DESCRIPTOR.fields}
    engine = {f.name for f in dataclasses.fields(bots_core.PoolConfig)}
    client = {f.name for f in dataclasses.fields(bots_client.PoolConfig)}
    assert contract == engine == client


def test_every_numeric_setting_crosses_the_wire_both_ways():
    doubles = {f.name for f in pb.PoolConfig.DESCRIPTOR.fields if f.type == f.TYPE_DOUBLE}
    assert set(server_convert._FLOAT_FIELDS) == set(client_convert._CONFIG_FLOATS) == doubles
    engine = bots_core.PoolConfig(forgetting=0.25, selection_wait_seconds=77.0)
    wire = server_convert.config_to_pb(engine)
    back = server_convert.config_from_pb("bots", wire)
    assert back == engine
    seen = client_convert.config_from_pb(wire)
    assert {n: getattr(seen, n) for n in doubles} == {n: getattr(engine, n) for n in doubles}
