"""Which ONNX format an ONNX file declares, the lowest that holds what it uses, and the ONNX Runtime it needs.

A file declares an opset (per domain) and an IR version. onnx stamps the newest IR version it knows (10 with
onnx 1.23), which older runtimes refuse ("Unsupported model IR version: 10, max supported IR version: 9")
although nothing in the file needs it. :func:`stamp_lowest` rewrites both declarations to the lowest values
that hold the graph *as written*: the opset is the newest ``since_version`` among the schemas its nodes
resolve to (each node means exactly the same at that opset), the IR version the lowest one onnx pairs with
that opset and with the element types present. No node changes.

The runtime a file needs is then read from the file (:func:`ort_requirement`), through the one table that
cannot be read from it: which opset and IR version each ONNX Runtime release implements.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from edgehybrid.errors import InputError
from edgehybrid.requires import parse_floor
from edgehybrid.targets import get_target

#: 18 is the opset torch's dynamo exporter builds in (17 goes through onnxscript's version converter; asking
#: for less silently writes 18). The file then declares the lowest opset holding its nodes as written
#: (:func:`stamp_lowest`), 17 or 18 here, with IR version 8: ONNX Runtime >= 1.13 / 1.14. Opset 20
#: only adds a native Gelu op (at 18 an Erf pattern); an interleaved A/B of deit_tiny / efficientformer_l1 on
#: ORT CPU showed no latency difference.
DEFAULT_OPSET = 18

#: ONNX Runtime release -> (newest ai.onnx opset, newest IR version) it implements, from ONNX Runtime's
#: compatibility table (onnxruntime.ai/docs/reference/compatibility.html). Only the releases the opsets of
#: :data:`OPSETS` need; the tests run the artifacts on the oldest of them that has Python 3.11 wheels (1.15).
ORT_RELEASES: dict[tuple[int, int], tuple[int, int]] = {
    (1, 6): (13, 7),
    (1, 8): (14, 7),
    (1, 10): (15, 8),
    (1, 12): (16, 8),
    (1, 13): (17, 8),
    (1, 14): (18, 8),
    (1, 15): (19, 9),
    (1, 16): (19, 9),
    (1, 17): (20, 9),
    (1, 18): (21, 10),
}
#: opsets ``--opset`` takes (the target's registration): from 13, the oldest the table above holds, to 21.
#: A model with LayerNormalization (every attention block here) needs 17: below, the export is refused naming it.
OPSETS = get_target("onnx").opsets
#: element types newer than the first IR versions, and the IR version that introduced them (onnx's IR.md):
#: float8 in IR 9, 4-bit integers in IR 10, float4 in IR 11, float8e8m0 in IR 12
_TYPE_IR = {17: 9, 18: 9, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12}


@dataclass(frozen=True)
class Blocker:
    """A node an opset cannot hold: its op, and the opset where the form it is written in begins."""

    op: str
    since: int

    def __str__(self) -> str:
        return f"{self.op} (opset {self.since}, ONNX Runtime >= {ort_requirement(self.since, 0)})"


def default_opset(mp) -> int:
    """The ai.onnx opset a ModelProto declares."""
    return next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), 0)


def _schema(onnx, node, opset: int):
    return onnx.defs.get_schema(node.op_type, opset, node.domain or "")


def lowest_opset(mp) -> int:
    """The lowest ai.onnx opset at which every node of ``mp`` resolves to the schema it has now."""
    import onnx

    declared = default_opset(mp)
    lowest = 1
    for node in _all_nodes(mp):
        if node.domain in ("", "ai.onnx"):
            lowest = max(lowest, _schema(onnx, node, declared).since_version)
    return lowest


def blockers(mp, opset: int) -> list[Blocker]:
    """The ops of ``mp`` that do not exist at all at ``opset`` (a changed form can be converted; an op added
    later cannot), with the opset that added each, newest first."""
    found: dict[str, Blocker] = {}
    for node in _all_nodes(mp):
        if node.domain not in ("", "ai.onnx") or node.op_type in found:
            continue
        added = _first_opsets().get(node.op_type)
        if added is not None and added > opset:
            found[node.op_type] = Blocker(node.op_type, added)
    return sorted(found.values(), key=lambda b: (-b.since, b.op))


def newer_forms(mp, opset: int) -> list[Blocker]:
    """The ops of ``mp`` that exist at ``opset`` but are written in a later opset's form (Split-18's
    ``num_outputs``, ReduceMean-18's axes input), with the opset of that form, newest first."""
    import onnx

    declared = default_opset(mp)
    found: dict[str, Blocker] = {}
    for node in _all_nodes(mp):
        if node.domain not in ("", "ai.onnx") or node.op_type in found:
            continue
        since = _schema(onnx, node, declared).since_version
        if since > opset:
            found[node.op_type] = Blocker(node.op_type, since)
    return sorted(found.values(), key=lambda b: (-b.since, b.op))


