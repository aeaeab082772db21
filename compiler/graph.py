"""Graph views of a Program through networkx: dependency graph, topological order, DOT export."""

from __future__ import annotations

import networkx as nx

from .ir import Op, Program


def dependency_graph(program: Program) -> nx.DiGraph:
    """Nodes are value names (with the defining op as attribute `op`); edges go operand -> user."""
    graph = nx.DiGraph()
    for op in program.ops:
        graph.add_node(op.result, op=op)
        for operand in op.operands:
            graph.add_edge(operand, op.result)
    return graph


def topological_ops(program: Program) -> list[Op]:
    """Ops in a dependency order, ties broken by original position (stable)."""
    position = {op.result: k for k, op in enumerate(program.ops)}
    graph = dependency_graph(program)
    order = nx.lexicographical_topological_sort(graph, key=lambda name: position[name])
    return [graph.nodes[name]["op"] for name in order]


def live_values(program: Program) -> set[str]:
    """Values the outputs depend on, plus every input (inputs are the signature and always stay)."""
    graph = dependency_graph(program)
    live = set(program.outputs)
    for name in program.outputs:
        live |= nx.ancestors(graph, name)
    return live | {op.result for op in program.inputs}


def to_dot(program: Program) -> str:
    """Graphviz DOT text of the program's dataflow."""
    lines = [f'digraph "{program.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    for op in program.ops:
        label = op.opcode
        if op.opcode == "einsum":
            label += f" {op.attrs['spec']}"
        elif op.opcode == "map":
            label += f" {op.attrs['fn']}"
        elif op.opcode == "const":
            label += f" {op.attrs['name']}"
        label += f"\\n%{op.result}: {op.type}"
        shape = "ellipse" if op.opcode in ("input", "const") else "box"
        lines.append(f'  "{op.result}" [label="{label}", shape={shape}];')
    for op in program.ops:
        for operand in op.operands:
            lines.append(f'  "{operand}" -> "{op.result}";')
    for name in program.outputs:
        lines.append(f'  "{name}" -> "return";')
    lines.append('  "return" [shape=plaintext];')
    lines.append("}")
    return "\n".join(lines) + "\n"
