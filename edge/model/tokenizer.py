"""One tokenizer interface over Hugging Face ``tokenizer.json`` and GGUF tokenizer metadata.

GGUF files with a BPE vocabulary (``tokenizer.ggml.model == "gpt2"``) are rebuilt as a
``tokenizers`` BPE with the pre-tokenizer llama.cpp uses for their ``tokenizer.ggml.pre`` type;
other GGUF vocabularies (SentencePiece "llama") are served by llama.cpp's own tokenizer loaded
vocab-only. Chat templates are rendered with jinja2, as transformers does.

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.encode("Hello"); tok.decode(ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelLoadError

# GPT-2's byte-level split pattern, and Llama-3's (llama.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(pre: str):
    """Pre-tokenizer for a GGUF ``tokenizer.ggml.pre`` value, as llama.cpp's llama-vocab.cpp splits."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    table = {
        "default": lambda: byte_level,
        "gpt2": lambda: byte_level,
        # SmolLM: every digit on its own, then GPT-2's split
        "smollm": lambda: pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"), byte_level]
        ),
        "llama-bpe": lambda: pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
    }
    return table.get(pre, lambda: None)()


@dataclass
class Tokenizer:
    """Text <-> token ids, special tokens, and the chat template."""

    backend: Any  # tokenizers.Tokenizer or llama_cpp.Llama (vocab only)
    kind: str  # "tokenizers" | "llama.cpp"
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    special: dict[str, int] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        if self.kind == "tokenizers":
            return self.backend.get_vocab_size(with_added_tokens=True)
        return self.backend.n_vocab()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        add_bos = self.add_bos if add_bos is None else add_bos
        if self.kind == "tokenizers":
            ids = self.backend.encode(text, add_special_tokens=False).ids
        else:
            ids = self.backend.tokenize(text.encode(), add_bos=False, special=True)
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "tokenizers":
            return self.backend.decode(list(ids), skip_special_tokens=False)
        return self.backend.detokenize(list(ids)).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            # No template: plain concatenation, so base models still get a prompt.
            return "\n".join(m["content"] for m in messages) + ("\n" if add_generation_prompt else "")
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg):
            raise ModelLoadError(f"chat template: {msg}")

        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(self.chat_template)
        special = {v: k for k, v in self.special.items()}
        return tmpl.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=special.get(self.bos_id, "") if self.bos_id is not None else "",
            eos_token=special.get(self.eos_id, "") if self.eos_id is not None else "",
        )

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_gguf_fields(cls, meta: dict, path: str | Path) -> Tokenizer:
        """From GGUF tokenizer metadata (``meta``: key -> python value)."""
        model = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if model is None or tokens is None:
            raise ModelLoadError(f"{path}: GGUF file has no tokenizer metadata (tokenizer.ggml.*)")
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        template = meta.get("tokenizer.chat_template")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
        pre = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default")) if model == "gpt2" else None
        if model == "gpt2" and pre is not None:
            from tokenizers import AddedToken, decoders, models
            from tokenizers import Tokenizer as HFTokenizer

            vocab = {t: i for i, t in enumerate(tokens)}
            merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
            tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
            tk.pre_tokenizer = pre
            tk.decoder = decoders.ByteLevel()
            # control (3) and user-defined (4) tokens are matched whole, before BPE
            specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
            tk.add_special_tokens(specials)
            special = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)}
            return cls(tk, "tokenizers", bos, eos, add_bos, template, special)
        # SentencePiece-style or an unknown pre-tokenizer: use llama.cpp's own tokenizer.
        import llama_cpp

        try:
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except Exception as e:  # llama.cpp raises ValueError with no detail
            raise ModelLoadError(f"{path}: llama.cpp could not read the tokenizer ({e})") from e
        special = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)}
        return cls(llm, "llama.cpp", bos, eos, add_bos, template, special)

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """From a Hugging Face checkpoint directory (``tokenizer.json`` + ``tokenizer_config.json``)."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.exists():
            raise ModelLoadError(f"{path}: no tokenizer.json; save the tokenizer with the checkpoint")
        try:
            tk = HFTokenizer.from_file(str(tj))
        except Exception as e:
            raise ModelLoadError(f"{tj}: not a valid tokenizer.json ({e})") from e
        cfg: dict = {}
        if (path / "tokenizer_config.json").exists():
            cfg = json.loads((path / "tokenizer_config.json").read_text())

        def token_id(key):
            t = cfg.get(key)
            if isinstance(t, dict):
                t = t.get("content")
            return tk.token_to_id(t) if t else None

        special = {t.content: i for i, t in tk.get_added_tokens_decoder().items() if t.special}
        template = cfg.get("chat_template")
        if template is None and (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        return cls(
            tk, "tokenizers", token_id("bos_token"), token_id("eos_token"),
            bool(cfg.get("add_bos_token", False)), template, special,
        )
