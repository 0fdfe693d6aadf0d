#!/usr/bin/env python3
"""bench/gpu/bench.py — kvfold's CUDA backend checked against its CPU backend, then timed.

Run through bench/gpu/run.sh (which builds the library first). Talks to libkvfold.so through its C ABI
(ffi/include/kvfold.h) with ctypes, so the GPU machine needs neither Deno nor network. Fixtures are
random Llama-family models written here in Hugging Face layout (config.json + model.safetensors), and
PEFT adapters. Every comparison is ||cuda - cpu|| / ||cpu|| over the same 16-bit weights; the cpu engine
computes in f32, the cuda engine rounds activations to the weights' dtype before each matrix product,
hence the bands: bf16 3e-2, f16 1e-2 (first estimates; tighten once seen). Compressing caches (h2o,
lococo) pick slots by score: two backends whose scores differ by rounding may keep different slots, so
a miss there is a lead, not yet a bug (the check's note shows both sides' slot and compression counts).
"""
import argparse
import ctypes as C
import json
import math
import os
import struct
import sys
import tempfile
import time

import numpy as np

BANDS = {"bf16": 3e-2, "f16": 1e-2}
DT_ID = {"f32": 0, "f16": 1, "bf16": 2}
ST_NAME = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


# ---------------------------------------------------------------------------------------------- ABI
ABI_VERSION = 6  # KF_ABI_VERSION of the kvfold.h the signatures below follow


class EngineParams(C.Structure):
    _fields_ = [("backend", C.c_int32), ("n_threads", C.c_int32), ("device", C.c_int32), ("memory_mib", C.c_int32)]


class EngineInfo(C.Structure):
    _fields_ = [("backend", C.c_int32), ("n_threads", C.c_int32), ("name", C.c_char * 64)]


class ModelParams(C.Structure):
    _fields_ = [("weight_dtype", C.c_int32), ("use_mmap", C.c_int32)]


class ModelInfo(C.Structure):
    _fields_ = [(n, C.c_int32) for n in ("vocab", "hidden", "inter", "layers", "heads", "kv_heads", "head_dim",
                                         "max_pos", "weight_dtype", "tied")] + [
        ("n_params", C.c_int64), ("weight_bytes", C.c_int64), ("model_type", C.c_char * 32)]


class SessionParams(C.Structure):
    _fields_ = [(n, C.c_int32) for n in ("n_ctx", "n_batch", "cache_kind", "slots", "segment", "sinks", "window",
                                         "reserved")] + [("heads", C.c_void_p)]


class SessionInfo(C.Structure):
    _fields_ = [(n, C.c_int32) for n in ("n_past", "n_ctx", "cache_kind", "has_logits")] + [
        (n, C.c_int64) for n in ("kv_bytes", "kv_slots", "scratch_bytes", "kv_slots_used", "kv_slots_peak",
                                 "compressions", "compress_ns")] + [("slots", C.c_int32), ("segment", C.c_int32)]


class Lib:
    def __init__(self, path):
        self.l = C.CDLL(path)
        L = self.l
        P, I32, I64 = C.c_void_p, C.c_int32, C.c_int64
        L.kf_abi_version.argtypes, L.kf_abi_version.restype = [], C.c_int32
        if L.kf_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path} has ABI version {L.kf_abi_version()}; bench.py speaks version {ABI_VERSION}")
        sig = {
            "kf_last_error": ([], C.c_char_p),
            "kf_backend_built": ([I32], I32),
            "kf_backend_device_count": ([I32], I32),
            "kf_backend_blas_library": ([I32, C.c_char_p, I32], I32),
            "kf_engine_default_params": ([], EngineParams),
            "kf_engine_open": ([P, P], I32),
            "kf_engine_free": ([P], I32),
            "kf_engine_get_info": ([P, P], I32),
            "kf_engine_measure_read_bandwidth": ([P, I64, I32, P, P], I32),
            "kf_engine_measure_matmul_rate": ([P, I32, I32, I32, I32, P, P], I32),
            "kf_model_default_params": ([], ModelParams),
            "kf_model_load": ([P, C.c_char_p, P, P, P], I32),
            "kf_model_free": ([P], I32),
            "kf_model_get_info": ([P, P], I32),
            "kf_session_default_params": ([], SessionParams),
            "kf_session_create": ([P, P, P], I32),
            "kf_session_free": ([P], I32),
            "kf_session_reset": ([P], I32),
            "kf_session_prefill": ([P, P, I32, P, P], I32),
            "kf_session_prefill_embeddings": ([P, P, I32, I32, I32, P, P, P], I32),
            "kf_session_decode": ([P, I32, P], I32),
            "kf_session_get_logits": ([P, P, I32], I32),
            "kf_session_get_info": ([P, P], I32),
            "kf_session_read_cache": ([P, I32, P, P, P, I32], I32),
            "kf_adapter_load": ([P, C.c_char_p, P, P], I32),
            "kf_adapter_free": ([P], I32),
            "kf_session_set_adapter": ([P, P], I32),
            "kf_batch_decode": ([P, P, I32, P], I32),
            "kf_lococo_heads_load": ([P, C.c_char_p, P, P], I32),
            "kf_lococo_heads_free": ([P], I32),
        }
        for name, (args, res) in sig.items():
            f = getattr(L, name)
            f.argtypes = args
            f.restype = res

    def check(self, st, what):
        if st != 0:
            raise RuntimeError(f"{what}: status {st}: {self.l.kf_last_error().decode()}")


