"""Small Hugging Face tokenizers of the kinds real checkpoints ship, trained here on calib/ text and
saved with ``save_pretrained`` as a checkpoint directory holds them (tokenizer.json,
tokenizer_config.json): byte-level BPE with Qwen2's or Llama-3's split (``tokenizers``' trainer), and
a SentencePiece BPE with byte fallback converted as Gemma's is (``sentencepiece`` + transformers'
GemmaTokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
import transformers

# code, prose with accents, Chinese, emoji (one a ZWJ sequence), digits, whitespace runs, a special token
MIXED = ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(2^n)\n\n"
         "The café's naïve façade — déjà vu? Straße, Ærøskøbing, São Paulo. I'VE been 'told he's there.\n"
         "我想在apple工作1314151天～ 你好，世界！ 🦙🚀😶\u200d🌫️ ✅\n"
         "numbers 3 33 333 3333 3.14159 1,000,000\t\ttabs   and    spaces\n\n\n  end<|im_end|> after")
# a few lines in the scripts MIXED uses, so merges exist for them too
EXTRA = ["café naïve façade déjà Straße São Paulo Ærøskøbing", "你好，世界！ 我想在工作 天气很好 你好吗",
         "нещо на Български", "🦙🦙 🚀 ✅ 😁"] * 20

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                  "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _corpus() -> list[str]:
    from edge.calib import load_text

    text = load_text("general").text[:60000] + "\n" + load_text("code").text[:30000]
    return text.split("\n") + EXTRA


def byte_level_bpe(out: Path, style: str, vocab_size: int = 480) -> Path:
    """A byte-level BPE checkpoint tokenizer: style "qwen2" (NFC, digits one by one, ChatML,
    no BOS), "llama3" (digits in threes, <|begin_of_text|> added by the post-processor) or "gpt4o"
    (Phi-4-mini's o200k split: case-aware words, digits in threes)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    from edge.model.tokenizer import GPT4O_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN

    tk = Tokenizer(models.BPE())
    pattern = {"qwen2": QWEN2_PATTERN, "llama3": LLAMA3_PATTERN, "gpt4o": GPT4O_PATTERN}[style]
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    if style == "qwen2":
        tk.normalizer = normalizers.NFC()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif style == "gpt4o":  # Phi-4-mini's o200k split and its specials
        specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
    else:
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_corpus(), trainer)
    if style == "llama3":
        bos = tk.token_to_id("<|begin_of_text|>")
        tk.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
        kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=CHATML.replace(
            "<|im_start|>", "<|start_header_id|>").replace("<|im_end|>", "<|eot_id|>"))
    elif style == "gpt4o":
        kw = dict(eos_token="<|endoftext|>", chat_template=CHATML.replace("<|im_start|>", "<|user|>").replace(
            "<|im_end|>", "<|end|>"))
    else:
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **kw)
    fast.save_pretrained(out)
    return out


def gemma_spm(out: Path, work: Path, vocab_size: int = 960, style: str = "gemma") -> Path:
    """A SentencePiece-style checkpoint tokenizer: a SentencePiece BPE model with byte fallback trained
    here, turned into tokenizer.json the way transformers converts Gemma's (vocab + merges by score).
    ``style`` "phi3" names the specials as Phi-3's Llama-2 vocabulary does (<s>, </s>, <|end|>) and adds
    Llama-2's '▁' prefix with a Prepend normalizer; "metaspace" the same prefix with a Metaspace
    pre-tokenizer, as transformers' non-legacy Llama conversion writes it."""
    import sentencepiece as spm
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    if style == "gemma":
        pieces = dict(pad="<pad>", eos="<eos>", bos="<bos>", unk="<unk>")
        turns, template = ("<start_of_turn>", "<end_of_turn>"), GEMMA_TEMPLATE
    else:
        pieces = dict(pad="<|endoftext|>", eos="</s>", bos="<s>", unk="<unk>")
        turns = ("<|user|>", "<|assistant|>", "<|end|>")
        template = CHATML.replace("<|im_start|>", "<|user|>").replace("<|im_end|>", "<|end|>")
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.txt").write_text("\n".join(line for line in _corpus() if line.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "spm"), model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.995, add_dummy_prefix=False, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece=pieces["pad"], eos_piece=pieces["eos"], bos_piece=pieces["bos"], unk_piece=pieces["unk"],
        user_defined_symbols=list(turns), minloglevel=2)
    kw = SentencePieceExtractor(str(work / "spm.model")).extract(BPE)
    tok = transformers.GemmaTokenizer(vocab=kw["vocab"], merges=kw["merges"], chat_template=template,
                                      unk_token=pieces["unk"], bos_token=pieces["bos"], eos_token=pieces["eos"],
                                      pad_token=pieces["pad"])
    tok.add_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in turns], special_tokens=True)
    tok.save_pretrained(out)
    if style in ("phi3", "metaspace"):
        tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        if style == "phi3":  # Llama-2's normalizer, which Phi-3 keeps: a '▁' before the text, spaces as '▁'
            tj["normalizer"] = {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
            tj["pre_tokenizer"] = None
        else:  # the same as transformers' non-legacy Llama conversion writes it: a Metaspace pre-tokenizer
            tj["normalizer"] = None
            tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        tj["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
        (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return out
