"""Measure one exported artifact on its runtime, in this (fresh) process; print one JSON document.

Self-contained on purpose: it imports the standard library, numpy and the runtime it profiles, never
edgehybrid, because the same file is streamed to a device and run there as ``python3 - ARGS < probe.py``.
It runs under Python 3.8+ (older device images), so no newer syntax.

    probe.py ARTIFACT --runtime onnxruntime|litert|coreml|executorch --threads N --warmup N (--runs N | --min-time S)
             [--per-op] [--input-name NAME] [--device LABEL]
    probe.py ARTIFACT ARTIFACT... --side-by-side --runtime R --threads N [--sessions N]

``--side-by-side`` (``--optimize latency`` on a device) loads every artifact in this one process and times
them in alternating rounds (:func:`time_side_by_side`); the document is ``{"side_by_side": {name: {"ms",
"spread", "rounds"}}, "refused": {name: reason}, ...}`` with the runtime, its version, the threads and the
machine.

Order: import the runtime, note RSS (baseline); load the artifact (``load_ms``); build a seeded random
input from the artifact's own input name/shape/dtype (floats uniform in [-1, 1): latency does not depend on
values except through NaN/denormals); time the first inference; ``warmup`` untimed runs; timed runs with
``perf_counter_ns`` around the run call only (ORT ``session.run``; LiteRT's signature runner, which sets the
input, invokes and returns the output, as an app calls it; Core ML ``predict``); peak RSS (VmHWM, else
``ru_maxrss``). Only then, with ``--per-op``, a second, separately created and identically configured session
is profiled, so the profiler's overhead never touches the latency or memory figures. The document follows
``edgehybrid.profile/1`` (``per_op`` adds ``module_source``; ``machine`` adds ``arch``).

Per-op (ONNX Runtime only; LiteRT's, Core ML's and the ExecuTorch wheel's Python APIs expose no per-op timing,
``per_op.missing`` says what to use instead). ORT's profiler ``Node`` events of the last ``runs`` profiled runs
(warmup runs dropped by their ``model_run`` span) are summed per node and divided by the run count. Nodes are ORT's
*executed* kernels (after fusion: ``FusedMatMul``, ``QuickGelu``, NCHWc ``Conv`` ...), joined to the ONNX
graph ORT optimized (saved to a temp file) and from there to the artifact's nodes, which give the module:

* module path: the dynamo exporter's ``pkg.torch.onnx.name_scopes`` / ``namespace`` node metadata when the
  artifact kept it (``module_source: "name scopes"``); otherwise the node's dotted initializer names
  (``stages.2.1.transformer.0.attn.qkv.bias`` -> ``stages.2.1.transformer.0.attn.qkv``; an initializer
  shared by several nodes, e.g. deduplicated by a simplifier, names none of them), and nodes without one
  inherit: from their bias Add when their own weight lost its name (``MatMul(x, val_12)``), else from their
  producer, else their consumer (``"weight names (heuristic)"``; on MobileViT-XXS it gives the same category
  for every node as the name scopes do).
* category, first rule that matches: ``front_end``: any op in a speech model's in-graph feature extraction (a
  module path starting ``frontend``: the DFT convolution, power spectrum, mel matmul and log; only reported when
  present); ``normalization``: a norm op type (LayerNormalization, Skip/Simplified
  LayerNormalization, BatchNormalization, InstanceNormalization, GroupNormalization ...); ``attention``:
  any other op inside an attention module (a path part ``attn``/``attention``/``self_attn``/``*_attn``, a
  scope class named ``*Attention*``, or ``token_mixer`` / ``context_module`` when classes are unknown): the
  q/k/v and output projections (Gemm, MatMul or 1x1 Conv), score MatMuls, Softmax and the reshapes between
  them; a transformer's MLP is *not* attention. With no module information, Softmax, MatMuls with no weight input
  and ORT's fused Attention ops. ``convolution``: Conv/ConvTranspose/FusedConv/QLinearConv...; ``other``:
  the rest (MLPs, activations, layout ops, pooling, head).
* ``by_module``: module paths cut after their second numeric part (``stages.2.1.transformer.0.attn`` ->
  ``stages.2.1``; ``blocks.3.attn`` -> ``blocks.3``; ``stem.conv`` -> ``stem``), top 15 plus the rest.
  ``total_ms`` is kernel time per inference under the profiler: near the latency, a little above it at times.

Exit codes: 0 ok; 2 bad input, missing runtime or a runtime that cannot run here: the last stderr line
is ``probe error (KIND): MESSAGE`` with KIND in usage, input, missing-runtime, unavailable; 3 a bug
(``internal``, after the traceback).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np

SCHEMA = "edgehybrid.profile/1"
MEMORY_METHOD = "fresh process; VmHWM from /proc/self/status (ru_maxrss elsewhere)"
MAX_PROFILED_RUNS = 100  # enough for stable per-op means; bounds the trace of a --min-time run
CONV_OPS = {"Conv", "ConvTranspose", "FusedConv", "NhwcConv", "NhwcFusedConv", "ConvInteger", "QLinearConv"}
NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "GroupNorm",
            "SkipSimplifiedLayerNormalization", "BatchNormalization", "InstanceNormalization",
            "GroupNormalization", "RMSNormalization", "MeanVarianceNormalization", "LpNormalization"}
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "Softmax"}
MATMUL_OPS = {"MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul"}
ATTN_PARTS = {"attn", "attention", "self_attn", "mha"}
FRONT_END_PARTS = {"frontend", "front_end"}


class ProbeError(Exception):
    """A problem the user can fix; ``kind`` tells the caller which error to raise."""

    def __init__(self, kind: str, message: str):
        super().__init__(" ".join(str(message).split()))
        self.kind = kind


# ---------------------------------------------------------------- machine, memory, artifact

def memory_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` from /proc; elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS), the peak so far."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return raw / 2**20 if sys.platform == "darwin" else raw / 1024


def machine_info() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        # x86 says "model name"; ARM boards say "Model" / "Hardware" (or nothing)
        cpu = next((fields[k] for k in ("model name", "Model", "Hardware", "cpu model") if fields.get(k)), "")
    except OSError:
        pass
    if not cpu and sys.platform == "darwin":
        import subprocess

        try:
            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {"cpu_model": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "platform": sys.platform, "python": platform.python_version(), "arch": platform.machine()}


def digest(path: str):
    """(size in bytes, sha256); a directory (.mlpackage) hashes its files' relative paths and contents, sorted."""
    sha, size = hashlib.sha256(), 0
    if os.path.isdir(path):
        files = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
    else:
        files = [None]
    for rel in files:
        full = path if rel is None else os.path.join(path, rel)
        if rel is not None:
            sha.update(rel.replace(os.sep, "/").encode() + b"\0")
        with open(full, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
                size += len(block)
    return size, sha.hexdigest()


def random_input(shape, dtype: str, rng) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -128), min(info.max, 255), size=shape, endpoint=True).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(bool)
    raise ProbeError("input", "cannot build a random input of dtype %s" % dtype)


