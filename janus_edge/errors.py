"""Errors the user caused (bad input: exit 2, one line) versus internal failures (exit 1)."""
from __future__ import annotations

from janus_edge.contract import ContractError


class JanusEdgeError(Exception):
    """Base of every error caused by the user's input; the CLI prints `error: <msg>` and exits 2."""


class CheckpointError(JanusEdgeError):
    """A checkpoint dir that is missing, malformed or incomplete."""


class BundleError(JanusEdgeError):
    """A bundle that is missing, altered or of another format version."""


class InputError(JanusEdgeError):
    """A request argument out of range (prompt too long, cfg < 1, a non-image file, ...)."""


class BackendUnavailable(JanusEdgeError):
    """The chosen backend cannot run here (no TensorRT, no GPU, ...); the message says how to get it."""


class NumericalError(JanusEdgeError):
    """NaN or inf detected in model outputs."""


USER_ERRORS = (JanusEdgeError, ContractError)
