"""One tokenizer interface over Hugging Face ``tokenizer.json`` and GGUF tokenizer metadata.

GGUF files with a BPE vocabulary (``tokenizer.ggml.model == "gpt2"``) are rebuilt as a
``tokenizers`` BPE with the pre-tokenizer llama.cpp uses for their ``tokenizer.ggml.pre`` type;
other GGUF vocabularies (SentencePiece "llama") are served by llama.cpp's own tokenizer loaded
vocab-only. Chat templates are rendered with jinja2, as transformers does.

The other way, ``gguf_vocab_from_hf`` turns a checkpoint's ``tokenizer.json`` into GGUF tokenizer
metadata for llama.cpp: a byte-level BPE keeps its merges and is named by its split regex
(``BPE_PRE_TYPES``: the pre-tokenizer types llama.cpp implements), a byte-fallback BPE over '▁'
(SentencePiece-style) becomes llama.cpp's "llama" vocabulary with scores that reproduce the merge
order; anything else is refused in one line naming it.

    tok = Tokenizer.from_gguf("model.gguf")
    vocab = gguf_vocab_from_hf("ckpt/Qwen3-0.6B"); vocab.fields()  # tokenizer.* key -> value
    ids = tok.encode("Hello"); tok.decode(ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelLoadError
from edge.model.llama_log import load_llama

# The split patterns of the byte-level BPE tokenizers we convert, as their tokenizer.json files
# spell them. GPT-2's is ByteLevel's built-in regex.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama-3, Llama-3.x, SmolLM3 (the Llama-3 vocabulary): digits in runs of up to three
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2, Qwen2.5, Qwen3 (one vocabulary): every digit on its own
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# OpenAI's o200k split, used by Phi-4-mini's tokenizer.json
GPT4O_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.json pre-tokenizer, as _pre_signature spells it -> llama.cpp's `tokenizer.ggml.pre` for it
# (the names llama.cpp's llama-vocab.cpp gives these splits). A byte-level BPE whose pre-tokenizer is
# not here cannot be written as GGUF: llama.cpp would split its text differently.
BPE_PRE_TYPES: dict[tuple[str, ...], str] = {
    ("bytelevel+gpt2",): "gpt-2",
    ("digits", "bytelevel+gpt2"): "smollm",  # SmolLM, SmolLM2
    (f"split:{LLAMA3_PATTERN}", "bytelevel"): "llama-bpe",
    (f"split:{QWEN2_PATTERN}", "bytelevel"): "qwen2",
    (f"split:{GPT4O_PATTERN}", "bytelevel"): "gpt-4o",
}


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
    }
    for pattern, names in ((LLAMA3_PATTERN, ("llama-bpe", "llama3", "llama-v3")), (QWEN2_PATTERN, ("qwen2",)),
                           (GPT4O_PATTERN, ("gpt-4o",))):
        for name in names:
            table[name] = lambda p=pattern: pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(p), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    table["gpt-2"] = table["gpt2"]
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
        llm = load_llama(path, "read the tokenizer", vocab_only=True)  # its reason from llama.cpp's log
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


# ---- Hugging Face tokenizer.json -> GGUF tokenizer metadata -------------------------------------

# GGUF token types (gguf-py TokenType, llama.cpp llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Chat templates end an assistant turn with one of these; llama.cpp stops generating on the one we
# name as tokenizer.ggml.eot_token_id (instruct checkpoints often keep eos = <|endoftext|>).
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
CONVERTIBLE = ("BPE, byte-level (GPT-2, Llama-3, Qwen2/3, SmolLM)",
               "BPE with byte fallback over '▁' (SentencePiece-style: Llama-2, Gemma, Phi-3)")


@dataclass(frozen=True)
class GGUFVocab:
    """A tokenizer as GGUF's ``tokenizer.*`` keys hold it (what llama.cpp's llama-vocab.cpp reads).

    ``model``: "gpt2" (byte-level BPE: tokens, merges, ``pre`` names llama.cpp's split regex) or
    "llama" (SentencePiece-style: tokens with scores, ``<0xXX>`` byte tokens, no pre-tokenizer).
    """

    model: str
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float]
    special: dict[str, int]  # bos / eos / unk / pad / sep / eot -> token id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | None

    def fields(self) -> dict[str, Any]:
        """GGUF key -> value, in the order llama.cpp's converter writes them."""
        out: dict[str, Any] = {"tokenizer.ggml.model": self.model, "tokenizer.ggml.pre": self.pre,
                               "tokenizer.ggml.tokens": self.tokens}
        if self.model == "llama":
            out["tokenizer.ggml.scores"] = self.scores
        out["tokenizer.ggml.token_type"] = self.types
        if self.model == "gpt2":
            out["tokenizer.ggml.merges"] = self.merges
        for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                          ("sep", "seperator_token_id"), ("pad", "padding_token_id"), ("eot", "eot_token_id")):
            if role in self.special:  # gguf's key name is spelled "seperator"
                out[f"tokenizer.ggml.{key}"] = self.special[role]
        out["tokenizer.ggml.add_bos_token"] = self.add_bos
        out["tokenizer.ggml.add_eos_token"] = self.add_eos
        if self.add_space_prefix is not None:
            out["tokenizer.ggml.add_space_prefix"] = self.add_space_prefix
        if self.chat_template:
            out["tokenizer.chat_template"] = self.chat_template
        return out