def seeded_feeds(inputs) -> dict:
    """One seeded random array per ``(name, shape, dtype)`` input: every profile of a model gets the same."""
    rng = np.random.default_rng(0)
    return {name: random_input(shape, dtype, rng) for name, shape, dtype in inputs}


def latency_stats(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])  # linear interpolation (numpy's default)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min": float(a.min()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


# ---------------------------------------------------------------- ONNX graph, read without the onnx package

def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """(field number, value) of one protobuf message; length-delimited values as memoryview slices."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
        yield key >> 3, value


def _text(v) -> str:
    return bytes(v).decode("utf-8", "replace")


def read_onnx_graph(path: str):
    """Nodes (name, op, inputs, outputs, metadata) and initializer names of an ONNX model's main graph.

    ModelProto.graph=7; GraphProto.node=1, initializer=5; NodeProto input=1, output=2, name=3, op_type=4,
    metadata_props=9; TensorProto.name=8; StringStringEntryProto key=1, value=2.
    """
    with open(path, "rb") as fh:
        data = memoryview(fh.read())
    graph = next((v for f, v in _fields(data) if f == 7), None)
    nodes, inits = [], set()
    for f, v in _fields(graph if graph is not None else b""):
        if f == 1:
            node = {"name": "", "op": "", "inputs": [], "outputs": [], "meta": {}}
            for nf, nv in _fields(v):
                if nf in (1, 2):
                    node["inputs" if nf == 1 else "outputs"].append(_text(nv))
                elif nf in (3, 4):
                    node["name" if nf == 3 else "op"] = _text(nv)
                elif nf == 9:
                    kv = dict(_fields(nv))
                    node["meta"][_text(kv.get(1, b""))] = _text(kv.get(2, b""))
            nodes.append(node)
        elif f == 5:
            inits.add(next((_text(tv) for tf, tv in _fields(v) if tf == 8), ""))
    return nodes, inits


def _scopes(meta: dict):
    """(module path, scope classes) from the dynamo exporter's node metadata, or None."""
    try:
        if "pkg.torch.onnx.name_scopes" in meta:
            names = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
            classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        elif "namespace" in meta:  # "path: Class/path: Class/.../op: aten.op"
            pairs = [p.split(": ", 1) for p in meta["namespace"].split("/")]
            names, classes = [p[0] for p in pairs], [p[-1] for p in pairs]
        else:
            return None
    except (ValueError, SyntaxError):
        return None
    # the last entry is the op itself; the first the root model (its class name says nothing of a block)
    return (names[-2] if len(names) >= 2 else ""), [str(c) for c in classes[1:-1]]


def _param_module(name: str, inits: set, uses: dict):
    if name in inits and uses.get(name) == 1 and "." in name and not name.startswith(("val_", "_v_", "onnx::")):
        return name.rsplit(".", 1)[0]
    return None