def ptr(a):
    return a.ctypes.data_as(C.c_void_p) if a is not None else None


class Engine:
    def __init__(self, lib, backend, threads=0):
        self.lib = lib
        p = lib.l.kf_engine_default_params()
        p.backend = {"cpu": 1, "cuda": 2}[backend]
        p.n_threads = threads
        h = C.c_void_p()
        lib.check(lib.l.kf_engine_open(C.byref(p), C.byref(h)), f"open {backend} engine")
        self.h = h
        info = EngineInfo()
        lib.check(lib.l.kf_engine_get_info(h, C.byref(info)), "engine info")
        self.name = info.name.decode()

    def bandwidth(self, nbytes=1 << 30, repeats=10):
        out = C.c_double()
        self.lib.check(self.lib.l.kf_engine_measure_read_bandwidth(self.h, nbytes, repeats, C.byref(out), None),
                       "bandwidth")
        return out.value

    def matmul_rate(self, m, n, k, repeats=10):
        out = C.c_double()
        self.lib.check(self.lib.l.kf_engine_measure_matmul_rate(self.h, m, n, k, repeats, C.byref(out), None),
                       "matmul rate")
        return out.value

    def close(self):
        self.lib.check(self.lib.l.kf_engine_free(self.h), "free engine")


class Model:
    def __init__(self, eng, path, dtype):
        self.lib = eng.lib
        p = self.lib.l.kf_model_default_params()
        p.weight_dtype = DT_ID[dtype]
        h = C.c_void_p()
        self.lib.check(self.lib.l.kf_model_load(eng.h, path.encode(), C.byref(p), C.byref(h), None),
                       f"load {path}")
        self.h = h
        self.info = ModelInfo()
        self.lib.check(self.lib.l.kf_model_get_info(h, C.byref(self.info)), "model info")
        self.V, self.H = self.info.vocab, self.info.hidden

    def session(self, n_ctx=0, n_batch=256, **cache):
        return Session(self, n_ctx, n_batch, **cache)

    def heads(self, path):
        h = C.c_void_p()
        self.lib.check(self.lib.l.kf_lococo_heads_load(self.h, path.encode(), C.byref(h), None),
                       f"load heads {path}")
        return h

    def adapter(self, path):
        h = C.c_void_p()
        self.lib.check(self.lib.l.kf_adapter_load(self.h, path.encode(), C.byref(h), None),
                       f"load adapter {path}")
        return h

    def close(self):
        self.lib.check(self.lib.l.kf_model_free(self.h), "free model")


