"""The transport vocabulary: artifact kinds spelled once, SAE and Adam rules as validated rows."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from gaugeport.core.errors import GaugeError
from gaugeport.transport import transport_vector
from gaugeport.transport.audit import CLAIM_KINDS
from gaugeport.transport.rules import ArtifactKind, moment_rules, tensor_rules


def test_sae_rows_name_the_stored_residual_axes_in_the_architecture_vocabulary() -> None:
    sae = tensor_rules("sae")
    assert (sae["W_enc"].role, sae["W_enc"].axes, sae["W_enc"].mode) == ("read", (0,), "signed")
    assert (sae["W_dec"].role, sae["W_dec"].axes) == ("write", (1,))
    assert sae["W_skip"].axes == (0, 1) and sae["b_enc"].axes == () and sae["b_enc"].mode == "none"
    assert set(tensor_rules("sae_whitening")) == {"mean", "matrix", "inverse_matrix"}


@pytest.mark.parametrize(("moment", "param_mode", "mode"), [
    ("exp_avg", "signed", "signed"), ("exp_avg", "abs", "abs"),  # like its parameter (a gain's is permuted only)
    ("exp_avg_sq", "signed", "abs"), ("exp_avg_sq", "none", "none"),  # squares carry no sign
    ("step", "signed", None),  # a count: kept as it is
])
def test_adam_moments_move_relative_to_their_parameter(moment: str, param_mode: str, mode: str | None) -> None:
    assert moment_rules()[moment].mode(param_mode) == mode


def test_artifact_kinds_are_spelled_once() -> None:
    from gaugeport.cli.transport import transport

    assert set(CLAIM_KINDS.values()) <= set(ArtifactKind)  # audit claims re-expressed by these transports
    kind = typing.get_type_hints(transport, include_extras=True)["kind"]  # Annotated[ArtifactKind | None, ...]
    assert ArtifactKind in typing.get_args(typing.get_args(kind)[0])  # the CLI's --kind choices are the enum


def test_transport_functions_take_a_gauge_not_a_path(tmp_path) -> None:
    with pytest.raises(GaugeError, match="load_gauge"):
        transport_vector(np.ones(4), tmp_path / "g.safetensors")