def assign_modules(nodes, inits, known=None) -> dict:
    """{node name: (module path, scope classes)}: known, else name scopes, else weights, else neighbours."""
    uses, producer, consumers = {}, {}, {}
    for n in nodes:
        for i in n["inputs"]:
            uses[i] = uses.get(i, 0) + 1
            consumers.setdefault(i, []).append(n["name"])
        for o in n["outputs"]:
            producer[o] = n["name"]
    out = {}
    for n in nodes:
        hit = (known or {}).get(n["name"]) or _scopes(n["meta"])
        if hit is None:
            mod = next((m for m in (_param_module(i, inits, uses) for i in n["inputs"]) if m), None)
            hit = (mod, []) if mod else None
        if hit is not None:
            out[n["name"]] = hit
    for n in reversed(nodes):  # a layer op whose weight lost its name (MatMul by val_12) -> its bias Add
        if n["name"] not in out and any(i in inits and "." not in i for i in n["inputs"]):
            dst = next((c for o in n["outputs"] for c in consumers.get(o, []) if c in out), None)
            if dst:
                out[n["name"]] = out[dst]
    for n in nodes:  # forward: the first input whose producer is mapped (nodes are in topological order)
        if n["name"] not in out:
            src = next((producer[i] for i in n["inputs"] if producer.get(i) in out), None)
            if src:
                out[n["name"]] = out[src]
    for n in reversed(nodes):  # backward: what feeds the first mapped node (e.g. a layout op before the stem)
        if n["name"] not in out:
            dst = next((c for o in n["outputs"] for c in consumers.get(o, []) if c in out), None)
            if dst:
                out[n["name"]] = out[dst]
    return out


def in_attention(path: str, classes) -> bool:
    parts = [p.lower() for p in path.split(".")]
    if any(p in ATTN_PARTS or p.endswith("_attn") for p in parts):
        return True
    if classes:
        return any("attention" in c.rsplit(".", 1)[-1].lower() for c in classes)
    # weight names only: a pooling token mixer has no weights to be found by; EfficientViT's linear attention
    # sits in its blocks' context_module
    return "token_mixer" in parts or "context_module" in parts


def category(op: str, module, weightless_matmul: bool) -> str:
    if module is not None and module[0].split(".")[0].lower() in FRONT_END_PARTS:
        return "front_end"
    if op in NORM_OPS:
        return "normalization"
    if module is not None and in_attention(*module):
        return "attention"
    if op in CONV_OPS:
        return "convolution"
    if module is None and (op in ATTENTION_OPS or (op in MATMUL_OPS and weightless_matmul)):
        return "attention"
    return "other"


def block_of(path: str) -> str:
    """Cut a module path after its second numeric part (stage.block), else its last, else its first part."""
    parts = path.split(".")
    numeric = [i for i, p in enumerate(parts) if p.isdigit()]
    cut = numeric[1] if len(numeric) > 1 else (numeric[0] if numeric else 0)
    return ".".join(parts[:cut + 1]) or "(root)"


def _join(opt_nodes, orig_nodes, orig_mod) -> dict:
    """Modules of ORT's optimized nodes, found through the artifact's node and tensor names.

    ORT keeps most node names, names fused nodes ``<first node>/<Fusion>/`` and NCHWc convolutions
    ``<output tensor>_nchwc``; layout ops it inserts match nothing and are left to propagation.
    """
    producer = {o: n["name"] for n in orig_nodes for o in n["outputs"]}
    known = {}
    for n in opt_nodes:
        names = [n["name"], n["name"].split("/")[0]] + list(n["outputs"])
        names += [x[:-len("_nchwc")] for x in names if x.endswith("_nchwc")]
        hit = next((orig_mod[c] for c in names + [producer.get(x) for x in names] if c in orig_mod), None)
        if hit is not None:
            known[n["name"]] = hit
    return known


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300] + ("..." if len(text) > 300 else "")


def _missing(package: str, install: str, hint: str = "") -> ProbeError:
    python = sys.executable or "python3"
    return ProbeError("missing-runtime", "%s is not installed for %s (Python %s); install it there with: "
                      "%s -m pip install %s%s" % (package, python, platform.python_version(), python, install, hint))


# ---------------------------------------------------------------- runtime versions
# edgehybrid.requires re-exports these: the host and the device read a manifest's "requires" alike.

#: LiteRT (ai-edge-litert) continues TensorFlow Lite's runtime after TF 2.17 under its own numbering, so it
#: meets every tflite-runtime minimum a converter writes (those are TF 2.x versions)
SUCCESSORS = {"tflite-runtime": ("ai-edge-litert",)}


def version_tuple(text):
    """``"1.17.3"`` -> (1, 17, 3); ``"2.14.0rc1"`` -> (2, 14, 0); None when it starts with no number."""
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", str(text))
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def satisfies(version, spec):
    """Whether ``version`` meets ``spec`` (``">=1.14"``); None when either cannot be read."""
    spec = str(spec)
    have, need = version_tuple(version), version_tuple(spec[2:]) if spec.startswith(">=") else None
    if have is None or need is None:
        return None
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def unmet(requires, package, version):
    """The warning for running an artifact that ``requires`` (a manifest's field) on ``package`` ``version``;
    None when it is met, or when ``requires`` says nothing about that runtime."""
    for key, spec in (requires or {}).items():
        if package in SUCCESSORS.get(key, ()):
            return None
        if key == package and satisfies(version, spec) is False:
            return ("%s %s is older than the artifact needs (%s%s, from its manifest): it may refuse the file or "
                    "miss an op; upgrade %s, or re-export with --min-runtime %s" % (package, version, key, spec,
                                                                                   package, version))
    return None


