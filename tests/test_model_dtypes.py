"""The model runs in low precision: cast to bfloat16, and under autocast (rank-1 step-size
projections included), with logits close to float32."""

import pytest
import torch

from vmamba_ref import vmamba_mini
from vmamba_ref.testing.tolerances import LOW_PRECISION_LOGITS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vmamba_mini().eval()


def test_bfloat16_model(model):
    x = torch.randn(2, 3, 32, 32)
    low = vmamba_mini().eval()
    low.load_state_dict(model.state_dict())
    logits = low.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(x), rtol=LOW_PRECISION_LOGITS.rtol, atol=LOW_PRECISION_LOGITS.atol)


def test_autocast(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    torch.testing.assert_close(logits.float(), model(x), rtol=LOW_PRECISION_LOGITS.rtol, atol=LOW_PRECISION_LOGITS.atol)