@functools.lru_cache(maxsize=1)
def _first_opsets() -> dict[str, int]:
    """ai.onnx op -> the opset that added it."""
    import onnx

    first: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            first[schema.name] = min(first.get(schema.name, schema.since_version), schema.since_version)
    return first


def lowest_ir(mp) -> int:
    """The lowest IR version that holds ``mp``'s opsets and element types."""
    import onnx

    ir = onnx.helper.find_min_ir_version_for(list(mp.opset_import), True)
    for elem in _elem_types(mp):
        ir = max(ir, _TYPE_IR.get(elem, onnx.IR_VERSION if elem > max(_TYPE_IR) else 3))
    return ir


def stamp_lowest(mp, keep_opset: bool = False) -> None:
    """Declare the lowest opset (unless ``keep_opset``: the user chose it) and IR version holding ``mp``,
    and drop opset imports of domains no node uses (torch.onnx leaves its function library's)."""
    used = {n.domain or "" for n in _all_nodes(mp)} | {""}
    imports = [(o.domain, o.version) for o in mp.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    if not keep_opset:
        lowest = lowest_opset(mp)
        imports = [(d, lowest if d in ("", "ai.onnx") else v) for d, v in imports]
    del mp.opset_import[:]
    for domain, version in imports:
        mp.opset_import.add(domain=domain, version=version)
    mp.ir_version = lowest_ir(mp)


def ort_requirement(opset: int, ir: int) -> str:
    """The first ONNX Runtime release (``"1.14"``) that implements ``opset`` and IR version ``ir``."""
    for (major, minor), (max_opset, max_ir) in sorted(ORT_RELEASES.items()):
        if opset <= max_opset and ir <= max_ir:
            return f"{major}.{minor}"
    newest = max(ORT_RELEASES)
    return f"{newest[0]}.{newest[1] + 1}"  # past the table: later than every release it lists


def ort_limits(version: tuple[int, ...]) -> tuple[int, int]:
    """(newest opset, newest IR version) that ONNX Runtime ``version`` implements; refuses a release older than
    the table's oldest."""
    key = tuple(version[:2]) + (0,) * (2 - len(version[:2]))
    known = sorted(ORT_RELEASES)
    if key < known[0]:
        oldest = ".".join(map(str, known[0]))
        raise InputError(f"--min-runtime {'.'.join(map(str, version))}: edgehybrid targets ONNX Runtime {oldest} "
                         f"(opset {ORT_RELEASES[known[0]][0]}) and later; give --min-runtime {oldest} or later")
    return ORT_RELEASES[max(k for k in known if k <= key)]


def requires(mp) -> dict[str, str]:
    """``{"onnxruntime": ">=1.14"}`` for the opset and IR version ``mp`` declares."""
    return {"onnxruntime": ">=" + ort_requirement(default_opset(mp), mp.ir_version)}


def _all_nodes(mp):
    stack = [mp.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            yield node
            for attr in node.attribute:
                stack.extend([attr.g] if attr.HasField("g") else [])
                stack.extend(attr.graphs)
    for fn in mp.functions:
        yield from fn.node


def _elem_types(mp) -> set[int]:
    g = mp.graph
    types = {t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            types.add(v.type.tensor_type.elem_type)
    return types


def choose_opset(options) -> int:
    """The opset to convert at: the user's, else the default, lowered to what ``--min-runtime`` implements."""
    if options.opset is not None:
        return options.opset
    if options.min_runtime is None:
        return DEFAULT_OPSET
    return min(DEFAULT_OPSET, ort_limits(parse_floor("onnx", options.min_runtime))[0])


def check_opset(program, opset: int, what: str) -> None:
    """torch.onnx writes a newer opset than asked when it cannot lower the model: name the ops that need it."""
    declared = program.model.opset_imports.get("", opset)
    if declared <= opset:
        return
    mp = program.model_proto
    found = blockers(mp, opset)
    if not found:
        forms = newer_forms(mp, opset)
        names = ", ".join(f"{b.op} (opset {b.since})" for b in forms[:3]) or "its graph"
        needed = forms[0].since if forms else declared
        raise InputError(f"torch.onnx could not write {what} at opset {opset}: {names} stay in a later opset's form, "
                         f"which its version converter does not lower; use --opset {needed} or later (ONNX Runtime "
                         f">= {ort_requirement(needed, 0)})")
    raise InputError(f"opset {opset} cannot hold {what}: it uses {', '.join(map(str, found[:3]))}; use --opset "
                     f"{found[0].since} or later")