def _unconvertible(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: {what}; GGUF (llama.cpp) takes {' or '.join(CONVERTIBLE)}; "
        "the ONNX and .pte exports take this model with its tokenizer as it is")


def _pre_signature(pt: dict | None) -> tuple[str, ...]:
    """A tokenizer.json pre-tokenizer as a tuple of steps, comparable with BPE_PRE_TYPES' keys."""
    if pt is None:
        return ()
    kind = pt.get("type")
    if kind == "Sequence":
        return tuple(s for p in pt.get("pretokenizers", []) for s in _pre_signature(p))
    if kind == "ByteLevel":
        return ("bytelevel+gpt2",) if pt.get("use_regex", True) else ("bytelevel",)
    if kind == "Digits":
        return ("digits",) if pt.get("individual_digits") else ("digit-runs",)
    if kind == "Split":
        pat = pt.get("pattern", {})
        regex = pat.get("Regex", pat.get("String"))
        if pt.get("behavior") != "Isolated" or pt.get("invert"):
            return (f"split({pt.get('behavior')}, invert={pt.get('invert')}):{regex}",)
        return ("digits",) if regex == r"\p{N}" else (f"split:{regex}",)
    return (str(kind),)


def _normalizer_steps(n: dict | None) -> list[dict]:
    if n is None:
        return []
    if n.get("type") == "Sequence":
        return [s for m in n.get("normalizers", []) for s in _normalizer_steps(m)]
    return [n]