class Session:
    def __init__(self, model, n_ctx, n_batch, kind=0, slots=0, segment=0, window=0, heads=None):
        self.m, self.lib = model, model.lib
        p = self.lib.l.kf_session_default_params()
        p.n_ctx, p.n_batch = n_ctx, n_batch
        p.cache_kind, p.slots, p.segment = kind, slots, segment
        if window:
            p.window = window
        p.heads = heads
        h = C.c_void_p()
        self.lib.check(self.lib.l.kf_session_create(model.h, C.byref(p), C.byref(h)), "create session")
        self.h = h

    def prefill(self, ids, all_logits=True):
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        out = np.empty((len(ids), self.m.V), np.float32) if all_logits else None
        self.lib.check(self.lib.l.kf_session_prefill(self.h, ptr(ids), len(ids), ptr(out), None), "prefill")
        return out

    def prefill_embeddings(self, rows):
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        logits = np.empty((rows.shape[0], self.m.V), np.float32)
        hidden = np.empty((rows.shape[0], self.m.H), np.float32)
        self.lib.check(self.lib.l.kf_session_prefill_embeddings(self.h, ptr(rows), 0, rows.shape[0], rows.shape[1],
                                                                ptr(logits), ptr(hidden), None), "prefill embeddings")
        return logits, hidden

    def decode(self, tok):
        self.lib.check(self.lib.l.kf_session_decode(self.h, int(tok), None), "decode")

    def logits(self):
        out = np.empty(self.m.V, np.float32)
        self.lib.check(self.lib.l.kf_session_get_logits(self.h, ptr(out), self.m.V), "get logits")
        return out

    def info(self):
        i = SessionInfo()
        self.lib.check(self.lib.l.kf_session_get_info(self.h, C.byref(i)), "session info")
        return i

    def cache(self, layer, scores=False):
        n = self.info().kv_slots_used
        shape = (n, self.m.info.kv_heads, self.m.info.head_dim)
        k, v = np.empty(shape, np.float32), np.empty(shape, np.float32)
        sc = np.empty((n, self.m.info.kv_heads), np.float32) if scores else None
        self.lib.check(self.lib.l.kf_session_read_cache(self.h, layer, ptr(k), ptr(v), ptr(sc), n), "read cache")
        return (k, v, sc) if scores else (k, v)

    def set_adapter(self, a):
        self.lib.check(self.lib.l.kf_session_set_adapter(self.h, a), "set adapter")

    def close(self):
        self.lib.check(self.lib.l.kf_session_free(self.h), "free session")


def batch_decode(lib, sessions, ids):
    arr = (C.c_void_p * len(sessions))(*[s.h.value for s in sessions])
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    lib.check(lib.l.kf_batch_decode(arr, ptr(ids), len(sessions), None), "batch decode")
    return np.stack([s.logits() for s in sessions])


# ---------------------------------------------------------------------------------------------- fixtures
def to_bf16_bits(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def encode(x, dtype):
    if dtype == "f32":
        return np.ascontiguousarray(x, np.float32).tobytes()
    if dtype == "f16":
        return np.ascontiguousarray(x, np.float16).tobytes()
    return to_bf16_bits(x).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, producer() -> bytes); written streaming."""
    header, off = ({"__metadata__": metadata} if metadata else {}), 0
    for name, dt, shape, _ in tensors:
        n = int(np.prod(shape)) * (4 if dt == "f32" else 2)
        header[name] = {"dtype": ST_NAME[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, produce in tensors:
            data = produce()
            for piece in (data if isinstance(data, list) else [data]):
                f.write(piece)


def make_model(d, *, hidden, layers, heads, kv_heads, inter, vocab, max_pos=4096, head_dim=None, std=0.02,
               dtype="bf16", model_type="llama", extra=None, seed=1, pool=False):
    """A random Llama-family model. pool=True tiles one random block (big models: fast to write, not
    zeros; fine for timing, never for checking)."""
    os.makedirs(d, exist_ok=True)
    hd = head_dim or hidden // heads
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": max_pos,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
           "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]}
    if head_dim:
        cfg["head_dim"] = head_dim
    cfg.update(extra or {})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(seed)
    block = None
    if pool:
        block = encode(rng.standard_normal(1 << 26).astype(np.float32) * std, dtype)  # 64M values

    def rnd(shape, scale=std, mean=0.0):
        n = int(np.prod(shape))
        if block is not None and mean == 0.0:
            es = 4 if dtype == "f32" else 2
            need, start = n * es, int(rng.integers(0, len(block) // 2)) & ~7

            def pieces():  # need bytes of the block, from `start`, wrapping around
                view, out, pos, left = memoryview(block), [], start, need
                while left > 0:
                    take = min(left, len(block) - pos)
                    out.append(view[pos:pos + take])
                    left -= take
                    pos = 0
                return out
            return pieces
        return lambda: encode(rng.standard_normal(n).astype(np.float32) * scale + mean, dtype)

    t = [("model.embed_tokens.weight", dtype, (vocab, hidden), rnd((vocab, hidden), 0.5 if not pool else std))]
    qd, kvd = heads * hd, kv_heads * hd
    for i in range(layers):
        p = f"model.layers.{i}."
        t.append((p + "input_layernorm.weight", dtype, (hidden,), rnd((hidden,), 0.1, 1.0)))
        t.append((p + "post_attention_layernorm.weight", dtype, (hidden,), rnd((hidden,), 0.1, 1.0)))
        for name, shape in (("self_attn.q_proj", (qd, hidden)), ("self_attn.k_proj", (kvd, hidden)),
                            ("self_attn.v_proj", (kvd, hidden)), ("self_attn.o_proj", (hidden, qd)),
                            ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                            ("mlp.down_proj", (hidden, inter))):
            t.append((p + name + ".weight", dtype, shape, rnd(shape)))
        if model_type == "qwen2":
            for name, n in (("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)):
                t.append((p + f"self_attn.{name}.bias", dtype, (n,), rnd((n,), 0.1)))
    t.append(("model.norm.weight", dtype, (hidden,), rnd((hidden,), 0.1, 1.0)))
    t.append(("lm_head.weight", dtype, (vocab, hidden), rnd((vocab, hidden))))
    write_safetensors(os.path.join(d, "model.safetensors"), t)
    return cfg


def make_heads(path, cfg, *, slots, keep_rate=0.5, kernel=21, segment=64, seed=21, lam=0.7):
    """LoCoCo heads (DESIGN.md's names and metadata), random Conv1d weights."""
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    mc = int(math.floor(slots * (1 - keep_rate)))
    rng = np.random.default_rng(seed)
    t = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn.memory_saver."
        w = (rng.standard_normal((mc, 2 * hd, kernel)) * 0.05).astype(np.float32)
        b = (rng.standard_normal(mc) * 0.1).astype(np.float32)
        t += [(p + "layers.0.weight", "f32", w.shape, lambda w=w: w.tobytes()),
              (p + "layers.0.bias", "f32", b.shape, lambda b=b: b.tobytes()),
              (p + "normalizer", "f32", (1,), lambda: np.array([lam], np.float32).tobytes())]
    write_safetensors(path, t, metadata={"kvfold.lococo.slots": str(slots), "kvfold.lococo.keep_rate": str(keep_rate),
                                         "kvfold.lococo.kernel": str(kernel), "kvfold.lococo.segment": str(segment)})


def make_adapter(d, cfg, *, rank, targets, seed):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets}, f)
    rng = np.random.default_rng(seed)
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or H // cfg["num_attention_heads"]
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    dims = {"q_proj": (H, qd), "k_proj": (H, kvd), "v_proj": (H, kvd), "o_proj": (qd, H), "gate_proj": (H, I),
            "up_proj": (H, I), "down_proj": (I, H)}
    t = []
    for i in range(cfg["num_hidden_layers"]):
        for m in targets:
            kind = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            n_in, n_out = dims[m]
            base = f"base_model.model.model.layers.{i}.{kind}.{m}."
            a = rng.standard_normal((rank, n_in)).astype(np.float32) * 0.1
            b = rng.standard_normal((n_out, rank)).astype(np.float32) * 0.1  # nonzero, unlike PEFT's init
            t.append((base + "lora_A.weight", "f32", a.shape, lambda a=a: a.tobytes()))
            t.append((base + "lora_B.weight", "f32", b.shape, lambda b=b: b.tobytes()))
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), t)