# ---------------------------------------------------------------- runtimes

class OnnxProbe:
    """ONNX Runtime, CPU, configured as edgehybrid's validation runs it (so the figures match a deployment)."""

    name = "onnxruntime"
    dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(bool)": "bool"}

    def __init__(self):
        try:
            import onnxruntime
        except ImportError:
            raise _missing("onnxruntime", "onnxruntime") from None
        self.ort, self.version, self.package = onnxruntime, onnxruntime.__version__, "onnxruntime"
        self.backend = "onnxruntime %s CPUExecutionProvider" % self.version
        self.arena = (None, "ONNX Runtime reports its arena only through its profiler: pass --per-op")

    def _options(self, threads: int):
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return opts

    def _session(self, path: str, opts):
        return self.ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def load(self, path: str, threads: int) -> None:
        if os.path.isdir(path):
            raise ProbeError("input", "ONNX artifact %r is a folder, not an .onnx file" % path)
        try:
            self.sess = self._session(path, self._options(threads))
        except Exception as exc:  # noqa: BLE001 - ORT raises several pybind types for bad files
            raise ProbeError("input", "ONNX Runtime cannot load %r: not a valid ONNX model, or its weights file "
                             "is missing (%s)" % (path, _short(exc))) from None
        # a dynamic dimension (a name or None) is fed as 1: a batch of one image
        self.inputs = [(a.name, [d if isinstance(d, int) and d > 0 else 1 for d in a.shape],
                        self.dtypes.get(a.type, "float32")) for a in self.sess.get_inputs()]

    def prepare(self, feeds: dict) -> None:
        self.feeds = feeds

    def run(self) -> None:
        self.sess.run(None, self.feeds)

    def per_op(self, path: str, threads: int, warmup: int, runs: int) -> dict:
        """Profile a second, identical session: 1 + warmup dropped runs, then ``runs`` profiled ones."""
        import bisect

        runs = max(1, min(runs, MAX_PROFILED_RUNS))
        tmp = tempfile.mkdtemp(prefix="edgehybrid-probe-")
        try:
            opts = self._options(threads)
            opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(tmp, "ort")
            opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")  # to join kernels to modules
            try:
                sess = self._session(path, opts)
            except Exception:  # noqa: BLE001 - e.g. past protobuf's 2 GB: profile without the optimized graph
                opts.optimized_model_filepath = ""
                sess = self._session(path, opts)
            for _ in range(1 + warmup + runs):
                sess.run(None, self.feeds)
            with open(sess.end_profiling()) as fh:
                events = json.load(fh)
            try:
                optimized = read_onnx_graph(opts.optimized_model_filepath)
            except (OSError, ValueError, IndexError):
                optimized = None  # e.g. too large to save: join on the artifact's names alone
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                       if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
        starts, per_node, arena = [s for s, _ in spans], {}, 0
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            arena = max(arena, int(e.get("args", {}).get("mem_arena_held", 0) or 0))
            k = bisect.bisect_right(starts, e["ts"]) - 1
            if k < 0 or e["ts"] > spans[k][1]:
                continue  # a dropped (warmup) run
            slot = per_node.setdefault(e["name"][:-len("_kernel_time")], [0.0, e["args"].get("op_name", "?")])
            slot[0] += e["dur"]
        if arena:
            self.arena = (arena / 2**20, "ONNX Runtime's CPU arena at its largest, from the per-op profile of "
                          "an identically configured session (mem_arena_held)")
        return summarize_ops(per_node, len(spans), path, optimized)


def summarize_ops(per_node: dict, n_runs: int, path: str, optimized) -> dict:
    """by_op_type / by_category / by_module per inference from {node: [total µs, op type]}."""
    orig_nodes, orig_inits = read_onnx_graph(path)
    orig_mod = assign_modules(orig_nodes, orig_inits)
    if optimized is not None:
        nodes, inits = optimized
    else:  # only the kernels' names: still joinable, without ORT's graph around them
        nodes = [{"name": k, "op": v[1], "inputs": [], "outputs": [], "meta": {}} for k, v in per_node.items()]
        inits = set()
    modules = assign_modules(nodes, inits, _join(nodes, orig_nodes, orig_mod))
    source = ("name scopes" if any(_scopes(n["meta"]) for n in orig_nodes)
              else "weight names (heuristic)" if orig_mod else None)
    by_name = {n["name"]: n for n in nodes}
    total = sum(us for us, _ in per_node.values()) or 1.0
    by_type, by_mod, by_path = {}, {}, {}
    cats = dict.fromkeys(("front_end", "attention", "convolution", "normalization", "other"), 0.0)
    for name, (us, op) in per_node.items():
        node, module = by_name.get(name), modules.get(name)
        weightless = node is not None and not any(i in inits for i in node["inputs"])
        cats[category(op, module, weightless)] += us
        slot = by_type.setdefault(op, [0.0, 0])
        slot[0], slot[1] = slot[0] + us, slot[1] + 1
        key = block_of(module[0]) if module else "(unmapped)"
        by_mod[key] = by_mod.get(key, 0.0) + us
        if module:
            by_path[module[0]] = by_path.get(module[0], 0.0) + us

    def ms(us):
        return us / n_runs / 1000.0

    mods = sorted(by_mod.items(), key=lambda kv: -kv[1])
    if len(mods) > 16:
        mods = mods[:15] + [("(%d more)" % (len(mods) - 15), sum(us for _, us in mods[15:]))]
    return {
        "source": "onnxruntime profiler", "total_ms": ms(total), "runs": n_runs,
        "by_op_type": [{"op_type": op, "ms": ms(us), "share": us / total, "count": c}
                       for op, (us, c) in sorted(by_type.items(), key=lambda kv: -kv[1][0])],
        "by_category": {k: v / total for k, v in cats.items() if v or k != "front_end"},
        "by_module": [{"module": m, "ms": ms(us), "share": us / total} for m, us in mods] if source else None,
        "by_path": {m: ms(us) for m, us in by_path.items()} if source else None,
        "module_source": source, "missing": None,
    }