def _token_text(t) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or {"content": ...}."""
    if isinstance(t, dict):
        t = t.get("content")
    return t if isinstance(t, str) and t else None


def gguf_vocab_from_hf(path: str | Path) -> GGUFVocab:
    """Convert a checkpoint directory's ``tokenizer.json`` (+ ``tokenizer_config.json``, chat template)
    into GGUF tokenizer metadata. Raises ModelLoadError naming the tokenizer when llama.cpp has no
    equivalent of it (Unigram, WordPiece, a byte-level split it does not implement)."""
    path = Path(path)
    tj = path / "tokenizer.json"
    if not tj.exists():
        raise ModelLoadError(f"{path}: no tokenizer.json to write the GGUF tokenizer from; save the tokenizer "
                             "with the checkpoint (tokenizer.save_pretrained)")
    try:
        data = json.loads(tj.read_text(encoding="utf-8"))
        model = data["model"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{tj}: not a valid tokenizer.json ({e})") from e
    cfg: dict = {}
    if (path / "tokenizer_config.json").exists():
        cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    kind = model.get("type") or ("BPE" if "merges" in model else "unknown")
    if kind != "BPE":
        raise _unconvertible(tj, f"the tokenizer model is {kind}")

    # id -> (text, type): the model's vocabulary, then the added tokens over it
    vocab: dict[str, int] = model.get("vocab", {})
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in vocab.items()}
    for a in data.get("added_tokens", []):
        by_id[int(a["id"])] = (a["content"], CONTROL if a.get("special") else USER_DEFINED)
    n = max(by_id) + 1 if by_id else 0
    tokens = [by_id.get(i, (f"[PAD{i}]", UNUSED))[0] for i in range(n)]
    types = [by_id.get(i, ("", UNUSED))[1] for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {t: i for i, t in enumerate(tokens)}

    normalizers = _normalizer_steps(data.get("normalizer"))
    pre = _pre_signature(data.get("pre_tokenizer"))
    if model.get("byte_fallback"):
        # SentencePiece-style: spaces are '▁' (written by the normalizer or a Metaspace pre-tokenizer)
        # and unknown characters fall back to <0xXX> byte tokens. llama.cpp's "llama" tokenizer merges
        # the adjacent pair whose joined token scores highest; scoring each token by minus the rank of
        # the merge that first makes it reproduces the BPE merge order.
        prefix = None
        escapes = False
        for step in normalizers:
            t = step.get("type")
            if t == "Prepend" and step.get("prepend") == "▁":
                prefix = True
            elif t == "Replace" and step.get("pattern", {}).get("String") == " " and step.get("content") == "▁":
                escapes = True
            else:
                raise _unconvertible(tj, f"its normalizer step {t} has no llama.cpp equivalent")
        meta = data.get("pre_tokenizer")
        if meta is not None and meta.get("type") == "Metaspace" and meta.get("replacement", "▁") == "▁":
            escapes = True
            prefix = (meta["prepend_scheme"] != "never" if "prepend_scheme" in meta
                      else bool(meta.get("add_prefix_space", True)))
        elif pre not in ((), ("split(MergedWithPrevious, invert=False): ",)):  # a split on ' ' after '▁': none
            raise _unconvertible(tj, f"its pre-tokenizer {' + '.join(pre)} has no llama.cpp equivalent")
        if not escapes:
            raise _unconvertible(tj, "it is a byte-fallback BPE that does not write spaces as '▁'")
        rank: dict[str, int] = {}
        for r, m in enumerate(merges):
            rank.setdefault(m.replace(" ", ""), r)
        scores = [-float(rank[t]) if t in rank else -1e9 for t in tokens]
        for i, t in enumerate(tokens):
            if types[i] == NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
        unk = model.get("unk_token")
        if unk in ids:
            types[ids[unk]] = UNKNOWN
        vocab_model, pre_name, merges_out = "llama", "default", []
        add_space_prefix = bool(prefix)
    else:
        if "bytelevel+gpt2" not in pre and "bytelevel" not in pre:
            raise _unconvertible(tj, f"it is a BPE without byte-level encoding or byte fallback "
                                     f"(pre-tokenizer {' + '.join(pre) or 'none'})")
        pre_name = BPE_PRE_TYPES.get(pre)
        if pre_name is None:
            raise _unconvertible(tj, f"its byte-level pre-tokenizer ({' + '.join(pre)}) is not one llama.cpp "
                                     f"implements; known: {', '.join(sorted(set(BPE_PRE_TYPES.values())))}")
        for step in normalizers:  # Qwen's NFC leaves already-composed text as it is
            if step.get("type") != "NFC":
                raise _unconvertible(tj, f"its normalizer step {step.get('type')} has no llama.cpp equivalent")
        vocab_model, scores, merges_out, add_space_prefix = "gpt2", [], merges, None

    # special tokens: tokenizer_config.json names them; the post-processor says which are added
    special: dict[str, int] = {}
    for role, key in (("bos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token"), ("pad", "pad_token"),
                      ("sep", "sep_token")):
        t = _token_text(cfg.get(key))
        if t is not None and t in ids:
            special[role] = ids[t]
    if "unk" not in special and model.get("unk_token") in ids:
        special["unk"] = ids[model["unk_token"]]
    add_bos, add_eos = _template_adds(data.get("post_processor"), ids)
    if add_bos is not None and "bos" not in special:
        special["bos"] = add_bos
    if add_eos is not None and "eos" not in special:
        special["eos"] = add_eos
    add_bos_flag = bool(cfg["add_bos_token"]) if "add_bos_token" in cfg else add_bos is not None
    add_eos_flag = bool(cfg["add_eos_token"]) if "add_eos_token" in cfg else add_eos is not None

    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        for t in TURN_END_TOKENS:
            if t in ids and t in template:
                special["eot"] = ids[t]
                break
    return GGUFVocab(vocab_model, pre_name, tokens, types, merges_out, scores, special, add_bos_flag,
                     add_eos_flag, add_space_prefix, template or None)


def _template_adds(pp: dict | None, ids: dict[str, int]) -> tuple[int | None, int | None]:
    """(token id the post-processor puts before a single text, the one it puts after), or None."""
    if pp is None:
        return None, None
    if pp.get("type") == "Sequence":
        for p in pp.get("processors", []):
            got = _template_adds(p, ids)
            if got != (None, None):
                return got
        return None, None
    if pp.get("type") != "TemplateProcessing":
        return None, None
    single = pp.get("single", [])

    def special_id(item):
        if "SpecialToken" not in item:
            return None
        name = item["SpecialToken"]["id"]
        got = pp.get("special_tokens", {}).get(name, {}).get("ids") or [ids.get(name)]
        return got[0]

    first = special_id(single[0]) if single else None
    last = special_id(single[-1]) if len(single) > 1 else None
    return first, last
