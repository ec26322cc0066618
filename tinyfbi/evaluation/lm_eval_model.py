"""lm-evaluation-harness model: a tinyfbi checkpoint as lm-eval's `tinyfbi` (tinyfbi.lm_eval_adapter runs it).

FBI-LLM's Table 2 (arXiv 2407.07093) scores zero-shot tasks (BoolQ, PIQA, HellaSwag, WinoGrande,
ARC, OpenBookQA) with lm-eval. This adapter answers lm-eval's three requests on tinyfbi's NumPy
inference path (tinyfbi.runtime.inference: each W~ materialized once, a KV cache for generation):
loglikelihood (sum of log p(continuation | context), and whether greedy decoding gives it),
loglikelihood_rolling (a whole text in windows of the model's length) and generate_until.

    python -m tinyfbi.lm_eval_adapter --model tinyfbi --model_args ckpt=runs/tiny-ad --tasks piqa
    python -m tinyfbi.lm_eval_adapter --model tinyfbi --model_args ckpt=runs/tiny-ad,batch_size=8 \\
        --tasks my_task --include_path my_tasks/

lm-eval 0.4.13 knows a model only once the module defining it has been imported (its model registry
scans no entry points), so the bare `lm_eval --model tinyfbi` cannot find it: this module's command
line imports the adapter, then runs lm-eval's own command line with the same arguments. From Python:

    import lm_eval, tinyfbi.lm_eval_adapter
    lm_eval.simple_evaluate(model="tinyfbi", model_args="ckpt=runs/tiny-ad", tasks=["piqa"])

model_args: ckpt (required; tinyfbi checkpoint, run folder or HF LLaMA folder), tokenizer (a file;
default the checkpoint's), batch_size, max_length (default max_position_embeddings), max_gen_toks
(256), add_bos_token (default: whenever the tokenizer has a BOS, as LLaMA's), seed. lm-eval's
--device is ignored: the NumPy path runs on the CPU.
For the paper's 1.3B / 7B on a GPU, export and use lm-eval's own HF model instead:
`python -m tinyfbi.export --hf CKPT OUT` then `lm_eval --model hf --model_args pretrained=OUT`.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ..core import layers as L
from ..core.errors import TinyFBIError
from ..corpus.tokenizers import load_tokenizer
from ..formats.checkpoint import load_model
from ..formats.run_checkpoint import resolve_checkpoint
from ..runtime.inference import FloatRunner, sample_next

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:
    raise TinyFBIError("the lm-eval adapter needs lm-eval: pip install lm-eval==0.4.13") from None


@register_model("tinyfbi")
class TinyFBILM(TemplateLM):
    def __init__(self, ckpt=None, tokenizer=None, batch_size=1, max_batch_size=None, device=None,
                 max_length=None, max_gen_toks=256, add_bos_token=None, seed=0):
        # max_batch_size and device come with every lm-eval call; the NumPy path uses neither
        super().__init__()
        if not ckpt:
            raise TinyFBIError("--model_args ckpt=PATH is required (a tinyfbi checkpoint or HF LLaMA folder)")
        path = resolve_checkpoint(ckpt)
        self.tok = load_tokenizer(tokenizer or path)
        self.runner = FloatRunner(load_model(path, dtype=np.float32))
        self.config = self.runner.config
        if self.tok.vocab_size > self.config.vocab_size:
            raise TinyFBIError(f"tokenizer has {self.tok.vocab_size} tokens, the model only {self.config.vocab_size}")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1  # "auto" -> 1
        self._max_length = min(int(max_length or self.config.max_position_embeddings),
                               self.config.max_position_embeddings)  # RoPE covers no more
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = self.tok.bos_id is not None if add_bos_token is None else bool(add_bos_token)
        self.rng = np.random.default_rng(int(seed))

    # ------------------------------------------------------------------ tokens

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self):
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        # what an empty context is conditioned on: BOS, else EOS, else a newline
        for token in (self.tok.bos_id, self.tok.eos_id):
            if token is not None:
                return token
        return self.tok.encode("\n")[-1]

    def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
        add_bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        ids = ([self.tok.bos_id] if add_bos and self.tok.bos_id is not None else []) + self.tok.encode(string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # ------------------------------------------------------------------ scoring

    def _score(self, pairs):
        """(input ids, continuation ids) -> (sum log p(continuation), greedy?) per pair; the
        continuation is the last tokens of the input shifted by one. Right-padding a batch is safe:
        causal attention never lets a position see the padding after it."""
        T = max(len(inp) for inp, _ in pairs)
        x = np.zeros((len(pairs), T), dtype=np.int64)                         # (B, T)
        for i, (inp, _) in enumerate(pairs):
            x[i, :len(inp)] = inp
        logits = self.runner.forward(x, self.runner.new_cache(len(pairs), T))  # (B, T, V)
        out = []
        for i, (inp, cont) in enumerate(pairs):
            rows = logits[i, len(inp) - len(cont):len(inp)].astype(np.float64)  # (n, V)
            logp = L.log_softmax(rows)
            total = float(logp[np.arange(len(cont)), cont].sum())
            out.append((total, bool(np.all(rows.argmax(-1) == np.asarray(cont)))))
        return out

    def _score_all(self, pairs, disable_tqdm=True):
        """_score in batches of similar length (longest first), results in the given order."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
        results = [None] * len(pairs)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm):
            idx = order[start:start + self.batch_size]
            for i, r in zip(idx, self._score([pairs[i] for i in idx])):
                results[i] = r
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        pairs = []
        for _, context_enc, continuation_enc in requests:
            if len(continuation_enc) > self.max_length:
                raise TinyFBIError(f"a continuation of {len(continuation_enc)} tokens exceeds max_length "
                                   f"{self.max_length}")
            whole = (context_enc + continuation_enc)[-(self.max_length + 1):]  # keep the latest context
            pairs.append((whole[:-1], continuation_enc))
        scored = iter(self._score_all([p for p in pairs if p[1]], disable_tqdm))
        results = [next(scored) if cont else (0.0, True) for _, cont in pairs]  # empty: log 1
        for (key, _, _), r in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, r)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """log p(text | prefix token), the text in disjoint windows of max_length predictions, each
        window conditioned on up to max_length - 1 tokens before it (lm-eval's rolling windows)."""
        out = []
        for (string,) in [req.args for req in requests]:
            windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string, add_special_tokens=False),
                prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
            pairs = [((ctx + cont)[:-1], cont) for ctx, cont in windows]
            total = sum(score for score, _ in self._score_all(pairs)) if pairs else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for context, gen_kwargs in tqdm([req.args for req in requests], disable=disable_tqdm):
            text = self._generate(context, dict(gen_kwargs or {}))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    def _generate(self, context: str, kwargs: dict) -> str:
        """Greedy (or sampled, with do_sample and a temperature) decoding with a KV cache, until a
        stop string appears, EOS, max_gen_toks, or the model's length; the stop string is cut off."""
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        greedy = not kwargs.pop("do_sample", False) or temperature <= 0
        prompt = self.tok_encode(context)[-max(1, self.max_length - max_gen):] or [self.prefix_token_id]
        cache = self.runner.new_cache(1, min(self.max_length, len(prompt) + max_gen))
        logits = self.runner.forward(np.array([prompt], dtype=np.int64), cache)[0, -1]
        new, text = [], ""
        for _ in range(max_gen):
            nxt = sample_next(logits[:self.tok.vocab_size], self.rng, temperature, None, greedy)  # ids it can decode
            if nxt == self.tok.eos_id:
                break
            new.append(nxt)
            text = self.tok.decode(new)
            if any(stop in text for stop in until) or cache.length >= cache.max_len:
                break
            logits = self.runner.forward(np.array([[nxt]], dtype=np.int64), cache)[0, -1]
        for stop in until:
            text = text.split(stop)[0]
        return text
