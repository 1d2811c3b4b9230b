"""Hugging Face backend: any chat-template VLM loaded with `models.loading.load_vlm`.

Batches share work in two ways:
- the longest token prefix all prompts of a call share (the system prompt, answer format and any fixed few-shot
  examples, up to the first image) is run once; its KV cache is copied for each batch;
- each batch then runs only its items' suffixes, left-padded after the shared prefix, with position ids computed
  from the attention mask (plus Qwen2-VL's multimodal rope offsets), so padding never shifts a position.

Label scoring continues the cache with every candidate value of every answer slot in one forward pass per chunk:
log P(candidate | prompt, slot prefix), from the logits, no sampling. Generation continues the same cache greedily.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm_salience.models.loading import LoadedVLM
from vlm_salience.prompting.answers import Slot
from vlm_salience.prompting.inputs import Prompt


@dataclass
class _State:
    cache: Any
    last_logits: Any  # (B, V)
    full_mask: Any  # (B, L)
    last_pos: Any  # (B,) or (3, B) for Qwen2-VL
    adapters: list[str] | None = None  # peft adapter per row (mixed batches)


class HFBackend:
    kind = "hf"

    def __init__(self, loaded: LoadedVLM, *, batch_size: int = 8, max_continuation_tokens: int = 512) -> None:
        self.vlm = loaded
        self.batch_size = batch_size
        self.max_rows = max_continuation_tokens
        self.model, self.processor, self.family = loaded.model, loaded.processor, loaded.family
        self.tok = self.processor.tokenizer
        self.tok.padding_side = "left"
        self.image_token_id = getattr(self.model.config, "image_token_id", None) or getattr(
            self.model.config, "image_token_index", None)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else next(iter(self.eos_ids))
        # Qwen2-VL's multimodal rope lives on its inner model, wherever peft or DDP wrapped it
        self.rope = next((m for m in self.model.modules() if hasattr(m, "get_rope_index")
                          and hasattr(m, "rope_deltas")), None)
        # label-scoring layouts depend on the slots and the tokenizer only: built once, reused every call
        self._terminators: dict[tuple[str, ...], list[int]] = {}
        self._layouts: dict[tuple[Slot, ...], list] = {}

    @property
    def name(self) -> str:
        return self.vlm.config.name

    def fingerprint(self) -> str:
        """Model identity for cache keys: path, revision, precision, quantisation, the config's content and the
        weight files (name, size, modification time: rebuilt or retrained weights at the same path are a new
        model; hashing gigabytes of weights on every run would not be worth it)."""
        c = self.vlm.config
        h = hashlib.sha256(json.dumps([c.path, c.revision, c.dtype, c.quantization], default=str).encode())
        folder = Path(c.path)
        cfg = folder / "config.json"
        h.update(cfg.read_bytes() if cfg.is_file() else self.model.config.to_json_string().encode())
        if folder.is_dir():
            weights = sorted(folder.glob("*.safetensors"))
            h.update(json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]).encode())
        return h.hexdigest()[:16]

    # -- encoding ------------------------------------------------------------------------------------------------
    def texts(self, prompts: list[Prompt]) -> list[str]:
        return [self.processor.apply_chat_template(p.messages, add_generation_prompt=True) for p in prompts]

    def shared_prefix(self, texts: list[str]) -> list[int]:
        """Longest common token prefix of all prompts, cut before the first image token."""
        ids = [self.tok(t, add_special_tokens=False).input_ids for t in texts]
        if len(ids) < 2:
            return []
        first = ids[0]
        n = min(len(x) for x in ids)
        for x in ids[1:]:
            k = 0
            while k < n and x[k] == first[k]:
                k += 1
            n = k
        prefix = first[:n]
        special = {self.image_token_id, *self._vision_boundary_ids()} - {None}
        cut = next((i for i, t in enumerate(prefix) if t in special), len(prefix))
        return prefix[:max(0, cut - 1)]  # keep one token back: BPE may merge across the boundary

    def _vision_boundary_ids(self) -> list[int]:
        names = ["<|vision_start|>", "<fake_token_around_image>", "<image>", "<video>"]
        vocab = self.tok.get_vocab()
        return [vocab[n] for n in names if n in vocab]

    def _processor_inputs(self, texts: list[str], prompts: list[Prompt]) -> dict[str, Any]:
        """Text, image and native video inputs of a batch (`prompting/clips.py`)."""
        from vlm_salience.prompting.clips import encode_prompts

        settings = next((p.clip for p in prompts if p.clip is not None), None)
        return encode_prompts(self.processor, self.family, texts, [list(p.images) for p in prompts],
                              [list(p.videos) for p in prompts], settings, clip_settings=[p.clip for p in prompts])

    # -- forward over [shared prefix][left-padded suffix] ---------------------------------------------------------
    def _prefix_state(self, prefix: list[int], adapter: str | None = None):
        import torch

        if not prefix:
            return None
        extra = {} if adapter is None else {"adapter_names": [adapter]}
        ids = torch.tensor([prefix])
        mask = torch.ones_like(ids)
        pos = (mask.cumsum(-1) - 1)
        if self.family == "qwen2_vl":
            pos = pos[None].expand(3, -1, -1)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.vlm.device), attention_mask=mask.to(self.vlm.device),
                             position_ids=pos.to(self.vlm.device), use_cache=True, logits_to_keep=1, **extra)
        return out.past_key_values

    def _prefill(self, prompts: list[Prompt], prefix: list[int], prefix_cache, adapters=None) -> _State:
        import torch

        texts = self.texts(prompts)
        inputs = self._processor_inputs(texts, prompts)
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        P, B = len(prefix), len(prompts)
        token_keys = [k for k, v in inputs.items() if torch.is_tensor(v) and v.ndim == 2 and v.shape == ids.shape]
        rows, extra_rows = [], {k: [] for k in token_keys}
        for b in range(B):
            real = mask[b].bool()
            seq = ids[b][real]
            if P and seq[:P].tolist() != prefix:
                raise RuntimeError("a prompt does not start with the shared prefix (tokenisation differs)")
            rows.append(seq[P:])
            for k in token_keys:
                extra_rows[k].append(inputs[k][b][real][P:])
        T = max(len(r) for r in rows)
        suffix = torch.full((B, T), self.pad_id, dtype=ids.dtype)
        smask = torch.zeros((B, T), dtype=mask.dtype)
        for b, r in enumerate(rows):
            suffix[b, T - len(r):] = r
            smask[b, T - len(r):] = 1
        for k in token_keys:
            t = torch.zeros((B, T), dtype=inputs[k].dtype)
            for b, r in enumerate(extra_rows[k]):
                t[b, T - len(r):] = r
            inputs[k] = t
        full_mask = torch.cat([torch.ones((B, P), dtype=smask.dtype), smask], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        if self.family == "qwen2_vl":
            full_ids = torch.cat([torch.tensor([prefix] * B, dtype=suffix.dtype).reshape(B, P), suffix], dim=1)
            mm = inputs.get("mm_token_type_ids")
            full_mm = torch.cat([torch.zeros((B, P), dtype=mm.dtype), mm], 1) if mm is not None else None
            if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
                timing = ({"second_per_grid_ts": inputs["second_per_grid_ts"]}  # Qwen2.5-VL clips: frame times
                          if inputs.get("second_per_grid_ts") is not None else {})
                pos, deltas = self.rope.get_rope_index(full_ids, full_mm, image_grid_thw=inputs.get("image_grid_thw"),
                                                       video_grid_thw=inputs.get("video_grid_thw"),
                                                       attention_mask=full_mask, **timing)
            else:
                pos = pos[None].expand(3, -1, -1)
                deltas = torch.zeros((B, 1), dtype=torch.long)
            self.rope.rope_deltas = deltas.to(self.vlm.device)
            pos = pos[..., P:]
        else:
            pos = pos[:, P:]
        cache = None
        if isinstance(prefix_cache, dict):  # one prefix cache per adapter: each row takes its adapter's
            cache = copy.deepcopy(prefix_cache[adapters[0]])
            for i, layer in enumerate(cache.layers):
                layer.keys = torch.cat([prefix_cache[a].layers[i].keys for a in adapters], 0)
                layer.values = torch.cat([prefix_cache[a].layers[i].values for a in adapters], 0)
        elif prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(B)
        dev = self.vlm.device
        kwargs = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in kwargs and kwargs[key].is_floating_point():
                kwargs[key] = kwargs[key].to(self.model.dtype)
        if adapters is not None:
            kwargs["adapter_names"] = adapters
        with torch.inference_mode():
            out = self.model(input_ids=suffix.to(dev), attention_mask=full_mask.to(dev), position_ids=pos.to(dev),
                             past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)
        return _State(cache=out.past_key_values, last_logits=out.logits[:, -1].float(), full_mask=full_mask.to(dev),
                      last_pos=pos[..., -1].to(dev), adapters=adapters)

    def _batches(self, prompts: list[Prompt], adapters: list[str] | None = None):
        prefix = self.shared_prefix(self.texts(prompts))
        if adapters is None:
            prefix_cache = self._prefix_state(prefix)
        else:  # the prefix's cache depends on the adapter: one per adapter, stacked row by row
            prefix_cache = {a: self._prefix_state(prefix, a) for a in dict.fromkeys(adapters)} if prefix else None
        for s in range(0, len(prompts), self.batch_size):
            rows = None if adapters is None else adapters[s:s + self.batch_size]
            yield s, self._prefill(prompts[s:s + self.batch_size], prefix, prefix_cache, rows)

    # -- label scoring ----------------------------------------------------------------------------------------
    def _terminator_ids(self, terminators: tuple[str, ...]) -> list[int]:
        key = tuple(terminators)
        cache = self._terminators
        if key not in cache:
            vocab = self.tok.get_vocab()
            ids = sorted(vocab.values())
            pieces = self.tok.batch_decode([[i] for i in ids])
            marks = tuple(t for t in key if t.strip())
            spaces = any(not t.strip() for t in key)  # whitespace terminators: tokens of whitespace only
            cache[key] = [i for i, p in zip(ids, pieces)
                          if p and ((marks and p.startswith(marks)) or (spaces and not p.strip()))]
        return cache[key]

    def _trees(self, slots: list[Slot]) -> list[dict[str, Any]]:
        """Per slot: the trunk (tokens every candidate continuation shares after the prompt), the branches (each
        candidate's remaining tokens and the index from which they count toward its score), and the tokens that
        may end a value. Where a tokeniser would merge a value's last token with what follows, the value's
        branch carries the terminator explicitly instead."""
        trees = []
        for slot in slots:
            head = self.tok(slot.prefix, add_special_tokens=False).input_ids
            full, ends = [], []
            for c in slot.candidates:
                ids = self.tok(slot.prefix + c, add_special_tokens=False).input_ids
                clean = all(self.tok(slot.prefix + c + t, add_special_tokens=False).input_ids[:len(ids)] == ids
                            for t in (*slot.terminators, *(f"{t}," for t in slot.terminators)))
                if not slot.terminators or clean:
                    ends.append(True)
                else:  # the value's last token merges with a terminator: score the terminator literally
                    ids = self.tok(slot.prefix + c + slot.terminators[0], add_special_tokens=False).input_ids
                    ends.append(False)
                full.append(ids)
            trunk = len(head)
            for ids in full:  # the shared trunk: no longer than the slot prefix nor any candidate's tokens
                k = 0
                while k < min(trunk, len(ids)) and ids[k] == head[k]:
                    k += 1
                trunk = k
            starts = []
            for ids in full:
                k = 0
                while k < min(len(head), len(ids)) and ids[k] == head[k]:
                    k += 1
                starts.append(k)  # the candidate's own tokens begin here
            term = self._terminator_ids(slot.terminators) if slot.terminators else []
            trees.append({"slot": slot.name, "trunk": head[:trunk], "terminators": term,
                          "branches": [(j, ids[trunk:], starts[j] - trunk, ends[j]) for j, ids in enumerate(full)]})
        return trees

    def _layout(self, trees: list[dict[str, Any]]):
        """Flatten trees into one continuation: token ids, offsets (positions after the prompt), the token whose
        logits predict each token (-1: the prompt's last), who may attend to whom, and what each token scores."""
        ids, off, prev, seg, parent, score_key, ends = [], [], [], [], [], [], []
        nseg = 0
        for tree in trees:
            trunk_seg, trunk_last = None, -1
            if tree["trunk"]:
                trunk_seg = nseg
                nseg += 1
                for k, t in enumerate(tree["trunk"]):
                    ids.append(t), off.append(k), prev.append(len(ids) - 2 if k else -1)
                    seg.append(trunk_seg), parent.append(-1), score_key.append(None)
                trunk_last = len(ids) - 1
            n_trunk = len(tree["trunk"])
            for j, toks, start, terminated in tree["branches"]:
                b_seg = nseg
                nseg += 1
                for u, t in enumerate(toks):
                    ids.append(t), off.append(n_trunk + u)
                    prev.append(len(ids) - 2 if u else trunk_last)
                    seg.append(b_seg), parent.append(-1 if trunk_seg is None else trunk_seg)
                    score_key.append((tree["slot"], j) if u >= start else None)
                if terminated and tree["terminators"]:  # P(the value ends here), from its last token's logits
                    ends.append((len(ids) - 1, tree["slot"], j, tree["terminators"]))
        return ids, off, prev, seg, parent, score_key, ends

    def _slot_layouts(self, slots: list[Slot]) -> list:
        """The slots' trees, split into chunks of bounded continuation length, each flattened into a layout."""
        key = tuple(slots)
        if key not in self._layouts:
            chunks, cur, size = [], [], 0
            for t in self._trees(slots):  # slots per forward pass, to bound the continuation length
                n = len(t["trunk"]) + sum(len(b[1]) for b in t["branches"])
                if cur and size + n > self.max_rows:
                    chunks.append(cur)
                    cur, size = [], 0
                cur.append(t)
                size += n
            chunks.append(cur)
            self._layouts[key] = [self._layout(c) for c in chunks]
        return self._layouts[key]

    def score(self, prompts: list[Prompt], slots: list[Slot], *, on_batch=None,
              adapters: list[str] | None = None) -> list[dict[str, np.ndarray]]:
        """Per prompt: slot name -> log P of each candidate (normalise within the slot for a distribution).

        All candidates of an item continue its prompt in one sequence, as a tree: each slot's shared prefix is a
        trunk, each candidate a branch that attends to the prompt, its trunk and its own earlier tokens only, with
        positions that continue from the trunk. Every candidate is thus scored exactly as if it alone followed the
        prompt, and the prompt's cache is shared, never copied. `adapters` names a peft adapter per prompt: a
        batch that mixes experts runs in one pass.
        """
        import torch

        layouts = self._slot_layouts(slots)
        results: list[dict[str, np.ndarray]] = [
            {s.name: np.zeros(len(s.candidates)) for s in slots} for _ in prompts]
        for start, state in self._batches(prompts, adapters):
            B, L = state.full_mask.shape
            dev = state.full_mask.device
            for ids, off, prev, seg, parent, score_key, ends in layouts:
                T = len(ids)
                ids_t, off_t = torch.tensor(ids, device=dev), torch.tensor(off, device=dev)
                seg_t, par_t = torch.tensor(seg, device=dev), torch.tensor(parent, device=dev)
                own = (seg_t[:, None] == seg_t[None, :]) & (off_t[None, :] <= off_t[:, None])
                tree = own | (par_t[:, None] == seg_t[None, :])  # (T, T): own earlier tokens, or the trunk
                allowed = torch.cat([state.full_mask.bool()[:, None, :].expand(B, T, L),
                                     tree[None].expand(B, T, T)], dim=2)
                dtype = self.model.dtype if self.model.dtype.is_floating_point else torch.float32
                mask4d = torch.zeros((B, 1, T, L + T), dtype=dtype, device=dev)
                mask4d.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
                pos = state.last_pos[..., None] + 1 + off_t  # (B, T) or (3, B, T)
                extra = {} if state.adapters is None else {"adapter_names": state.adapters}
                with torch.inference_mode():
                    out = self.model(input_ids=ids_t[None].expand(B, T), attention_mask=mask4d, position_ids=pos,
                                     past_key_values=state.cache, use_cache=True, **extra)
                state.cache.crop(-T)  # drop the continuation again: the prompt cache serves the next chunk
                raw = out.logits.float()
                for pos_end, slot, j, term in ends:
                    lse = torch.logsumexp(torch.log_softmax(raw[:, pos_end], -1)[:, term], -1).cpu().numpy()
                    for b in range(B):
                        results[start + b][slot][j] += lse[b]
                prev_t = torch.tensor(prev, device=dev)
                logits = raw[:, prev_t.clamp(min=0)]
                from_prompt = prev_t < 0
                logits[:, from_prompt] = state.last_logits[:, None].expand(B, int(from_prompt.sum()), -1)
                logp = torch.log_softmax(logits, -1).gather(-1, ids_t[None, :, None].expand(B, T, 1))[..., 0]
                logp = logp.cpu().numpy()
                for t, key in enumerate(score_key):
                    if key is not None:
                        slot, j = key
                        for b in range(B):
                            results[start + b][slot][j] += logp[b, t]
            if on_batch:
                on_batch(B)
        return results

    # -- generation ---------------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], max_new_tokens: int, *, min_new_tokens: int = 0,
                 on_batch=None) -> list[str]:
        """Greedy decoding from the shared-prefix cache; stops at EOS (after min_new_tokens) or the budget."""
        import torch

        texts: list[str] = []
        for _, state in self._batches(prompts):
            B = state.last_logits.shape[0]
            cache, mask, pos = state.cache, state.full_mask, state.last_pos
            logits = state.last_logits
            done = torch.zeros(B, dtype=torch.bool, device=logits.device)
            steps = []
            for step in range(max_new_tokens):
                if step < min_new_tokens:
                    logits = logits.clone()
                    logits[:, list(self.eos_ids)] = -float("inf")
                nxt = logits.argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
                steps.append(nxt)
                done |= torch.isin(nxt, torch.tensor(sorted(self.eos_ids), device=nxt.device))
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], 1)
                pos = pos + 1
                with torch.inference_mode():
                    out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[..., None],
                                     past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1].float()
            tokens = torch.stack(steps, 1).cpu()
            texts += self.tok.batch_decode(tokens, skip_special_tokens=True)
            if on_batch:
                on_batch(B)
        return texts

    def generate_per_item(self, prompt: Prompt, max_new_tokens: int, *, min_new_tokens: int = 0) -> str:
        """Plain `model.generate` on one prompt (no shared cache): the reference path."""
        import torch

        inputs = self._processor_inputs(self.texts([prompt]), [prompt])
        inputs = {k: (v.to(self.vlm.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                      do_sample=False, pad_token_id=self.pad_id)
        return self.tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
