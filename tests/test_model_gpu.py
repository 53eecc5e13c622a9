"""GPU paths of the model stage (bf16 autocast, torch.compile, CUDA checkpoints). Marked
``gpu``; they skip without CUDA and run on a GPU machine: ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from psgfm.model.checkpoint import build_payload, load_encoder, save_checkpoint
from psgfm.model.encoder import SleepEncoder
from psgfm.model.pretrain import ContrastiveModel, autocast_for, compile_in_place

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _batch(device, b=4):
    g = torch.Generator().manual_seed(0)
    chans = {"BAS": 4, "RESP": 3, "EKG": 1, "EMG": 2}
    sig = {m: (torch.randn(b, c, 60, 640, generator=g) * 20).to(device) for m, c in chans.items()}
    mask = {m: torch.ones(b, c, dtype=torch.bool, device=device) for m, c in chans.items()}
    mask["BAS"][0, 2:] = False
    return {"signals": sig, "channel_mask": mask, "patch_mask": None}


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_bf16_forward_matches_fp32(size):
    torch.manual_seed(0)
    model = SleepEncoder(size).cuda().eval()
    b = _batch("cuda")
    with torch.no_grad():
        ref = model(b["signals"], b["channel_mask"]).pooled
        with autocast_for(torch.device("cuda"), "bf16"):
            low = model(b["signals"], b["channel_mask"]).pooled.float()
    cos = torch.nn.functional.cosine_similarity(ref.flatten(0, 1), low.flatten(0, 1), dim=-1)
    assert cos.min() > 0.98


def test_cuda_equals_cpu_in_fp32():
    torch.manual_seed(0)
    model = SleepEncoder("tiny").eval()
    b = _batch("cpu")
    with torch.no_grad():
        cpu = model(b["signals"], b["channel_mask"]).pooled
        gb = _batch("cuda")
        gpu = model.cuda()(gb["signals"], gb["channel_mask"]).pooled.cpu()
    torch.testing.assert_close(cpu, gpu, atol=1e-3, rtol=1e-3)


def test_compiled_bf16_training_step_and_cuda_checkpoint_loads_on_cpu(tmp_path):
    torch.manual_seed(0)
    model = ContrastiveModel(SleepEncoder("tiny"), 0.0, "leave_one_out").cuda()
    compile_in_place(model.encoder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = _batch("cuda", b=8)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        with autocast_for(torch.device("cuda"), "auto"):
            res = model(b)
        res.loss.backward()
        opt.step()
        losses.append(float(res.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # state_dict names survive compile; a CUDA-saved checkpoint loads on a CPU host
    payload = build_payload(model.encoder, temperature=model.temperature)
    payload["state_dict"] = {k: v.cuda() for k, v in payload["state_dict"].items()}
    save_checkpoint(tmp_path / "gpu.pt", payload)
    loaded, _ = load_encoder(tmp_path / "gpu.pt")
    assert next(loaded.parameters()).device.type == "cpu"


def test_single_channel_rule_equals_the_release_on_cuda():
    """The per-chunk single-channel rule (tests/test_model_release.py) on the GPU, fp32."""
    from test_model_release import _signals, randomised

    from psgfm.model.release import release_modality_forward

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = randomised("base", seed=4).cuda()
    x, mask = _signals([1, 3, 2, 1], 60, seed=1)
    x, mask = x.cuda(), mask.cuda()
    with torch.no_grad():
        out = model({"EKG": x}, {"EKG": mask}).pooled[:, 2]
        rel = release_modality_forward(model, x.reshape(4, 3, -1), (~mask).float())[0]
        one = release_modality_forward(
            model, x[:1, :1].reshape(1, 1, -1), torch.zeros(1, 1, device="cuda")
        )[0]
    multi = mask.sum(1) > 1
    torch.testing.assert_close(out[multi], rel[multi], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out[0], one[0], atol=1e-4, rtol=1e-3)