def _no_per_op(reason: str) -> dict:
    return {"source": None, "total_ms": None, "runs": None, "by_op_type": None, "by_category": None,
            "by_module": None, "by_path": None, "module_source": None, "missing": reason}


class LiteRTProbe:
    """LiteRT's CPU interpreter (ai-edge-litert, else tflite-runtime), default delegates (XNNPACK)."""

    name = "litert"
    arena = (None, "LiteRT's Python interpreter does not expose its arena size")

    def __init__(self):
        try:
            from ai_edge_litert.interpreter import Interpreter
            package = "ai-edge-litert"
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
                package = "tflite-runtime"
            except ImportError:
                raise _missing("LiteRT", "ai-edge-litert",
                               " (or tflite-runtime where ai-edge-litert has no wheel)") from None
        try:
            from importlib.metadata import version

            self.version = version(package)
        except Exception:  # noqa: BLE001 - metadata missing in some vendor builds
            self.version = "unknown"
        self.interpreter_cls, self.backend, self.package = Interpreter, "%s %s" % (package, self.version), package

    def load(self, path: str, threads: int) -> None:
        if not os.path.isfile(path):
            raise ProbeError("input", "TFLite model %r is not a file" % path)
        try:
            self.interp = self.interpreter_cls(model_path=path, num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ProbeError("input", "cannot load TFLite model %r: not a valid .tflite file (%s)"
                             % (path, _short(exc))) from None
        sigs = self.interp.get_signature_list() if hasattr(self.interp, "get_signature_list") else {}
        self.runner = self.interp.get_signature_runner(next(iter(sigs))) if sigs else None
        details = (self.runner.get_input_details().items() if self.runner
                   else [(d["name"], d) for d in self.interp.get_input_details()])
        self.index = {n: d.get("index") for n, d in details}
        self.inputs = [(n, [int(x) for x in d["shape"]], np.dtype(d["dtype"]).name) for n, d in details]

    def prepare(self, feeds: dict) -> None:
        if self.runner is not None:
            self._call = lambda: self.runner(**feeds)  # sets inputs, invokes, returns outputs: what an app calls
        else:
            for name, array in feeds.items():
                self.interp.set_tensor(self.index[name], array)
            self._call = self.interp.invoke

    def run(self) -> None:
        self._call()

    def per_op(self, path, threads, warmup, runs) -> dict:
        return _no_per_op("LiteRT's Python interpreter exposes no per-op timing; run LiteRT's benchmark_model "
                          "tool with --graph=%s --num_threads=%d --enable_op_profiling=true on the device"
                          % (os.path.basename(path), threads))


class CoreMLProbe:
    """Core ML through coremltools (macOS only), compute units ALL, as an app would run it."""

    name = "coreml"
    arena = (None, "Core ML does not report its memory; part of it may live outside this process")

    def __init__(self):
        if sys.platform != "darwin":
            raise ProbeError("unavailable", "Core ML models cannot be executed on %s (Core ML exists only on "
                             "Apple platforms); run on macOS" % (platform.system() or sys.platform))
        try:
            import coremltools
        except ImportError:
            raise _missing("coremltools", "coremltools") from None
        self.ct, self.version = coremltools, coremltools.__version__
        self.package, self.os_version = "macOS", platform.mac_ver()[0]  # the manifest requires an OS release
        self.backend = "Core ML (macOS %s) via coremltools %s, compute units ALL" % (platform.mac_ver()[0],
                                                                                    self.version)

    def load(self, path: str, threads: int) -> None:  # threads: Core ML schedules its own work
        try:
            self.model = self.ct.models.MLModel(path, compute_units=self.ct.ComputeUnit.ALL)
            spec = self.model.get_spec()
        except Exception as exc:  # noqa: BLE001 - Core ML's load/compile errors come as several types
            raise ProbeError("input", "Core ML cannot load %r (%s)" % (path, _short(exc))) from None
        self.inputs = []
        for inp in spec.description.input:
            if inp.type.WhichOneof("Type") != "multiArrayType":
                raise ProbeError("input", "input %r of %r is not a multi-array; the probe feeds arrays only"
                                 % (inp.name, path))
            arr = inp.type.multiArrayType
            kind = arr.DESCRIPTOR.fields_by_name["dataType"].enum_type.values_by_number[arr.dataType].name
            dtype = {"FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}.get(kind, "float32")
            self.inputs.append((inp.name, [int(d) for d in arr.shape], dtype))

    def prepare(self, feeds: dict) -> None:
        self.feeds = feeds

    def run(self) -> None:
        self.model.predict(self.feeds)

    def per_op(self, path, threads, warmup, runs) -> dict:
        return _no_per_op("Core ML exposes no per-op timing to Python; use Xcode's Core ML performance report "
                          "or Instruments' Core ML template on the Mac")


class ExecuTorchProbe:
    """ExecuTorch's Python runtime (the ``executorch`` wheel): XNNPACK and the portable kernels, one thread
    pool per process sized before the program loads."""

    name = "executorch"
    arena = (None, "ExecuTorch plans its memory ahead of time inside the program; the Python runtime does not "
                   "report it")
    _DTYPES = {6: "float32", 5: "float16", 7: "float64", 0: "uint8", 1: "int8", 3: "int32", 4: "int64"}

    def __init__(self):
        try:
            import torch  # noqa: F401  the runtime's tensors
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime, Verification
        except ImportError:
            raise _missing("ExecuTorch", "executorch") from None
        try:
            from importlib.metadata import version

            self.version = version("executorch")
        except Exception:  # noqa: BLE001
            self.version = "unknown"
        self.lib, self.runtime, self.verification = portable_lib, Runtime, Verification
        self.backend, self.package = "ExecuTorch %s (XNNPACK + portable kernels)" % self.version, "executorch"

    def load(self, path: str, threads: int) -> None:
        import struct

        if not os.path.isfile(path):
            raise ProbeError("input", "ExecuTorch program %r is not a file" % path)
        with open(path, "rb") as fh:  # the runtime aborts the process on some corrupt files: check first
            head = fh.read(40)
        if len(head) < 16 or head[4:6] != b"ET":
            raise ProbeError("input", "%r is not an ExecuTorch program (.pte): no ExecuTorch file identifier"
                             % path)
        if head[8:12] == b"eh00" and len(head) >= 40:
            _, size, base, seg = struct.unpack_from("<IQQQ", head, 12)
            if os.path.getsize(path) < max(size, base + seg if seg else 0):
                raise ProbeError("input", "%r is truncated (its header declares more bytes than it has)" % path)
        self.lib._unsafe_reset_threadpool(int(threads))  # only safe before a method is loaded
        try:
            program = self.runtime.get().load_program(path, verification=self.verification.InternalConsistency)
            self.method = program.load_method("forward")
            meta = program.metadata("forward")
        except Exception as exc:  # noqa: BLE001
            raise ProbeError("input", "ExecuTorch cannot load %r (%s)" % (path, _short(exc))) from None
        self.inputs = []
        for i in range(meta.num_inputs()):
            info = meta.input_tensor_meta(i)
            self.inputs.append(("input" if i == 0 else "input_%d" % i, [int(d) for d in info.sizes()],
                                self._DTYPES.get(int(info.dtype()), "float32")))

    def prepare(self, feeds: dict) -> None:
        import torch

        self.tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name, _, _ in self.inputs]

    def run(self) -> None:
        self.method.execute(self.tensors)

    def per_op(self, path, threads, warmup, runs) -> dict:
        return _no_per_op("the executorch wheel is built without ExecuTorch's event tracer, so it writes no "
                          "ETDump; build the runtime with EXECUTORCH_ENABLE_EVENT_TRACER=ON and read the ETDump "
                          "with executorch.devtools.Inspector for per-operator time")


RUNTIMES = {"onnxruntime": OnnxProbe, "litert": LiteRTProbe, "coreml": CoreMLProbe, "executorch": ExecuTorchProbe}


# ---------------------------------------------------------------- measurement

#: seconds of timing per artifact and round, and the rounds, of a side-by-side comparison
ROUND_S = 0.15
ROUNDS = 5


def time_side_by_side(runs, rounds=ROUNDS, round_s=ROUND_S, calls=None) -> dict:
    """Each artifact's latency in ms, measured in alternating rounds in one process: the one timing loop of the
    latency search (here and on a device) and of the INT8 benchmarks. ``runs``: name -> a zero-argument callable,
    or a list of them (sessions of one file: ONNX Runtime sessions of one file in one process settle at levels up
    to 2x apart). Per round, every session of every artifact runs one untimed call, then ``calls`` timed calls
    (by default enough to last ``round_s``); the round's figure is its fastest session's median. Returns, per
    name, ``rounds`` (each round's figure), ``ms`` (their minimum: a burst of load only adds time) and ``spread``
    (slowest round over fastest). Ratios between artifacts are :func:`paired_ratio` of their rounds."""
    groups = {name: list(call) if isinstance(call, (list, tuple)) else [call] for name, call in runs.items()}
    per_call = {}
    for name, sessions in groups.items():
        for call in sessions:
            for _ in range(3):
                call()
        t = time.perf_counter()
        sessions[0]()
        per_call[name] = max(time.perf_counter() - t, 1e-5)
    figures = {name: [] for name in groups}
    for _ in range(rounds):
        for name, sessions in groups.items():
            n = calls or max(5, min(200, int(round_s / per_call[name])))
            best = float("inf")
            for call in sessions:
                call()
                times = []
                for _ in range(n):
                    t = time.perf_counter_ns()
                    call()
                    times.append((time.perf_counter_ns() - t) / 1e6)
                best = min(best, statistics.median(times))
            figures[name].append(best)
    return {name: {"ms": round(min(f), 4), "spread": round(max(f) / min(f), 3), "rounds": [round(x, 4) for x in f]}
            for name, f in figures.items()}


def paired_ratio(base, other) -> float:
    """``base``'s round figures over ``other``'s, paired by round: the median of each round's ratio. A machine
    moves between speed levels from one round to the next (a 2-vCPU VM: ONNX Runtime on ``efficientformer_l1``
    read FP32 21.1 / INT8 15.5 ms for a minute, then 17.7 / 11.4 ms, nothing else running), and int8 kernels move
    further than float ones; a ratio of two summaries can pair one artifact's slow rounds with the other's fast
    ones (1.12x printed where every paired round read 1.4-1.5x). A round's two figures are seconds apart and
    share a level."""
    if not base or len(base) != len(other):
        raise ValueError("paired_ratio needs the same number of rounds on both sides, got %d and %d"
                         % (len(base), len(other)))
    return statistics.median(b / o for b, o in zip(base, other))


def side_by_side(args) -> dict:
    """Every artifact of ``args`` loaded on its runtime in this process, ``args.sessions`` times, and timed by
    :func:`time_side_by_side`. An artifact the runtime cannot load or run is named in ``refused`` with the
    runtime's reason, and the others are still timed: a latency search skips that candidate, as it does one
    refused here."""
    runs, refused, version = {}, {}, None
    for path in args.artifacts:
        if not os.path.exists(path):
            raise ProbeError("input", "artifact %r does not exist" % path)
        name = os.path.basename(os.path.normpath(path))
        calls = []
        try:
            for _ in range(args.sessions):
                rt = RUNTIMES[args.runtime]()
                rt.load(path, args.threads)
                rt.prepare(seeded_feeds(rt.inputs))
                rt.run()
                calls.append(rt.run)
                version = rt.version
        except ProbeError as exc:
            if exc.kind != "input":  # the runtime itself is missing or too old: nothing can be timed
                raise
            refused[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - the runtime loads it but cannot execute it
            refused[name] = "%s failed running %s: %s" % (args.runtime, name, _short(exc))
        else:
            runs[name] = calls
    return {"schema": SCHEMA, "side_by_side": time_side_by_side(runs) if runs else {}, "refused": refused,
            "rounds": ROUNDS, "round_s": ROUND_S, "sessions": args.sessions,
            "statistic": "minimum of round medians, each round's fastest session", "runtime": args.runtime,
            "runtime_version": version, "threads": args.threads, "machine": machine_info(), "device": args.device}


def measure(args) -> dict:
    path = args.artifact
    if not os.path.exists(path):
        raise ProbeError("input", "artifact %r does not exist" % path)
    rt = RUNTIMES[args.runtime]()  # imports the runtime: part of the baseline, not of the model
    requirement = None
    if args.requires:
        warning = unmet(args.requires, rt.package, getattr(rt, "os_version", rt.version))
        requirement = {"requires": args.requires, "met": warning is None, "warning": warning}
        if warning:  # said before the runtime sees the file: an old runtime may refuse it, and this says why
            print("probe warning: " + warning, file=sys.stderr)
            sys.stderr.flush()
    baseline = memory_mb("VmRSS")
    t = time.perf_counter_ns()
    try:
        rt.load(path, args.threads)
    except ProbeError as exc:
        if requirement and requirement["warning"]:
            raise ProbeError(exc.kind, "%s (%s)" % (exc, requirement["warning"])) from None
        raise
    load_ms = (time.perf_counter_ns() - t) / 1e6
    names = [i[0] for i in rt.inputs]
    if args.input_name and args.input_name not in names:
        raise ProbeError("input", "%s has no input %r; its inputs are: %s" % (path, args.input_name, ", ".join(names)))
    rt.prepare(seeded_feeds(rt.inputs))
    try:
        t = time.perf_counter_ns()
        rt.run()
        first_ms = (time.perf_counter_ns() - t) / 1e6
        for _ in range(args.warmup):
            rt.run()
    except Exception as exc:  # noqa: BLE001 - the runtime cannot execute this artifact: the user's to fix
        note = " (%s)" % requirement["warning"] if requirement and requirement["warning"] else ""
        raise ProbeError("input", "%s failed running %s: %s%s" % (args.runtime, os.path.basename(path), _short(exc),
                                                                 note))
    samples, start = [], time.perf_counter()
    while (len(samples) < args.runs) if args.runs else (time.perf_counter() - start < args.min_time):
        t = time.perf_counter_ns()
        rt.run()
        samples.append((time.perf_counter_ns() - t) / 1e6)
    peak = memory_mb("VmHWM")  # before any per-op session adds its own
    per_op = rt.per_op(path, args.threads, args.warmup, len(samples)) if args.per_op else None
    size, sha = digest(path)
    shown = next(i for i in rt.inputs if i[0] == (args.input_name or names[0]))
    stats = latency_stats(samples)
    batch = shown[1][0] if shown[1] else 1
    return {
        "schema": SCHEMA, "artifact": path, "artifact_name": os.path.basename(os.path.normpath(path)),
        "size_bytes": size, "sha256": sha, "runtime": rt.name, "runtime_version": rt.version,
        "backend": rt.backend, "threads": args.threads, "warmup": args.warmup, "runs": len(samples),
        "min_time_s": args.min_time, "machine": machine_info(),
        "input": {"name": shown[0], "shape": shown[1], "dtype": shown[2]},
        "load_ms": load_ms, "first_inference_ms": first_ms, "latency_ms": stats,
        "throughput_ips": batch * 1000.0 / stats["mean"] if stats["mean"] > 0 else None,
        "samples_ms": [round(s, 4) for s in samples],
        "memory": {"baseline_rss_mb": baseline, "peak_rss_mb": peak, "peak_above_baseline_mb": peak - baseline,
                   "arena_mb": rt.arena[0], "arena_note": rt.arena[1], "method": MEMORY_METHOD},
        "per_op": per_op, "device": args.device, "requirement": requirement,
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2: the caller reports it as is
        raise ProbeError("usage", message)


def parse_args(argv):
    p = _Parser(prog="probe.py", description="Profile one artifact on its runtime; prints one JSON document.")
    p.add_argument("artifacts", nargs="+", metavar="artifact")
    p.add_argument("--side-by-side", action="store_true",
                   help="time several artifacts in alternating rounds in this process")
    p.add_argument("--sessions", type=int, default=1,
                   help="with --side-by-side: sessions per artifact, each round's fastest counting")
    p.add_argument("--runtime", required=True, choices=sorted(RUNTIMES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    how = p.add_mutually_exclusive_group(required=False)
    how.add_argument("--runs", type=int)
    how.add_argument("--min-time", type=float, help="seconds of timed runs (at least one run)")
    p.add_argument("--per-op", action="store_true")
    p.add_argument("--input-name", help="the input to report (all inputs are fed)")
    p.add_argument("--device", default="local", help="label for the 'device' field")
    p.add_argument("--requires", action="append", default=[], metavar="RUNTIME>=VERSION",
                   help="the artifact's minimum runtime (from its manifest), checked before loading; repeatable")
    args = p.parse_args(argv)
    if args.threads < 1 or args.warmup < 0:
        raise ProbeError("usage", "--threads must be at least 1 and --warmup at least 0")
    if args.side_by_side:
        if len(args.artifacts) < 2 or args.runs is not None or args.min_time is not None or args.per_op:
            raise ProbeError("usage", "--side-by-side times two or more artifacts by its own rounds: no --runs, "
                                      "--min-time or --per-op")
        if args.sessions < 1:
            raise ProbeError("usage", "--sessions must be at least 1, got %d" % args.sessions)
        return args
    if args.sessions != 1:
        raise ProbeError("usage", "--sessions applies to --side-by-side only")
    if len(args.artifacts) != 1:
        raise ProbeError("usage", "one artifact at a time (--side-by-side compares several)")
    if args.runs is None and args.min_time is None:
        raise ProbeError("usage", "one of the arguments --runs --min-time is required")
    args.artifact = args.artifacts[0]
    requires = {}
    for item in args.requires:
        key, sep, minimum = item.partition(">=")
        if not sep or not key.strip() or version_tuple(minimum) is None:
            raise ProbeError("usage", "--requires takes RUNTIME>=VERSION, got %r" % item)
        requires[key.strip()] = ">=" + minimum.strip()
    args.requires = requires
    if args.runs is not None and args.runs < 1:
        raise ProbeError("usage", "--runs must be at least 1, got %d" % args.runs)
    if args.min_time is not None and not args.min_time > 0:
        raise ProbeError("usage", "--min-time must be a positive number of seconds, got %s" % args.min_time)
    return args


def main(argv=None) -> int:
    saved = os.dup(1)
    os.dup2(2, 1)  # a runtime's own chatter on fd 1 goes to stderr: stdout carries the JSON alone
    code, doc = 0, None
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        doc = side_by_side(args) if args.side_by_side else measure(args)
    except ProbeError as exc:
        print("probe error (%s): %s" % (exc.kind, exc), file=sys.stderr)
        code = 2
    except Exception as exc:  # noqa: BLE001 - a bug: traceback for the maintainer, then the one line
        traceback.print_exc()
        print("probe error (internal): %s: %s" % (type(exc).__name__, _short(exc)), file=sys.stderr)
        code = 3
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if doc is not None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
