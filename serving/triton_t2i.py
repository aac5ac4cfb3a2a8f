"""Triton Python-backend model `t2i`: text -> PNG images + image tokens, over HTTP or gRPC (one response).

Copied to REPO/t2i/1/model.py by `janus-edge triton-repo`. It holds no model: each request is forwarded (BLS) to
the decoupled `chat` model, whose one scheduler batches it with everything else in flight. Triton hands an
instance one request at a time (measured with 2.51, async execute or not), so the repository gives this model
several instances (one small stub process each, no model in it).
"""
from __future__ import annotations

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

NAMES = ("PROMPT", "N", "CFG", "TEMPERATURE", "TOP_K", "TOP_P", "SEED")


class TritonPythonModel:
    def initialize(self, args):
        self.target = "chat"

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request):
        inputs = [pb_utils.Tensor("KIND", np.array([b"t2i"], dtype=object))]
        for name in NAMES:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                inputs.append(pb_utils.Tensor(name, t.as_numpy()))
        bls = pb_utils.InferenceRequest(model_name=self.target, inputs=inputs,
                                        requested_output_names=["IMAGES", "TOKENS"])
        result = None
        try:
            for resp in await bls.async_exec(decoupled=True):
                if resp.has_error():
                    return pb_utils.InferenceResponse(error=pb_utils.TritonError(resp.error().message()))
                images = pb_utils.get_output_tensor_by_name(resp, "IMAGES")
                if images is not None:
                    tokens = pb_utils.get_output_tensor_by_name(resp, "TOKENS")
                    result = [pb_utils.Tensor("IMAGES", images.as_numpy()),
                              pb_utils.Tensor("TOKENS", tokens.as_numpy())]
        except Exception as e:  # noqa: BLE001
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"t2i: {e}"))
        if result is None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError("t2i: no result from the engine"))
        return pb_utils.InferenceResponse(result)
