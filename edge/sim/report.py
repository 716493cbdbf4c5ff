"""The verdict table ``edge simulate`` prints for a SimResult."""

from __future__ import annotations

from edge.sim.simulate import SimResult


def _bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.0f} MB"


def _secs(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def format_result(r: SimResult) -> str:
    w, m = r.workload, r.memory
    unit = r.placement["decoder"]
    lines = [
        f"{r.model} on {r.target}: recipe {r.recipe}, runtime {r.runtime} ({unit}); "
        f"prompt {w.prompt_len}, gen {w.gen_len}, context {w.ctx}, batch {w.batch}",
        f"  {'stage':<8} {'tok/s':>10} {'time':>12}  {'binding':<13} headroom  (time per resource)",
    ]
    for name, st, t in (("prefill", r.prefill, r.ttft_s), ("decode", r.decode, r.decode.seconds)):
        parts = ", ".join(f"{k} {_secs(v)}" for k, v in st.times.items())
        label = "TTFT" if name == "prefill" else "/token"
        lines.append(f"  {name:<8} {st.tok_s:>10.1f} {_secs(t):>9} {label:<6} {st.binding:<13} {st.headroom:>6.0%}"
                     f"  ({parts})")
    lines.append(f"  latency  {_secs(r.latency_s)} for the workload; CPU load {r.cpu_load:.0%} "
                 f"({', '.join(f'{k} on {v}' for k, v in r.placement.items())})")
    verdict = "fits" if r.fits else f"DOES NOT FIT ({r.fit_binding})"
    lines.append(
        f"  memory   {_bytes(r.peak_memory_bytes)} of {_bytes(m['available'])}: {verdict}; weights "
        f"{_bytes(m['weights'])}, KV {_bytes(m['kv_cache'])}, activations {_bytes(m['activations'])}, "
        f"runtime {_bytes(m['runtime'])}"
    )
    lines.append(f"  largest context that fits: {r.largest_context:,} tokens; largest model at this recipe and "
                 f"context: {r.largest_params / 1e9:.2f} B params")
    if r.graph_splits > 1:
        lines.append(f"  graphs   {r.graph_splits} parts (graph-size limit)")
    if r.moe:
        mo = r.moe
        lines.append(f"  MoE      {mo['n_experts']} experts top-{mo['top_k']}: {mo['active_params'] / 1e9:.2f} B of "
                     f"{mo['total_params'] / 1e9:.2f} B params active; {mo['distinct_experts_per_decode_step']:.2f} "
                     f"distinct experts per layer per decode step; {_bytes(mo['weight_bytes_per_decode_step'])} "
                     f"read per step")
    for n in r.notes:
        lines.append(f"  note     {n}")
    for b in r.budgets:
        lines.append(f"  budget   {b.name:<24} value {b.value:.4g}  {'PASS' if b.ok else 'FAIL'} "
                     f"({b.margin:+.0%}; binds: {b.binding})")
    ok = r.ok and r.fits
    lines.append(f"  verdict  {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)