# ---------------------------------------------------------------------------------------------- checks
def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class Checker:
    def __init__(self):
        self.rows = []

    def add(self, fixture, dtype, gemm, what, err, band, extra=""):
        ok = err <= band
        self.rows.append({"fixture": fixture, "dtype": dtype, "gemm": gemm, "check": what, "rel_err": err,
                          "band": band, "ok": ok, "note": extra})
        print(f"  {'ok  ' if ok else 'FAIL'} {fixture:<14} {dtype:<4} {gemm:<6} {what:<34} {err:.2e} (band {band:.0e}) {extra}")


def run_checks(lib, fixture, path, dtype, gemm, chk, cpu_eng, gpu_eng, cfg, adapters):
    band = BANDS[dtype]
    rng = np.random.default_rng(7)
    V = cfg["vocab_size"]
    mc, mg = Model(cpu_eng, path, dtype), Model(gpu_eng, path, dtype)
    try:
        # prefill logits, chunked (n_batch 16 < 37 rows), then decode steps
        ids = rng.integers(0, V, 37)
        sc, sg = mc.session(n_batch=16), mg.session(n_batch=16)
        lc, lg = sc.prefill(ids), sg.prefill(ids)
        chk.add(fixture, dtype, gemm, "prefill logits [37, V] (chunks of 16)", rel(lg, lc), band,
                f"argmax agree {np.mean(lg.argmax(1) == lc.argmax(1)):.2f}")
        for step in range(4):
            tok = int(lc[-1].argmax()) if step == 0 else int(sc.logits().argmax())
            sc.decode(tok)
            sg.decode(tok)
        chk.add(fixture, dtype, gemm, "decode logits after 4 steps", rel(sg.logits(), sc.logits()), band)
        for layer in (0, cfg["num_hidden_layers"] - 1):
            kc, vc = sc.cache(layer)
            kg, vg = sg.cache(layer)
            chk.add(fixture, dtype, gemm, f"KV cache layer {layer} keys / values", max(rel(kg, kc), rel(vg, vc)), band)
        sc.close()
        sg.close()
        # prefix embeddings, then tokens after them (LLoCO)
        rows = rng.standard_normal((12, cfg["hidden_size"])).astype(np.float32) * 0.5
        sc, sg = mc.session(), mg.session()
        (lc, hc), (lg, hg) = sc.prefill_embeddings(rows), sg.prefill_embeddings(rows)
        chk.add(fixture, dtype, gemm, "prefix embeddings: logits", rel(lg, lc), band)
        chk.add(fixture, dtype, gemm, "prefix embeddings: hidden_out", rel(hg, hc), band)
        more = rng.integers(0, V, 5)
        chk.add(fixture, dtype, gemm, "tokens after embeddings", rel(sg.prefill(more), sc.prefill(more)), band)
        sc.close()
        sg.close()
        # long context: split-KV decode (keys >= 128 per split path) after a 600-token prefill
        if cfg["max_position_embeddings"] >= 700:
            ids = rng.integers(0, V, 600)
            sc, sg = mc.session(n_ctx=700), mg.session(n_ctx=700)
            sc.prefill(ids, False)
            sg.prefill(ids, False)
            chk.add(fixture, dtype, gemm, "prefill 600 (chunks of 256): last", rel(sg.logits(), sc.logits()), band)
            for tok in rng.integers(0, V, 3):
                sc.decode(tok)
                sg.decode(tok)
            chk.add(fixture, dtype, gemm, "split-KV decode at 603", rel(sg.logits(), sc.logits()), band)
            sc.close()
            sg.close()
        # compressing caches: shrunk on the device between segments (ranking on the host)
        if cfg["max_position_embeddings"] >= 700:
            heads_path = path + "-heads.safetensors"
            make_heads(heads_path, cfg, slots=96, segment=48)
            hc, hg = mc.heads(heads_path), mg.heads(heads_path)
            ids = rng.integers(0, V, 300)
            for label, kw_c, kw_g in (
                    ("h2o", dict(kind=2, slots=96, segment=48), None),
                    ("streaming", dict(kind=3, window=80, segment=48), None),
                    ("lococo", dict(kind=1, heads=hc), dict(kind=1, heads=hg))):
                sc, sg = mc.session(**kw_c), mg.session(**(kw_g or kw_c))
                sc.prefill(ids, False)
                sg.prefill(ids, False)
                for tok in ids[:3]:
                    sc.decode(tok)
                    sg.decode(tok)
                ic, ig = sc.info(), sg.info()
                same = (ic.kv_slots_used, ic.compressions) == (ig.kv_slots_used, ig.compressions)
                chk.add(fixture, dtype, gemm, f"{label}: logits after 300 + 3", rel(sg.logits(), sc.logits()),
                        band if same else -1.0, f"slots {ig.kv_slots_used}/{ic.kv_slots_used}, "
                        f"compressions {ig.compressions}/{ic.compressions}")
                if label != "streaming":
                    kc, vc, scc = sc.cache(1, scores=True)
                    kg, vg, scg = sg.cache(1, scores=True)
                    chk.add(fixture, dtype, gemm, f"{label}: layer 1 keys, values", max(rel(kg, kc), rel(vg, vc)), band)
                    chk.add(fixture, dtype, gemm, f"{label}: layer 1 slot scores", rel(scg, scc), band)
                sc.close()
                sg.close()
            lib.check(lib.l.kf_lococo_heads_free(hc), "free heads")
            lib.check(lib.l.kf_lococo_heads_free(hg), "free heads")
        # mixed-adapter batch decode (BGMV): sessions with adapter A, none, B, A at different lengths
        if adapters:
            ac = [mc.adapter(a) for a in adapters]
            ag = [mg.adapter(a) for a in adapters]
            plan = [0, None, 1, 0]
            ss_c, ss_g = [], []
            for i, a in enumerate(plan):
                pre = rng.integers(0, V, 3 + 5 * i)
                s1, s2 = mc.session(), mg.session()
                if a is not None:
                    s1.set_adapter(ac[a])
                    s2.set_adapter(ag[a])
                p1, p2 = s1.prefill(pre), s2.prefill(pre)
                if i == 0:
                    chk.add(fixture, dtype, gemm, "LoRA prefill logits (adapter A)", rel(p2, p1), band)
                ss_c.append(s1)
                ss_g.append(s2)
            toks = rng.integers(0, V, len(plan))
            bc, bg = batch_decode(lib, ss_c, toks), batch_decode(lib, ss_g, toks)
            chk.add(fixture, dtype, gemm, "mixed-adapter batch decode [4, V]", rel(bg, bc), band)
            for s in ss_c + ss_g:
                s.set_adapter(None)
                s.close()
            for a in ac + ag:
                lib.check(lib.l.kf_adapter_free(a), "free adapter")
    finally:
        mc.close()
        mg.close()


