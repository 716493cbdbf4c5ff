"""The reference runner: the torch model in eager mode (full forward for logits, static KV cache
for generation)."""

from __future__ import annotations

import numpy as np
import torch


class TorchRunner:
    name = "torch"

    def __init__(self, model, max_context: int | None = None):
        self.model = model.eval()
        self.max_context = max_context or model.spec.max_seq_len

    @torch.no_grad()
    def logits(self, tokens: list[int]) -> np.ndarray:
        cache_len = self.model.max_cache_len
        if cache_len:
            self.model.drop_cache()
        out = self.model(torch.tensor([tokens], dtype=torch.long))[0].float().numpy()
        return out

    @torch.no_grad()
    def generate(self, tokens: list[int], max_new_tokens: int, stop: set[int] | None = None) -> list[int]:
        total = len(tokens) + max_new_tokens
        self.model.setup_cache(1, total)
        try:
            pos = torch.arange(len(tokens))
            logits = self.model(torch.tensor([tokens]), pos)[0, -1]
            out: list[int] = []
            for i in range(max_new_tokens):
                nxt = int(logits.argmax())
                out.append(nxt)
                if stop and nxt in stop:
                    break
                logits = self.model(torch.tensor([[nxt]]), torch.tensor([len(tokens) + i]))[0, -1]
            return out
        finally:
            self.model.drop_cache()