# ---------------------------------------------------------------------------------------------- timing
def time_model(lib, gpu, path, label, *, decode_tokens=128, prefill_tokens=(512,), adapters=None, n_ctx=4096):
    m = Model(gpu, path, "bf16")
    res = {"model": label, "weight_bytes": m.info.weight_bytes, "params": m.info.n_params}
    rng = np.random.default_rng(3)
    V = m.V
    try:
        s = m.session(n_ctx=n_ctx, n_batch=max(prefill_tokens))
        s.prefill(rng.integers(0, V, 16), False)
        for _ in range(8):  # warm-up
            s.decode(int(rng.integers(0, V)))
        times = []
        for _ in range(decode_tokens):
            t0 = time.perf_counter()
            s.decode(int(rng.integers(0, V)))
            times.append(time.perf_counter() - t0)
        res["decode_tok_s"] = 1.0 / float(np.median(times))
        os.environ["KVFOLD_CUDA_GRAPH"] = "0"
        times = []
        for _ in range(decode_tokens // 2):
            t0 = time.perf_counter()
            s.decode(int(rng.integers(0, V)))
            times.append(time.perf_counter() - t0)
        res["decode_eager_tok_s"] = 1.0 / float(np.median(times))
        os.environ["KVFOLD_CUDA_GRAPH"] = "1"
        for n in prefill_tokens:
            best = 1e30
            for _ in range(3):
                lib.check(lib.l.kf_session_reset(s.h), "reset")
                ids = rng.integers(0, V, n)
                t0 = time.perf_counter()
                s.prefill(ids, False)
                best = min(best, time.perf_counter() - t0)
            res[f"prefill{n}_tok_s"] = n / best
            # 2 flops per weight per token (LM head once) + attention 4·n²/2·hidden per layer (causal)
            flops = 2.0 * (m.info.weight_bytes / 2 - V * m.H) * n + 2.0 * V * m.H + \
                4.0 * m.info.layers * m.H * n * n / 2
            res[f"prefill{n}_tflops"] = flops / best / 1e12
        s.close()
        if adapters:
            ads = [m.adapter(a) for a in adapters]
            s = m.session(n_ctx=n_ctx)
            s.prefill(rng.integers(0, V, 16), False)
            t0 = time.perf_counter()
            for i in range(64):
                s.set_adapter(ads[i % 2])
                s.decode(int(rng.integers(0, V)))
            res["lora_switch_decode_tok_s"] = 64 / (time.perf_counter() - t0)
            s.set_adapter(None)
            s.close()
            sess = []
            for i in range(8):
                x = m.session(n_ctx=1024)
                x.set_adapter(ads[i % 2] if i % 4 != 3 else None)
                x.prefill(rng.integers(0, V, 8), False)
                sess.append(x)
            t0 = time.perf_counter()
            for _ in range(16):
                batch_decode(lib, sess, rng.integers(0, V, 8))
            res["mixed_batch8_tok_s"] = 8 * 16 / (time.perf_counter() - t0)
            for x in sess:
                x.set_adapter(None)
                x.close()
            for a in ads:
                lib.check(lib.l.kf_adapter_free(a), "free adapter")
    finally:
        m.close()
    return res


def time_lococo(lib, gpu, path, cfg, lengths, slots=1024, segment=512):
    """LoCoCo prefill throughput: prompts of `lengths` tokens into a cache of `slots` (+ segment) slots."""
    m = Model(gpu, path, "bf16")
    out = {}
    try:
        heads_path = path + "-heads-timing.safetensors"
        make_heads(heads_path, cfg, slots=slots, segment=segment)
        h = m.heads(heads_path)
        rng = np.random.default_rng(5)
        for n in lengths:
            s = m.session(kind=1, heads=h)
            ids = rng.integers(0, m.V, n)
            t0 = time.perf_counter()
            s.prefill(ids, False)
            dt = time.perf_counter() - t0
            i = s.info()
            out[f"lococo_prefill{n}_tok_s"] = n / dt
            out[f"lococo_prefill{n}_compress_s"] = i.compress_ns / 1e9
            out[f"lococo_prefill{n}_kv_bytes"] = i.kv_bytes
            print(f"  lococo prefill {n}: {n / dt:.0f} tok/s, {i.compressions} compressions taking "
                  f"{i.compress_ns / 1e9:.2f} s, KV {i.kv_bytes / 2**20:.0f} MiB")
            s.close()
        lib.check(lib.l.kf_lococo_heads_free(h), "free heads")
    finally:
        m.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true", help="tiny fixtures only, no timing")
    ap.add_argument("--skip-7b", action="store_true")
    ap.add_argument("--long", action="store_true", help="also time LoCoCo prefill at 128k on `small`")
    ap.add_argument("--only-check", action="store_true")
    ap.add_argument("--only-time", action="store_true", help="skip the correctness checks")
    ap.add_argument("--cpu-as-gpu", action="store_true", help="harness self-test without a GPU: cpu vs cpu")
    a = ap.parse_args()
    lib = Lib(os.path.abspath(a.lib))
    print(f"cuda built {lib.l.kf_backend_built(2)}, devices {lib.l.kf_backend_device_count(2)}")
    work = tempfile.mkdtemp(prefix="kvfold-gpu-")
    fx = {}
    tiny = dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=512, max_pos=1024, std=0.1)
    fx["tiny-gqa"] = make_model(f"{work}/tiny-gqa", **tiny)
    fx["tiny-qwen2"] = make_model(f"{work}/tiny-qwen2", **tiny, model_type="qwen2", seed=2)
    fx["tiny-mistral-w8"] = make_model(f"{work}/tiny-mistral-w8", **tiny, model_type="mistral", seed=3,
                                       extra={"sliding_window": 8})
    fx["tiny-llama3rope"] = make_model(f"{work}/tiny-llama3rope", **tiny, seed=4, extra={"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}})
    fx["tiny-k100"] = make_model(f"{work}/tiny-k100", **{**tiny, "inter": 100}, seed=5)  # K % 8 != 0
    fx["hd128-gqa"] = make_model(f"{work}/hd128-gqa", hidden=512, layers=2, heads=4, kv_heads=2, inter=1024,
                                 vocab=1000, max_pos=1024, std=0.05, seed=6)
    fx["hd256"] = make_model(f"{work}/hd256", hidden=512, layers=2, heads=2, kv_heads=1, inter=1024, vocab=1000,
                             max_pos=1024, std=0.05, seed=7)
    if not a.quick:
        fx["small"] = make_model(f"{work}/small", hidden=768, layers=12, heads=12, kv_heads=12, inter=2048,
                                 vocab=32000, max_pos=2048, std=0.02, seed=8)
    adapters = {}
    for name, cfg in fx.items():
        adapters[name] = [f"{work}/{name}-lora-a", f"{work}/{name}-lora-b"]
        make_adapter(adapters[name][0], cfg, rank=8, targets=["q_proj", "v_proj", "o_proj", "down_proj"], seed=11)
        make_adapter(adapters[name][1], cfg, rank=4, targets=["k_proj", "gate_proj", "up_proj"], seed=12)

    chk = Checker()
    cpu = Engine(lib, "cpu")
    cublas_path = os.environ.get("KVFOLD_CUBLAS") or os.environ.get("KVFOLD_CUBLAS_FOUND") or ""
    # (label, KVFOLD_CUBLAS, KVFOLD_CUDA_GRAPH): own GEMM kernels eager and with the decode graph, cuBLAS
    gemms = [("eager", "0", "0"), ("own", "0", "1")] + ([("cublas", cublas_path, "1")] if cublas_path else [])
    if a.cpu_as_gpu:
        gemms = [("cpu", "0", "0")]
    if a.only_time:
        gemms = []
    for gemm, env, graph in gemms:
        os.environ["KVFOLD_CUBLAS"] = env
        os.environ["KVFOLD_CUDA_GRAPH"] = graph
        gpu = Engine(lib, "cpu" if a.cpu_as_gpu else "cuda")
        print(f"cuda engine: {gpu.name}")
        for name, cfg in fx.items():
            for dtype in ("bf16", "f16"):
                try:
                    run_checks(lib, name, f"{work}/{name}", dtype, gemm, chk, cpu, gpu, cfg, adapters[name])
                except Exception as e:  # a failure of one fixture must not hide the others
                    chk.add(name, dtype, gemm, f"ERROR {e}"[:34], float("inf"), BANDS[dtype], str(e)[:200])
        gpu.close()
    cpu.close()
    n_ok = sum(r["ok"] for r in chk.rows)
    print(f"\ncorrectness: {n_ok}/{len(chk.rows)} checks within band")

    report = {"checks": chk.rows, "timing": []}
    if not (a.quick or a.only_check or a.cpu_as_gpu):
        os.environ["KVFOLD_CUBLAS"] = cublas_path or "0"
        os.environ["KVFOLD_CUDA_GRAPH"] = "1"
        gpu = Engine(lib, "cuda")
        bw = gpu.bandwidth(1 << 30, 20)
        rate = gpu.matmul_rate(8192, 8192, 8192, 10)
        rate_2k = gpu.matmul_rate(2048, 4096, 4096, 20)
        report["device"] = gpu.name
        report["copy_bandwidth_GBs"] = bw
        report["matmul_TFLOPs_8192"] = rate
        report["matmul_TFLOPs_2048x4096x4096"] = rate_2k
        os.environ["KVFOLD_CUBLAS"] = "0"
        own = Engine(lib, "cuda")
        report["own_matmul_TFLOPs_8192"] = own.matmul_rate(8192, 8192, 8192, 5)
        own.close()
        print(f"ceilings: copy {bw:.0f} GB/s; matmul {rate:.0f} TFLOP/s (8192^3), {rate_2k:.0f} (2048x4096x4096); "
              f"own kernels {report['own_matmul_TFLOPs_8192']:.0f}")
        rows = [time_model(lib, gpu, f"{work}/small", "small", prefill_tokens=(512, 2048), adapters=adapters["small"])]
        # M = 1024, B = 512: the Conv1d is ~0.4 TFLOP per compression here (~6 on the 7B shape).
        rows[0].update(time_lococo(lib, gpu, f"{work}/small", fx["small"], (32768, 131072) if a.long else (32768,)))
        if not a.skip_7b:
            t0 = time.perf_counter()
            cfg7 = make_model(f"{work}/7b", hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=32000,
                              max_pos=4096, std=0.02, seed=9, pool=True)
            make_adapter(f"{work}/7b-lora-a", cfg7, rank=16, targets=["q_proj", "v_proj"], seed=13)
            make_adapter(f"{work}/7b-lora-b", cfg7, rank=16, targets=["q_proj", "v_proj"], seed=14)
            print(f"7B fixture written in {time.perf_counter() - t0:.0f} s")
            rows.append(time_model(lib, gpu, f"{work}/7b", "7B-shaped", prefill_tokens=(2048,),
                                   adapters=[f"{work}/7b-lora-a", f"{work}/7b-lora-b"]))
            rows[-1].update(time_lococo(lib, gpu, f"{work}/7b", cfg7, (32768,)))
        gpu.close()
        for r in rows:
            r["decode_limit_tok_s"] = bw * 1e9 / r["weight_bytes"]
            r["decode_fraction_of_limit"] = r["decode_tok_s"] / r["decode_limit_tok_s"]
            for k in list(r):
                if k.endswith("_tflops"):
                    r[k.replace("_tflops", "_fraction_of_matmul")] = r[k] / rate_2k
        report["timing"] = rows
        report["lococo_note"] = "cuda LoCoCo: forwards, scores and fusion on the device; the ranking (top-k) on the host"
        print("\n| model | decode tok/s (graph) | eager | limit tok/s | % | prefill 2k tok/s | TFLOP/s | % of matmul | "
              "LoRA switch tok/s | mixed batch 8 tok/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            n = 2048
            print(f"| {r['model']} | {r['decode_tok_s']:.0f} | {r['decode_eager_tok_s']:.0f} | {r['decode_limit_tok_s']:.0f} | "
                  f"{100 * r['decode_fraction_of_limit']:.0f} | {r.get(f'prefill{n}_tok_s', 0):.0f} | "
                  f"{r.get(f'prefill{n}_tflops', 0):.1f} | {100 * r.get(f'prefill{n}_fraction_of_matmul', 0):.0f} | "
                  f"{r.get('lora_switch_decode_tok_s', 0):.0f} | {r.get('mixed_batch8_tok_s', 0):.0f} |")
        for r in rows:
            for k in sorted(r):
                if k.startswith("lococo_prefill") and k.endswith("_tok_s"):
                    n = k[len("lococo_prefill"):-len("_tok_s")]
                    print(f"LoCoCo prefill {r['model']} {n} tokens (M 1024, B 512): {r[k]:.0f} tok/s, compressions "
                          f"{r[f'lococo_prefill{n}_compress_s']:.2f} s, KV {r[f'lococo_prefill{n}_kv_bytes'] / 2**20:.0f} MiB")
        print("targets (H100): 7B decode >= 85% of limit; 2k prefill >= 50% of the matmul rate")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    fails = [r for r in chk.rows if not r["ok"]]
    for r in fails[:20]:
        print(f"FAIL {r['fixture']} {r['dtype']} {r['gemm']} {r['check']}: {r['rel_err']:.2e} {r['note']}")
    print(f"correctness: {n_ok}/{len(chk.rows)} within band; results in {a.out}/gpu.json")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
